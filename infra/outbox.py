"""The outbox relay: sends the announcements queued in SQL to Kafka once a broker answers.

Review decisions and champion moves write their records to the outbox in their own
transaction (:mod:`agents.stores.outbox`); :class:`OutboxRelay` moves them to their topics.
``s2a review`` and ``s2a scheduler`` run one in a background thread, ``s2a models
promote|rollback`` one pass at once. Any relay sends every queued row, whoever wrote it.

Delivery guarantee:

- **Nothing is lost.** A row stays queued until a broker acks it; a pass that finds no
  broker (a TCP probe first, so that a missing broker costs no client start and no burst of
  kafka-python connection errors) or whose send fails is retried, with backoff up to
  ``max_backoff_s``, for as long as the process runs, and by any later relay.
- **In order, one sender.** One relay sends at a time (the SQL lease ``outbox-relay``
  across processes and machines, a lock within a process), rows in ``id`` order, each
  acked (``acks=all``, kafka-python's idempotent producer) before the next, stopping at the
  first failure: a key's records (a subject's pairs, a model's moves) keep their order.
- **Once, marked at the ack.** Each row is marked sent in the step that learns its ack, and
  a row marked sent is never sent again. The one window for a second copy: the process dies
  (or SQL fails) between the ack and the mark, or an ack is lost after the broker wrote the
  record (a timeout); the next pass then sends the row again, as the same bytes. Both
  consumers take that calmly: a Convert server ignores an update for the version it already
  serves (``serving.swap``), and a ``pairs`` record is a pair's state at ``at`` keyed by
  ``pair_id``, so a consumer that upserts by ``pair_id`` (keeping the newest ``at``) ends
  the same.

Sent rows are deleted ``keep_sent_s`` after their ack (they hold subject pseudonyms).

Example::

    relay = OutboxRelay(settings, engine)
    relay.start()                 # background: sends what waits, every poll_s or on wake()
    relay.wake()                  # after a write: send now
    relay.stop()
    OutboxRelay(settings, engine).flush(deadline_s=10)   # or one synchronous attempt
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine

from agents.errors import StorageError as AgentsStorageError
from agents.stores import outbox
from infra.broker import broker_answers
from infra.errors import BrokerError
from schemas.settings import Settings
from trainer.errors import StorageError as TrainerStorageError
from trainer.leases import acquire, release, renew

log = logging.getLogger(__name__)

#: The lease a relay holds while it sends (``leases`` table).
LEASE = "outbox-relay"
#: kafka-python's limits for one send: waiting for metadata, one request, the whole delivery.
_MAX_BLOCK_MS = 10_000
_REQUEST_TIMEOUT_MS = 10_000
_DELIVERY_TIMEOUT_MS = 20_000
_PRUNE_EVERY_S = 3600.0


class Sender(Protocol):
    """Sends one record to a logical topic and returns once the broker acked it; raises
    :class:`BrokerError` when it did not."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    def close(self) -> None: ...


Connect = Callable[[Settings], Sender]


class KafkaSender:
    """A kafka-python producer (``acks=all``, idempotent) that creates each topic before
    its first record (the embedded broker starts empty, and forgets topics on restart)."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.settings = settings
        self._ensured: set[str] = set()
        try:
            self.producer = KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers,
                client_id="s2a-outbox",
                acks="all",
                max_request_size=settings.limits.max_record_bytes,
                max_block_ms=_MAX_BLOCK_MS,
                request_timeout_ms=_REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=_DELIVERY_TIMEOUT_MS,
            )
        except KafkaError as exc:
            raise BrokerError(
                f"no Kafka broker answers at {settings.bootstrap_servers}: {exc}"
            ) from exc

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        from kafka.errors import KafkaError

        from infra.kafka import ensure_topics

        name = self.settings.topic(topic)
        try:
            if topic not in self._ensured:
                ensure_topics(self.settings, [topic])
                self._ensured.add(topic)
            # Longer than the delivery timeout: the future always settles, acked or failed.
            self.producer.send(name, key=key, value=value).get(_DELIVERY_TIMEOUT_MS / 1000 + 5)
        except KafkaError as exc:
            raise BrokerError(f"sending to {name} failed: {exc}") from exc

    def close(self) -> None:
        self.producer.close(timeout=5)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a pass (or a flush) did: rows ``sent``, rows ``left`` waiting, and ``error``,
    why it stopped short (no broker, a failed send). ``busy``: another relay was sending.
    ``done``: what the flush waited for went out."""

    sent: int
    left: int
    error: str | None = None
    busy: bool = False
    done: bool = False


