"""Incremental LoRA retrain against a full retrain from scratch (pix2pix-lora, this CPU).

The situation the scheduler meets: a champion was trained on an older snapshot (A), and
new pairs arrived; the new snapshot (B) holds A's train pairs, the new ones, and the same
validation pairs. Two ways to a model of B:

- **full**: a base trained from scratch on B for ``--full-steps``;
- **incremental**: a LoRA adapter on the champion, warm-started as the retrain cycle does,
  trained on B for ``--incremental-steps`` (default a fifth of full) with a replay of A.

Both are then measured on B's validation split with the evaluation gate's own metrics
(:func:`trainer.evaluate.evaluate`: L1/SSIM/PSNR against the references, identity kept by
dlib's descriptor, style distance to the references), and their wall times compared. The
champion itself (trained once on A, not timed) is measured too, as the starting point.

Snapshots come from real test images (London-set crops and the bundled anime faces), as in
``bench/training.py``. Usage:

    python bench/retrain.py [--resolution 64] [--full-steps 300] [--incremental-steps 60]
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "trainer"))

from snapshot_fixture import make_snapshot  # noqa: E402

from agents.stages.embed import build_embedder  # noqa: E402
from agents.stores.blobs import BlobStore  # noqa: E402
from schemas.manifest import DatasetManifest  # noqa: E402
from schemas.settings import ModelSettings  # noqa: E402
from trainer.cycle import merge_adapter  # noqa: E402
from trainer.dataset.snapshot import (  # noqa: E402
    canonical_json,
    manifest_path,
    read_manifest,
    snapshot_id_of,
    write_once,
)
from trainer.evaluate import evaluate, load_generator, reference_statistics  # noqa: E402
from trainer.families.pix2pix_lora.model import stylise  # noqa: E402
from trainer.families.pix2pix_lora.train import main, parse_args  # noqa: E402

METRICS = ("l1", "ssim", "psnr", "identity", "style_z")


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


def train(home: Path, snapshot_id: str, out: Path, *flags: str) -> float:
    """Run the family's script; its wall seconds."""
    argv = [
        "--manifest",
        str(manifest_path(home / "datasets", snapshot_id)),
        "--blob-dir",
        str(home / "blobs"),
        "--out",
        str(out),
        *flags,
    ]
    start = time.perf_counter()
    main(parse_args(argv))
    return time.perf_counter() - start


def measure(
    generator: Any, home: Path, snapshot_id: str, resolution: int, embedder: Any
) -> dict[str, Any]:
    manifest = read_manifest(home / "datasets", snapshot_id)
    blobs = BlobStore(home / "blobs")
    references = reference_statistics(manifest.records, blobs, resolution)
    return evaluate(
        generator,
        manifest.split("validation"),
        blobs,
        resolution=resolution,
        condition=stylise,
        embedder=embedder,
        references=references,
    )


def main_bench(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--champion-steps", type=int, default=300)
    parser.add_argument("--full-steps", type=int, default=300)
    parser.add_argument("--incremental-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    incremental_steps = args.incremental_steps or max(1, args.full_steps // 5)
    common = [
        "--resolution", str(args.resolution),
        "--batch-size", str(args.batch_size),
        "--no-progressive",
        "--threads", str(args.threads),
        "--checkpoint-every", "100000",
        "--samples", "2",
    ]  # fmt: skip
    embedder = build_embedder(ModelSettings(), batch_size=16)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        old = make_snapshot(home, n_train=12, n_validation=4)
        new = make_snapshot(home, n_train=6, n_validation=0, offset=16)
        both = union_snapshot(home, old.snapshot_id, new.snapshot_id)
        runs = home / "runs"

        champion_s = train(
            home, old.snapshot_id, runs / "champion", "base",
            "--steps", str(args.champion_steps), *common,
        )  # fmt: skip
        full_s = train(home, both, runs / "full", "base", "--steps", str(args.full_steps), *common)
        incremental_s = train(
            home, both, runs / "incremental", "lora",
            "--base", str(runs / "champion"),
            "--replay-manifest", str(manifest_path(home / "datasets", old.snapshot_id)),
            "--steps", str(incremental_steps), *common,
        )  # fmt: skip
        generators = {
            "champion (A only)": (champion_s, load_generator(runs / "champion")),
            "full retrain on B": (full_s, load_generator(runs / "full")),
            "incremental LoRA on B": (
                incremental_s,
                merge_adapter(runs / "champion", runs / "incremental" / "adapter").eval(),
            ),
        }
        results = {
            name: (seconds, measure(generator, home, both, args.resolution, embedder))
            for name, (seconds, generator) in generators.items()
        }

    lines = [
        f"pix2pix-lora at {args.resolution} px, batch {args.batch_size}, {args.threads} threads; "
        f"A: 12 train pairs, B: A + 6 new (18 train), 4 validation pairs; champion "
        f"{args.champion_steps} steps on A, full {args.full_steps} steps on B, incremental "
        f"{incremental_steps} LoRA steps on B with replay of A",
        "",
        "| model | train s | vs full | " + " | ".join(METRICS) + " |",
        "|---|---:|---:|" + "---:|" * len(METRICS),
    ]
    for name, (seconds, metrics) in results.items():
        cells = " | ".join("-" if metrics.get(m) is None else f"{metrics[m]:.4g}" for m in METRICS)
        ratio = seconds / full_s
        lines.append(f"| {name} | {seconds:.1f} | {ratio:.2f} | {cells} |")
    lines += [
        "",
        "l1 and style_z: lower is better; ssim, psnr: higher; identity: distance input to "
        "output, lower keeps the person.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main_bench()
