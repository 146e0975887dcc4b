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
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from qdrant_client import QdrantClient, models
from sqlalchemy import Connection, Engine, Table, delete, func, insert, or_, select, update
from sqlmodel import SQLModel

from agents.errors import StorageError
from agents.objects import ObjectStore, artifact_store
from agents.stages.anonymize import pseudonymize
from agents.stores.blobs import BlobStore, open_blobs
from agents.stores.db import for_writing, sql_errors
from agents.stores.faces import CROPS_PAYLOAD, FACES
from agents.stores.keys import checked_pseudonym_key
from agents.stores.outbox import forget
from agents.stores.tombstones import lock_subject, record_tombstone, tombstone_digest
from schemas.erasure import ErasureRequest
from schemas.errors import ConfigError
from schemas.pairs import PAIRS_TOPIC, PairStatus
from schemas.reasons import UploadState
from schemas.settings import Settings
from schemas.tables import (
    AnimeRef,
    ErasureAudit,
    Face,
    IdentityLink,
    Label,
    ModelVersion,
    Pair,
    ReviewDecision,
    Snapshot,
    SnapshotSubject,
    Subject,
    Upload,
    VersionErasure,
    VersionSubject,
)

log = logging.getLogger(__name__)


def _table(model: type[SQLModel]) -> Table:
    return SQLModel.metadata.tables[str(model.__tablename__)]


_SUBJECTS = _table(Subject)
_UPLOADS = _table(Upload)
_FACES = _table(Face)
_LABELS = _table(Label)
_LINKS = _table(IdentityLink)
_REFS = _table(AnimeRef)
_PAIRS = _table(Pair)
_DECISIONS = _table(ReviewDecision)
_SNAPSHOTS = _table(Snapshot)
_SNAPSHOT_SUBJECTS = _table(SnapshotSubject)
_VERSIONS = _table(ModelVersion)
_VERSION_SUBJECTS = _table(VersionSubject)
_VERSION_ERASURES = _table(VersionErasure)
_AUDIT = _table(ErasureAudit)

#: Every SQL column that refers to a subject, a face or a crop, and what an erasure does
#: with it. ``tests/unit/agents/test_erasure_coverage.py`` fails when a table gains such a
#: column that is not listed here: cover it in :meth:`Eraser._commit`, then list it.
COVERED: Mapping[str, str] = {
    "subjects.pseudonym": "the row is deleted",
    "uploads.subject": "set to NULL; the upload reads 'erased', its detail cleared",
    "faces.face_id": "the row is deleted, after everything that refers to it",
    "faces.subject": "the row is deleted",
    "faces.crop_256": "the blob is deleted unless another face or a reference shares it",
    "faces.crop_512": "the blob is deleted unless another face or a reference shares it",
    "labels.face_id": "the rows are deleted",
    "identity_links.face_id": "the rows are deleted (a link at either end)",
    "identity_links.other_face_id": "the rows are deleted (a link at either end)",
    "pairs.face_id": "the rows are deleted, pending reviews with them",
    "pairs.subject": "the rows are deleted",
    "review_decisions.face_id": "the rows are deleted; the audit keeps counts per action",
    "snapshots.subjects": "a count, no reference; snapshots holding the subject are deleted",
    "snapshot_subjects.subject": "every row of a deleted snapshot is deleted",
    "version_subjects.subject": "the rows are deleted; version_erasures counts them",
    "version_erasures.erased_subjects": "a count the eraser keeps, no reference",
    "outbox.key": "the subject's pairs records (keyed by its pseudonym) are deleted",
    "tombstones.subject_digest": (
        "written, not removed: a keyed digest (HMAC under the pseudonym key), not the "
        "pseudonym, that refuses the subject's uploads consented before the erasure"
    ),
}

#: What the files of an export are recognised by (``trainer.dataset.export`` writes it).
EXPORT_MARKER = "export.json"
MANIFEST_NAME = "manifest.json"
#: The sample grids' folder in a training run (``trainer.runs.SAMPLES``; agents cannot
#: import trainer).
SAMPLES = "samples"

