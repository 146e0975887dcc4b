"""The Faust app of a worker: its topics and the two agents, ``ingest`` (:mod:`agents.ingest`,
uploads to faces and dead letters) and ``pairs`` (:mod:`agents.pairs`, faces to pairs).

Built by :func:`create_app` from the process's settings (no module-level app, so tests and
the CLI pass their own settings).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import faust

from agents import ingest, pairs
from agents.pairing.pairer import Pairer
from agents.pipeline import IngestPipeline
from agents.resources import WorkerResources, build_pairer
from schemas import rejections, uploads
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

    @app.task
    async def _load_models() -> None:
        # Load before the first record arrives, so the first batch is not slow.
        await resources.pairer()

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
