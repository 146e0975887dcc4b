"""The model registry and leases on both backends: version numbers, audited alias moves,
compare-and-set, rollback through the audit trail, subjects; one lease holder at a time."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlmodel import col

from schemas.model_updates import VersionStatus
from schemas.tables import Lease
from trainer.errors import RegistryError
from trainer.leases import acquire, holder_of, release, renew
from trainer.registry import CANDIDATE, CHAMPION, Registry


def _register(registry: Registry, subjects: list[str], parent: int | None = None) -> int:
    row = registry.register(
        "converter",
        family="pix2pix-lora",
        snapshot_id="ds-0123456789abcdef",
        parent_version=parent,
        config={"mode": "base"},
        subjects=subjects,
        trigger="manual",
    )
    return row.version


def test_versions_count_up_and_keep_their_subjects(engine: Engine, tmp_path: Path) -> None:
    registry = Registry(engine, tmp_path / "models")

    first = _register(registry, ["p-b", "p-a", "p-a"])
    second = _register(registry, ["p-b", "p-c"], parent=first)

    assert (first, second) == (1, 2)
    assert (tmp_path / "models" / "converter" / "2").is_dir()
    row = registry.get("converter", 2)
    assert (row.status, row.parent_version, row.trigger) == (VersionStatus.TRAINING, 1, "manual")
    assert row.log_path == str(tmp_path / "models" / "converter" / "2" / "run.log")
    assert registry.subjects("converter", 1) == ["p-a", "p-b"]
    assert registry.versions_with_subject("p-b") == [("converter", 1), ("converter", 2)]
    assert registry.versions_with_subject("p-z") == []
    updated = registry.update(
        "converter", 2, status=VersionStatus.REFUSED, reason="worse", metrics={"l1": 0.3}
    )
    assert (updated.status, updated.reason, updated.metrics) == (
        VersionStatus.REFUSED,
        "worse",
        {"l1": 0.3},
    )
    with pytest.raises(RegistryError, match="has no version 7 \\(versions: 1, 2\\)"):
        registry.get("converter", 7)


def test_alias_moves_are_audited_and_rollback_walks_back(engine: Engine, tmp_path: Path) -> None:
    registry = Registry(engine, tmp_path / "models")
    for _ in range(3):
        _register(registry, ["p-a"])

    registry.move_alias(
        "converter", CANDIDATE, 1, actor="cycle", reason="trained", action="register"
    )
    registry.move_alias("converter", CHAMPION, 1, actor="cycle", reason="gate passed", expect=None)
    registry.promote("converter", 2, actor="ana", reason="looks better")
    registry.promote("converter", 3, actor="ana", reason="newer")
    # A compare-and-set against a stale champion changes nothing.
    with pytest.raises(RegistryError, match="points at v3, not v2"):
        registry.move_alias("converter", CHAMPION, 1, actor="cycle", reason="x", expect=2)

    back = registry.rollback("converter", actor="bo", reason="v3 artefacts")
    assert (back.from_version, back.to_version, back.action) == (3, 2, "rollback")
    again = registry.rollback("converter", actor="bo", reason="v2 too")
    assert (again.from_version, again.to_version) == (2, 1)  # back two, not a swap
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("converter", actor="bo", reason="nothing left")

    assert registry.aliases("converter") == {CANDIDATE: 1, CHAMPION: 1}
    assert registry.get("converter", 2).status == VersionStatus.PROMOTED
    moves = [
        (m.alias, m.action, m.from_version, m.to_version, m.actor, m.reason)
        for m in registry.history("converter")
    ]
    assert moves == [
        (CANDIDATE, "register", None, 1, "cycle", "trained"),
        (CHAMPION, "promote", None, 1, "cycle", "gate passed"),
        (CHAMPION, "promote", 1, 2, "ana", "looks better"),
        (CHAMPION, "promote", 2, 3, "ana", "newer"),
        (CHAMPION, "rollback", 3, 2, "bo", "v3 artefacts"),
        (CHAMPION, "rollback", 2, 1, "bo", "v2 too"),
    ]
    assert all(m.moved_at.tzinfo is not None for m in registry.history("converter"))
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.promote("converter", 9, actor="ana", reason="typo")
    with pytest.raises(RegistryError, match="actor is empty"):
        registry.promote("converter", 2, actor=" ", reason="nobody")


def test_a_lease_has_one_holder_until_it_expires_or_is_released(engine: Engine) -> None:
    assert acquire(engine, "retrain", "a", ttl_s=60)
    assert acquire(engine, "retrain", "a", ttl_s=60)  # ours already: renewed
    assert not acquire(engine, "retrain", "b", ttl_s=60)
    assert not renew(engine, "retrain", "b", ttl_s=60)
    assert not release(engine, "retrain", "b")
    assert holder_of(engine, "retrain") is not None
    assert holder_of(engine, "retrain")[0] == "a"  # type: ignore[index]
    assert renew(engine, "retrain", "a", ttl_s=60)
    assert release(engine, "retrain", "a")
    assert holder_of(engine, "retrain") is None
    assert acquire(engine, "retrain", "b", ttl_s=60)

    _expire(engine, "retrain")  # b stopped renewing: its lease ran out

    assert acquire(engine, "retrain", "a", ttl_s=60)
    assert not renew(engine, "retrain", "b", ttl_s=60)  # b learns it lost the lease


def test_racing_holders_get_one_lease(engine: Engine) -> None:
    """Eight threads (each its own connection) ask at once, for a new lease and then for
    an expired one: exactly one gets it each time."""
    for round_ in (0, 1):
        won = _race(engine, [f"h{round_}-{i}" for i in range(8)], 60)
        assert len(won) == 1, won
        if round_ == 0:
            _expire(engine, "race")  # the first winner's lease runs out: a second race for it


def _expire(engine: Engine, name: str) -> None:
    """Let lease ``name`` run out now, as its holder's silence would after its ttl."""
    with engine.begin() as connection:
        connection.execute(
            update(Lease)
            .where(col(Lease.name) == name)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _race(engine: Engine, holders: list[str], ttl: float) -> list[str]:
    barrier = threading.Barrier(len(holders))
    won: list[str] = []

    def ask(holder: str) -> None:
        barrier.wait()
        if acquire(engine, "race", holder, ttl_s=ttl):
            won.append(holder)

    threads = [threading.Thread(target=ask, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return won


def test_versions_trained_on_erased_subjects_are_marked_in_list_and_show(
    engine: Engine, sql_url: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner
    from sqlmodel import Session

    from infra.cli import cli
    from schemas.tables import VersionErasure

    registry = Registry(engine, tmp_path / "home" / "models")
    _register(registry, ["p-a", "p-b"])
    _register(registry, ["p-c"])
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with Session(engine) as session:
        session.add(VersionErasure(version_id=registry.get("converter", 1).id, erased_subjects=2,
                                   last_erased_at=at))  # fmt: skip
        session.commit()

    assert registry.erasures("converter") == {1: (2, at)}
    env = {"S2A_HOME": str(tmp_path / "home"), "S2A_DATABASE_URL": sql_url}
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list", "--json"], env=env)
    assert [
        (v["version"], v["erased_subjects"]) for v in json.loads(listed.output)["versions"]
    ] == [
        (1, 2),
        (2, 0),
    ]
    shown = runner.invoke(cli, ["models", "show", "1"], env=env)
    assert "2 of the subjects it was trained on erased since (last at 2026-12-01 09:30)" in (
        shown.output
    )
    assert "erased since" not in runner.invoke(cli, ["models", "show", "2"], env=env).output