#: Attempts when a face of the subject is stored between the plan and the commit.
_ATTEMPTS = 3

Outcome = Literal["erased", "nothing_found"]


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """The answer to one erasure request, as its audit row records it.

    ``already`` is True when the request had been carried out before (the same
    ``request_id``): nothing was done now, and the counts are those of the first time.
    """

    request_id: str
    outcome: Outcome
    requested_by: str
    requested_at: datetime
    erased_at: datetime
    via: str
    counts: Mapping[str, int]
    snapshots: Sequence[str] = ()
    model_versions: Sequence[str] = ()
    already: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "outcome": self.outcome,
            "already": self.already,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at.isoformat(),
            "erased_at": self.erased_at.isoformat(),
            "via": self.via,
            "counts": dict(self.counts),
            "snapshots": list(self.snapshots),
            "model_versions": list(self.model_versions),
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], *, already: bool = False) -> ErasureResult:
        return cls(
            request_id=row["request_id"],
            outcome=row["outcome"],
            requested_by=row["requested_by"],
            requested_at=row["requested_at"],
            erased_at=row["erased_at"],
            via=row["via"],
            counts=dict(row["counts"]),
            snapshots=tuple(row["snapshots"]),
            model_versions=tuple(row["model_versions"]),
            already=already,
        )


@dataclass(slots=True)
class _Plan:
    """What SQL says the subject has, read before anything is removed."""

    face_ids: set[str]
    crops: set[str]
    snapshots: set[str]
    run_dirs: set[str]
    """training runs of the model versions trained on the subject"""
    counts: dict[str, int] = field(default_factory=dict)


def find_audit(engine: Engine, request_id: str) -> ErasureResult | None:
    """The recorded answer to ``request_id``, or None when it has not been carried out."""
    query = select(_AUDIT).where(_AUDIT.c.request_id == request_id)
    with sql_errors("reading the erasure audit"), engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return None if row is None else ErasureResult.from_row(row, already=True)


def erased_versions(engine: Engine) -> dict[tuple[str, int], int]:
    """``{(name, version): erased subjects}`` of every model version trained on subjects
    that have been erased since: the retrain trigger's input (retrain while the champion
    is among them)."""
    query = select(_VERSIONS.c.name, _VERSIONS.c.version, _VERSION_ERASURES.c.erased_subjects)
    query = query.select_from(
        _VERSION_ERASURES.join(_VERSIONS, _VERSIONS.c.id == _VERSION_ERASURES.c.version_id)
    )
    with sql_errors("reading erased model versions"), engine.connect() as connection:
        return {(str(n), int(v)): int(e) for n, v, e in connection.execute(query)}


