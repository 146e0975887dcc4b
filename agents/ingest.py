"""The ``ingest`` agent: ``uploads`` to stored faces, rejections to ``uploads-dlq``, every
accepted face on to ``faces`` for pairing.

Records are read as raw bytes on purpose: Faust drops a record whose value fails to
deserialize, and a malformed upload must instead become a ``bad_schema`` rejection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import faust
from faust.types import EventT

from agents.batches import consume, count_by, send_all
from agents.pipeline import Incoming, IngestPipeline, Outcome
from agents.resources import WorkerResources
from agents.stages.prepare import face_id_for
from schemas.pairs import FaceAccepted
from schemas.reasons import UploadState
from schemas.rejections import Origin

log = logging.getLogger(__name__)


def faces_to_pair(pipeline: IngestPipeline, outcomes: Sequence[Outcome]) -> list[FaceAccepted]:
    """The faces of a batch to hand to pairing: those accepted now, and those of
    re-delivered uploads that were accepted before (their pairing may not have happened)."""
    faces = [outcome.face for outcome in outcomes if outcome.face is not None]
    for outcome in outcomes:
        if outcome.state is None and outcome.upload_id:
            face = pipeline.repository.get_face(face_id_for(outcome.upload_id))
            if face is not None:
                faces.append(face)
    return [
        FaceAccepted(
            face_id=face.face_id,
            upload_id=face.upload_id,
            subject=face.subject,
            accepted_at=face.created_at,
        )
        for face in faces
    ]


def register(
    app: faust.App,
    uploads_topic: faust.TopicT,
    dlq_topic: faust.TopicT,
    faces_topic: faust.TopicT,
    resources: WorkerResources,
) -> None:
    """Add the ``ingest`` agent to ``app``."""

    @app.agent(uploads_topic, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        await consume(stream, "ingest", handle, resources.settings.worker)

    async def handle(events: Sequence[EventT]) -> dict[str, int]:
        pipe = await resources.pipeline()
        batch = [
            Incoming(
                raw=bytes(event.value or b""),
                origin=Origin(
                    topic=event.message.topic,
                    partition=event.message.partition,
                    offset=event.message.offset,
                ),
            )
            for event in events
        ]
        outcomes = await resources.run(pipe.process, batch)
        # Each dead letter is acknowledged by the broker before SQL records the
        # rejection: after a crash in between, the re-delivered record is rejected and
        # its dead letter sent again, never lost.
        dead_letters = []
        for outcome in outcomes:
            if outcome.rejection is None:
                continue
            log.info(
                "upload %s rejected: %s at %s",
                outcome.upload_id,
                outcome.rejection.reason.value,
                outcome.rejection.stage.value,
            )
            dead_letters.append((outcome.upload_id, outcome.rejection.to_bytes()))
        await send_all(dlq_topic, dead_letters)
        await resources.run(pipe.record_rejections, outcomes)
        for outcome in outcomes:
            if outcome.state is UploadState.ACCEPTED:
                log.info("upload %s accepted", outcome.upload_id)
        # Every accepted face goes on to pairing, re-deliveries included: a crash after
        # the face was stored but before this send must not leave it unpaired (the pairs
        # agent is idempotent).
        accepted = await resources.run(faces_to_pair, pipe, outcomes)
        await send_all(faces_topic, [(face.subject, face.to_bytes()) for face in accepted])
        log.info(
            "per-upload ms %s", {k: round(v, 1) for k, v in pipe.times.per_upload_ms().items()}
        )
        return count_by([o.state.value if o.state else "skipped" for o in outcomes])
