"""Incremental LoRA retrain against a full retrain from scratch (pix2pix-lora, this CPU).

The situation the scheduler meets: a champion was trained on an older snapshot (A), and
new pairs arrived; the new snapshot (B) holds A's train pairs, the new ones, and the same
validation pairs. Two ways to a model of B:

- **full**: a base trained from scratch on B for ``--full-steps``;
- **incremental**: a LoRA adapter on the champion, warm-started as the retrain cycle does,
  trained on B for ``--incremental-steps`` (default a fifth of full) with a replay of A,
  checkpointed every ``--eval-every`` steps.

Issue 9's target: the incremental retrain reaches the full retrain's validation metric in
at most 20 % of the full retrain's time. Every model is measured on B's validation split
with the evaluation gate's own metrics (:func:`trainer.evaluate.evaluate`: L1/SSIM/PSNR
against the references, identity kept by dlib's descriptor, style distance to the
references), and the incremental run at step 0 (the champion itself: the adapter starts
at zero), at each checkpoint and at its end is judged against the full retrain by the
gate's own rule and tolerances (:func:`trainer.evaluate.judge_candidate` with
``Settings().gate``, so ``S2A_GATE__*`` apply): "reaches the full retrain" means the gate
would promote it over the full retrain as champion, i.e. no metric worse than full's
beyond its tolerance; and, stricter, with every tolerance 0 (no metric worse at all). For
each, the bench reports the first evaluated step that reaches full, with its training
seconds against the full retrain's, or says that none did within the budget; and the
fixed-budget rows (every model at its last step) as before. When the champion itself
already reaches the full retrain, it says so: that time to reach says nothing about how
fast the adapter learns.

Times are seconds spent in training steps: the checkpoints' ``trained_seconds`` for the
incremental run, steps x batch / samples/s for the others; start-up, checkpoints, sample
grids and evaluation are left out on both sides, the evaluation's seconds are reported
apart, and each run's wall seconds are shown too. The first step reported is resolved to
``--eval-every`` steps: the run may have got there up to that many steps earlier.

Snapshots come from real test images (London-set crops and the bundled anime faces), as in
``bench/training.py``. Usage:

    python bench/retrain.py [--resolution 64] [--full-steps 300] [--incremental-steps 60]
        [--eval-every 10]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "trainer"))

from snapshot_fixture import make_snapshot  # noqa: E402

from agents.stages.embed import build_embedder  # noqa: E402
from agents.stores.blobs import BlobStore  # noqa: E402
from schemas.manifest import DatasetManifest  # noqa: E402
from schemas.settings import GateSettings, ModelSettings, Settings  # noqa: E402
from trainer.assemble import merge_adapter  # noqa: E402
from trainer.dataset.snapshot import (  # noqa: E402
    canonical_json,
    manifest_path,
    read_manifest,
    snapshot_id_of,
    write_once,
)
from trainer.evaluate import (  # noqa: E402
    GateVerdict,
    evaluate,
    judge_candidate,
    load_generator,
    reference_statistics,
)
from trainer.families.pix2pix_lora.model import stylise  # noqa: E402
from trainer.families.pix2pix_lora.train import main, parse_args  # noqa: E402
from trainer.runs import checkpoint_seconds, checkpoints  # noqa: E402

METRICS = ("l1", "ssim", "psnr", "identity", "style_z")
#: What accelerate's save_state names the first prepared model (the generator) in a
#: checkpoint, with safe serialization.
CHECKPOINT_GENERATOR = "model.safetensors"
TARGET = 0.20


def union_snapshot(home: Path, old_id: str, new_id: str) -> str:
    """A snapshot with the old snapshot's records and the new one's train records: the old
    validation pairs stay the validation split."""
    old = read_manifest(home / "datasets", old_id)
    new = read_manifest(home / "datasets", new_id)
    records = old.records + new.split("train")
    data = old.data.model_dump(mode="json")
    data["records"] = [r.model_dump(mode="json") for r in records]
    data["summary"]["records"] = len(records)
    data["summary"]["subjects"] = len({r.subject for r in records})
    data["summary"]["splits"]["train"] = {
        "records": sum(r.split == "train" for r in records),
        "subjects": len({r.subject for r in records if r.split == "train"}),
    }
    manifest = DatasetManifest.model_validate(data)
    raw = canonical_json(manifest.as_json())
    snapshot_id = snapshot_id_of(raw)
    write_once(manifest_path(home / "datasets", snapshot_id), raw)
    return snapshot_id


@dataclass(frozen=True)
class Run:
    """A finished training run: its steps, seconds in training steps, and wall seconds."""

    steps: int
    train_s: float
    wall_s: float


def train(home: Path, snapshot_id: str, out: Path, batch_size: int, *flags: str) -> Run:
    """Run the family's script to the end."""
    argv = [
        "--manifest",
        str(manifest_path(home / "datasets", snapshot_id)),
        "--blob-dir",
        str(home / "blobs"),
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        *flags,
    ]
    start = time.perf_counter()
    result = main(parse_args(argv))
    wall = time.perf_counter() - start
    steps = int(result["steps"])
    # samples/s counts the training steps only (trainer.families.pix2pix_lora.train).
    return Run(steps, steps * batch_size / float(result["samples_per_s"]), wall)


