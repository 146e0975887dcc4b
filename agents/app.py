"""The Faust app: one ``ingest`` agent from ``uploads`` to stored faces and ``uploads-dlq``.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import faust
from faust.types import EventT

from agents.errors import EXIT_RESTART
from agents.pipeline import Incoming, IngestPipeline, Outcome
from schemas import rejections, uploads
from schemas.reasons import UploadState
from schemas.rejections import Origin
from schemas.settings import Settings

log = logging.getLogger(__name__)
MiB = 1024 * 1024


def faust_broker_url(bootstrap: str) -> str:
    """``h1:9092,h2:9092`` -> ``kafka://h1:9092;kafka://h2:9092`` (Faust's list form)."""
    return ";".join(
        f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()
    )


def create_app(
    settings: Settings,
    pipeline_factory: Callable[[Settings], IngestPipeline] = IngestPipeline.build,
) -> faust.App:
    """The ingestion app. The pipeline (models, stores) loads when the worker starts."""
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
    loading: list[asyncio.Future[IngestPipeline]] = []
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

    @app.task
    async def _load_models() -> None:
        # Load before the first record arrives, so the first batch is not slow.
        await pipeline()

    @app.agent(uploads_topic, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        totals: dict[str, int] = {"accepted": 0, "rejected": 0, "skipped": 0}
        # take_events (not take): the events carry topic, partition and offset for the
        # dead letters and the logs. StreamT's stub lacks it; faust.Stream has it.
        batches = stream.take_events(  # type: ignore[attr-defined]
            worker.batch_size, within=worker.batch_within_s
        )
        waited_since = time.perf_counter()
        async for events in batches:
            started = time.perf_counter()
            try:
                outcomes = await finish(asyncio.ensure_future(handle(events)))
            except Exception as exc:
                # Faust acknowledges a taken batch even when the loop body raises, so an
                # error here would commit records that were never finished. Exit at once
                # instead: nothing of this batch is committed, and the supervisor's restart
                # re-delivers it (every sink is idempotent).
                log.critical("ingest batch failed (%s); exiting without commit", exc, exc_info=True)
                os._exit(EXIT_RESTART)
            for outcome in outcomes:
                key = outcome.state.value if outcome.state else "skipped"
                totals[key] = totals.get(key, 0) + 1
            done = time.perf_counter()
            log.info(
                "batch of %d done in %.0f ms (waited %.0f ms for it); totals %s",
                len(outcomes),
                1000 * (done - started),
                1000 * (started - waited_since),
                totals,
            )
            waited_since = done

    async def finish(batch: asyncio.Future[list[Outcome]]) -> list[Outcome]:
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
        outcomes = batch.result()
        if cancelled:
            raise asyncio.CancelledError
        return outcomes

    async def handle(events: Sequence[EventT]) -> list[Outcome]:
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
        pending = []
        for outcome in outcomes:
            if outcome.rejection is None:
                continue
            log.info(
                "upload %s rejected: %s at %s",
                outcome.upload_id,
                outcome.rejection.reason.value,
                outcome.rejection.stage.value,
            )
            pending.append(
                await dlq_topic.send(
                    key=outcome.upload_id.encode(), value=outcome.rejection.to_bytes()
                )
            )
        if pending:
            await asyncio.gather(*pending)
        await loop.run_in_executor(executor, pipe.record_rejections, outcomes)
        for outcome in outcomes:
            if outcome.state is UploadState.ACCEPTED:
                log.info("upload %s accepted", outcome.upload_id)
        log.info(
            "per-upload ms %s", {k: round(v, 1) for k, v in pipe.times.per_upload_ms().items()}
        )
        return outcomes

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