class Eraser:
    """Removes one subject everywhere and records the erasure (see the module docstring).

    ``client`` is the Qdrant client of the faces collections (the worker's own when it
    runs: the local store admits one process). ``export_roots`` are searched for exports
    besides ``dataset_dir``. ``key`` is the pseudonym key, for the tombstone: needed by
    :meth:`erase` (:meth:`erase_request` brings its own).

    Example::

        eraser = Eraser(engine, client, open_blobs(settings), settings.dataset_dir, key=key)
        eraser.erase(pseudonym, request_id="er-1", requested_by="alice",
                     requested_at=datetime.now(UTC)).counts
    """

    def __init__(
        self,
        engine: Engine,
        client: QdrantClient,
        blobs: BlobStore,
        dataset_dir: Path,
        export_roots: Sequence[Path] = (),
        *,
        via: str = "direct",
        models_dir: Path | None = None,
        artifacts: ObjectStore | None = None,
        key: bytes | None = None,
    ) -> None:
        self.engine = engine
        self._writer = for_writing(engine)
        self.client = client
        self.blobs = blobs
        self.dataset_dir = dataset_dir
        self.export_roots = tuple(dict.fromkeys([dataset_dir, *export_roots]))
        self.via = via
        # A run directory inside a version directory (``<version>/run``) was copied to
        # the artifact store with the version: its sample grids go there too.
        self.models_dir = models_dir
        self.artifacts = artifacts
        self.key = key

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: Engine,
        client: QdrantClient,
        *,
        via: str = "direct",
        key: bytes | None = None,
    ) -> Eraser:
        """The eraser of the stores ``settings`` name; without ``key``, the pseudonym key
        checked against the database (:func:`agents.stores.keys.checked_pseudonym_key`:
        a :class:`~schemas.errors.ConfigError` for another key)."""
        return cls(
            engine,
            client,
            open_blobs(settings),
            settings.dataset_dir,
            settings.dataset.export_roots,
            via=via,
            models_dir=settings.models_dir,
            artifacts=artifact_store(settings),
            key=key if key is not None else checked_pseudonym_key(settings, engine),
        )

    def erase_request(self, request: ErasureRequest, key: bytes) -> ErasureResult:
        """Carry out ``request``: its raw subject id becomes the pseudonym here, and only
        the pseudonym goes on."""
        return self.erase(
            pseudonymize(request.subject_id, key),
            request_id=request.request_id,
            requested_by=request.requested_by,
            requested_at=request.requested_at,
            key=key,
        )

    def erase(
        self,
        pseudonym: str,
        *,
        request_id: str,
        requested_by: str,
        requested_at: datetime,
        key: bytes | None = None,
    ) -> ErasureResult:
        """Remove the subject ``pseudonym`` everywhere and leave its tombstone; the audit
        row's answer. ``key`` is the pseudonym key ``pseudonym`` was made with (default:
        the eraser's own).

        Raises :class:`~schemas.errors.ConfigError`, before anything is removed, when there
        is no key to make the tombstone with; :class:`~agents.errors.StorageError` when a
        store fails (running the same request again then finishes the erasure).
        """
        key = key if key is not None else self.key
        if not key:
            raise ConfigError(
                f"erasure {request_id}: no pseudonym key to make the subject's tombstone "
                "with; pass key=, or build the eraser with Eraser.from_settings"
            )
        tombstone = tombstone_digest(pseudonym, key)
        done = find_audit(self.engine, request_id)
        if done is not None:
            log.info("erasure %s was carried out at %s; nothing to do", request_id, done.erased_at)
            return done
        for _ in range(_ATTEMPTS):
            plan = self._plan(pseudonym)
            # Crops first, points after: a point names its crops, also those of a face that
            # never reached SQL (a worker killed between its writes and the commit).
            named = self._crops_named_by_points(pseudonym, plan.face_ids)
            crops = self._remove_crops(pseudonym, plan.crops | named)
            points = self._remove_points(pseudonym, plan.face_ids)
            exports = self._remove_exports(plan.snapshots)
            self._remove_snapshot_folders(plan.snapshots)
            grids = self._remove_sample_grids(plan.run_dirs)
            counts = plan.counts | {
                "exports": exports,
                "crops": crops,
                "points": points,
                "sample_grids": grids,
            }
            result = self._commit(
                pseudonym, tombstone, plan, counts, request_id, requested_by, requested_at
            )
            if result is not None:
                log.info(
                    "erasure %s by %s: %s %s",
                    request_id,
                    requested_by,
                    result.outcome,
                    {k: v for k, v in result.counts.items() if v},
                )
                return result
        raise StorageError(
            f"erasure {request_id}: the subject's faces kept changing while it ran "
            f"({_ATTEMPTS} attempts); run it again"
        )

    # -- reading what there is -------------------------------------------------------------

    def _plan(self, pseudonym: str) -> _Plan:
        faces = select(_FACES.c.face_id, _FACES.c.crop_256, _FACES.c.crop_512).where(
            _FACES.c.subject == pseudonym
        )
        with sql_errors("planning an erasure"), self.engine.connect() as connection:
            rows = list(connection.execute(faces))
            face_ids = {row.face_id for row in rows}
            crops = {row.crop_256 for row in rows} | {row.crop_512 for row in rows}
            snapshots = set(
                connection.scalars(
                    select(_SNAPSHOT_SUBJECTS.c.snapshot_id).where(
                        _SNAPSHOT_SUBJECTS.c.subject == pseudonym
                    )
                )
            )
            run_dirs = set(
                connection.scalars(
                    select(_VERSIONS.c.run_dir)
                    .select_from(
                        _VERSION_SUBJECTS.join(
                            _VERSIONS, _VERSIONS.c.id == _VERSION_SUBJECTS.c.version_id
                        )
                    )
                    .where(_VERSION_SUBJECTS.c.subject == pseudonym)
                )
            )
            counts = _counts(connection, pseudonym)
        snapshots |= self._manifests_naming(pseudonym)
        return _Plan(face_ids, crops, snapshots, run_dirs, counts | {"snapshots": len(snapshots)})

    def _manifests_naming(self, pseudonym: str) -> set[str]:
        """Snapshot folders whose manifest holds the pseudonym's bytes: those recorded
        before ``snapshot_subjects`` existed, and any written but never recorded."""
        needle = pseudonym.encode()
        found: set[str] = set()
        try:
            for path in sorted(self.dataset_dir.glob(f"*/{MANIFEST_NAME}")):
                if needle in path.read_bytes():
                    found.add(path.parent.name)
        except OSError as exc:
            raise StorageError(
                f"cannot read the manifests under {self.dataset_dir}: {exc}"
            ) from exc
        return found

    # -- files, blobs, points (idempotent, before SQL) ----------------------------------------

    def _remove_exports(self, snapshots: set[str]) -> int:
        """Delete every export of ``snapshots`` under the export roots; how many."""
        if not snapshots:
            return 0
        removed = 0
        for root in self.export_roots:
            if not root.is_dir():
                continue
            try:
                markers = sorted(root.rglob(EXPORT_MARKER))
            except OSError as exc:
                raise StorageError(f"cannot search {root} for exports: {exc}") from exc
            for marker in markers:
                if _snapshot_of_export(marker) not in snapshots:
                    continue
                folder = marker.parent
                if folder == root:
                    # A root that is itself an export: empty it, keep the folder we were
                    # pointed at.
                    for child in sorted(root.iterdir()):
                        if child.is_dir():
                            _remove_tree(child)
                        else:
                            _remove_file(child)
                else:
                    _remove_tree(folder)
                removed += 1
        return removed

    def _remove_sample_grids(self, run_dirs: set[str]) -> int:
        """Delete the sample grids of the training runs of versions trained on the
        subject: they show validation selfies (``trainer.runs``: ``<run>/samples/``). The
        rest of a run (weights, losses) holds no image and goes with the retrain."""
        removed = 0
        for run_dir in sorted(run_dirs):
            samples = Path(run_dir) / SAMPLES
            stored = self._remove_stored_grids(samples)
            if samples.is_dir():
                _remove_tree(samples)
                removed += 1
            elif stored:
                removed += 1
        return removed

    def _remove_stored_grids(self, samples: Path) -> bool:
        """Delete the artifact store's copies of ``samples`` (a run inside a version
        directory); whether there were any."""
        if self.artifacts is None or self.models_dir is None:
            return False
        if not samples.is_relative_to(self.models_dir):
            return False
        keys = self.artifacts.list_keys(samples.relative_to(self.models_dir).as_posix() + "/")
        for key in keys:
            self.artifacts.delete(key)
        return bool(keys)

    def _remove_snapshot_folders(self, snapshots: set[str]) -> None:
        for snapshot_id in sorted(snapshots):
            if not snapshot_id or "/" in snapshot_id or snapshot_id.startswith("."):
                continue  # never a path outside the dataset directory
            _remove_tree(self.dataset_dir / snapshot_id)

    def _remove_crops(self, pseudonym: str, crops: set[str]) -> int:
        """Delete the subject's crops that nothing else uses; how many the subject had
        (counted whether this run or an interrupted earlier one removed them)."""
        if not crops:
            return 0
        digests = sorted(crops)
        others = select(_FACES.c.crop_256, _FACES.c.crop_512).where(
            _FACES.c.subject != pseudonym,
            or_(_FACES.c.crop_256.in_(digests), _FACES.c.crop_512.in_(digests)),
        )
        refs = select(_REFS.c.original, _REFS.c.training).where(
            or_(_REFS.c.original.in_(digests), _REFS.c.training.in_(digests))
        )
        with sql_errors("finding shared crops"), self.engine.connect() as connection:
            shared = {d for row in connection.execute(others) for d in row}
            shared |= {d for row in connection.execute(refs) for d in row}
        own = [digest for digest in digests if digest not in shared]
        try:
            for digest in own:
                self.blobs.delete(digest)
        except OSError as exc:
            raise StorageError(f"cannot delete a crop under {self.blobs.where}: {exc}") from exc
        return len(own)

    def _remove_points(self, pseudonym: str, face_ids: set[str]) -> int:
        """Delete the subject's points in every faces collection; how many the subject had
        (its faces', whether this run or an interrupted one removed them, and any found
        by the payload alone)."""
        by_subject = _of_subject(pseudonym)
        removed = set(face_ids)
        try:
            for name in self._faces_collections():
                ids = self._ids_matching(name, by_subject)
                if face_ids:
                    ids |= {str(p.id) for p in self.client.retrieve(name, ids=sorted(face_ids))}
                if not ids:
                    continue
                self.client.delete(
                    name, points_selector=models.PointIdsList(points=sorted(ids)), wait=True
                )
                self.client.delete(
                    name, points_selector=models.FilterSelector(filter=by_subject), wait=True
                )
                removed |= ids
        except Exception as exc:
            raise StorageError(f"cannot delete the subject's points from Qdrant: {exc}") from exc
        return len(removed)

    def _crops_named_by_points(self, pseudonym: str, face_ids: set[str]) -> set[str]:
        """The crop digests the subject's points name (``CROPS_PAYLOAD``), in every faces
        collection: the subject's own faces', and any face written but never recorded."""
        named: set[str] = set()
        try:
            for name in self._faces_collections():
                points = self._points_matching(name, _of_subject(pseudonym), [CROPS_PAYLOAD])
                if face_ids:
                    points += self.client.retrieve(
                        name, ids=sorted(face_ids), with_payload=[CROPS_PAYLOAD]
                    )
                for point in points:
                    named.update((point.payload or {}).get(CROPS_PAYLOAD, ()))
        except Exception as exc:  # qdrant-client's errors have no common base (stores.faces)
            raise StorageError(f"cannot read the subject's points from Qdrant: {exc}") from exc
        return named

    def _faces_collections(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if n == FACES or n.startswith(f"{FACES}-"))

    def _points_matching(
        self, collection: str, condition: models.Filter, payload: bool | list[str] = False
    ) -> list[models.Record]:
        found: list[models.Record] = []
        offset = None
        while True:
            batch, offset = self.client.scroll(
                collection, scroll_filter=condition, limit=256, offset=offset, with_payload=payload
            )
            found += batch
            if offset is None:
                return found

    def _ids_matching(self, collection: str, condition: models.Filter) -> set[str]:
        return {str(point.id) for point in self._points_matching(collection, condition)}

    # -- SQL, last -------------------------------------------------------------------------

    def _commit(
        self,
        pseudonym: str,
        tombstone: str,
        plan: _Plan,
        counts: dict[str, int],
        request_id: str,
        requested_by: str,
        requested_at: datetime,
    ) -> ErasureResult | None:
        """Remove the rows, write the tombstone (digest ``tombstone``) and the audit row in
        one transaction; None (nothing written) when the subject's faces changed since the
        plan."""
        faces = select(_FACES.c.face_id).where(_FACES.c.subject == pseudonym)
        pairs = select(_PAIRS.c.pair_id).where(
            or_(_PAIRS.c.subject == pseudonym, _PAIRS.c.face_id.in_(faces))
        )
        snapshots = sorted(plan.snapshots)
        now = datetime.now(UTC)
        with sql_errors(f"erasure {request_id}"), self._writer.begin() as connection:
            if connection.dialect.name == "sqlite":
                # Deleted rows are overwritten with zeros, not left in free pages.
                connection.exec_driver_sql("PRAGMA secure_delete = ON")
            # Before anything is read: a face being recorded now is either committed, and
            # in the read below (the erasure plans again), or refused by the tombstone.
            lock_subject(connection, tombstone)
            done = (
                connection.execute(select(_AUDIT).where(_AUDIT.c.request_id == request_id))
                .mappings()
                .first()
            )
            if done is not None:  # another process finished it meanwhile
                return ErasureResult.from_row(done, already=True)
            if set(connection.scalars(faces)) != plan.face_ids:
                return None
            versions = list(
                connection.execute(
                    select(_VERSIONS.c.id, _VERSIONS.c.name, _VERSIONS.c.version)
                    .select_from(
                        _VERSION_SUBJECTS.join(
                            _VERSIONS, _VERSIONS.c.id == _VERSION_SUBJECTS.c.version_id
                        )
                    )
                    .where(_VERSION_SUBJECTS.c.subject == pseudonym)
                    .order_by(_VERSIONS.c.name, _VERSIONS.c.version)
                )
            )
            connection.execute(
                delete(_DECISIONS).where(
                    or_(_DECISIONS.c.pair_id.in_(pairs), _DECISIONS.c.face_id.in_(faces))
                )
            )
            connection.execute(delete(_PAIRS).where(_PAIRS.c.pair_id.in_(pairs)))
            forget(connection, PAIRS_TOPIC, pseudonym.encode())
            connection.execute(delete(_LABELS).where(_LABELS.c.face_id.in_(faces)))
            connection.execute(
                delete(_LINKS).where(
                    or_(_LINKS.c.face_id.in_(faces), _LINKS.c.other_face_id.in_(faces))
                )
            )
            face_uploads = select(_FACES.c.upload_id).where(_FACES.c.subject == pseudonym)
            erased_uploads = or_(
                _UPLOADS.c.subject == pseudonym, _UPLOADS.c.upload_id.in_(face_uploads)
            )
            # Read the uploads' ids before their faces go: the faces are the link.
            upload_ids = list(
                connection.scalars(select(_UPLOADS.c.upload_id).where(erased_uploads))
            )
            connection.execute(delete(_FACES).where(_FACES.c.subject == pseudonym))
            for start in range(0, len(upload_ids), 500):
                connection.execute(
                    update(_UPLOADS)
                    .where(_UPLOADS.c.upload_id.in_(upload_ids[start : start + 500]))
                    .values(state=UploadState.ERASED, subject=None, detail=None, finished_at=now)
                )
            connection.execute(delete(_SUBJECTS).where(_SUBJECTS.c.pseudonym == pseudonym))
            if snapshots:
                connection.execute(
                    delete(_SNAPSHOT_SUBJECTS).where(
                        _SNAPSHOT_SUBJECTS.c.snapshot_id.in_(snapshots)
                    )
                )
                connection.execute(
                    delete(_SNAPSHOTS).where(_SNAPSHOTS.c.snapshot_id.in_(snapshots))
                )
            connection.execute(
                delete(_SNAPSHOT_SUBJECTS).where(_SNAPSHOT_SUBJECTS.c.subject == pseudonym)
            )
            connection.execute(
                delete(_VERSION_SUBJECTS).where(_VERSION_SUBJECTS.c.subject == pseudonym)
            )
            for version in versions:
                _count_erasure(connection, version.id, now)
            marked = [f"{v.name}:{v.version}" for v in versions]
            counts = counts | {"model_versions": len(marked)}
            outcome: Outcome = "erased" if any(counts.values()) else "nothing_found"
            row = {
                "request_id": request_id,
                "requested_by": requested_by,
                "requested_at": requested_at,
                "erased_at": now,
                "via": self.via,
                "outcome": outcome,
                "counts": dict(sorted(counts.items())),
                "snapshots": snapshots,
                "model_versions": marked,
            }
            record_tombstone(connection, tombstone, now)
            connection.execute(insert(_AUDIT).values(**row))
        self._checkpoint()
        return ErasureResult.from_row(row)

    def _checkpoint(self) -> None:
        """On SQLite, fold the write-ahead log into the database and truncate it, so the
        old copies of the erased rows' pages do not outlive the erasure there."""
        if self.engine.dialect.name != "sqlite":
            return
        with sql_errors("checkpointing the erasure"), self.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _of_subject(pseudonym: str) -> models.Filter:
    """The Qdrant filter of the points whose payload names ``pseudonym``."""
    return models.Filter(
        must=[models.FieldCondition(key="subject", match=models.MatchValue(value=pseudonym))]
    )


