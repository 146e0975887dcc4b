"""What the subject has, read before anything is removed: :class:`Plan` (its faces, their
crops, the snapshots that hold it, the training runs of the versions trained on it) and the
row counts the audit records. SQL says most of it; the manifests on disk add the snapshots
it never recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, or_, select

from agents.erasure.files import manifests_naming
from agents.erasure.tables import (
    DECISIONS,
    FACES,
    LABELS,
    LINKS,
    PAIRS,
    SNAPSHOT_SUBJECTS,
    SUBJECTS,
    UPLOADS,
    VERSION_SUBJECTS,
    VERSIONS,
)
from agents.stores.db import sql_errors
from schemas.pairs import PairStatus


@dataclass(slots=True)
class Plan:
    """What SQL says the subject has, read before anything is removed."""

    face_ids: set[str]
    crops: set[str]
    snapshots: set[str]
    run_dirs: set[str]
    """training runs of the model versions trained on the subject"""
    counts: dict[str, int] = field(default_factory=dict)


def read_plan(engine: Engine, dataset_dir: Path, pseudonym: str) -> Plan:
    """The subject's :class:`Plan`; its snapshots include those whose manifest under
    ``dataset_dir`` names the subject."""
    faces = select(FACES.c.face_id, FACES.c.crop_256, FACES.c.crop_512).where(
        FACES.c.subject == pseudonym
    )
    with sql_errors("planning an erasure"), engine.connect() as connection:
        rows = list(connection.execute(faces))
        face_ids = {row.face_id for row in rows}
        crops = {row.crop_256 for row in rows} | {row.crop_512 for row in rows}
        snapshots = set(
            connection.scalars(
                select(SNAPSHOT_SUBJECTS.c.snapshot_id).where(
                    SNAPSHOT_SUBJECTS.c.subject == pseudonym
                )
            )
        )
        run_dirs = set(
            connection.scalars(
                select(VERSIONS.c.run_dir)
                .select_from(
                    VERSION_SUBJECTS.join(VERSIONS, VERSIONS.c.id == VERSION_SUBJECTS.c.version_id)
                )
                .where(VERSION_SUBJECTS.c.subject == pseudonym)
            )
        )
        counts = count_rows(connection, pseudonym)
    snapshots |= manifests_naming(dataset_dir, pseudonym)
    return Plan(face_ids, crops, snapshots, run_dirs, counts | {"snapshots": len(snapshots)})


def count_rows(connection: Connection, pseudonym: str) -> dict[str, int]:
    """How many rows of each kind the subject has, before anything is removed."""
    faces = select(FACES.c.face_id).where(FACES.c.subject == pseudonym)
    pairs = or_(PAIRS.c.subject == pseudonym, PAIRS.c.face_id.in_(faces))
    pair_ids = select(PAIRS.c.pair_id).where(pairs)

    def count(table: Table, *where: Any) -> int:
        return int(connection.scalar(select(func.count()).select_from(table).where(*where)) or 0)

    counts = {
        "subjects": count(SUBJECTS, SUBJECTS.c.pseudonym == pseudonym),
        "uploads": count(
            UPLOADS,
            or_(
                UPLOADS.c.subject == pseudonym,
                UPLOADS.c.upload_id.in_(
                    select(FACES.c.upload_id).where(FACES.c.subject == pseudonym)
                ),
            ),
        ),
        "faces": count(FACES, FACES.c.subject == pseudonym),
        "labels": count(LABELS, LABELS.c.face_id.in_(faces)),
        "identity_links": count(
            LINKS, or_(LINKS.c.face_id.in_(faces), LINKS.c.other_face_id.in_(faces))
        ),
        "pairs": count(PAIRS, pairs),
        "pending_reviews": count(PAIRS, pairs, PAIRS.c.status == PairStatus.PENDING.value),
        "review_decisions": 0,
    }
    decided = (
        select(DECISIONS.c.action, func.count())
        .where(or_(DECISIONS.c.pair_id.in_(pair_ids), DECISIONS.c.face_id.in_(faces)))
        .group_by(DECISIONS.c.action)
    )
    for action, n in connection.execute(decided):
        counts[f"review_decisions_{action}"] = int(n)
        counts["review_decisions"] += int(n)
    return counts
