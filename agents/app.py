"""The Faust app: ``ingest`` from ``uploads`` to stored faces (and ``uploads-dlq``), then
``pairs`` from ``faces`` to (selfie, anime) pairs (and the ``pairs`` topic).

Built by :func:`create_app` from the process's settings (no module-level app, so tests and
the CLI pass their own settings). Records are read as raw bytes on purpose: Faust drops a
record whose value fails to deserialize, and a malformed upload must instead become a
``bad_schema`` rejection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import faust
from faust.types import EventT
from pydantic import ValidationError

from agents.errors import EXIT_RESTART
from agents.pairing.pairer import Pairer
from agents.pairing.store import PairStore
from agents.pipeline import Incoming, IngestPipeline, Outcome
from agents.stages.store import face_id_for
from schemas import rejections, uploads
from schemas.pairs import FACES_TOPIC, PAIRS_TOPIC, FaceAccepted, PairRecord
from schemas.reasons import UploadState
from schemas.rejections import Origin
from schemas.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
MiB = 1024 * 1024


def faust_broker_url(bootstrap: str) -> str:
    """``h1:9092,h2:9092`` -> ``kafka://h1:9092;kafka://h2:9092`` (Faust's list form)."""
    return ";".join(
        f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()
    )


def build_pairer(settings: Settings, pipeline: IngestPipeline) -> Pairer:
    """The pairer of a worker, sharing the pipeline's face index."""
    from agents.db import create_engine_for

    return Pairer(settings, PairStore(create_engine_for(settings.sql_url)), pipeline.store.index)


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


