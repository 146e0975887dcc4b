"""The transactional outbox in SQL: announcements written with the change they announce.

A change that must be announced on a topic writes its record here **in its own
transaction** (:func:`enqueue` takes the caller's connection), so the change and its
announcement commit together or not at all: a crash can neither lose an announcement nor
announce a change that never committed. A relay (:class:`infra.outbox.OutboxRelay`) sends
the rows that wait (:func:`pending`, oldest first), and records each broker ack at once
(:func:`mark_sent`); a row marked sent is never read by :func:`pending` again.

Who writes here: a reviewer's approve, pick or reject (:mod:`agents.review.decisions`) a
:class:`~schemas.pairs.PairRecord` for ``pairs``; every move of a model's ``champion``
alias (:mod:`trainer.registry`) a :class:`~schemas.model_updates.ModelUpdate` for
``model-updates``.

Example::

    with engine.begin() as connection:
        connection.execute(...)                                    # the change
        enqueue(connection, "pairs", record.subject.encode(), record.to_bytes())
    for row in pending(engine):                                    # the relay
        producer.send(settings.topic(row.topic), key=row.key, value=row.value).get()
        mark_sent(engine, row.id)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, Table, func, select
from sqlmodel import SQLModel

from agents.stores.db import sql_errors
from schemas.tables import OutboxRecord

OUTBOX: Table = SQLModel.metadata.tables[OutboxRecord.__tablename__]

#: Column widths (schemas.tables.OutboxRecord).
_MAX_TOPIC = 64
_MAX_KEY = 255
_MAX_ERROR = 1024


@dataclass(frozen=True, slots=True)
class Announcement:
    """One row that waits to be sent: the record's logical topic, key and value."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    created_at: datetime
    attempts: int


def enqueue(
    connection: Connection,
    topic: str,
    key: bytes | None,
    value: bytes,
    *,
    now: datetime | None = None,
) -> int:
    """Queue ``value`` for ``topic`` (the logical name, e.g. ``pairs``) inside the caller's
    transaction on ``connection``; returns the row's id.

    ``key`` and ``value`` are stored as text, so both must be UTF-8 (record keys here are
    pseudonyms and model names; values are JSON).
    """
    if not topic or len(topic) > _MAX_TOPIC:
        raise ValueError(f"topic must be 1-{_MAX_TOPIC} characters, got {topic!r}")
    key_text = None if key is None else _text(key, "key")
    if key_text is not None and len(key_text) > _MAX_KEY:
        raise ValueError(f"key must be at most {_MAX_KEY} characters, got {len(key_text)}")
    inserted = connection.execute(
        OUTBOX.insert().returning(OUTBOX.c.id),
        {
            "topic": topic,
            "key": key_text,
            "value": _text(value, "value"),
            "created_at": now or datetime.now(UTC),
            "sent_at": None,
            "attempts": 0,
            "last_error": None,
        },
    )
    return int(inserted.scalar_one())


def pending(engine: Engine, limit: int = 100) -> list[Announcement]:
    """Up to ``limit`` rows not sent yet, oldest first (the order they must go out in)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    query = select(OUTBOX).where(OUTBOX.c.sent_at.is_(None)).order_by(OUTBOX.c.id).limit(limit)
    with sql_errors("reading the outbox"), engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        Announcement(
            id=int(row.id),
            topic=str(row.topic),
            key=None if row.key is None else str(row.key).encode(),
            value=str(row.value).encode(),
            created_at=row.created_at,
            attempts=int(row.attempts),
        )
        for row in rows
    ]


def mark_sent(engine: Engine, outbox_id: int, at: datetime | None = None) -> bool:
    """Record the broker's ack of row ``outbox_id``; False when it was marked already."""
    change = (
        OUTBOX.update()
        .where(OUTBOX.c.id == outbox_id, OUTBOX.c.sent_at.is_(None))
        .values(sent_at=at or datetime.now(UTC), attempts=OUTBOX.c.attempts + 1, last_error=None)
    )
    with sql_errors(f"marking outbox row {outbox_id} sent"), engine.begin() as connection:
        return bool(connection.execute(change).rowcount == 1)


def mark_failed(engine: Engine, outbox_id: int, error: str) -> None:
    """Count a send of row ``outbox_id`` that got no ack, and why."""
    change = (
        OUTBOX.update()
        .where(OUTBOX.c.id == outbox_id, OUTBOX.c.sent_at.is_(None))
        .values(attempts=OUTBOX.c.attempts + 1, last_error=error[:_MAX_ERROR])
    )
    where = f"recording a failed send of outbox row {outbox_id}"
    with sql_errors(where), engine.begin() as connection:
        connection.execute(change)


def sent_at(engine: Engine, outbox_id: int) -> datetime | None:
    """When row ``outbox_id`` was acked (None while it waits); LookupError if unknown."""
    query = select(OUTBOX.c.id, OUTBOX.c.sent_at).where(OUTBOX.c.id == outbox_id)
    with sql_errors(f"reading outbox row {outbox_id}"), engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise LookupError(f"outbox row {outbox_id} does not exist (pruned after it was sent?)")
    value: datetime | None = row.sent_at
    return value


def backlog(engine: Engine, topics: Iterable[str] | None = None) -> dict[str, int]:
    """``topic -> rows waiting`` (topics with none left out)."""
    query = (
        select(OUTBOX.c.topic, func.count())
        .where(OUTBOX.c.sent_at.is_(None))
        .group_by(OUTBOX.c.topic)
    )
    if topics is not None:
        query = query.where(OUTBOX.c.topic.in_(list(topics)))
    with sql_errors("counting the outbox"), engine.connect() as connection:
        return {str(topic): int(count) for topic, count in connection.execute(query)}


def prune(engine: Engine, sent_before: datetime) -> int:
    """Delete the rows acked before ``sent_before``; returns how many. Unsent rows stay."""
    old = OUTBOX.delete().where(OUTBOX.c.sent_at.is_not(None), OUTBOX.c.sent_at < sent_before)
    with sql_errors("pruning the outbox"), engine.begin() as connection:
        return int(connection.execute(old).rowcount)


def forget(connection: Connection, topic: str, key: bytes) -> int:
    """Delete every row of ``topic`` keyed by ``key``, sent or waiting, inside the caller's
    transaction (an erasure: a subject's ``pairs`` records are keyed by its pseudonym);
    returns how many."""
    gone = OUTBOX.delete().where(OUTBOX.c.topic == topic, OUTBOX.c.key == _text(key, "key"))
    return int(connection.execute(gone).rowcount)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"the outbox stores text: the record's {what} is not UTF-8 ({exc})"
        ) from None
