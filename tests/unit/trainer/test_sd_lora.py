"""sd-lora's training script, by tiny real runs: a random InstructPix2Pix pipeline built in
code (``sd_fixture``), 32 px, a few steps, a temporary run directory, then assertions on
what was saved and that diffusers' own loader takes the adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from sd_fixture import make_pipeline
from snapshot_fixture import FixtureSnapshot

from trainer.errors import CheckpointError, TrainingConfigError
from trainer.families import get_family
from trainer.families.sd_lora.model import ADAPTER_WEIGHTS, LORA_TARGETS, build_model
from trainer.families.sd_lora.train import main, parse_args
from trainer.runs import checkpoints

TINY = [
    "--batch-size", "2",
    "--resolution", "32",
    "--samples", "2",
    "--sample-steps", "2",
    # One thread: faster for tensors this small on a shared 2-core machine.
    "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pipeline(tmp_path_factory.mktemp("sd"))


def _run(snapshot: FixtureSnapshot, base: Path, out: Path, *extra: str) -> dict[str, Any]:
    argv = ["lora", "--manifest", str(snapshot.manifest_path), "--base", str(base)]
    return main(parse_args([*argv, "--out", str(out), *TINY, *extra]))


@pytest.fixture(scope="module")
def lora_run(
    snapshot: FixtureSnapshot, pipeline: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lora"
    _run(
        snapshot, pipeline, out, "--steps", "4", "--checkpoint-every", "2",
        "--gradient-accumulation-steps", "2", "--lora-rank", "4", "--lora-alpha", "8",
        "--lr", "1e-2",
    )  # fmt: skip
    return out


def _unet_output(pipe: Any) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 8, 16, 16, generator=generator)
    text = torch.randn(1, 40, 16, generator=generator)
    with torch.no_grad():
        output: torch.Tensor = pipe.unet(sample, 500, text, return_dict=False)[0]
    return output


def test_lora_run_saves_the_adapter_and_its_record(lora_run: Path) -> None:
    weights = load_file(lora_run / "adapter" / ADAPTER_WEIGHTS)
    assert weights
    # diffusers' format: unet.<module path>.lora.down|up.weight, on the attention only.
    assert all(k.startswith("unet.") for k in weights)
    assert {k.rsplit(".", 2)[-2] for k in weights} == {"down", "up"}
    targets = {k.split(".lora.")[0].removeprefix("unet.") for k in weights}
    assert all(t.endswith(LORA_TARGETS) for t in targets)
    assert {next(s for s in LORA_TARGETS if t.endswith(s)) for t in targets} == set(LORA_TARGETS)
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert all(w.shape[0] == 4 for k, w in weights.items() if ".lora.down." in k)  # rank 4
    assert any(w.abs().sum() > 0 for k, w in weights.items() if ".lora.up." in k)  # trained
    with safe_open(str(lora_run / "adapter" / ADAPTER_WEIGHTS), "pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert (metadata["unet.r"], metadata["unet.lora_alpha"]) == (4, 8)

    result = json.loads((lora_run / "result.json").read_text())
    assert (result["status"], result["family"], result["mode"], result["steps"]) == (
        "complete", "sd-lora", "lora", 4,
    )  # fmt: skip
    assert result["samples_per_s"] > 0
    assert result["lora"]["target_modules"] == sorted(LORA_TARGETS)
    assert 0 < result["parameters"]["trainable"] < result["parameters"]["unet"] / 10
    run = json.loads((lora_run / "run.json").read_text())
    assert (run["status"], run["step"]) == ("complete", 4)
    assert run["args"]["gradient_accumulation_steps"] == 2

    rows = [json.loads(line) for line in (lora_run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert [step for step, _ in checkpoints(lora_run)] == [2]
    # A checkpoint holds the adapter, never the frozen UNet.
    checkpoint = checkpoints(lora_run)[0][1]
    assert (checkpoint / ADAPTER_WEIGHTS).is_file()
    assert not list(checkpoint.glob("model*.safetensors"))
    with Image.open(lora_run / "losses.png") as plot:
        assert plot.format == "PNG"
    with Image.open(lora_run / "samples" / "final.png") as grid:
        assert grid.size == (3 * 32, 14 + 2 * 32)  # selfie | output | reference, 2 rows
    assert (lora_run / "samples" / "step-000002.png").is_file()


def test_the_adapter_loads_with_diffusers_own_loader(pipeline: Path, lora_run: Path) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        pipeline, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    before = _unet_output(pipe)
    pipe.load_lora_weights(str(lora_run / "adapter"), weight_name=ADAPTER_WEIGHTS)
    after = _unet_output(pipe)
    assert not torch.allclose(before, after, atol=1e-6)
    (config,) = pipe.unet.peft_config.values()
    assert (config.r, config.lora_alpha) == (4, 8)  # alpha from the saved metadata

    # build_model is the same loader; disabling the adapter gives the base back.
    loaded = build_model(pipeline, adapter=lora_run)
    assert torch.allclose(_unet_output(loaded), after)
    loaded.disable_lora()
    assert torch.allclose(_unet_output(loaded), before)


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_does(
    snapshot: FixtureSnapshot, pipeline: Path, tmp_path: Path
) -> None:
    flags = ["--steps", "4", "--checkpoint-every", "2", "--gradient-accumulation-steps", "2"]
    _run(snapshot, pipeline, tmp_path / "whole", *flags)
    # Interrupted after step 3: the newest checkpoint is step 2, step 3 is lost and redone.
    stopped = _run(snapshot, pipeline, tmp_path / "cut", *flags, "--stop-after", "3")
    assert stopped == {"run_dir": str(tmp_path / "cut"), "status": "stopped", "step": 3}
    assert not (tmp_path / "cut" / "adapter").exists()
    resumed = _run(snapshot, pipeline, tmp_path / "cut", *flags, "--resume")
    assert resumed["status"] == "complete"

    # Bit-identical on a CPU: same draws, noise, timesteps, optimizer and LR states.
    whole = load_file(tmp_path / "whole" / "adapter" / ADAPTER_WEIGHTS)
    cut = load_file(tmp_path / "cut" / "adapter" / ADAPTER_WEIGHTS)
    assert set(whole) == set(cut)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    lines = [(tmp_path / r / "losses.jsonl").read_text() for r in ("whole", "cut")]
    assert lines[0] == lines[1]

    assert _run(snapshot, pipeline, tmp_path / "cut", *flags, "--resume") == resumed
    with pytest.raises(CheckpointError, match=r"other settings \(lora_rank: 8 -> 4\)"):
        _run(snapshot, pipeline, tmp_path / "cut", *flags, "--lora-rank", "4", "--resume")


def test_warm_start_from_a_parent_adapter(
    snapshot: FixtureSnapshot, pipeline: Path, lora_run: Path, tmp_path: Path
) -> None:
    result = _run(
        snapshot, pipeline, tmp_path / "child", "--parent-adapter", str(lora_run),
        "--steps", "1", "--checkpoint-every", "5", "--lr", "1e-12",
    )  # fmt: skip
    assert result["lineage"]["parent_adapter"]["path"] == str(lora_run / "adapter")
    assert (result["lora"]["r"], result["lora"]["lora_alpha"]) == (4, 8)  # the parent's
    parent = load_file(lora_run / "adapter" / ADAPTER_WEIGHTS)
    child = load_file(tmp_path / "child" / "adapter" / ADAPTER_WEIGHTS)
    assert set(parent) == set(child)
    # One step at a negligible lr: the child starts from the parent's weights.
    assert all(torch.allclose(parent[k], child[k], atol=1e-6) for k in parent)
    with pytest.raises(TrainingConfigError, match="--lora-rank 2 differs from the parent"):
        _run(
            snapshot, pipeline, tmp_path / "other", "--parent-adapter", str(lora_run),
            "--lora-rank", "2", "--steps", "1",
        )  # fmt: skip


def test_a_base_folder_missing_a_part_is_named(
    snapshot: FixtureSnapshot, pipeline: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(pipeline, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(TrainingConfigError, match=rf"{broken}: no vae/ there"):
        _run(snapshot, broken, tmp_path / "run", "--steps", "2")
    shutil.copytree(pipeline / "vae", broken / "vae")
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(TrainingConfigError, match=r"tokenizer/ has no vocab\.json or tokenizer"):
        _run(snapshot, broken, tmp_path / "run", "--steps", "2")


def test_a_text_to_image_unet_is_refused(snapshot: FixtureSnapshot, tmp_path: Path) -> None:
    img2img = make_pipeline(tmp_path, in_channels=4)
    with pytest.raises(TrainingConfigError, match="takes 4 input channels, not 8"):
        _run(snapshot, img2img, tmp_path / "run", "--steps", "2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="mixed precision runs on a GPU")
def test_mixed_precision_is_refused_on_a_cpu(
    snapshot: FixtureSnapshot, pipeline: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingConfigError, match="--mixed-precision bf16 needs a CUDA GPU"):
        _run(snapshot, pipeline, tmp_path / "run", "--mixed-precision", "bf16")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["base", "--base", "b"], "sd-lora trains LoRA adapters on a pretrained pipeline"),
        (["lora"], "needs --pretrained-model-name-or-path"),
        (["lora", "--base", "b", "--progressive"], "--progressive is not supported"),
        (["lora", "--base", "b", "--resolution", "36"], "--resolution must be a multiple of 8"),
        (["lora", "--base", "b", "--steps", "4", "--stop-after", "4"], "--stop-after must be"),
        (
            ["lora", "--base", "b", "--gradient-accumulation-steps", "0"],
            "--gradient-accumulation-steps must be at least 1",
        ),
        (["lora", "--base", "b", "--conditioning-dropout-prob", "0.5"], r"in \[0, 1/3\]"),
    ],
)
def test_flags_that_do_not_fit(argv: list[str], message: str) -> None:
    with pytest.raises(TrainingConfigError, match=message):
        parse_args([*argv, "--manifest", "m.json", "--out", "o"])


def test_s2a_train_runs_the_family(
    snapshot: FixtureSnapshot, pipeline: Path, tmp_path: Path
) -> None:
    from infra.cli import cli

    assert get_family("sd-lora").parse_args is parse_args
    out = tmp_path / "cli"
    args = [
        "train", "lora", snapshot.snapshot_id, "--family", "sd-lora", "--base", str(pipeline),
        "--steps", "2", "--out", str(out), "--json",
    ]  # fmt: skip
    env = {
        "S2A_HOME": str(snapshot.home),
        "S2A_TRAIN__RESOLUTION": "32",
        "S2A_TRAIN__BATCH_SIZE": "2",
        "S2A_TRAIN__CHECKPOINT_EVERY": "5",
        "S2A_MODELS__TORCH_THREADS": "1",
    }
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["family"], summary["status"], summary["steps"]) == ("sd-lora", "complete", 2)
    assert (out / "adapter" / ADAPTER_WEIGHTS).is_file()
