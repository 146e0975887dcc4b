"""The ``model-updates`` record of a champion move, and its place in the outbox.

:func:`model_update` builds the :class:`~schemas.model_updates.ModelUpdate` announcing a
version as champion; :func:`queue_update` writes it to the outbox
(:mod:`agents.stores.outbox`) on the connection of the move's transaction, so a champion
move and its announcement commit together (:meth:`trainer.registry.Registry.move_alias`).
A relay sends it on ``model-updates`` when a broker answers (:mod:`infra.outbox`).

Example::

    update = model_update(row, previous=2, action="promote", reason="gate passed",
                          actor="scheduler", at=moved_at)
    outbox_id = queue_update(connection, update)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Connection

from agents.stores.outbox import enqueue
from schemas.model_updates import MODEL_UPDATES_TOPIC, ModelUpdate
from schemas.tables import ModelVersion


def model_update(
    row: ModelVersion,
    previous: int | None,
    action: Literal["promote", "rollback"],
    reason: str,
    actor: str,
    at: datetime | None = None,
) -> ModelUpdate:
    """The ``model-updates`` record announcing ``row`` as champion."""
    candidate = (row.metrics or {}).get("candidate") or {}
    return ModelUpdate(
        name=row.name,
        version=row.version,
        previous_version=previous,
        action=action,
        family=row.family,
        snapshot_id=row.snapshot_id,
        path=row.path,
        artifacts=dict(row.artifacts or {}),
        metrics={k: float(v) for k, v in candidate.items() if isinstance(v, int | float)},
        reason=reason[:1024],
        actor=actor,
        at=at or datetime.now(UTC),
    )


def queue_update(connection: Connection, update: ModelUpdate) -> int:
    """Write ``update`` to the outbox inside the caller's transaction; returns its row id.
    Keyed by the model name, so one model's moves stay in order on the topic."""
    return enqueue(connection, MODEL_UPDATES_TOPIC, update.key(), update.to_bytes(), now=update.at)
