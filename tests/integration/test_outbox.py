"""Announcements through the outbox, with the real parts: the embedded Tansu broker,
SQLite and PostgreSQL, the review store, the registry, and ``s2a review`` in a child
process.

A decision or a promotion made while no broker runs waits in the outbox and reaches its
topic exactly once when one starts; a failure inside the transaction leaves neither the
change nor its announcement; the page serves before any broker exists.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlmodel import Session

from agents.errors import StorageError as AgentsStorageError
from agents.review.accounts import ReviewerAccounts
from agents.review.store import ReviewStore
from agents.stores import outbox
from agents.stores.db import create_engine_for
from infra.broker import EmbeddedBroker, free_port
from infra.cli import cli
from infra.outbox import OutboxRelay
from infra.waiting import wait_until
from schemas.migrate import upgrade
from schemas.model_updates import MODEL_UPDATES_TOPIC, ModelUpdate, VersionStatus
from schemas.pairs import PAIRS_TOPIC, PairRecord
from schemas.reasons import UploadState
from schemas.settings import Settings
from schemas.tables import AnimeRef, Face, LibraryVersion, Pair, Subject, Upload
from trainer.errors import StorageError as TrainerStorageError
from trainer.registry import CHAMPION, Registry

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DEADLINE_S = 60


@dataclass
class World:
    settings: Settings
    engine: Engine
    pairs: list[str]
    tmp_path: Path

    def broker(self) -> EmbeddedBroker:
        """A Tansu broker on the settings' port (not started)."""
        return EmbeddedBroker(
            self.settings.broker_host, self.settings.broker_port, self.tmp_path / "broker.log"
        )

    def relay(self, **options: Any) -> OutboxRelay:
        return OutboxRelay(self.settings, self.engine, poll_s=0.2, max_backoff_s=0.5, **options)


@pytest.fixture
def world(tmp_path: Path, sql_url: str) -> Iterator[World]:
    settings = Settings(
        home=tmp_path / "home",
        database_url=sql_url,
        broker_port=free_port(),  # nothing listens there yet
        topic_prefix=f"it{uuid.uuid4().hex[:6]}.",
    )
    upgrade(sql_url)
    engine = create_engine_for(sql_url)
    pairs = _seed_pairs(engine, 3)
    yield World(settings, engine, pairs, tmp_path)
    engine.dispose()


def _seed_pairs(engine: Engine, count: int) -> list[str]:
    """``count`` pending pairs of style ``vn``, each with one active reference candidate."""
    rows: list[Any] = [
        LibraryVersion(version=1, created_at=T0, added=1),
        AnimeRef(
            ref_id="ref-0",
            style="vn",
            status="active",
            original="a" * 64,
            training="a" * 64,
            region="whole",
            box=[0.0, 0.0, 1.0, 1.0],
            width=256,
            height=256,
            license="MIT",
            source="tests",
            author="tests",
            tags=[],
            stats={},
            embedder="test",
            library_version=1,
            added_at=T0,
        ),
    ]
    pairs = []
    for i in range(count):
        subject, face_id = f"{i:064x}", f"face-{i}"
        pairs.append(f"pair-{i}")
        rows += [
            Subject(
                pseudonym=subject,
                first_seen_at=T0,
                consent_version="test-1",
                consent_scopes=["training"],
                consent_granted_at=T0,
            ),
            Upload(
                upload_id=f"up-{i}", subject=subject, state=UploadState.ACCEPTED, finished_at=T0
            ),
            Face(
                face_id=face_id,
                upload_id=f"up-{i}",
                subject=subject,
                source="selfie",
                detector="mtcnn",
                detection_prob=0.99,
                box=[0.0, 0.0, 512.0, 512.0],
                landmarks=[[0.0, 0.0]] * 5,
                quality={},
                crop_256="b" * 64,
                crop_512="b" * 64,
                align={},
                embedder="test",
                embedder_random_init=True,
                image_width=512,
                image_height=512,
                created_at=T0,
            ),
            Pair(
                pair_id=f"pair-{i}",
                face_id=face_id,
                subject=subject,
                style="vn",
                status="pending",
                candidates=[
                    {"ref_id": "ref-0", "score": 0.7, "similarity": 0.8, "label_agreement": 1.0}
                ],
                library_version=1,
                created_at=T0,
                updated_at=T0,
            ),
        ]
    with Session(engine) as session:
        for row in rows:  # parents before children, whatever the mapper's order
            session.add(row)
            session.flush()
        session.commit()
    return pairs


