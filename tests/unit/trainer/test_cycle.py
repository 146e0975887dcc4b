"""Retrain cycles, by tiny real runs on fixture snapshots (32 px, 2 steps, SQLite in a
temporary home): a first base version promoted on absolute limits, a warm-started LoRA
version gated against it with a replay of the champion's snapshot (without the pairs of a
subject erased since, after an erasure), a deliberately worse candidate refused, the steps
each cycle logs, and ``s2a models``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from snapshot_fixture import FixtureSnapshot, make_snapshot
from sqlalchemy import Engine
from sqlmodel import SQLModel

from agents.stages.embed import DlibResnetEmbedder
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from infra.cli import cli
from schemas.migrate import upgrade
from schemas.model_updates import ModelUpdate, VersionStatus
from schemas.settings import Settings, TrainSettings
from schemas.tables import VersionSubject
from trainer.assemble import merge_adapter
from trainer.cycle import CycleResult, gate_version, run_cycle
from trainer.dataset.snapshot import manifest_path, read_manifest
from trainer.registry import CANDIDATE, CHAMPION, Registry, hash_tree
from trainer.runs import replay_sample

#: The tiny generator of test_pix2pix_train.py (~40k parameters at 32 px).
TINY = [
    "--width", "8", "--levels", "2", "--res-blocks", "1", "--d-width", "8",
    "--samples", "2", "--threads", "1",
]  # fmt: skip


@dataclass
class Cycles:
    settings: Settings
    engine: Engine
    registry: Registry
    embedder: DlibResnetEmbedder
    first_snapshot: FixtureSnapshot
    second_snapshot: FixtureSnapshot
    first: CycleResult
    second: CycleResult


@pytest.fixture(scope="module")
def cycles(tmp_path_factory: pytest.TempPathFactory) -> Cycles:
    home = tmp_path_factory.mktemp("cycle-home")
    first_snapshot = make_snapshot(home, n_train=4, n_validation=2)
    second_snapshot = make_snapshot(home, n_train=4, n_validation=2, offset=3)
    settings = Settings(
        home=home,
        train=TrainSettings(steps=2, batch_size=2, resolution=32, checkpoint_every=100),
    )
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    embedder = DlibResnetEmbedder(batch_size=8)

    def cycle(snapshot: FixtureSnapshot, trigger: str) -> CycleResult:
        return run_cycle(
            settings,
            trigger,
            engine=engine,
            freeze=lambda _engine, _settings: snapshot.snapshot_id,
            embedder=embedder,
            train_args=TINY,
        )

    first = cycle(first_snapshot, "manual")
    second = cycle(second_snapshot, "data")
    yield Cycles(
        settings,
        engine,
        Registry(engine, settings.models_dir),
        embedder,
        first_snapshot,
        second_snapshot,
        first,
        second,
    )
    engine.dispose()


def test_first_cycle_trains_a_base_and_promotes_it(cycles: Cycles) -> None:
    first = cycles.first
    assert first.status == "promoted", first.reason
    assert (first.version, first.parent_version, first.champion) == (1, None, 1)
    row = cycles.registry.get("converter", 1)
    assert row.status == VersionStatus.PROMOTED
    assert row.config["mode"] == "base"
    # trainer.export is present: the version holds the serving files and export.json.
    assert row.config["export"]["status"] == "done"
    assert {"model.onnx", "export.json"} <= set(row.artifacts)
    version_dir = Path(row.path)
    assert version_dir == cycles.settings.models_dir / "converter" / "1"
    assert {"generator.safetensors", "generator.json", "config.json"} <= set(row.artifacts)
    assert row.artifacts == hash_tree(version_dir)
    assert Path(row.log_path).is_file()
    assert "base run on" in Path(row.log_path).read_text()
    # Every metric is stored with the verdict; the first one is judged on absolute limits.
    metrics = row.metrics
    assert metrics["champion"] is None
    assert set(metrics["candidate"]) >= {"l1", "ssim", "psnr", "identity", "style_z"}
    assert all(metrics["candidate"][k] is not None for k in ("l1", "identity", "style_z"))
    assert metrics["gate"]["promote"] is True
    assert metrics["gate"]["reason"].startswith("passed against the first-version limits")
    # The update to publish.
    assert isinstance(first.update, ModelUpdate)
    update = ModelUpdate.from_bytes(first.update.to_bytes())
    assert (update.version, update.previous_version, update.action) == (1, None, "promote")
    assert update.artifacts == row.artifacts


def test_version_subjects_are_the_manifest_subjects(cycles: Cycles) -> None:
    settings = cycles.settings
    first = read_manifest(settings.dataset_dir, cycles.first_snapshot.snapshot_id)
    second = read_manifest(settings.dataset_dir, cycles.second_snapshot.snapshot_id)
    assert cycles.registry.subjects("converter", 1) == sorted({r.subject for r in first.records})
    # The second holds subjects 3-8 and replays the first's train pairs it does not hold
    # (subjects 0-2): every subject of both, and no more (the first's validation
    # subjects 4 and 5 are the second's train ones).
    both = {r.subject for r in first.records} | {r.subject for r in second.records}
    assert cycles.registry.subjects("converter", 2) == sorted(both)
    only_first = sorted({r.subject for r in first.records} - {r.subject for r in second.records})
    assert cycles.registry.versions_with_subject(only_first[0]) == [
        ("converter", 1),
        ("converter", 2),
    ]


def test_a_normal_cycle_replays_every_pair_the_script_would_draw(cycles: Cycles) -> None:
    settings = cycles.settings
    first = read_manifest(settings.dataset_dir, cycles.first_snapshot.snapshot_id)
    second = read_manifest(settings.dataset_dir, cycles.second_snapshot.snapshot_id)
    row = cycles.registry.get("converter", 2)
    replay = row.config["replay"]
    assert replay["source"] == cycles.first_snapshot.snapshot_id
    assert replay["counts"] == {
        "source_train": 4,
        "held": 1,  # pair-0003 is in both snapshots
        "erased": 0,
        "eligible": 3,
        "drawn": 3,
        "missing_blobs": 0,
        "replayed": 3,
    }
    # The replay manifest holds what the script would have drawn from the champion's
    # snapshot itself, and the run trained on all of it.
    replayed = read_manifest(settings.dataset_dir, replay["manifest"])
    expected = replay_sample(first, second.split("train"), 256, 0)
    assert [r.pair_id for r in replayed.records] == [r.pair_id for r in expected]
    assert [r.pair_id for r in replayed.records] == ["pair-0000", "pair-0001", "pair-0002"]
    assert replayed.summary.records == 3
    assert all(r.identity is None for r in replayed.records)
    run = json.loads((Path(row.run_dir) / "run.json").read_text())
    assert (run["replay_snapshot"], run["replay_pairs"]) == (replay["manifest"], 3)
    argv = row.config["argv"]
    flag = argv.index("--replay-manifest")
    assert argv[flag + 1] == str(manifest_path(settings.dataset_dir, replay["manifest"]))


def test_a_cycles_log_names_its_steps(cycles: Cycles) -> None:
    row = cycles.registry.get("converter", 2)
    text = Path(row.log_path).read_text()
    snapshot = cycles.second_snapshot.snapshot_id
    for step in (
        f"converter v2: lora run on {snapshot} (trigger data)",
        f"snapshot {snapshot} frozen: 6 pairs of 6 subjects (train 4, validation 2)",
        f"replay of champion v1's snapshot: 3 of the 4 train pairs of "
        f"{cycles.first_snapshot.snapshot_id}",
        f"replay manifest {row.config['replay']['manifest']}: 3 pairs",
        "subjects: v2 trains on 9",
        "training: lora run of 2 steps, batch 2, 32 px",
        "training finished: 2 steps in ",
        "export: generator.json, generator.safetensors, model.int8.onnx, model.onnx in ",
        "candidate -> v2",
        f"gate on 2 validation pairs of {snapshot}, against champion v1: ",
    ):
        assert step in text, step
    if cycles.second.status == "promoted":
        assert "promoted: champion v1 -> champion v2 by scheduler" in text
    else:
        assert "refused: champion v1 stays" in text
    assert f"converter v2 {cycles.second.status}: {cycles.second.reason}" in text
    # `s2a models show` names the log; the first version's says it had no replay.
    first = Path(cycles.registry.get("converter", 1).log_path).read_text()
    assert "converter v1: base run on" in first
    assert "replay: none (no champion yet: a base run)" in first
    assert "gate on 2 validation pairs" in first
    assert "against no champion: passed against the first-version limits" in first
    assert "promoted: no champion -> champion v1 by scheduler" in first


def test_an_erasure_cycle_replays_the_champions_snapshot_without_the_erased(
    tmp_path: Path,
) -> None:
    """An erasure that left the champion's snapshot on disk: the erased subject's
    ``version_subjects`` rows and crops are gone (what agents.erasure removes), and one
    more pair lost a blob. The erasure-triggered cycle replays the rest of the snapshot."""
    first = make_snapshot(tmp_path, n_train=4, n_validation=2)
    second = make_snapshot(tmp_path, n_train=4, n_validation=2, offset=3)
    settings = Settings(
        home=tmp_path,
        train=TrainSettings(steps=2, batch_size=2, resolution=32, checkpoint_every=100),
    )
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    registry = Registry(engine, settings.models_dir)

    def cycle(snapshot: FixtureSnapshot, trigger: str) -> CycleResult:
        return run_cycle(
            settings,
            trigger,
            engine=engine,
            freeze=lambda _engine, _settings: snapshot.snapshot_id,
            embedder=None,
            train_args=TINY,
        )

    try:
        assert cycle(first, "manual").status == "promoted"
        old = read_manifest(settings.dataset_dir, first.snapshot_id)
        erased = next(r for r in old.records if r.subject == "subject-0001")
        lost = next(r for r in old.records if r.subject == "subject-0002")
        subjects = SQLModel.metadata.tables[VersionSubject.__tablename__]
        with engine.begin() as connection:
            connection.execute(subjects.delete().where(subjects.c.subject == erased.subject))
        blobs = BlobStore(first.blob_dir)
        for digest in (erased.selfie.crop_256, erased.selfie.crop_512, lost.selfie.crop_256):
            assert blobs.delete(digest)

        result = cycle(second, "erasure")

        assert result.status in ("promoted", "refused"), result.reason
        row = registry.get("converter", 2)
        assert row.config["replay_snapshot"] == first.snapshot_id
        assert row.config["replay"]["counts"] == {
            "source_train": 4,
            "held": 1,
            "erased": 1,
            "eligible": 2,
            "drawn": 2,
            "missing_blobs": 1,
            "replayed": 1,
        }
        replay_id = row.config["replay"]["manifest"]
        replayed = read_manifest(settings.dataset_dir, replay_id)
        assert [r.pair_id for r in replayed.records] == ["pair-0000"]
        written = manifest_path(settings.dataset_dir, replay_id).read_bytes()
        assert erased.subject.encode() not in written
        run = json.loads((Path(row.run_dir) / "run.json").read_text())
        assert (run["replay_snapshot"], run["replay_pairs"]) == (replay_id, 1)
        # Trained on: the new snapshot and the one replayed pair, nothing else.
        new = {r.subject for r in read_manifest(settings.dataset_dir, second.snapshot_id).records}
        assert registry.subjects("converter", 2) == sorted(new | {"subject-0000"})
        assert registry.versions_with_subject("subject-0002") == [("converter", 1)]
        assert "1 of subjects erased since" in Path(row.log_path).read_text()
    finally:
        engine.dispose()


def test_second_cycle_warm_starts_a_lora_and_is_gated_against_the_champion(
    cycles: Cycles,
) -> None:
    second = cycles.second
    assert second.status in ("promoted", "refused"), second.reason
    row = cycles.registry.get("converter", 2)
    assert (row.parent_version, row.config["mode"]) == (1, "lora")
    assert row.config["replay_snapshot"] == cycles.first_snapshot.snapshot_id
    assert "--replay-manifest" in row.config["argv"]
    assert row.config["base_dir"] == str(cycles.settings.models_dir / "converter" / "1")
    assert {"adapter/adapter_model.safetensors", "generator.safetensors"} <= set(row.artifacts)
    assert row.metrics["champion_version"] == 1
    assert row.metrics["champion"] is not None  # the champion measured on the same split
    assert row.metrics["split"]["snapshot_id"] == cycles.second_snapshot.snapshot_id
    assert cycles.registry.aliases("converter")[CANDIDATE] == 2
    expected = 2 if second.status == "promoted" else 1
    assert cycles.registry.aliases("converter")[CHAMPION] == expected


def test_gate_refuses_a_worse_candidate_and_keeps_the_champion(
    cycles: Cycles, tmp_path: Path
) -> None:
    registry, settings = cycles.registry, cycles.settings
    champion = registry.aliases("converter")[CHAMPION]
    good = registry.get("converter", 2)
    bad = registry.register(
        "converter",
        family=good.family,
        snapshot_id=good.snapshot_id,
        parent_version=champion,
        config=good.config,
        subjects=registry.subjects("converter", 2),
        trigger="test",
    )
    # The good adapter with large random weights: outputs far from anything trained.
    folder = Path(bad.path)
    shutil.copytree(Path(good.path) / "adapter", folder / "adapter")
    weights = load_file(folder / "adapter" / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    noisy = {k: torch.randn(v.shape, generator=generator) * 3.0 for k, v in weights.items()}
    save_file(noisy, folder / "adapter" / "adapter_model.safetensors")
    base_dir = Path(good.config["base_dir"])
    merged = merge_adapter(base_dir, folder / "adapter")
    save_file(
        {k: v.contiguous() for k, v in merged.state_dict().items()},
        folder / "generator.safetensors",
    )
    shutil.copy2(base_dir / "generator.json", folder / "generator.json")

    verdict, metrics = gate_version(
        registry, settings, "converter", bad.version, embedder=cycles.embedder
    )

    assert not verdict.promote
    assert verdict.reason.startswith("refused against the champion")
    assert registry.aliases("converter")[CHAMPION] == champion
    row = registry.get("converter", bad.version)
    assert row.status == VersionStatus.REFUSED
    assert row.reason == verdict.reason
    assert row.metrics == json.loads(json.dumps(metrics))
    assert row.metrics["candidate"]["l1"] > row.metrics["champion"]["l1"]
    assert any(c["passed"] is False for c in row.metrics["gate"]["checks"])


def test_models_cli_lists_shows_promotes_and_rolls_back(cycles: Cycles) -> None:
    env = {"S2A_HOME": str(cycles.settings.home)}
    runner = CliRunner()

    def run(*args: str) -> dict:
        result = runner.invoke(cli, ["models", *args, "--json"], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    listed = run("list")
    assert [v["version"] for v in listed["versions"]][:2] == [1, 2]
    assert listed["versions"][0]["status"] in ("promoted",)
    shown = run("show", "1")
    assert shown["files"]["loss_curve"].endswith("losses.png")
    assert Path(shown["files"]["loss_curve"]).is_file()
    assert Path(shown["files"]["sample_grid"]).is_file()
    assert shown["subjects"] == 6
    assert shown["alias_moves"][0]["to_version"] == 1

    before = cycles.registry.aliases("converter")[CHAMPION]
    target = 2 if before == 1 else 1
    promoted = run("promote", str(target), "--reason", "by hand", "--by", "ana")
    assert (promoted["move"]["from_version"], promoted["move"]["to_version"]) == (before, target)
    assert promoted["move"]["actor"] == "ana"
    assert promoted["update"]["action"] == "promote"
    rolled = run("rollback", "--reason", "undo", "--by", "bo")
    assert (rolled["move"]["from_version"], rolled["move"]["to_version"]) == (target, before)
    assert rolled["update"]["action"] == "rollback"
    assert cycles.registry.aliases("converter")[CHAMPION] == before
    last = cycles.registry.history("converter", CHAMPION)[-1]
    assert (last.actor, last.reason, last.action) == ("bo", "undo", "rollback")


def test_models_retrain_without_approved_pairs_fails_and_says_why(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["models", "retrain", "--json"], env={"S2A_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["status"], summary["version"], summary["champion"]) == ("failed", None, None)
    assert summary["reason"].startswith("snapshot: no approved pairs")


def test_models_show_text_names_the_run_files(cycles: Cycles) -> None:
    result = CliRunner().invoke(
        cli, ["models", "show", "1"], env={"S2A_HOME": str(cycles.settings.home)}
    )
    assert result.exit_code == 0, result.output
    assert "loss curve: " in result.stdout
    assert "losses.png" in result.stdout
    assert "sample grid: " in result.stdout
    assert "log (" not in result.stdout
    logged = CliRunner().invoke(
        cli, ["models", "show", "1", "--log"], env={"S2A_HOME": str(cycles.settings.home)}
    )
    assert logged.exit_code == 0, logged.output
    [replay] = [line for line in logged.stdout.splitlines() if "replay: none" in line]
    assert replay.startswith("    ")
    assert replay.endswith("(no champion yet: a base run)")
    as_json = CliRunner().invoke(
        cli, ["models", "show", "1", "--log", "--json"], env={"S2A_HOME": str(cycles.settings.home)}
    )
    assert "promoted: no champion -> champion v1" in json.loads(as_json.stdout)["log"]
    listed = CliRunner().invoke(
        cli, ["models", "list"], env={"S2A_HOME": str(cycles.settings.home)}
    )
    assert listed.stdout.splitlines()[0].split()[:3] == ["VERSION", "ALIASES", "STATUS"]


def test_models_retrain_waits_for_nobody_while_a_cycle_holds_the_lease(tmp_path: Path) -> None:
    from trainer.leases import RETRAIN_LEASE, acquire

    settings = Settings(home=tmp_path)
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        assert acquire(engine, RETRAIN_LEASE, "scheduler@other-host", ttl_s=60)
    finally:
        engine.dispose()

    result = CliRunner().invoke(cli, ["models", "retrain"], env={"S2A_HOME": str(tmp_path)})

    assert result.exit_code == 1
    assert "a retrain is running (scheduler@other-host until" in result.output


def test_a_failed_training_is_recorded_and_leaves_the_champion(tmp_path: Path) -> None:
    snapshot = make_snapshot(tmp_path, n_train=2, n_validation=1)
    settings = Settings(home=tmp_path, train=TrainSettings(steps=2, resolution=32))
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    registry = Registry(engine, settings.models_dir)
    try:
        result = run_cycle(
            settings,
            "schedule",
            engine=engine,
            freeze=lambda _engine, _settings: snapshot.snapshot_id,
            embedder=None,
            train_args=["--steps", "0"],  # refused by the family's parse_args
        )

        assert (result.status, result.version, result.champion) == ("failed", 1, None)
        assert result.update is None
        row = registry.get("converter", 1)
        assert row.status == VersionStatus.FAILED
        assert row.reason == "TrainingConfigError: --steps must be at least 1, got 0"
        assert registry.aliases("converter") == {}
        assert "converter v1 failed" in Path(row.log_path).read_text()
    finally:
        engine.dispose()


def test_a_cycle_deletes_the_files_of_versions_it_no_longer_keeps(cycles: Cycles) -> None:
    """Last in this module: it deletes files the tests above read."""
    registry = cycles.registry
    settings = cycles.settings.model_copy(
        update={"train": cycles.settings.train.model_copy(update={"keep_versions": 1})}
    )
    before = {r.version for r in registry.versions("converter")}

    result = run_cycle(
        settings,
        "manual",
        engine=cycles.engine,
        freeze=lambda _engine, _settings: cycles.second_snapshot.snapshot_id,
        embedder=cycles.embedder,
        train_args=TINY,
    )

    assert result.version not in before
    aliases = registry.aliases("converter")
    champion = registry.get("converter", aliases[CHAMPION])
    kept = {aliases[CHAMPION], aliases.get(CANDIDATE), result.version}
    rows = registry.versions("converter")
    deleted = [r.version for r in rows if r.files_deleted_at is not None]
    assert deleted, "keep_versions=1 after several versions deletes some files"
    assert not set(deleted) & kept
    for row in rows:
        assert Path(row.path).exists() == (row.files_deleted_at is None)
    # The champion's base (the next retrain starts from it) stays.
    assert Path(champion.config["base_dir"], "generator.safetensors").is_file()
