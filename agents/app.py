"""The Faust app of a worker: its topics and the agents, ``ingest`` (:mod:`agents.ingest`,
uploads to faces and dead letters), ``pairs`` (:mod:`agents.pairs`, faces to pairs) and
``erase`` (``erasure-requests`` to :class:`agents.erasure.Eraser`).

Built by :func:`create_app` from the process's settings (no module-level app, so tests and
the CLI pass their own settings).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import faust
from faust.types import EventT
from pydantic import ValidationError

from agents import ingest, pairs
from agents.batches import consume, count_by
from agents.erasure import Eraser
from agents.pairing.pairer import Pairer
from agents.pipeline import IngestPipeline
from agents.resources import WorkerResources, build_pairer
from schemas import erasure, rejections, uploads
from schemas.errors import Transient
from schemas.pairs import FACES_TOPIC, PAIRS_TOPIC
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
    pairer_factory: Callable[[Settings, IngestPipeline], Pairer] = build_pairer,
) -> faust.App:
    """The worker's app: ``ingest`` (uploads to faces) and ``pairs`` (faces to pairs).
    The pipeline and the pairer (models, stores) load when the worker starts; the
    factories are the seams tests use to hand in their own."""
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
    resources = WorkerResources(settings, pipeline_factory, pairer_factory)
    ingest.register(app, uploads_topic, dlq_topic, faces_topic, resources)
    pairs.register(app, faces_topic, pairs_topic, resources)
    erasure_topic = raw_topic(erasure.TOPIC)
    erasers: list[Eraser] = []

    @app.agent(erasure_topic, name="erase", concurrency=1)
    async def erase(stream: faust.StreamT[bytes]) -> None:
        await consume(stream, "erase", handle_erasures, worker)

    async def handle_erasures(events: Sequence[EventT]) -> dict[str, int]:
        # The eraser shares the pipeline's Qdrant client (the local store admits one
        # process) and its thread, so an erasure never interleaves with a batch's writes.
        pipe = await resources.pipeline()
        if not erasers:
            from agents.stores.db import create_engine_for

            engine = create_engine_for(settings.sql_url)
            erasers.append(
                Eraser.from_settings(settings, engine, pipe.store.index.client, via="worker")
            )
        # The key the pipeline's start checked against the database (agents.stores.keys).
        key = pipe.pseudonym_key
        outcomes = []
        for event in events:
            try:
                request = erasure.ErasureRequest.from_bytes(bytes(event.value or b""))
            except ValidationError as exc:
                # Field names only: the input may hold the raw subject id.
                log.error(
                    "malformed erasure request at %s[%d]@%d skipped: bad %s",
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                    sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()}),
                )
                outcomes.append("malformed")
                continue
            result = await resources.run(erasers[0].erase_request, request, key)
            outcomes.append("already" if result.already else result.outcome)
        return count_by(outcomes)

    @app.task
    async def _load_models() -> None:
        # Load before the first record arrives, so the first batch is not slow. A store
        # that is down now is the first batch's to retry (agents.batches.until_done).
        try:
            await resources.pairer()
        except Exception as exc:
            if not isinstance(exc, Transient):  # a mixin: `except Transient` is a TypeError
                raise
            log.warning("stores not ready at start (%s); the first batch loads them", exc)

    @app.timer(interval=30.0)
    async def _report() -> None:
        loaded = resources.loaded_pipeline()
        if loaded is not None:
            times = loaded.times
            log.info(
                "%d uploads so far; per-upload ms %s",
                times.uploads,
                {k: round(v, 1) for k, v in times.per_upload_ms().items()},
            )

    return app
