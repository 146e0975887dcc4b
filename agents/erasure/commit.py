"""The erasure's last step, after points, blobs and files: one SQL transaction that removes
the subject's rows, counts the erasure against every model version trained on the subject,
and writes the tombstone and the audit row; then, on SQLite, the WAL checkpoint."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete, insert, or_, select, update

from agents.erasure.audit import ErasureResult, Outcome
from agents.erasure.plan import Plan
from agents.erasure.tables import (
    AUDIT,
    DECISIONS,
    FACES,
    LABELS,
    LINKS,
    PAIRS,
    SNAPSHOT_SUBJECTS,
    SNAPSHOTS,
    SUBJECTS,
    UPLOADS,
    VERSION_ERASURES,
    VERSION_SUBJECTS,
    VERSIONS,
)
from agents.stores.db import sql_errors
from agents.stores.outbox import forget
from agents.stores.tombstones import lock_subject, record_tombstone
from schemas.pairs import PAIRS_TOPIC
from schemas.reasons import UploadState


def commit(
    engine: Engine,
    writer: Engine,
    *,
    via: str,
    pseudonym: str,
    tombstone: str,
    plan: Plan,
    counts: dict[str, int],
    request_id: str,
    requested_by: str,
    requested_at: datetime,
) -> ErasureResult | None:
    """Remove the rows, write the tombstone (digest ``tombstone``) and the audit row in
    one transaction; None (nothing written) when the subject's faces changed since the
    plan. ``writer`` is ``engine`` for writing (:func:`agents.stores.db.for_writing`)."""
    faces = select(FACES.c.face_id).where(FACES.c.subject == pseudonym)
    pairs = select(PAIRS.c.pair_id).where(
        or_(PAIRS.c.subject == pseudonym, PAIRS.c.face_id.in_(faces))
    )
    snapshots = sorted(plan.snapshots)
    now = datetime.now(UTC)
    with sql_errors(f"erasure {request_id}"), writer.begin() as connection:
        if connection.dialect.name == "sqlite":
            # Deleted rows are overwritten with zeros, not left in free pages.
            connection.exec_driver_sql("PRAGMA secure_delete = ON")
        # Before anything is read: a face being recorded now is either committed, and
        # in the read below (the erasure plans again), or refused by the tombstone.
        lock_subject(connection, tombstone)
        done = (
            connection.execute(select(AUDIT).where(AUDIT.c.request_id == request_id))
            .mappings()
            .first()
        )
        if done is not None:  # another process finished it meanwhile
            return ErasureResult.from_row(done, already=True)
        if set(connection.scalars(faces)) != plan.face_ids:
            return None
        versions = list(
            connection.execute(
                select(VERSIONS.c.id, VERSIONS.c.name, VERSIONS.c.version)
                .select_from(
                    VERSION_SUBJECTS.join(VERSIONS, VERSIONS.c.id == VERSION_SUBJECTS.c.version_id)
                )
                .where(VERSION_SUBJECTS.c.subject == pseudonym)
                .order_by(VERSIONS.c.name, VERSIONS.c.version)
            )
        )
        connection.execute(
            delete(DECISIONS).where(
                or_(DECISIONS.c.pair_id.in_(pairs), DECISIONS.c.face_id.in_(faces))
            )
        )
        connection.execute(delete(PAIRS).where(PAIRS.c.pair_id.in_(pairs)))
        forget(connection, PAIRS_TOPIC, pseudonym.encode())
        connection.execute(delete(LABELS).where(LABELS.c.face_id.in_(faces)))
        connection.execute(
            delete(LINKS).where(or_(LINKS.c.face_id.in_(faces), LINKS.c.other_face_id.in_(faces)))
        )
        face_uploads = select(FACES.c.upload_id).where(FACES.c.subject == pseudonym)
        erased_uploads = or_(UPLOADS.c.subject == pseudonym, UPLOADS.c.upload_id.in_(face_uploads))
        # Read the uploads' ids before their faces go: the faces are the link.
        upload_ids = list(connection.scalars(select(UPLOADS.c.upload_id).where(erased_uploads)))
        connection.execute(delete(FACES).where(FACES.c.subject == pseudonym))
        for start in range(0, len(upload_ids), 500):
            connection.execute(
                update(UPLOADS)
                .where(UPLOADS.c.upload_id.in_(upload_ids[start : start + 500]))
                .values(state=UploadState.ERASED, subject=None, detail=None, finished_at=now)
            )
        connection.execute(delete(SUBJECTS).where(SUBJECTS.c.pseudonym == pseudonym))
        if snapshots:
            connection.execute(
                delete(SNAPSHOT_SUBJECTS).where(SNAPSHOT_SUBJECTS.c.snapshot_id.in_(snapshots))
            )
            connection.execute(delete(SNAPSHOTS).where(SNAPSHOTS.c.snapshot_id.in_(snapshots)))
        connection.execute(
            delete(SNAPSHOT_SUBJECTS).where(SNAPSHOT_SUBJECTS.c.subject == pseudonym)
        )
        connection.execute(delete(VERSION_SUBJECTS).where(VERSION_SUBJECTS.c.subject == pseudonym))
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
            "via": via,
            "outcome": outcome,
            "counts": dict(sorted(counts.items())),
            "snapshots": snapshots,
            "model_versions": marked,
        }
        record_tombstone(connection, tombstone, now)
        connection.execute(insert(AUDIT).values(**row))
    _checkpoint(engine)
    return ErasureResult.from_row(row)


def _checkpoint(engine: Engine) -> None:
    """On SQLite, fold the write-ahead log into the database and truncate it, so the
    old copies of the erased rows' pages do not outlive the erasure there."""
    if engine.dialect.name != "sqlite":
        return
    with sql_errors("checkpointing the erasure"), engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _count_erasure(connection: Connection, version_id: int, now: datetime) -> None:
    """One more erased subject for a model version (its retrain trigger's input)."""
    found = connection.scalar(
        select(VERSION_ERASURES.c.erased_subjects).where(
            VERSION_ERASURES.c.version_id == version_id
        )
    )
    if found is None:
        connection.execute(
            insert(VERSION_ERASURES).values(
                version_id=version_id, erased_subjects=1, last_erased_at=now
            )
        )
    else:
        connection.execute(
            update(VERSION_ERASURES)
            .where(VERSION_ERASURES.c.version_id == version_id)
            .values(erased_subjects=int(found) + 1, last_erased_at=now)
        )