def topic_values(settings: Settings, topic: str) -> list[bytes]:
    """Every record value on ``topic``, read up to its end offsets (no waiting for silence:
    the end offsets say how many there are)."""
    from kafka import KafkaConsumer, TopicPartition

    name = settings.topic(topic)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        values: list[bytes] = []

        def drained() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in records)
            return all(consumer.position(tp) >= ends[tp] for tp in tps)

        wait_until(drained, deadline_s=DEADLINE_S, what=f"the records of {name}", poll_s=0)
        return values
    finally:
        consumer.close()


def _pair_ids(settings: Settings) -> list[str]:
    return [PairRecord.from_bytes(v).pair_id for v in topic_values(settings, PAIRS_TOPIC)]


def _sent(world: World, outbox_id: int) -> bool:
    return outbox.sent_at(world.engine, outbox_id) is not None


def _outbox_ids(world: World) -> list[int]:
    return [row.id for row in outbox.pending(world.engine)]


# -- review decisions ----------------------------------------------------------------------


def test_a_decision_without_a_broker_is_delivered_exactly_once_when_one_starts(
    world: World,
) -> None:
    store = ReviewStore(world.engine)
    relay = world.relay()
    relay.start()
    try:
        decided = store.decide(world.pairs[0], "alice", "approve")
        relay.wake()
        (queued,) = _outbox_ids(world)
        # No broker: the relay keeps trying (quietly) and the row waits.
        assert relay.flush(deadline_s=0).error is not None
        assert not _sent(world, queued)

        with world.broker():
            wait_until(lambda: _sent(world, queued), deadline_s=DEADLINE_S, what="delivery")
            # Once more with the broker up: the sent row is not sent again.
            second = store.decide(world.pairs[1], "bob", "reject")
            relay.wake()
            (later,) = _outbox_ids(world)
            wait_until(lambda: _sent(world, later), deadline_s=DEADLINE_S, what="delivery")
            values = topic_values(world.settings, PAIRS_TOPIC)
    finally:
        relay.stop()

    # One record per decision (keyed by subject: no order across partitions).
    records = sorted((PairRecord.from_bytes(v) for v in values), key=lambda r: r.pair_id)
    assert [(r.pair_id, r.status, r.decided_by) for r in records] == [
        (decided.pair_id, "approved", "human:alice"),
        (second.pair_id, "rejected", "human:bob"),
    ]
    assert records[0].at == decided.updated_at


def test_the_relay_retries_after_the_broker_was_down(world: World) -> None:
    store = ReviewStore(world.engine)
    relay = world.relay()
    relay.start()
    try:
        with world.broker():
            store.decide(world.pairs[0], "alice", "approve")
            relay.wake()
            (first,) = _outbox_ids(world)
            wait_until(lambda: _sent(world, first), deadline_s=DEADLINE_S, what="delivery")
        # The broker is gone; a decision now waits.
        store.decide(world.pairs[1], "alice", "reject")
        relay.wake()
        (second,) = _outbox_ids(world)
        assert relay.flush(deadline_s=0).error is not None
        assert not _sent(world, second)
        # A new broker (Tansu keeps topics in memory: it starts empty).
        with world.broker():
            wait_until(lambda: _sent(world, second), deadline_s=DEADLINE_S, what="retry")
            assert _pair_ids(world.settings) == [world.pairs[1]]
    finally:
        relay.stop()


def _rename_outbox(engine: Engine, old: str, new: str) -> None:
    """With the table renamed, every outbox write fails in the database, as a lost
    connection or a full disk would at that point of the transaction."""
    with engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")