def _counts(connection: Connection, pseudonym: str) -> dict[str, int]:
    """How many rows of each kind the subject has, before anything is removed."""
    faces = select(_FACES.c.face_id).where(_FACES.c.subject == pseudonym)
    pairs = or_(_PAIRS.c.subject == pseudonym, _PAIRS.c.face_id.in_(faces))
    pair_ids = select(_PAIRS.c.pair_id).where(pairs)

    def count(table: Table, *where: Any) -> int:
        return int(connection.scalar(select(func.count()).select_from(table).where(*where)) or 0)

    counts = {
        "subjects": count(_SUBJECTS, _SUBJECTS.c.pseudonym == pseudonym),
        "uploads": count(
            _UPLOADS,
            or_(
                _UPLOADS.c.subject == pseudonym,
                _UPLOADS.c.upload_id.in_(
                    select(_FACES.c.upload_id).where(_FACES.c.subject == pseudonym)
                ),
            ),
        ),
        "faces": count(_FACES, _FACES.c.subject == pseudonym),
        "labels": count(_LABELS, _LABELS.c.face_id.in_(faces)),
        "identity_links": count(
            _LINKS, or_(_LINKS.c.face_id.in_(faces), _LINKS.c.other_face_id.in_(faces))
        ),
        "pairs": count(_PAIRS, pairs),
        "pending_reviews": count(_PAIRS, pairs, _PAIRS.c.status == PairStatus.PENDING.value),
        "review_decisions": 0,
    }
    decided = (
        select(_DECISIONS.c.action, func.count())
        .where(or_(_DECISIONS.c.pair_id.in_(pair_ids), _DECISIONS.c.face_id.in_(faces)))
        .group_by(_DECISIONS.c.action)
    )
    for action, n in connection.execute(decided):
        counts[f"review_decisions_{action}"] = int(n)
        counts["review_decisions"] += int(n)
    return counts


def _count_erasure(connection: Connection, version_id: int, now: datetime) -> None:
    """One more erased subject for a model version (its retrain trigger's input)."""
    found = connection.scalar(
        select(_VERSION_ERASURES.c.erased_subjects).where(
            _VERSION_ERASURES.c.version_id == version_id
        )
    )
    if found is None:
        connection.execute(
            insert(_VERSION_ERASURES).values(
                version_id=version_id, erased_subjects=1, last_erased_at=now
            )
        )
    else:
        connection.execute(
            update(_VERSION_ERASURES)
            .where(_VERSION_ERASURES.c.version_id == version_id)
            .values(erased_subjects=int(found) + 1, last_erased_at=now)
        )


def _snapshot_of_export(marker: Path) -> str | None:
    """The snapshot an export's ``export.json`` names; None when it is not one."""
    try:
        data = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    snapshot_id = data.get("snapshot_id") if isinstance(data, dict) else None
    return snapshot_id if isinstance(snapshot_id, str) else None


def _remove_file(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot delete {path}: {exc}") from exc


def _remove_tree(folder: Path) -> None:
    """Delete ``folder`` and everything in it; a folder already gone is fine (a re-run)."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot delete {folder}: {exc}") from exc
