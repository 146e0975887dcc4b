"""The outbox and its relay on a migrated SQLite file, with a recording sender at the seam
(the real broker: tests/integration/test_outbox.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from agents.stores import outbox
from agents.stores.db import create_engine_for
from infra.broker import broker_answers
from infra.errors import BrokerError
from infra.outbox import LEASE, OutboxRelay, Sender
from schemas.migrate import upgrade
from schemas.settings import Settings
from trainer.leases import acquire, holder_of


class Recorder:
    """A sender that acks everything but the values in ``refuse`` (each refused once)."""

    def __init__(self, refuse: set[bytes] | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.refuse = set(refuse or ())
        self.opened = 0
        self.closed = 0

    def connect(self, settings: Settings) -> Sender:
        self.opened += 1
        return self

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if value in self.refuse:
            self.refuse.discard(value)
            raise BrokerError(f"sending to {topic} failed: no ack for {value!r}")
        self.sent.append((topic, key, value))

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 's2a.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()


def _queue(engine: Engine, *values: str, topic: str = "pairs") -> list[int]:
    with engine.begin() as connection:
        return [outbox.enqueue(connection, topic, b"k", v.encode()) for v in values]


def _relay(engine: Engine, tmp_path: Path, recorder: Recorder, **options: object) -> OutboxRelay:
    return OutboxRelay(
        Settings(home=tmp_path),
        engine,
        connect=recorder.connect,
        probe=lambda: True,
        **options,  # type: ignore[arg-type]
    )


def test_rows_go_out_in_order_once_each(engine: Engine, tmp_path: Path) -> None:
    ids = _queue(engine, "a", "b")
    _queue(engine, "c", topic="model-updates")
    recorder = Recorder()
    relay = _relay(engine, tmp_path, recorder, batch=2)

    first = relay.send_pending()
    second = relay.send_pending()

    assert (first.sent, first.left, first.error) == (3, 0, None)
    assert [(t, v) for t, _, v in recorder.sent] == [
        ("pairs", b"a"),
        ("pairs", b"b"),
        ("model-updates", b"c"),
    ]
    assert (second.sent, second.left) == (0, 0)
    assert len(recorder.sent) == 3  # a row marked sent is never read again
    assert relay.delivered(ids[0])
    assert relay.delivered(ids[1])
    assert outbox.backlog(engine) == {}
    assert recorder.opened == recorder.closed == 1


def test_a_failed_send_stops_the_pass_and_the_next_pass_resumes_there(
    engine: Engine, tmp_path: Path
) -> None:
    ids = _queue(engine, "a", "b", "c")
    recorder = Recorder(refuse={b"b"})
    relay = _relay(engine, tmp_path, recorder)

    failed = relay.send_pending()

    assert (failed.sent, failed.left) == (1, 2)
    assert failed.error is not None
    assert "no ack for b'b'" in failed.error
    assert [v for _, _, v in recorder.sent] == [b"a"]  # c did not overtake b
    waiting = outbox.pending(engine)
    assert [(r.id, r.attempts) for r in waiting] == [(ids[1], 1), (ids[2], 0)]

    resumed = relay.send_pending()

    assert (resumed.sent, resumed.left, resumed.error) == (2, 0, None)
    assert [v for _, _, v in recorder.sent] == [b"a", b"b", b"c"]


def test_without_a_broker_nothing_is_tried_and_the_rows_wait(
    engine: Engine, tmp_path: Path
) -> None:
    _queue(engine, "a")
    recorder = Recorder()
    relay = OutboxRelay(Settings(home=tmp_path, broker_port=1), engine, connect=recorder.connect)

    delivery = relay.flush(deadline_s=60)

    assert (delivery.sent, delivery.left, delivery.done) == (0, 1, False)
    assert delivery.error == "no Kafka broker answers at 127.0.0.1:1"
    assert recorder.opened == 0
    assert [r.attempts for r in outbox.pending(engine)] == [0]


def test_while_another_relay_holds_the_lease_this_one_sends_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    ids = _queue(engine, "a")
    assert acquire(engine, LEASE, "elsewhere:1", ttl_s=600)
    recorder = Recorder()
    relay = _relay(engine, tmp_path, recorder)

    delivery = relay.flush(deadline_s=0.5, outbox_id=ids[0])

    assert (delivery.sent, delivery.busy, delivery.done) == (0, True, False)
    assert recorder.sent == []


def test_a_pass_takes_and_releases_the_lease(engine: Engine, tmp_path: Path) -> None:
    _queue(engine, "a")
    held: list[object] = []

    class Watching(Recorder):
        def send(self, topic: str, key: bytes | None, value: bytes) -> None:
            held.append(holder_of(engine, LEASE))
            super().send(topic, key, value)

    relay = _relay(engine, tmp_path, Watching(), holder="me:1")
    relay.send_pending()

    assert [h[0] for h in held] == ["me:1"]  # type: ignore[index]
    assert holder_of(engine, LEASE) is None


def test_the_background_relay_sends_what_is_queued_after_a_wake(
    engine: Engine, tmp_path: Path
) -> None:
    from infra.waiting import wait_until

    recorder = Recorder()
    relay = _relay(engine, tmp_path, recorder, poll_s=3600)  # only a wake makes it look
    relay.start()
    try:
        ids = _queue(engine, "a")
        relay.wake()
        wait_until(lambda: relay.delivered(ids[0]), deadline_s=30, what="row a sent")
    finally:
        relay.stop()
    assert [v for _, _, v in recorder.sent] == [b"a"]


def test_sent_rows_are_pruned_after_the_retention(engine: Engine, tmp_path: Path) -> None:
    old, fresh = _queue(engine, "old", "fresh")
    waiting = _queue(engine, "waiting")[0]
    for row_id, age in ((old, timedelta(days=2)), (fresh, timedelta(minutes=1))):
        outbox.mark_sent(engine, row_id, at=datetime.now(UTC) - age)

    gone = outbox.prune(engine, datetime.now(UTC) - timedelta(days=1))

    assert gone == 1
    with pytest.raises(LookupError, match="does not exist"):
        outbox.sent_at(engine, old)
    assert outbox.sent_at(engine, fresh) is not None
    assert [r.id for r in outbox.pending(engine)] == [waiting]


def test_enqueue_refuses_what_the_table_cannot_hold(engine: Engine) -> None:
    with engine.begin() as connection:
        with pytest.raises(ValueError, match="topic must be"):
            outbox.enqueue(connection, "", None, b"{}")
        with pytest.raises(ValueError, match="not UTF-8"):
            outbox.enqueue(connection, "pairs", b"\xff", b"{}")
        with pytest.raises(ValueError, match="key must be at most 255"):
            outbox.enqueue(connection, "pairs", b"k" * 256, b"{}")


def test_a_row_is_marked_sent_once_and_a_late_failure_changes_nothing(engine: Engine) -> None:
    (row,) = _queue(engine, "a")

    assert outbox.mark_sent(engine, row) is True
    assert outbox.mark_sent(engine, row) is False
    outbox.mark_failed(engine, row, "late")

    with engine.connect() as connection:
        attempts, error = connection.execute(
            select(outbox.OUTBOX.c.attempts, outbox.OUTBOX.c.last_error)
        ).one()
    assert (attempts, error) == (1, None)


def test_broker_answers_reads_every_bootstrap_address() -> None:
    assert broker_answers("127.0.0.1:1,[::1]:1,not-a-server") is False
