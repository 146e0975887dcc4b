"""Following ``model-updates``: each server applies every champion move of its model.

:class:`UpdateFollower` runs an :class:`UpdateSource` in a thread and hands each
:class:`~schemas.model_updates.ModelUpdate` for the served model to a callback (the
server's swap). The Kafka source reads the topic with kafka-python in **its own consumer
group per server** (``<prefix>serve-<server_id>``), so every replica sees every update
(one shared group would hand each record to one replica only); a new group starts from the
earliest record, so a fresh server replays the history and ends on the current champion.

Error policy: a record that does not parse is logged with topic, partition and offset and
skipped; a swap that fails is logged and counted by the swapper and the offset is still
committed (retrying a broken artifact forever would not repair it; the next update will);
a broker that cannot be reached is retried with backoff and never stops the server.

Example::

    follower = UpdateFollower(KafkaUpdates(settings, group="s2a.serve-web-1"), "converter", apply)
    follower.start()
    ...
    follower.stop()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from schemas.errors import RecordError
from schemas.model_updates import MODEL_UPDATES_TOPIC, ModelUpdate
from schemas.settings import Settings

log = logging.getLogger(__name__)

Apply = Callable[[ModelUpdate], None]


class UpdateSource(Protocol):
    """Calls ``apply`` for each update, in order, until ``stop`` is set."""

    def run(self, apply: Apply, stop: threading.Event) -> None: ...


def consumer_group(settings: Settings, server_id: str) -> str:
    """This server's own consumer group of ``model-updates``."""
    return f"{settings.topic_prefix}serve-{server_id}"


class KafkaUpdates:
    """``model-updates`` through kafka-python (see the module docstring)."""

    def __init__(self, settings: Settings, group: str, poll_s: float = 1.0) -> None:
        self.settings = settings
        self.group = group
        self.topic = settings.topic(MODEL_UPDATES_TOPIC)
        self.poll_s = poll_s

    def run(self, apply: Apply, stop: threading.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                self._consume(apply, stop)
                return
            except Exception as exc:  # kafka-python raises many types; the server goes on
                log.warning(
                    "model-updates: cannot read %s at %s (%s); retrying in %.0fs",
                    self.topic,
                    self.settings.bootstrap_servers,
                    exc,
                    backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _consume(self, apply: Apply, stop: threading.Event) -> None:
        from kafka import KafkaConsumer

        rebalance_ms = int(self.settings.rebalance_timeout_s * 1000)
        consumer = KafkaConsumer(
            self.topic,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.group,
            client_id=self.group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.settings.session_timeout_s * 1000 / 3),
            max_poll_interval_ms=max(rebalance_ms, 10_000),
        )
        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=int(self.poll_s * 1000))
                # Only the newest move of each model matters: a fresh group replaying the
                # history loads the current champion once, not every past one in turn.
                newest: dict[str, ModelUpdate] = {}
                for records in polled.values():
                    for record in records:
                        update = _parse(record)
                        if update is not None:
                            newest[update.name] = update
                for update in newest.values():
                    apply(update)
                if polled:
                    consumer.commit()
        finally:
            consumer.close()


def _parse(record: object) -> ModelUpdate | None:
    """The record's update, or None (logged with topic, partition and offset)."""
    where = (
        f"{getattr(record, 'topic', '?')}[{getattr(record, 'partition', '?')}]"
        f"@{getattr(record, 'offset', '?')}"
    )
    try:
        return ModelUpdate.from_bytes(bytes(getattr(record, "value", b"") or b""))
    except (ValueError, RecordError) as exc:
        log.error("model-updates: skipping unreadable record %s: %s", where, exc)
        return None


class UpdateFollower:
    """Runs a source in a daemon thread; applies the updates of model ``name`` only."""

    def __init__(self, source: UpdateSource, name: str, apply: Apply) -> None:
        self.source = source
        self.name = name
        self.apply = apply
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s2a-model-updates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        self.source.run(self._filtered, self._stop)

    def _filtered(self, update: ModelUpdate) -> None:
        if update.name != self.name:
            return
        log.info(
            "model-updates: %s v%d (%s by %s)",
            update.name,
            update.version,
            update.action,
            update.actor,
        )
        try:
            self.apply(update)
        except Exception:  # the swap logged and counted it; keep following
            log.debug("model-updates: applying v%d failed", update.version, exc_info=True)
