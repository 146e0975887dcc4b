"""Dynamic micro-batching: images from concurrent calls run through the engine together.

A call :meth:`~MicroBatcher.submit`\\ s one prepared image and gets a future. A worker
thread takes the oldest waiting image and, while other calls are still preparing theirs
(announced with :meth:`~MicroBatcher.coming`), waits at most ``max_delay_s`` for them (up
to ``max_batch``); with nothing on its way it runs at once, so a lone call never pays the
delay (a fixed 5 ms wait cost 6 of a 9 ms call on the tiny test model). It drops images
whose deadline has passed (DEADLINE_EXCEEDED: running them would be wasted work), takes a
lease on the current model, runs the batch and answers each future with its own output (or
its own error) and the model that produced it.

``workers`` threads run batches side by side (one fills a batch at a time, so batches still
form while another runs): on a CPU, two single-threaded runs cost about a quarter less CPU
per image than one run spread over two intra-op threads (BENCHMARKS.md, serving), and the
engine is shared by all of them (every engine's ``infer`` may be called from several
threads at once).

The queue is bounded: past ``max_queue`` waiting images :meth:`submit` raises
:class:`Overloaded` (RESOURCE_EXHAUSTED) at once, so an overloaded server answers quickly
instead of piling up work nobody will wait for. Images prepared for another resolution than
the model's (a swap to a version of another size happened while they waited) are answered
UNAVAILABLE, which the client retries.

Example::

    batcher = MicroBatcher(holder, max_batch=8, max_delay_s=0.005, max_queue=64, workers=2)
    batcher.start()
    future = batcher.submit(selfie, base, deadline=time.monotonic() + 5)
    output, model = future.result()       # (3, R, R) float32, the LoadedModel that ran it
    batcher.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from serving.engines import Array
from serving.errors import DeadlineExpired, InferenceFailed, NotReady, Overloaded
from serving.metrics import ServingMetrics
from serving.swap import LoadedModel, ModelHolder

log = logging.getLogger(__name__)

Outcome = tuple[Array, LoadedModel]


@dataclass(eq=False)
class _Item:
    selfie: Array
    base: Array
    deadline: float
    future: Future[Outcome] = field(default_factory=Future)


class MicroBatcher:
    """Bounded queue + ``workers`` batching threads (see the module docstring)."""

    def __init__(
        self,
        holder: ModelHolder,
        *,
        max_batch: int = 8,
        max_delay_s: float = 0.005,
        max_queue: int = 64,
        metrics: ServingMetrics | None = None,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0 or workers < 1:
            raise ValueError(
                f"max_batch ({max_batch}), max_queue ({max_queue}) and workers ({workers}) "
                f"must be at least 1 and max_delay_s ({max_delay_s}) at least 0"
            )
        self.holder = holder
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._coming = 0  # calls preparing an image they are about to submit
        self._forming = False  # a worker is filling a batch; the others wait their turn
        self._workers = [
            threading.Thread(target=self._loop, name=f"s2a-batcher-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    @property
    def workers(self) -> int:
        """Batches that can run at once."""
        return len(self._workers)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, selfie: Array, base: Array, deadline: float) -> Future[Outcome]:
        """Queue one image (float32 (3, R, R) each, in [-1, 1]); ``deadline`` is a
        ``time.monotonic()`` instant. Raises :class:`Overloaded` when the queue is full and
        :class:`NotReady` once closing."""
        item = _Item(selfie, base, deadline)
        with self._cond:
            if self._closed:
                raise NotReady("the server is shutting down; retry on another replica")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(
                    f"{len(self._queue)} images already wait for the model (the queue holds "
                    f"{self.max_queue}); retry with backoff"
                )
            self._queue.append(item)
            self._gauge()
            self._cond.notify_all()
        return item.future

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Announce an image being prepared: a forming batch waits (up to ``max_delay_s``)
        for announced images, and only for them. Submit inside the block."""
        with self._cond:
            self._coming += 1
        try:
            yield
        finally:
            with self._cond:
                self._coming -= 1
                self._cond.notify_all()

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new images, answer the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        ends = time.monotonic() + timeout_s
        for worker in self._workers:
            if worker.is_alive():
                worker.join(max(0.0, ends - time.monotonic()))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    def _take(self) -> list[_Item] | None:
        """The next batch, or None when closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: (self._queue and not self._forming) or self._closed)
            if not self._queue:
                return None
            # One worker fills a batch at a time; it closes when full, when nothing more is
            # on its way, or max_delay_s after its oldest image arrived.
            self._forming = True
            try:
                close_at = time.monotonic() + self.max_delay_s
                while len(self._queue) < self.max_batch and self._coming > 0:
                    left = close_at - time.monotonic()
                    if left <= 0 or self._closed:
                        break
                    self._cond.wait(left)
                size = min(self.max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(size)]
            finally:
                self._forming = False
                self._cond.notify_all()
            self._gauge()
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._run(batch)
            except Exception as exc:  # never lose the worker; answer every waiting call
                log.exception("batch of %d failed outside the engine", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(InferenceFailed(f"batch failed: {exc}"))

    def _run(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.deadline <= now:
                item.future.set_exception(
                    DeadlineExpired("the call's deadline passed while it waited for a batch")
                )
            elif item.future.set_running_or_notify_cancel():
                live.append(item)
        if not live:
            return
        try:
            with self.holder.lease() as model:
                runnable, answers = self._infer(model, live)
        except NotReady as exc:  # no model loaded (yet, or any more)
            for item in live:
                item.future.set_exception(exc)
            return
        for item, answer in zip(runnable, answers, strict=True):
            if isinstance(answer, InferenceFailed):
                item.future.set_exception(answer)
            else:
                item.future.set_result((answer, model))

    def _infer(
        self, model: LoadedModel, live: list[_Item]
    ) -> tuple[list[_Item], list[Array | InferenceFailed]]:
        side = model.version.resolution
        runnable = []
        for item in live:
            if item.selfie.shape[-1] == side:
                runnable.append(item)
            else:
                item.future.set_exception(
                    NotReady(f"the model changed to {side} px while this image waited; retry")
                )
        if not runnable:
            return [], []
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(runnable))
        answers = model.engine.infer(
            np.stack([i.selfie for i in runnable]), np.stack([i.base for i in runnable])
        )
        return runnable, answers
