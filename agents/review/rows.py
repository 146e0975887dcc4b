"""The tables the review page reads and writes, and the row reads its store and its
decisions share: one pair (locked for a decision) and one face's labels."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlmodel import SQLModel

from agents.errors import NotFound
from agents.review.views import LabelRow
from schemas.tables import AnimeRef, Face, Label, Pair, RefLabel, ReviewDecision

PAIRS: Table = SQLModel.metadata.tables[Pair.__tablename__]
FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
LABELS: Table = SQLModel.metadata.tables[Label.__tablename__]
REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]
REF_LABELS: Table = SQLModel.metadata.tables[RefLabel.__tablename__]
DECISIONS: Table = SQLModel.metadata.tables[ReviewDecision.__tablename__]


def pair_row(connection: Connection, pair_id: str, for_update: bool = False) -> dict[str, Any]:
    """The ``pairs`` row, read ``FOR UPDATE`` with ``for_update``; NotFound when erased."""
    statement = select(PAIRS).where(PAIRS.c.pair_id == pair_id)
    if for_update:
        statement = statement.with_for_update()
    row = connection.execute(statement).mappings().first()
    if row is None:
        raise NotFound(f"no pair {pair_id!r}; it may have been erased, reload the queue")
    return dict(row)


def face_labels(
    connection: Connection, face_id: str, names: Collection[str] | None = None
) -> list[LabelRow]:
    """The face's label rows (only ``names`` where given), every source's."""
    statement = select(LABELS.c.name, LABELS.c.value, LABELS.c.source, LABELS.c.confidence).where(
        LABELS.c.face_id == face_id
    )
    if names is not None:
        statement = statement.where(LABELS.c.name.in_(list(names)))
    held = connection.execute(statement).all()
    return [(str(n), str(v), str(s), float(c)) for n, v, s, c in held]