class OutboxRelay:
    """Sends the outbox's queued rows to Kafka (see the module docstring for the guarantee).

    ``connect`` makes the :class:`Sender` (default :class:`KafkaSender`) and ``probe`` says
    whether a broker may answer (default: a TCP connect to ``settings.bootstrap_servers``);
    tests hand in their own. ``poll_s``: how often the background thread looks for rows
    that other processes queued. ``lease_s``: how long the relay lease lasts without
    renewal (renewed between rows; longer than one slow send, so that no other relay takes
    over mid-send; a relay that died holding it delays the others this long at most).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        connect: Connect = KafkaSender,
        probe: Callable[[], bool] | None = None,
        holder: str | None = None,
        batch: int = 100,
        poll_s: float = 2.0,
        max_backoff_s: float = 10.0,
        lease_s: float = 120.0,
        keep_sent_s: float = 24 * 3600.0,
    ) -> None:
        if batch < 1 or poll_s <= 0 or max_backoff_s <= 0 or lease_s <= 0 or keep_sent_s < 0:
            raise ValueError(
                "batch, poll_s, max_backoff_s and lease_s must be positive and keep_sent_s "
                f"not negative; got {batch}, {poll_s}, {max_backoff_s}, {lease_s}, {keep_sent_s}"
            )
        self.settings = settings
        self.engine = engine
        self.connect = connect
        self.probe = probe or (lambda: broker_answers(settings.bootstrap_servers))
        self.holder = holder or f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch = batch
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.lease_s = lease_s
        self.keep_sent_s = keep_sent_s
        self._one_pass = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False
        self._pruned_at = float("-inf")

    # -- one pass -------------------------------------------------------------------------

    def send_pending(self) -> Delivery:
        """Send every queued row, oldest first, until none is left or a send fails."""
        with self._one_pass:
            if not outbox.pending(self.engine, 1):
                self._prune()
                return Delivery(0, 0)
            if not self.probe():
                reason = f"no Kafka broker answers at {self.settings.bootstrap_servers}"
                return Delivery(0, self._left(), reason)
            if not acquire(self.engine, LEASE, self.holder, self.lease_s):
                return Delivery(0, self._left(), busy=True)
            try:
                sent, error = self._send_all()
            finally:
                release(self.engine, LEASE, self.holder)
            return Delivery(sent, self._left(), error)

    def _send_all(self) -> tuple[int, str | None]:
        """Under the lease: rows read now (another relay may have sent some before we took
        it), sent and marked one by one."""
        sent = 0
        renewed = time.monotonic()
        sender: Sender | None = None
        try:
            while rows := outbox.pending(self.engine, self.batch):
                if sender is None:
                    sender = self.connect(self.settings)
                for row in rows:
                    if time.monotonic() - renewed > self.lease_s / 3:
                        if not renew(self.engine, LEASE, self.holder, self.lease_s):
                            return sent, "another relay took the outbox lease (this one stalled)"
                        renewed = time.monotonic()
                    try:
                        sender.send(row.topic, row.key, row.value)
                    except BrokerError as exc:
                        outbox.mark_failed(self.engine, row.id, str(exc))
                        return sent, str(exc)
                    try:
                        outbox.mark_sent(self.engine, row.id)
                    except AgentsStorageError as exc:
                        log.error(
                            "outbox row %d (%s) was acked by the broker, but recording that "
                            "failed (%s): it will be sent again",
                            row.id,
                            row.topic,
                            exc,
                        )
                        return sent, str(exc)
                    sent += 1
            return sent, None
        except BrokerError as exc:  # the sender could not connect
            return sent, str(exc)
        finally:
            if sender is not None:
                sender.close()

    def flush(self, deadline_s: float = 10.0, outbox_id: int | None = None) -> Delivery:
        """Send now, in this thread: what waits (or row ``outbox_id``, when given). Returns
        at once when no broker answers; waits up to ``deadline_s`` while another relay is
        sending. ``done`` in the answer: everything (or that row) went out."""
        end = time.monotonic() + deadline_s
        sent = 0
        while True:
            delivery = self.send_pending()
            sent += delivery.sent
            done = delivery.left == 0 if outbox_id is None else self.delivered(outbox_id)
            if done or delivery.error is not None or time.monotonic() >= end:
                return Delivery(sent, delivery.left, delivery.error, delivery.busy, done)
            self._stop.wait(min(0.2, self.poll_s))

    def delivered(self, outbox_id: int) -> bool:
        """Whether row ``outbox_id`` was acked (a pruned row was)."""
        try:
            return outbox.sent_at(self.engine, outbox_id) is not None
        except LookupError:
            return True

    def _left(self) -> int:
        return sum(outbox.backlog(self.engine).values())

    def _prune(self) -> None:
        if time.monotonic() - self._pruned_at < _PRUNE_EVERY_S:
            return
        self._pruned_at = time.monotonic()
        gone = outbox.prune(self.engine, datetime.now(UTC) - timedelta(seconds=self.keep_sent_s))
        if gone:
            log.info("outbox: deleted %d row(s) sent over %gs ago", gone, self.keep_sent_s)

    # -- in the background ----------------------------------------------------------------

    def start(self) -> None:
        """Send from a daemon thread until :meth:`stop`: now, every ``poll_s``, and at once
        after :meth:`wake`; with backoff while no broker answers."""
        if self._thread is not None:
            raise RuntimeError("the outbox relay is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="s2a-outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (a row was just queued)."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the thread after its current pass; idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        if not self.probe():
            self._down = True
            log.warning(
                "no Kafka broker answers at %s: review decisions and model updates are "
                "queued in the outbox (SQL) and announced when one answers",
                self.settings.bootstrap_servers,
            )
        backoff = 0.0
        while not self._stop.is_set():
            try:
                delivery = self.send_pending()
            except (AgentsStorageError, TrainerStorageError) as exc:
                delivery = Delivery(0, -1, str(exc))
            except Exception as exc:
                # The thread's boundary: a bug in one pass is logged with its traceback and
                # the relay tries again later; it must not end silently.
                log.exception("outbox relay pass failed")
                delivery = Delivery(0, -1, f"{type(exc).__name__}: {exc}")
            self._report(delivery)
            if delivery.error is not None:
                backoff = min(max(backoff * 2, 1.0), self.max_backoff_s)
                wait = backoff
            else:
                backoff, wait = 0.0, self.poll_s
            self._wake.wait(wait)
            self._wake.clear()

    def _report(self, delivery: Delivery) -> None:
        """One warning when announcing stops, one line when it resumes; quiet between."""
        if delivery.error is not None:
            if self._down:
                log.debug("outbox: still waiting (%s)", delivery.error)
                return
            self._down = True
            waiting = "some" if delivery.left < 0 else str(delivery.left)
            log.warning(
                "outbox: %s; %s announcement(s) wait in SQL and are retried every %gs at most",
                delivery.error,
                waiting,
                self.max_backoff_s,
            )
        elif self._down and delivery.sent:
            self._down = False
            log.info(
                "outbox: a broker answers at %s: sent %d queued announcement(s)",
                self.settings.bootstrap_servers,
                delivery.sent,
            )
        elif delivery.sent:
            log.debug("outbox: sent %d announcement(s)", delivery.sent)