def test_a_crash_inside_the_transaction_leaves_neither_change_nor_announcement(
    world: World,
) -> None:
    registry = Registry(world.engine, world.settings.models_dir)
    row = registry.register(
        "converter",
        family="pix2pix-lora",
        snapshot_id="ds-1",
        parent_version=None,
        config={},
        subjects=[],
    )
    _rename_outbox(world.engine, "outbox", "outbox_away")
    try:
        with pytest.raises(AgentsStorageError, match="outbox"):
            ReviewStore(world.engine).decide(world.pairs[0], "alice", "approve")
        with pytest.raises(TrainerStorageError, match="outbox"):
            registry.promote("converter", row.version, actor="ana", reason="by hand")
    finally:
        _rename_outbox(world.engine, "outbox_away", "outbox")

    store = ReviewStore(world.engine)
    assert store.item(world.pairs[0]).status == "pending"
    assert store.decisions(world.pairs[0]) == []
    assert registry.aliases("converter") == {}
    assert registry.history("converter") == []
    assert registry.get("converter", row.version).status == VersionStatus.TRAINING
    assert outbox.backlog(world.engine) == {}


# -- model updates -------------------------------------------------------------------------


def _versions(world: World, count: int) -> Registry:
    registry = Registry(world.engine, world.settings.models_dir)
    for i in range(count):
        registry.register(
            "converter",
            family="pix2pix-lora",
            snapshot_id=f"ds-{i}",
            parent_version=None,
            config={},
            subjects=[],
        )
    return registry


def test_a_promotion_reaches_model_updates_through_the_outbox(world: World) -> None:
    registry = _versions(world, 2)
    first = registry.promote("converter", 1, actor="ana", reason="first")
    candidate = registry.move_alias("converter", "candidate", 2, actor="ana", reason="trained")
    assert candidate.outbox_id is None  # only champion moves are announced
    second = registry.promote("converter", 2, actor="ana", reason="better")
    back = registry.rollback("converter", actor="bo", reason="worse after all")
    assert [m.outbox_id for m in (first, second, back)] == _outbox_ids(world)

    with world.broker():
        delivery = world.relay().flush(deadline_s=DEADLINE_S)
        assert (delivery.sent, delivery.left, delivery.done) == (3, 0, True)
        values = topic_values(world.settings, MODEL_UPDATES_TOPIC)

    updates = [ModelUpdate.from_bytes(v) for v in values]
    assert updates == [first.update, second.update, back.update]
    assert [(u.version, u.previous_version, u.action) for u in updates] == [
        (1, None, "promote"),
        (2, 1, "promote"),
        (1, 2, "rollback"),
    ]
    assert registry.aliases("converter")[CHAMPION] == 1


def test_models_promote_announces_at_once_or_says_it_is_queued(world: World) -> None:
    _versions(world, 2)
    env = {
        "S2A_HOME": str(world.settings.home),
        "S2A_DATABASE_URL": world.settings.sql_url,
        "S2A_BROKER_PORT": str(world.settings.broker_port),
        "S2A_TOPIC_PREFIX": world.settings.topic_prefix,
    }

    def promote(version: int) -> tuple[dict[str, Any], str]:
        result = CliRunner().invoke(
            cli,
            ["models", "promote", str(version), "--reason", "test", "--by", "ana", "--json"],
            env=env,
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout), result.stderr

    queued, said = promote(1)
    assert queued["announced"] is False
    assert "model update queued, not announced yet (no Kafka broker answers at" in said
    with world.broker():
        announced, said = promote(2)  # sends the queued one first, in order
        values = topic_values(world.settings, MODEL_UPDATES_TOPIC)
    assert announced["announced"] is True
    assert "queued" not in said
    assert [ModelUpdate.from_bytes(v).version for v in values] == [1, 2]


