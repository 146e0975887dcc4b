"""Asking the running worker to erase a subject: publish an
:class:`~schemas.erasure.ErasureRequest` on ``erasure-requests`` and wait for its row in
``erasure_audit`` (what ``s2a erase`` does when a worker holds the stores, and the demo)."""

from __future__ import annotations

import dataclasses

from agents.erasure import ErasureResult, find_audit
from agents.stores.db import create_engine_for
from infra.kafka import RecordPublisher, ensure_topics
from infra.waiting import wait_until
from schemas.erasure import TOPIC, ErasureRequest
from schemas.migrate import upgrade
from schemas.settings import Settings


def erase_through_worker(
    settings: Settings, request: ErasureRequest, timeout_s: float
) -> ErasureResult:
    """Send ``request`` to the worker's ``erase`` agent and return its audit row's answer.

    Raises :class:`~infra.errors.WaitTimeout` when no worker recorded it within
    ``timeout_s`` seconds (the request stays on the topic and runs when a worker reads it).
    """
    upgrade(settings.sql_url)
    ensure_topics(settings, [TOPIC])
    with RecordPublisher(settings, TOPIC, client_id="s2a-erase") as publisher:
        publisher.publish_raw(request.key(), request.to_bytes())
    engine = create_engine_for(settings.sql_url)
    found: list[ErasureResult] = []

    def recorded() -> bool:
        result = find_audit(engine, request.request_id)
        if result is not None:
            found.append(result)
        return result is not None

    try:
        wait_until(recorded, deadline_s=timeout_s, what="the worker's erasure", poll_s=0.25)
    finally:
        engine.dispose()
    # A fresh request id: the worker's row is this request's first answer.
    return dataclasses.replace(found[0], already=False)
