"""The replay a retrain cycle draws: the script's own sample when nothing is left out,
without the pairs of erased subjects or with a blob gone, written as a content-named
manifest the script draws back whole; and the registry narrowing a version's subjects."""

from __future__ import annotations

from pathlib import Path

import pytest
from snapshot_fixture import FixtureSnapshot

from agents.stores.db import create_engine_for
from schemas.migrate import upgrade
from schemas.settings import Settings
from trainer.dataset.snapshot import Manifest, manifest_path, read_manifest
from trainer.errors import DatasetError, RegistryError, TrainingConfigError
from trainer.registry import Registry
from trainer.replay import plan_replay, record_blobs, write_replay
from trainer.runs import read_manifest_at, replay_sample


@pytest.fixture(scope="module")
def older(snapshot: FixtureSnapshot) -> Manifest:
    return read_manifest(snapshot.home / "datasets", snapshot.snapshot_id)


def everyone(manifest: Manifest) -> set[str]:
    return {r.subject for r in manifest.records}


def test_with_nothing_left_out_the_plan_is_the_scripts_own_sample(older: Manifest) -> None:
    current = older.split("train")[:2]  # the new snapshot holds two of the old pairs
    for limit in (2, 256):
        plan = plan_replay(
            older, current, known=everyone(older), limit=limit, seed=3, has_blob=lambda _: True
        )
        assert list(plan.records) == replay_sample(older, current, limit, 3)
        assert plan.counts == {
            "source_train": 6,
            "held": 2,
            "erased": 0,
            "eligible": 4,
            "drawn": min(4, limit),
            "missing_blobs": 0,
            "replayed": min(4, limit),
        }
        assert plan.source == older.snapshot_id


def test_the_plan_leaves_out_erased_subjects_and_missing_blobs(older: Manifest) -> None:
    train = older.split("train")
    erased, lost = train[0].subject, train[1]
    gone = set(record_blobs(lost)[2:])  # the anime image of one pair

    plan = plan_replay(
        older,
        [],
        known=everyone(older) - {erased},
        limit=256,
        seed=0,
        has_blob=lambda digest: digest not in gone,
    )

    assert [r.pair_id for r in plan.records] == [r.pair_id for r in train[2:]]
    assert erased not in plan.subjects
    assert lost.subject not in plan.subjects
    assert (plan.counts["erased"], plan.counts["missing_blobs"]) == (1, 1)
    assert plan.counts["replayed"] == 4
    assert "1 of subjects erased since" in plan.describe()
    # A champion with no subject recorded (every one erased) replays nothing.
    nothing = plan_replay(older, [], known=(), limit=256, seed=0, has_blob=lambda _: True)
    assert (nothing.records, nothing.counts["erased"]) == ((), 6)


def test_a_negative_limit_is_refused(older: Manifest) -> None:
    with pytest.raises(TrainingConfigError, match="--replay-max must be at least 0, got -1"):
        plan_replay(older, [], known=(), limit=-1, seed=0, has_blob=lambda _: True)


def test_the_replay_manifest_is_a_snapshot_the_script_draws_back_whole(
    older: Manifest, tmp_path: Path
) -> None:
    train = older.split("train")
    chosen = [train[1], train[3], train[4]]

    replay_id = write_replay(tmp_path, older, chosen)

    assert write_replay(tmp_path, older, chosen) == replay_id  # content-named, write-once
    written = read_manifest_at(manifest_path(tmp_path, replay_id), "--replay-manifest")
    assert [r.pair_id for r in written.records] == [r.pair_id for r in chosen]
    assert [r.weight for r in written.records] == [r.weight for r in chosen]
    assert all(r.identity is None for r in written.records)
    summary = written.summary
    assert (summary.records, summary.subjects, summary.splits["train"].records) == (3, 3, 3)
    assert (summary.splits["validation"].records, summary.split_fallback) == (0, [])
    assert sum(summary.decided_by.values()) == 3
    assert written.params == older.params
    # The script drawing from it again, with the limit it was drawn with, gets all of it.
    assert replay_sample(written, older.split("validation"), 3, 7) == written.records
    with pytest.raises(DatasetError, match=r"no pair of ds-\w+ to replay"):
        write_replay(tmp_path, older, [])


def test_retain_subjects_narrows_and_never_adds(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    registry = Registry(engine, settings.models_dir)
    try:
        row = registry.register(
            "converter",
            family="pix2pix-lora",
            snapshot_id="ds-0000000000000000",
            parent_version=None,
            config={},
            subjects=["p-1", "p-2", "p-3"],
        )

        assert registry.retain_subjects("converter", row.version, ["p-1", "p-3", "p-9"]) == 1

        assert registry.subjects("converter", row.version) == ["p-1", "p-3"]
        with pytest.raises(RegistryError):
            registry.retain_subjects("converter", 7, [])
    finally:
        engine.dispose()
