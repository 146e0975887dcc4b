"""How both agents move records: take a batch, finish it or exit uncommitted, send and await.

One error policy for every stream (a failed batch stops the worker without committing, so
its supervisor restarts it and the broker re-delivers; every sink is idempotent), one
shutdown rule (a batch in hand is finished before the worker stops) and one way to send
(every record acknowledged by the broker before the caller goes on).
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
from schemas.settings import WorkerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

BatchHandler = Callable[[Sequence[EventT]], Awaitable[dict[str, int]]]
"""Handles one batch of events to its end; returns counts by outcome for the logs."""


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
            counts = await finish(asyncio.ensure_future(handle(events)))
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
