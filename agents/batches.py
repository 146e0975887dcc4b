"""How every agent moves records: take a batch, finish it or exit uncommitted, send and await.

One error policy for every stream: a batch that fails on a store (a
:class:`~schemas.errors.Transient` error: PostgreSQL restarting, Qdrant unreachable) is
run again in the process, with backoff, for up to ``worker.store_retry_s``; any other
failure, or one that outlasts that budget, stops the worker without committing, so its
supervisor restarts it and the broker re-delivers. Running a batch again is safe because
every sink is idempotent (a re-delivery does the same). One shutdown rule (a batch in hand
is finished before the worker stops) and one way to send (every record acknowledged by the
broker before the caller goes on).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import faust
from faust.types import EventT

from agents.errors import EXIT_RESTART
from schemas.errors import Transient
from schemas.settings import WorkerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

BatchHandler = Callable[[Sequence[EventT]], Awaitable[dict[str, int]]]
"""Handles one batch of events to its end; returns counts by outcome for the logs."""

#: First and longest wait between two runs of a batch that failed on a store, in seconds
#: (doubling in between: 1, 2, 4, ... 30).
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0


async def consume(
    stream: faust.StreamT[bytes], agent: str, handle: BatchHandler, worker: WorkerSettings
) -> None:
    """Take batches from ``stream`` and handle each to its end, or exit uncommitted.

    Batches hold up to ``worker.batch_size`` events, or fewer after
    ``worker.batch_within_s`` seconds. A batch that raises ends the process with
    :data:`~agents.errors.EXIT_RESTART` before anything of it is committed.
    """
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
            counts = await until_done(handle, events, agent, worker.store_retry_s)
        except Exception as exc:
            # Faust acknowledges a taken batch even when the loop body raises, so an
            # error here would commit records that were never finished. Exit at once
            # instead: nothing of this batch is committed, and the supervisor's restart
            # re-delivers it (every sink is idempotent).
            log.critical("%s batch failed (%s); exiting without commit", agent, exc, exc_info=True)
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


async def until_done(
    handle: BatchHandler, events: Sequence[EventT], agent: str, retry_s: float
) -> dict[str, int]:
    """Run ``handle(events)`` to its end; run it again while it fails on a store.

    Waits 1, 2, 4 ... up to 30 s between runs, and gives up (re-raising the last error)
    when the next run would start more than ``retry_s`` seconds after the first. Other
    errors are raised at once. A shutdown during a wait exits the process uncommitted
    (:data:`~agents.errors.EXIT_RESTART`): unwinding would let Faust acknowledge a batch
    that never finished.
    """
    deadline = time.monotonic() + retry_s
    wait = FIRST_BACKOFF_S
    while True:
        try:
            return await finish(asyncio.ensure_future(handle(events)))
        except Exception as exc:
            if not isinstance(exc, Transient) or time.monotonic() + wait > deadline:
                raise
            log.warning(
                "%s batch of %d failed on a store (%s); running it again in %.0f s",
                agent,
                len(events),
                exc,
                wait,
            )
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            log.warning("%s stopped while a failed batch waited; exiting without commit", agent)
            os._exit(EXIT_RESTART)
        wait = min(wait * 2, MAX_BACKOFF_S)


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


async def send_all(topic: faust.TopicT, records: Sequence[tuple[str, bytes]]) -> None:
    """Send every ``(key, value)`` record and wait until the broker has acknowledged all."""
    pending = [await topic.send(key=key.encode(), value=value) for key, value in records]
    if pending:
        await asyncio.gather(*pending)


def count_by(keys: Sequence[str]) -> dict[str, int]:
    """How many times each key occurs, for a batch's log line."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts
