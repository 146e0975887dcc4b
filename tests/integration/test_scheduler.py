"""The retrain scheduler on a seeded database: which trigger is due, one cycle at a time
across racing processes, what reaches ``model-updates``, and the APScheduler wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dataset_seed import Seeded, seed
from qdrant_client import QdrantClient
from sqlalchemy import select, text, update
from sqlmodel import col

from agents.erasure import Eraser
from infra.runtime import settings_env
from schemas.model_updates import ModelUpdate, VersionStatus
from schemas.settings import Settings
from schemas.tables import Pair
from trainer.cycle import CycleResult, run_cycle
from trainer.dataset import read_manifest
from trainer.leases import RETRAIN_LEASE, acquire, holder_of
from trainer.registry import Registry
from trainer.scheduler import CHECK_JOB, CRON_JOB, JOBS_TABLE, build_scheduler, check, due

#: The seed approves 8 pairs that reach a snapshot (10 approved rows in all).
APPROVED = 10
#: The tiny generator of tests/unit/trainer/test_cycle.py.
TINY = [
    "--width", "8", "--levels", "2", "--res-blocks", "1", "--d-width", "8",
    "--samples", "2", "--threads", "1",
]  # fmt: skip


@pytest.fixture
def seeded(tmp_path: Path, sql_url: str) -> Iterator[Seeded]:
    state = seed(tmp_path / "home", sql_url)
    state.settings = state.settings.model_copy(
        update={
            "schedule": state.settings.schedule.model_copy(update={"min_new_pairs": 3}),
            "train": state.settings.train.model_copy(
                update={"steps": 2, "batch_size": 2, "resolution": 32, "checkpoint_every": 100}
            ),
        }
    )
    yield state
    state.engine.dispose()


def _version(seeded: Seeded, snapshot_id: str, status: VersionStatus, champion: bool) -> int:
    """A registered version trained on ``snapshot_id`` (no files: the triggers read SQL)."""
    registry = Registry(seeded.engine, seeded.settings.models_dir)
    name = seeded.settings.train.model_name
    row = registry.register(
        name,
        family="pix2pix-lora",
        snapshot_id=snapshot_id,
        parent_version=None,
        config={},
        subjects=["subject-a", "subject-b"],
        trigger="data",
    )
    registry.update(name, row.version, status=status)
    if champion:
        registry.promote(name, row.version, actor="test", reason="seeded")
    return row.version


def _snapshot(seeded: Seeded) -> str:
    from trainer.dataset import create_snapshot

    return create_snapshot(seeded.engine, seeded.settings).snapshot_id


def test_data_trigger_counts_pairs_decided_after_the_newest_versions_snapshot(
    seeded: Seeded,
) -> None:
    trigger = due(seeded.engine, seeded.settings)
    assert trigger is not None
    assert trigger.name == "data"
    assert trigger.reason.startswith(f"{APPROVED} approved pairs in all")

    # A version trained on a snapshot frozen after every decision: nothing new since.
    _version(seeded, _snapshot(seeded), VersionStatus.REFUSED, champion=False)
    assert due(seeded.engine, seeded.settings) is None

    # Three decisions after that snapshot call for the next cycle.
    later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
    with seeded.engine.begin() as connection:
        ids = connection.scalars(
            select(Pair.pair_id).where(col(Pair.status) == "approved").limit(3)
        ).all()
        connection.execute(update(Pair).where(col(Pair.pair_id).in_(ids)).values(decided_at=later))
    trigger = due(seeded.engine, seeded.settings)
    assert trigger is not None
    assert (trigger.name, trigger.reason.split(" ")[0]) == ("data", "3")
    # A cron run is due only when the cron job asks; data comes first anyway.
    assert due(seeded.engine, seeded.settings, scheduled=True) == trigger


def _tiny_cycle(settings: Settings, trigger: str, **kwargs: Any) -> CycleResult:
    """A real cycle with the tiny generator of the cycle tests (identity not scored)."""
    return run_cycle(settings, trigger, embedder=None, train_args=TINY, **kwargs)


def test_erasing_a_subject_of_the_champion_retrains_without_them(seeded: Seeded) -> None:
    first = check(seeded.settings, None, engine=seeded.engine, run=_tiny_cycle)
    assert first.outcome == "ran"
    assert first.cycle is not None
    assert first.cycle.version is not None
    registry = Registry(seeded.engine, seeded.settings.models_dir)
    name = seeded.settings.train.model_name
    if first.cycle.status != "promoted":  # noise crops: the gate's absolute limits may refuse
        registry.promote(name, first.cycle.version, actor="test", reason="a champion to erase from")
    assert "subject-b" in registry.subjects(name, first.cycle.version)
    assert due(seeded.engine, seeded.settings) is None

    erased = Eraser(
        seeded.engine,
        QdrantClient(":memory:"),
        seeded.blobs,
        seeded.settings.dataset_dir,
        key=b"pseudonym-key",
    ).erase("subject-b", request_id="er-1", requested_by="test", requested_at=datetime.now(UTC))
    assert erased.counts["faces"] == 1

    trigger = due(seeded.engine, seeded.settings)
    assert trigger is not None
    assert trigger.name == "erasure"
    assert trigger.reason == (
        f"champion v{first.cycle.version} was trained on 1 subject(s) erased since"
    )
    second = check(seeded.settings, None, engine=seeded.engine, run=_tiny_cycle)
    assert (second.outcome, second.trigger.name if second.trigger else None) == ("ran", "erasure")
    assert second.cycle is not None
    assert second.cycle.snapshot_id is not None
    manifest = read_manifest(seeded.settings.dataset_dir, second.cycle.snapshot_id)
    assert manifest.records
    assert "subject-b" not in {r.subject for r in manifest.records}
    assert second.cycle.version is not None
    assert "subject-b" not in registry.subjects(name, second.cycle.version)
    # Whatever the gate decided, the erasure does not fire again for the same champion.
    assert due(seeded.engine, seeded.settings) is None


def _update() -> ModelUpdate:
    return ModelUpdate(
        name="converter",
        version=1,
        previous_version=None,
        action="promote",
        family="pix2pix-lora",
        snapshot_id="ds-0000000000000000",
        path="/srv/models/converter/1",
        artifacts={},
        metrics={},
        reason="gate passed",
        actor="scheduler",
        at=datetime.now(UTC),
    )


def test_a_check_publishes_the_promotion_and_survives_a_broker_that_fails(
    seeded: Seeded,
) -> None:
    sent: list[ModelUpdate] = []
    ran: list[str] = []

    def run(settings: Settings, trigger: str, **_: Any) -> CycleResult:
        ran.append(trigger)
        # The lease is held while the cycle runs.
        assert holder_of(seeded.engine, RETRAIN_LEASE) is not None
        return CycleResult(
            status="promoted", name="converter", trigger=trigger, reason="gate", update=_update()
        )

    result = check(seeded.settings, sent.append, engine=seeded.engine, run=run)
    assert (result.outcome, result.published, ran) == ("ran", True, ["data"])
    assert [u.version for u in sent] == [1]
    assert holder_of(seeded.engine, RETRAIN_LEASE) is None  # released afterwards

    def broken(update: ModelUpdate) -> None:
        raise ConnectionError("no broker at 127.0.0.1:1")

    again = check(seeded.settings, broken, engine=seeded.engine, run=run)
    assert (again.outcome, again.published) == ("ran", False)
    assert again.publish_error == "ConnectionError: no broker at 127.0.0.1:1"


def test_a_check_while_another_holds_the_lease_runs_nothing(seeded: Seeded) -> None:
    assert acquire(seeded.engine, RETRAIN_LEASE, "elsewhere:1", ttl_s=600)

    def run(*_: Any, **__: Any) -> CycleResult:
        raise AssertionError("a cycle ran without the lease")

    assert check(seeded.settings, None, engine=seeded.engine, run=run).outcome == "busy"


def test_two_schedulers_racing_on_new_data_train_once(seeded: Seeded) -> None:
    # Two real processes, started together, each doing one check: real training (a tiny
    # generator, 2 steps at 32 px), the real gate, the real lease.
    env = settings_env(seeded.settings) | {
        "S2A_SCHEDULE__MIN_NEW_PAIRS": "3",
        "S2A_TRAIN__STEPS": "2",
        "S2A_TRAIN__BATCH_SIZE": "2",
        "S2A_TRAIN__RESOLUTION": "32",
        "S2A_TRAIN__CHECKPOINT_EVERY": "100",
        "S2A_BROKER_PORT": "1",  # no broker: a promotion's announcement fails, logged
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "scheduler", "--once", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out)["outcome"])

    assert sorted(outcomes) in (["busy", "ran"], ["idle", "ran"])
    versions = Registry(seeded.engine, seeded.settings.models_dir).versions("converter")
    assert len(versions) == 1
    assert versions[0].trigger == "data"
    assert versions[0].status in (VersionStatus.PROMOTED, VersionStatus.REFUSED)


def test_the_scheduler_keeps_its_jobs_in_sql(seeded: Seeded) -> None:
    settings = seeded.settings.model_copy(
        update={"schedule": seeded.settings.schedule.model_copy(update={"cron": "0 3 * * *"})}
    )
    scheduler = build_scheduler(settings, None, blocking=False)
    scheduler.start(paused=True)  # paused: the jobs are stored, none runs
    try:
        with seeded.engine.connect() as connection:
            stored = {row.id for row in connection.execute(text(f"select id from {JOBS_TABLE}"))}
        assert stored == {CHECK_JOB, CRON_JOB}
        assert (
            str(scheduler.get_job(CRON_JOB).trigger)
            == "cron[month='*', day='*', day_of_week='*', hour='3', minute='0']"
        )
    finally:
        scheduler.shutdown(wait=False)
    # A restart with the same settings replaces its own jobs rather than adding more.
    again = build_scheduler(settings, None, blocking=False)
    again.start(paused=True)
    try:
        assert {job.id for job in again.get_jobs()} == {CHECK_JOB, CRON_JOB}
    finally:
        again.shutdown(wait=False)
