"""The SQL tables an erasure reads and writes, and :data:`COVERED`: every column that refers
to a subject, a face or a crop, and what the erasure does with it."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Table
from sqlmodel import SQLModel

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


def _table(model: type[SQLModel]) -> Table:
    return SQLModel.metadata.tables[str(model.__tablename__)]


SUBJECTS = _table(Subject)
UPLOADS = _table(Upload)
FACES = _table(Face)
LABELS = _table(Label)
LINKS = _table(IdentityLink)
REFS = _table(AnimeRef)
PAIRS = _table(Pair)
DECISIONS = _table(ReviewDecision)
SNAPSHOTS = _table(Snapshot)
SNAPSHOT_SUBJECTS = _table(SnapshotSubject)
VERSIONS = _table(ModelVersion)
VERSION_SUBJECTS = _table(VersionSubject)
VERSION_ERASURES = _table(VersionErasure)
AUDIT = _table(ErasureAudit)

#: Every SQL column that refers to a subject, a face or a crop, and what an erasure does
#: with it. ``tests/unit/agents/test_erasure_coverage.py`` fails when a table gains such a
#: column that is not listed here: cover it in :func:`agents.erasure.commit.commit`, then
#: list it.
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