def checkpoint_generator(base_dir: Path, adapter_dir: Path, checkpoint: Path) -> Any:
    """The generator of a lora run at ``checkpoint``: the run's final adapter loaded onto
    the base, its weights replaced by the checkpoint's, merged."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from trainer.families.pix2pix_lora.model import (
        GENERATOR_WEIGHTS,
        GeneratorConfig,
        build_model,
    )

    base = build_model(GeneratorConfig.load(base_dir))
    base.load_state_dict(load_file(base_dir / GENERATOR_WEIGHTS))
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.load_state_dict(load_file(checkpoint / CHECKPOINT_GENERATOR))
    return model.merge_and_unload().eval()


@dataclass(frozen=True)
class Point:
    """The incremental run at ``step``, judged against the full retrain by each criterion
    (:data:`CRITERIA`)."""

    step: int
    train_s: float
    metrics: dict[str, float | None]
    verdicts: dict[str, GateVerdict]


class Measure:
    """The gate's metrics on B's validation split; counts the seconds it spends."""

    def __init__(
        self, home: Path, snapshot_id: str, resolution: int, embedder: Any, gate: GateSettings
    ) -> None:
        manifest = read_manifest(home / "datasets", snapshot_id)
        self.blobs = BlobStore(home / "blobs")
        self.records = manifest.split("validation")
        self.references = reference_statistics(manifest.records, self.blobs, resolution)
        self.resolution = resolution
        self.embedder = embedder
        self.gate = gate
        self.seconds = 0.0
        self.count = 0

    def __call__(self, generator: Any) -> dict[str, float | None]:
        start = time.perf_counter()
        metrics = evaluate(
            generator,
            self.records,
            self.blobs,
            resolution=self.resolution,
            condition=stylise,
            embedder=self.embedder,
            references=self.references,
            embed_side=self.gate.embed_side,
        )
        self.seconds += time.perf_counter() - start
        self.count += 1
        return metrics


TOLERANCES = ("l1", "ssim", "psnr", "identity", "style")
#: How "reaches the full retrain" is judged: the gate's tolerances, and none at all.
CRITERIA = {"within the gate's tolerances": 1.0, "no worse at all": 0.0}


def scaled(gate: GateSettings, scale: float) -> GateSettings:
    """``gate`` with every tolerance multiplied by ``scale``."""
    return gate.model_copy(
        update={f"{m}_tolerance": getattr(gate, f"{m}_tolerance") * scale for m in TOLERANCES}
    )


def reach(criterion: str, points: list[Point], full_s: float, budget: int, every: int) -> str:
    """The time to reach the full retrain by ``criterion``, against the target, in words."""
    first = next((p for p in points if p.step > 0 and p.verdicts[criterion].promote), None)
    if first is None:
        last = points[-1]
        line = (
            f"- {criterion}: not reached within the budget of {budget} steps "
            f"({last.train_s:.1f} s, {last.train_s / full_s:.2f} of the full retrain's "
            f"{full_s:.1f} s): target not met at this budget (a larger --incremental-steps "
            "shows when it is reached)."
        )
    else:
        ratio = first.train_s / full_s
        line = (
            f"- {criterion}: reached at step {first.step} (resolved to {every} steps), "
            f"{first.train_s:.1f} s of training, {ratio:.2f} of the full retrain's "
            f"{full_s:.1f} s: target (at most {TARGET:.2f}) "
            + ("met." if ratio <= TARGET else "not met.")
        )
    if points[0].verdicts[criterion].promote:
        line += (
            " The champion itself (step 0, no LoRA step yet) already reaches it: by this "
            "criterion the comparison cannot tell how fast the adapter learns the new pairs."
        )
    return line


def cells(metrics: dict[str, float | None]) -> str:
    return " | ".join("-" if metrics.get(m) is None else f"{metrics[m]:.4g}" for m in METRICS)


def judged(verdict: GateVerdict) -> str:
    if verdict.promote:
        return "yes"
    failed = [c.metric for c in verdict.checks if c.passed is False]
    return f"no ({', '.join(failed)})" if failed else "no (nothing compared)"


def main_bench(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--champion-steps", type=int, default=300)
    parser.add_argument("--full-steps", type=int, default=300)
    parser.add_argument(
        "--incremental-steps", type=int, default=None, help="the budget (default: full / 5)"
    )
    parser.add_argument(
        "--eval-every", type=int, default=None, help="steps (default: budget / 8, at least 1)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    budget = args.incremental_steps or max(1, args.full_steps // 5)
    every = args.eval_every or max(1, budget // 8)
    if budget < 1 or every < 1:
        parser.error(f"--incremental-steps and --eval-every must be at least 1: {budget}, {every}")
    gate = Settings().gate
    common = [
        "--resolution", str(args.resolution),
        "--no-progressive",
        "--threads", str(args.threads),
        "--samples", "2",
    ]  # fmt: skip
    once = ["--checkpoint-every", "100000"]
    embedder = build_embedder(ModelSettings(), batch_size=16)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        old = make_snapshot(home, n_train=12, n_validation=4)
        new = make_snapshot(home, n_train=6, n_validation=0, offset=16)
        both = union_snapshot(home, old.snapshot_id, new.snapshot_id)
        runs = home / "runs"
        batch = args.batch_size

        champion = train(
            home, old.snapshot_id, runs / "champion", batch, "base",
            "--steps", str(args.champion_steps), *common, *once,
        )  # fmt: skip
        full = train(
            home, both, runs / "full", batch, "base", "--steps", str(args.full_steps),
            *common, *once,
        )  # fmt: skip
        incremental = train(
            home, both, runs / "incremental", batch, "lora",
            "--base", str(runs / "champion"),
            "--replay-manifest", str(manifest_path(home / "datasets", old.snapshot_id)),
            "--steps", str(budget), *common,
            "--checkpoint-every", str(every), "--keep-checkpoints", str(budget),
        )  # fmt: skip

        measure = Measure(home, both, args.resolution, embedder, gate)
        full_metrics = measure(load_generator(runs / "full"))
        champion_metrics = measure(load_generator(runs / "champion"))
        adapter = runs / "incremental" / "adapter"
        steps: list[tuple[int, float, dict[str, float | None]]] = [(0, 0.0, champion_metrics)]
        for step, folder in checkpoints(runs / "incremental"):
            generator = checkpoint_generator(runs / "champion", adapter, folder)
            steps.append((step, checkpoint_seconds(runs / "incremental", step), measure(generator)))
        final_metrics = measure(merge_adapter(runs / "champion", adapter).eval())
        steps.append((incremental.steps, incremental.train_s, final_metrics))
    gates = {name: scaled(gate, scale) for name, scale in CRITERIA.items()}
    points = [
        Point(s, t, m, {name: judge_candidate(m, full_metrics, g) for name, g in gates.items()})
        for s, t, m in steps
    ]

    lines = [
        f"pix2pix-lora at {args.resolution} px, batch {batch}, {args.threads} threads; "
        f"A: 12 train pairs, B: A + 6 new (18 train), 4 validation pairs; champion "
        f"{args.champion_steps} steps on A, full {args.full_steps} steps on B, incremental "
        f"LoRA on B with replay of A, budget {budget} steps, judged every {every} steps "
        f"against full; the gate's tolerances: L1 {gate.l1_tolerance:g}, SSIM "
        f"{gate.ssim_tolerance:g}, PSNR {gate.psnr_tolerance:g} dB, identity "
        f"{gate.identity_tolerance:g}, style z {gate.style_tolerance:g}",
        "",
        "Fixed budget: each model at its last step.",
        "",
        "| model | steps | train s | wall s | vs full | " + " | ".join(METRICS) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(METRICS),
    ]
    for name, run, metrics in (
        ("champion (A only, the start)", champion, champion_metrics),
        ("full retrain on B", full, full_metrics),
        ("incremental LoRA on B", incremental, final_metrics),
    ):
        lines.append(
            f"| {name} | {run.steps} | {run.train_s:.1f} | {run.wall_s:.1f} | "
            f"{run.train_s / full.train_s:.2f} | {cells(metrics)} |"
        )
    lines += [
        "",
        "The incremental run, step by step: does it reach the full retrain?",
        "",
        "| step | train s | vs full | " + " | ".join(METRICS) + " | " + " | ".join(CRITERIA) + " |",
        "|---:|---:|---:|" + "---:|" * len(METRICS) + "---|" * len(CRITERIA),
    ]
    for p in points:
        verdicts = " | ".join(judged(p.verdicts[name]) for name in CRITERIA)
        lines.append(
            f"| {p.step} | {p.train_s:.1f} | {p.train_s / full.train_s:.2f} | "
            f"{cells(p.metrics)} | {verdicts} |"
        )
    lines.append("")
    for name in CRITERIA:
        lines.append(reach(name, points, full.train_s, budget, every))
    lines.append("")
    lines += [
        f"Evaluation: {measure.seconds:.1f} s for {measure.count} evaluations, left out of "
        "every time above.",
        "",
        "l1 and style_z: lower is better; ssim, psnr: higher; identity: distance input to "
        "output, lower keeps the person.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main_bench()
