"""What a worker process loads once and both agents share: the ingest pipeline (models and
stores), the pairer, and the one thread that runs their blocking work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from agents.pairing.pairer import Pairer
from agents.pairing.store import PairStore
from agents.pipeline import IngestPipeline
from schemas.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


def build_pairer(settings: Settings, pipeline: IngestPipeline) -> Pairer:
    """The pairer of a worker, sharing the pipeline's face index."""
    from agents.stores.db import create_engine_for

    return Pairer(settings, PairStore(create_engine_for(settings.sql_url)), pipeline.store.index)


class WorkerResources:
    """Loads the pipeline and the pairer on first use, once, off the event loop.

    Example::

        resources = WorkerResources(settings)
        pipeline = await resources.pipeline()
        outcomes = await resources.run(pipeline.process, batch)
    """

    def __init__(
        self,
        settings: Settings,
        pipeline_factory: Callable[[Settings], IngestPipeline] = IngestPipeline.build,
        pairer_factory: Callable[[Settings, IngestPipeline], Pairer] = build_pairer,
    ) -> None:
        self.settings = settings
        self._pipeline_factory = pipeline_factory
        self._pairer_factory = pairer_factory
        self._pipeline: asyncio.Future[IngestPipeline] | None = None
        self._pairer: asyncio.Future[Pairer] | None = None
        # One thread: torch already spreads each batch over the cores, and a second batch
        # in flight would only contend with it. The event loop stays free for heartbeats.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the worker's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def pipeline(self) -> IngestPipeline:
        """The ingest pipeline, loading it on the first call (and on the next call after a
        load that failed: a database that was down at start may be back)."""
        # One shared future: the start-up task and the first batch may both ask at once,
        # and the stores (the Qdrant local store above all) must be opened only once.
        if self._pipeline is None or _failed(self._pipeline):
            self._pipeline = asyncio.ensure_future(self.run(self._pipeline_factory, self.settings))
        return await self._pipeline

    async def pairer(self) -> Pairer:
        """The pairer, loading it (after the pipeline, whose face index it shares) first."""
        if self._pairer is None or _failed(self._pairer):
            self._pairer = asyncio.ensure_future(self._build_pairer())
        return await self._pairer

    async def _build_pairer(self) -> Pairer:
        pipeline = await self.pipeline()
        return await self.run(self._pairer_factory, self.settings, pipeline)

    def loaded_pipeline(self) -> IngestPipeline | None:
        """The pipeline if it has finished loading, else None (for periodic reports)."""
        future = self._pipeline
        if future is None or not future.done() or future.exception() is not None:
            return None
        return future.result()


def _failed(future: asyncio.Future[T]) -> bool:
    """True when ``future`` ended with an error (cancelled counts as one)."""
    return future.done() and (future.cancelled() or future.exception() is not None)
