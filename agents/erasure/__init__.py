"""Erasure: remove one subject from every store, prove it in an audit row, answer twice.

:class:`Eraser` takes a subject's pseudonym (the raw id is turned into it on entry, by the
``erase`` agent or ``s2a erase``, and goes no further) and removes, in this order:

1. **Qdrant**: every point of the subject in every faces collection (``faces-<slug>``,
   and the old unsuffixed ``faces``), by face id and by the ``subject`` payload, so a
   point whose SQL row never got written (a crash mid-ingest) goes too;
2. **blobs**: the aligned crops of the subject's faces that no other face and no anime
   reference shares (content-addressed: a shared digest is someone else's image too), in
   the blob store the settings name (folder or bucket) and this home's staged copies;
3. **files**: every export (a folder with an ``export.json``) of a snapshot that holds the
   subject, under the dataset directory and ``settings.dataset.export_roots``; then those
   snapshots' folders under the dataset directory (manifest, report). Snapshots are found
   through ``snapshot_subjects``, and by the pseudonym's bytes in every manifest on disk
   (snapshots recorded before that table existed, or written and never recorded); and
   the sample grids (``samples/``, validation selfies) of the training runs of the model
   versions trained on the subject (and the artifact store's copies of those of a run kept
   inside its version directory);
4. **SQL**, one transaction: review decisions on the subject's pairs (deleted; the audit
   row keeps how many of each action), pairs (pending reviews among them) and their
   ``pairs`` records in the outbox (sent or still waiting: no announcement of the subject
   goes out after the erasure), labels, identity links at either end, faces; the
   subject's uploads become ``erased`` with no
   subject and no detail, ``finished_at`` the erasure's time (the row stays so that a
   re-delivered upload stays erased); the ``subjects`` row; the rows of the deleted
   snapshots (``snapshots`` and every ``snapshot_subjects`` row of them: the snapshot is
   gone, not rebuilt; the next retrain freezes a new one without the subject); the
   subject's ``version_subjects`` rows, each version counted in ``version_erasures`` so
   the retrain trigger fires; the subject's tombstone; and the ``erasure_audit`` row. On
   SQLite the transaction runs with ``secure_delete`` and is followed by a WAL checkpoint,
   so no copy of a deleted row stays in the database's free pages or its log.

The tombstone (:mod:`agents.stores.tombstones`) is what keeps the erasure done: an upload
of the subject still queued in Kafka (published before, consumed after), or sent again
with its old consent, is refused ``subject_erased`` instead of bringing the subject back;
one with a consent granted after the erasure is ingested. It is written whatever the
outcome (a subject never seen may have uploads on their way) and holds a keyed digest of
the pseudonym, never the pseudonym, so making it needs the pseudonym key. The transaction
takes the subject's lock first, as ingestion's recording transaction does: a face
recorded before it is seen (and the erasure plans again), one not yet recorded is refused.

Points, blobs and files first, SQL last, as in :mod:`agents.sink`: every step before the
commit is idempotent, and a crash anywhere leaves the SQL rows that lead a re-run to the
rest. Counts come from SQL where they can (faces, crops, points of known faces), so a
resumed erasure reports what the subject had; only ``exports`` and ``sample_grids`` count
what the finishing run found on disk (an interrupted run may have removed some already).
A request already in the audit log (same ``request_id``) changes nothing and answers with
the recorded counts; a subject with nothing left (erased before, or never seen) gets an
audit row with ``outcome='nothing_found'`` and zero counts, and its tombstone (one row per
subject) moves to the new erasure's time.

The audit row holds no subject reference at all (see :class:`schemas.tables.ErasureAudit`),
the tombstone only the keyed digest (:class:`schemas.tables.Tombstone`), and nothing here
logs the pseudonym.

Example::

    eraser = Eraser.from_settings(settings, engine, open_client(settings))
    result = eraser.erase_request(ErasureRequest(subject_id="app-user-42",
                                                 requested_by="privacy-office",
                                                 requested_at=datetime.now(UTC)), key)
    result.outcome, result.counts["faces"]    # ('erased', 3)

Every name is importable from here (``from agents.erasure import Eraser``); the modules
hold them by concern:

- ``eraser``: :class:`Eraser`, its construction and the ``erase`` flow in the order above
- ``plan``: what SQL and the manifests on disk say the subject has, and its row counts
- ``tables``: the SQL tables an erasure touches and :data:`COVERED`, the columns it covers
- ``vectors``: the subject's Qdrant points and the crops their payloads name
- ``crops``: the subject's crops in the blob store that nothing else shares
- ``files``: exports, snapshot folders, sample grids and the artifact store's copies
- ``commit``: the final SQL transaction (rows, tombstone, audit row) and the checkpoint
- ``audit``: :class:`ErasureResult` and the audit log read back (:func:`find_audit`,
  :func:`erased_versions`)
"""

from __future__ import annotations

from agents.erasure.audit import ErasureResult, Outcome, erased_versions, find_audit
from agents.erasure.eraser import Eraser
from agents.erasure.files import EXPORT_MARKER, MANIFEST_NAME, SAMPLES
from agents.erasure.tables import COVERED

__all__ = [
    "COVERED",
    "EXPORT_MARKER",
    "MANIFEST_NAME",
    "SAMPLES",
    "Eraser",
    "ErasureResult",
    "Outcome",
    "erased_versions",
    "find_audit",
]