def test_the_scheduler_announces_its_promotion_through_the_outbox(world: World) -> None:
    from infra.cli.scheduler import model_update_publisher
    from trainer.cycle import CycleResult
    from trainer.scheduler import check

    settings = world.settings.model_copy(
        update={"schedule": world.settings.schedule.model_copy(update={"min_new_pairs": 1})}
    )
    ReviewStore(world.engine).decide(world.pairs[0], "alice", "approve")  # data is due
    registry = _versions(world, 2)
    moves = []

    def run(settings: Settings, trigger: str, **_: Any) -> CycleResult:
        # What a cycle that promotes does to the registry, without training.
        version = len(moves) + 1
        moves.append(registry.promote("converter", version, actor="scheduler", reason="gate"))
        return CycleResult("promoted", "converter", trigger, "gate", update=moves[-1].update)

    relay = OutboxRelay(settings, world.engine, poll_s=0.2, max_backoff_s=0.5)
    publish = model_update_publisher(relay)
    late = check(settings, publish, engine=world.engine, run=run)
    assert (late.outcome, late.published) == ("ran", False)
    assert late.publish_error is not None
    assert "converter v1 is queued in the outbox" in late.publish_error

    with world.broker():
        ReviewStore(world.engine).decide(world.pairs[1], "alice", "approve")
        on_time = check(settings, publish, engine=world.engine, run=run)
        assert (on_time.outcome, on_time.published) == ("ran", True)
        values = topic_values(world.settings, MODEL_UPDATES_TOPIC)
        pairs = _pair_ids(world.settings)
    assert [ModelUpdate.from_bytes(v) for v in values] == [m.update for m in moves]
    assert sorted(pairs) == world.pairs[:2]
    assert outbox.backlog(world.engine) == {}


# -- s2a review ----------------------------------------------------------------------------


def test_s2a_review_serves_at_once_without_a_broker_and_announces_when_one_starts(
    world: World,
) -> None:
    if world.settings.sql_url.startswith("postgresql"):
        pytest.skip("the child process's start does not depend on the database")
    world.settings.review.resolve_session_secret(world.settings.home, create=True)
    ReviewerAccounts(world.engine).add("carol", "carol's long passphrase")
    out, err = world.tmp_path / "review.out", world.tmp_path / "review.err"
    env = {
        "PATH": "/usr/bin:/bin",
        "S2A_HOME": str(world.settings.home),
        "S2A_DATABASE_URL": world.settings.sql_url,
        "S2A_BROKER_PORT": str(world.settings.broker_port),
        "S2A_TOPIC_PREFIX": world.settings.topic_prefix,
    }
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "review", "--port", "0", "--json"],
            env=env,
            stdout=stdout,
            stderr=stderr,
            cwd=Path(__file__).parents[2],
        )
    try:

        def alive() -> None:
            if child.poll() is not None:
                raise AssertionError(f"s2a review exited: {err.read_text()}")

        wait_until(
            lambda: out.read_text().endswith("\n"),
            deadline_s=DEADLINE_S,
            what="the review page's URL",
            alive=alive,
        )
        url = json.loads(out.read_text())["url"]
        with urlopen(f"{url}login") as page:  # the page answers; no broker exists yet
            assert page.status == 200
        # One warning about the broker, no kafka-python connection errors.
        wait_until(
            lambda: "queued in the outbox" in err.read_text(),
            deadline_s=DEADLINE_S,
            what="the warning",
            alive=alive,
        )
        log = err.read_text()
        about_the_broker = [
            line for line in log.splitlines() if "broker" in line or "kafka" in line.lower()
        ]
        assert len(about_the_broker) == 1, log
        assert "WARNING infra.outbox" in about_the_broker[0]
        assert "ERROR" not in log, log

        ReviewStore(world.engine).decide(world.pairs[2], "carol", "reject")
        (queued,) = _outbox_ids(world)
        with world.broker():
            wait_until(
                lambda: _sent(world, queued), deadline_s=DEADLINE_S, what="delivery", alive=alive
            )
            assert _pair_ids(world.settings) == [world.pairs[2]]
    finally:
        child.send_signal(signal.SIGTERM)
        code = child.wait(DEADLINE_S)
    assert code == 0, err.read_text()
