"""The ``pairs`` agent: accepted faces (``faces``) to (selfie, anime) pairs, stored in SQL
and announced on ``pairs``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import faust
from faust.types import EventT
from pydantic import ValidationError

from agents.batches import consume, count_by, send_all
from agents.resources import WorkerResources
from schemas.pairs import FaceAccepted

log = logging.getLogger(__name__)


def register(
    app: faust.App, faces_topic: faust.TopicT, pairs_topic: faust.TopicT, resources: WorkerResources
) -> None:
    """Add the ``pairs`` agent to ``app``."""

    @app.agent(faces_topic, name="pairs", concurrency=1)
    async def pair(stream: faust.StreamT[bytes]) -> None:
        await consume(stream, "pairs", handle, resources.settings.worker)

    async def handle(events: Sequence[EventT]) -> dict[str, int]:
        faces = []
        for event in events:
            try:
                faces.append(FaceAccepted.from_bytes(bytes(event.value or b"")))
            except ValidationError as exc:
                # Only the ingest agent writes this topic; a record it cannot have written
                # is logged with its position and skipped, never retried forever.
                log.error(
                    "malformed faces record at %s[%d]@%d skipped: %s",
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                    exc,
                )
        pairer = await resources.pairer()
        records = await resources.run(pairer.run, faces)
        # Sent after the SQL commit; a crash in between re-delivers the faces, whose
        # unchanged pairs are sent again: at least once, keyed and idempotent by pair_id.
        await send_all(pairs_topic, [(r.subject, r.to_bytes()) for r in records])
        return count_by([record.status.value for record in records])