def create_app(
    settings: Settings,
    pipeline_factory: Callable[[Settings], IngestPipeline] = IngestPipeline.build,
    pairer_factory: Callable[[Settings, IngestPipeline], Pairer] = build_pairer,
) -> faust.App:
    """The worker's app: ``ingest`` (uploads to faces) and ``pairs`` (faces to pairs).
    The pipeline and the pairer (models, stores) load when the worker starts."""
    worker = settings.worker
    app = faust.App(
        f"{settings.topic_prefix}ingest",
        broker=faust_broker_url(settings.bootstrap_servers),
        store="memory://",
        datadir=str(settings.faust_data_dir),
        autodiscover=False,
        web_enabled=False,
        topic_partitions=worker.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 3,
        producer_acks=-1,
        # Every producer and consumer is sized from the one inline-image limit; Faust's
        # 1,000,000-byte default would crash the agent's send on a large record.
        producer_max_request_size=settings.limits.max_record_bytes,
        consumer_max_fetch_size=max(settings.limits.max_record_bytes, MiB),
    )

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=worker.topic_partitions,
        )

    uploads_topic = raw_topic(uploads.TOPIC)
    dlq_topic = raw_topic(rejections.TOPIC)
    faces_topic = raw_topic(FACES_TOPIC)
    pairs_topic = raw_topic(PAIRS_TOPIC)
    loading: list[asyncio.Future[IngestPipeline]] = []
    pairer_loading: list[asyncio.Future[Pairer]] = []
    # One thread: torch already spreads each batch over the cores, and a second batch in
    # flight would only contend with it. The event loop stays free for heartbeats.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")

    async def pipeline() -> IngestPipeline:
        # One shared future: the start-up task and the first batch may both ask at once,
        # and the stores (the Qdrant local store above all) must be opened only once.
        if not loading:
            loop = asyncio.get_running_loop()
            loading.append(loop.run_in_executor(executor, pipeline_factory, settings))
        return await loading[0]

    async def pairing() -> Pairer:
        # The pairer shares the pipeline's face index: the Qdrant local store may be
        # opened once per process.
        if not pairer_loading:
            pairer_loading.append(asyncio.ensure_future(build()))
        return await pairer_loading[0]

    async def build() -> Pairer:
        pipe = await pipeline()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, pairer_factory, settings, pipe)

    @app.task
    async def _load_models() -> None:
        # Load before the first record arrives, so the first batch is not slow.
        await pairing()

    async def consume(
        stream: faust.StreamT[bytes],
        agent: str,
        handle: Callable[[Sequence[EventT]], Awaitable[dict[str, int]]],
    ) -> None:
        """Take batches from ``stream`` and handle each to its end, or exit uncommitted."""
        totals: dict[str, int] = {}
        # take_events (not take): the events carry topic, partition and offset for the
        # dead letters and the logs. StreamT's stub lacks it; faust.Stream has it.
        batches = stream.take_events(  # type: ignore[attr-defined]
            worker.batch_size, within=worker.batch_within_s
        )
        waited_since = time.perf_counter()
        async for events in batches:
            started = time.perf_counter()
            try:
                counts = await finish(asyncio.ensure_future(handle(events)))
            except Exception as exc:
                # Faust acknowledges a taken batch even when the loop body raises, so an
                # error here would commit records that were never finished. Exit at once
                # instead: nothing of this batch is committed, and the supervisor's restart
                # re-delivers it (every sink is idempotent).
                log.critical(
                    "%s batch failed (%s); exiting without commit", agent, exc, exc_info=True
                )
                os._exit(EXIT_RESTART)
            for key, n in counts.items():
                totals[key] = totals.get(key, 0) + n
            done = time.perf_counter()
            log.info(
                "%s: batch of %d done in %.0f ms (waited %.0f ms for it); totals %s",
                agent,
                len(events),
                1000 * (done - started),
                1000 * (started - waited_since),
                totals,
            )
            waited_since = done

    @app.agent(uploads_topic, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        await consume(stream, "ingest", handle)

    @app.agent(faces_topic, name="pairs", concurrency=1)
    async def pair(stream: faust.StreamT[bytes]) -> None:
        await consume(stream, "pairs", handle_faces)

    async def finish(batch: asyncio.Future[T]) -> T:
        """Await a batch to its end, even through a shutdown's cancellation.

        On stop, mode cancels each actor's task (``Service._default_stop_futures``), and
        ``take_events`` acknowledges the batch in hand as the loop unwinds: a batch
        abandoned halfway (faces stored, dead letters not yet sent) could be committed
        with uploads unfinished. A batch is a few seconds of work, so a stopping worker
        finishes it first.
        """
        cancelled = False
        while not batch.done():
            try:
                await asyncio.shield(batch)
            except asyncio.CancelledError:
                if batch.cancelled():
                    raise
                cancelled = True
        result = batch.result()
        if cancelled:
            raise asyncio.CancelledError
        return result

    async def handle(events: Sequence[EventT]) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        pipe = await pipeline()
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
        outcomes: list[Outcome] = await loop.run_in_executor(executor, pipe.process, batch)
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
        await loop.run_in_executor(executor, pipe.record_rejections, outcomes)
        for outcome in outcomes:
            if outcome.state is UploadState.ACCEPTED:
                log.info("upload %s accepted", outcome.upload_id)
        # Every accepted face goes on to pairing, re-deliveries included: a crash after
        # the face was stored but before this send must not leave it unpaired (the pairs
        # agent is idempotent).
        accepted = await loop.run_in_executor(executor, faces_to_pair, pipe, outcomes)
        await send_all(faces_topic, [(face.subject, face.to_bytes()) for face in accepted])
        log.info(
            "per-upload ms %s", {k: round(v, 1) for k, v in pipe.times.per_upload_ms().items()}
        )
        counts: dict[str, int] = {}
        for outcome in outcomes:
            key = outcome.state.value if outcome.state else "skipped"
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def handle_faces(events: Sequence[EventT]) -> dict[str, int]:
        loop = asyncio.get_running_loop()
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
        pairer = await pairing()
        records: list[PairRecord] = await loop.run_in_executor(executor, pairer.run, faces)
        # Sent after the SQL commit; a crash in between re-delivers the faces, whose
        # unchanged pairs are sent again: at least once, keyed and idempotent by pair_id.
        await send_all(pairs_topic, [(r.subject, r.to_bytes()) for r in records])
        counts: dict[str, int] = {}
        for record in records:
            counts[record.status.value] = counts.get(record.status.value, 0) + 1
        return counts

    async def send_all(topic: faust.TopicT, records: list[tuple[str, bytes]]) -> None:
        """Send every record and wait until the broker has acknowledged them all."""
        pending = [await topic.send(key=key.encode(), value=value) for key, value in records]
        if pending:
            await asyncio.gather(*pending)

    @app.timer(interval=30.0)
    async def _report() -> None:
        if loading and loading[0].done() and not loading[0].exception():
            times = loading[0].result().times
            log.info(
                "%d uploads so far; per-upload ms %s",
                times.uploads,
                {k: round(v, 1) for k, v in times.per_upload_ms().items()},
            )

    return app
