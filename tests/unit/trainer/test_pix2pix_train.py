"""pix2pix-lora's training script, by tiny real runs (32-64 px, a few steps, a temporary
run directory) and assertions on what they saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from snapshot_fixture import FixtureSnapshot, make_snapshot

from agents.stores.blobs import BlobStore
from trainer.dataset.snapshot import read_manifest
from trainer.errors import CheckpointError, TrainingConfigError
from trainer.families.pix2pix_lora.model import GeneratorConfig, build_model, stylise
from trainer.families.pix2pix_lora.train import main, parse_args
from trainer.runs import checkpoint_seconds, checkpoints
from trainer.torchdata import PairDataset, to_rgb

#: A generator of ~40k parameters at 32 px: each step takes well under a second.
TINY = [
    "--batch-size", "2",
    "--resolution", "32",
    "--width", "8",
    "--levels", "2",
    "--res-blocks", "1",
    "--d-width", "8",
    "--samples", "2",
    # One thread: several times faster for tensors this small on a shared 2-core machine
    # (main() gives the caller its thread count back).
    "--threads", "1",
]  # fmt: skip


def _run(snapshot: FixtureSnapshot, mode: str, out: Path, *extra: str) -> dict[str, Any]:
    argv = [mode, "--manifest", str(snapshot.manifest_path), "--out", str(out), *TINY, *extra]
    return main(parse_args(argv))


@pytest.fixture(scope="module")
def base_run(snapshot: FixtureSnapshot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "base"
    _run(snapshot, "base", out, "--steps", "4", "--checkpoint-every", "2")
    return out


def test_base_run_saves_the_generator_and_its_record(base_run: Path) -> None:
    config = GeneratorConfig.load(base_run)
    assert config == GeneratorConfig(width=8, levels=2, res_blocks=1)
    saved = load_file(base_run / "generator.safetensors")
    expected = build_model(config).state_dict()
    assert set(saved) == set(expected)
    assert all(saved[k].shape == expected[k].shape for k in expected)
    assert any(not torch.equal(saved[k], expected[k]) for k in expected)  # it trained
    assert set(load_file(base_run / "discriminator.safetensors"))

    result = json.loads((base_run / "result.json").read_text())
    assert result["status"] == "complete"
    assert result["steps"] == 4
    assert result["samples_per_s"] > 0
    assert {"generator.safetensors", "generator.json", "losses.png"} <= set(result["files"])
    run = json.loads((base_run / "run.json").read_text())
    assert (run["status"], run["step"], run["mode"]) == ("complete", 4, "base")
    assert run["fingerprint"]["manifest_sha256"] == run["manifest_sha256"]

    rows = [json.loads(line) for line in (base_run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"d", "g", "structure", "style", "colour", "adversarial", "matching", "lr"} <= set(
        rows[0]
    )
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert [step for step, _ in checkpoints(base_run)] == [2]
    with Image.open(base_run / "losses.png") as plot:
        assert plot.format == "PNG"
    with Image.open(base_run / "samples" / "final.png") as grid:
        # selfie | stylised | output | reference, two validation rows under a title strip.
        assert grid.size == (4 * 32, 14 + 2 * 32)
    assert (base_run / "samples" / "step-000002.png").is_file()


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_does(
    snapshot: FixtureSnapshot, tmp_path: Path
) -> None:
    flags = ["--steps", "6", "--checkpoint-every", "2"]
    _run(snapshot, "base", tmp_path / "whole", *flags)
    # Interrupted after step 3: the newest checkpoint is step 2, step 3 is lost and redone.
    stopped = _run(snapshot, "base", tmp_path / "cut", *flags, "--stop-after", "3")
    assert stopped == {"run_dir": str(tmp_path / "cut"), "status": "stopped", "step": 3}
    assert [step for step, _ in checkpoints(tmp_path / "cut")] == [2]
    assert not (tmp_path / "cut" / "generator.safetensors").exists()
    resumed = _run(snapshot, "base", tmp_path / "cut", *flags, "--resume")
    assert resumed["status"] == "complete"

    # Bit-identical on a CPU: same draws, same augmentation, same optimizer and LR states.
    for name in ("generator.safetensors", "discriminator.safetensors"):
        whole, cut = load_file(tmp_path / "whole" / name), load_file(tmp_path / "cut" / name)
        assert all(torch.equal(whole[k], cut[k]) for k in whole), name
    lines = [(tmp_path / r / "losses.jsonl").read_text() for r in ("whole", "cut")]
    assert lines[0] == lines[1]  # and the loss log holds each step once, with equal losses
    # Checkpoints count the seconds spent in training steps from step 0, across the resume.
    for run in ("whole", "cut"):
        two, four = (checkpoint_seconds(tmp_path / run, step) for step in (2, 4))
        assert 0 < two < four, run

    # Resuming a finished run changes nothing; resuming with other flags is refused.
    assert _run(snapshot, "base", tmp_path / "cut", *flags, "--resume") == resumed
    with pytest.raises(CheckpointError, match=r"other settings \(steps: 6 -> 8\)"):
        _run(snapshot, "base", tmp_path / "cut", "--steps", "8", "--resume")


def test_run_directory_guards(snapshot: FixtureSnapshot, base_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="already holds files; pass --resume"):
        _run(snapshot, "base", base_run, "--steps", "4")
    with pytest.raises(CheckpointError, match="holds no run to resume"):
        _run(snapshot, "base", tmp_path / "nothing", "--steps", "4", "--resume")


def test_lora_adapter_loads_with_peft_and_reproduces_outputs(
    snapshot: FixtureSnapshot, base_run: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    out = tmp_path / "lora"
    result = _run(
        snapshot, "lora", out, "--base", str(base_run), "--steps", "3", "--lora-rank", "4",
        "--lora-alpha", "8", "--checkpoint-every", "2",
    )  # fmt: skip
    assert result["lora"]["r"] == 4
    assert result["lora"]["lora_alpha"] == 8
    assert result["parameters"]["trainable"] < result["parameters"]["generator"] / 2
    assert result["lineage"]["base"]["path"] == str(base_run)
    adapter = out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()
    }
    assert not (out / "generator.safetensors").exists()  # a lora run ships the adapter only
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights
    assert all("lora_" in k for k in weights)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)

    base = build_model(GeneratorConfig.load(base_run))
    base.load_state_dict(load_file(base_run / "generator.safetensors"))
    base.eval()
    manifest = read_manifest(snapshot.home / "datasets", snapshot.snapshot_id)
    shown = PairDataset(
        manifest.split("validation"),
        BlobStore(snapshot.blob_dir),
        32,
        condition=stylise,
        augment=False,
    )
    batch = [shown[i] for i in range(len(shown))]
    selfie = torch.stack([s["selfie"] for s in batch])
    condition = torch.stack([s["condition"] for s in batch])
    with torch.no_grad():
        before = base(selfie, condition)
        adapted = PeftModel.from_pretrained(base, str(adapter))
        after = adapted(selfie, condition)
    assert not torch.allclose(before, after)  # the adapter learned something
    # The run's own final samples were drawn by the in-memory model: the reloaded adapter
    # gives the very same pixels (output column of samples/final.png).
    with Image.open(out / "samples" / "final.png") as image:
        grid = np.asarray(image.convert("RGB"))
    for row, output in enumerate(after):
        drawn = grid[14 + row * 32 : 14 + (row + 1) * 32, 2 * 32 : 3 * 32]
        assert np.array_equal(drawn, to_rgb(output))


def test_lora_warm_start_with_replay(
    snapshot: FixtureSnapshot, base_run: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    _run(
        snapshot, "lora", first, "--base", str(base_run), "--steps", "2", "--checkpoint-every", "5"
    )
    older = make_snapshot(snapshot.home, n_train=3, n_validation=0, offset=10)
    second = tmp_path / "second"
    result = _run(
        snapshot, "lora", second, "--base", str(base_run), "--parent-adapter", str(first),
        "--replay-manifest", str(older.manifest_path), "--replay-fraction", "0.5",
        "--steps", "2", "--checkpoint-every", "5",
    )  # fmt: skip
    parent = load_file(first / "adapter" / "adapter_model.safetensors")
    child = load_file(second / "adapter" / "adapter_model.safetensors")
    assert set(parent) == set(child)
    assert result["lineage"]["parent_adapter"]["path"] == str(first / "adapter")
    run = json.loads((second / "run.json").read_text())
    assert (run["replay_snapshot"], run["replay_pairs"]) == (older.snapshot_id, 3)
    with pytest.raises(TrainingConfigError, match="--lora-rank 2 differs from the parent"):
        _run(
            snapshot, "lora", tmp_path / "third", "--base", str(base_run),
            "--parent-adapter", str(first), "--lora-rank", "2", "--steps", "2",
        )  # fmt: skip


def test_progressive_resolution(snapshot: FixtureSnapshot, tmp_path: Path) -> None:
    out = tmp_path / "progressive"
    argv = [
        "base", "--manifest", str(snapshot.manifest_path), "--out", str(out), *TINY,
        "--resolution", "64", "--progressive", "--steps", "4", "--checkpoint-every", "10",
    ]  # fmt: skip
    main(parse_args(argv))
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in rows] == [32, 32, 64, 64]
    with Image.open(out / "samples" / "final.png") as grid:
        assert grid.size == (4 * 64, 14 + 2 * 64)


def test_main_gives_the_thread_count_back(snapshot: FixtureSnapshot, base_run: Path) -> None:
    before = torch.get_num_threads()
    with pytest.raises(CheckpointError):
        _run(snapshot, "base", base_run, "--steps", "4")  # fails inside, after set_num_threads
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lora"], "lora runs need --base"),
        (["base", "--base", "x"], "--base is for lora runs only"),
        (["base", "--resolution", "40"], "--resolution must be a multiple of 16"),
        (["base", "--steps", "4", "--stop-after", "4"], "--stop-after must be between"),
        (
            ["lora", "--base", "b", "--replay-fraction", "1"],
            r"--replay-fraction must be in \[0, 1\)",
        ),
    ],
)
def test_flags_that_do_not_fit(argv: list[str], message: str) -> None:
    with pytest.raises(TrainingConfigError, match=message):
        parse_args([*argv, "--manifest", "m.json", "--out", "o"])


def test_lora_needs_a_finished_base(snapshot: FixtureSnapshot, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingConfigError, match=r"no generator\.safetensors there"):
        _run(snapshot, "lora", tmp_path / "lora", "--base", str(tmp_path / "empty"), "--steps", "2")
