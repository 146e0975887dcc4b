"""Inference speed of the exported pix2pix-lora generator: PyTorch eager vs ONNX Runtime
FP32 vs ONNX Runtime static INT8, at batch 1 and 8, and their output differences.

The generator: by default (``--model trained``) the default size (width 32, 3 levels, 2
residual blocks; 3.6 M parameters) trained by the family's own script for ``--steps``
base steps and ``--lora-steps`` LoRA steps (rank 8) at 128 px on a snapshot of 15 train +
4 validation London-set portraits (the trainer tests' fixture); ``--model fresh`` exports
a freshly initialised one instead (its residual head is zero, so it returns the classical
stylisation and INT8's difference says little), ``--model stressed`` a fresh one whose
head is drawn N(0, 0.02): a large residual, a harder case for INT8. Then
``trainer.export.export_version`` writes the version directory at ``--resolution`` (INT8
calibrated on the 15 train crops), and each runtime runs the same validation crops (held
out from calibration), repeated to the batch size, ``--runs`` times interleaved (eager,
FP32, INT8, eager, ...): the median of each, and ratios to eager from the same run. Torch
and ONNX Runtime get the same thread count.

Usage:  python bench/export.py [--model trained|fresh|stressed] [--steps 20] [--lora-steps 10]
            [--resolution 256] [--runs 10] [--threads 1,2] [--json OUT]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "trainer"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from snapshot_fixture import make_snapshot  # noqa: E402

from agents.stores.blobs import BlobStore  # noqa: E402
from trainer.dataset.snapshot import read_manifest  # noqa: E402
from trainer.export import (  # noqa: E402
    MODEL_INT8,
    MODEL_ONNX,
    ExportOptions,
    export_version,
    generator_inputs,
    snapshot_calibration,
)
from trainer.export.int8 import median_ms, onnx_runner  # noqa: E402
from trainer.export.merge import load_base  # noqa: E402
from trainer.export.onnx_export import session  # noqa: E402
from trainer.families.pix2pix_lora.model import GeneratorConfig, build_model  # noqa: E402
from trainer.families.pix2pix_lora.train import main, parse_args  # noqa: E402
from trainer.runs import write_json  # noqa: E402

BATCHES = (1, 8)


def _generator(root: Path, manifest: Path, model: str, steps: int, lora_steps: int) -> Any:
    """(base_dir, adapter_dir or None) of the generator to export."""
    base = root / "base"
    if model in ("fresh", "stressed"):
        from safetensors.torch import save_file

        base.mkdir()
        torch.manual_seed(0)
        generator = build_model(GeneratorConfig())
        if model == "stressed":
            # A residual as large as a long-trained one might draw (max ~0.3 on [-1, 1]):
            # the zero-initialised head is what keeps a fresh or briefly trained
            # generator's residual, and so INT8's error on it, near zero.
            torch.nn.init.normal_(generator.head.weight, std=0.02)
        state = {k: v.contiguous() for k, v in generator.state_dict().items()}
        save_file(state, base / "generator.safetensors")
        generator.config.save(base)
        return base, None
    flags = [
        "--manifest", str(manifest), "--resolution", "128", "--batch-size", "4",
        "--threads", "1", "--checkpoint-every", "100000", "--samples", "1",
    ]  # fmt: skip
    main(parse_args(["base", "--out", str(base), "--steps", str(steps), *flags]))
    lora = root / "lora"
    lora_flags = ["--out", str(lora), "--base", str(base), "--steps", str(lora_steps)]
    main(parse_args(["lora", *lora_flags, *flags]))
    return base, lora


def bench(
    model: str, steps: int, lora_steps: int, resolution: int, runs: int, threads: list[int]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        snapshot = make_snapshot(root / "home", n_train=15, n_validation=4)
        manifest = read_manifest(snapshot.home / "datasets", snapshot.snapshot_id)
        blobs = BlobStore(snapshot.blob_dir)
        base_dir, adapter_dir = _generator(root, snapshot.manifest_path, model, steps, lora_steps)
        calibration = snapshot_calibration(manifest, blobs, count=16, split="train")
        report = export_version(
            base_dir,
            adapter_dir,
            root / "version",
            calibration,
            ExportOptions(resolution=resolution, timing_runs=runs),
        )
        held_out = snapshot_calibration(manifest, blobs, count=4, split="validation")
        selfie, base = generator_inputs(held_out, resolution)
        generator, _ = load_base(root / "version")
        generator.eval()
        rows = []
        diffs: dict[str, float] = {}
        for count in threads:
            torch.set_num_threads(count)
            fp32 = session(root / "version" / MODEL_ONNX, count)
            int8 = session(root / "version" / MODEL_INT8, count)

            def eager(s: np.ndarray, b: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    out: np.ndarray = generator(torch.from_numpy(s), torch.from_numpy(b)).numpy()
                return out

            runners = {"eager": eager, "fp32": onnx_runner(fp32), "int8": onnx_runner(int8)}
            if not diffs:
                outs = {name: run(selfie, base) for name, run in runners.items()}
                diffs = {
                    "fp32_vs_eager_max": _max(outs["fp32"], outs["eager"]),
                    "int8_vs_fp32_max": _max(outs["int8"], outs["fp32"]),
                    "int8_vs_fp32_mean": float(np.mean(np.abs(outs["int8"] - outs["fp32"]))),
                    "int8_vs_fp32_p99": float(
                        np.quantile(np.abs(outs["int8"] - outs["fp32"]), 0.99)
                    ),
                }
            for batch in BATCHES:
                index = np.arange(batch) % len(selfie)
                times = median_ms(runners, selfie[index], base[index], runs=runs)
                rows.append({"threads": count, "batch": batch, **times})
        return {
            "model": model,
            "steps": {"base": steps, "lora": lora_steps} if model == "trained" else None,
            "resolution": resolution,
            "runs": runs,
            "rows": rows,
            "held_out_diffs": diffs,
            "export": report.as_dict(),
        }


def _max(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)))


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("trained", "fresh", "stressed"), default="trained")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lora-steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = bench(
        args.model,
        args.steps,
        args.lora_steps,
        args.resolution,
        args.runs,
        [int(t) for t in args.threads.split(",")],
    )
    lines = [
        "| threads | batch | eager ms | ORT FP32 ms | ORT INT8 ms | FP32 / eager speed | "
        "INT8 / eager speed | INT8 / FP32 speed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['threads']} | {r['batch']} | {r['eager']:.1f} | {r['fp32']:.1f} | "
        f"{r['int8']:.1f} | {r['eager'] / r['fp32']:.2f}x | {r['eager'] / r['int8']:.2f}x | "
        f"{r['fp32'] / r['int8']:.2f}x |"
        for r in result["rows"]
    ]
    export = result["export"]
    d = result["held_out_diffs"]
    lines += [
        "",
        f"parity (export check, batch 1 and 3): FP32 vs eager max "
        f"{export['parity']['max_abs_diff']:.2e}; merged vs base + adapter "
        f"{export['parity']['merge_max_abs_diff']}",
        f"held-out crops: FP32 vs eager max {d['fp32_vs_eager_max']:.2e}; INT8 vs FP32 max "
        f"{d['int8_vs_fp32_max']:.4f}, p99 {d['int8_vs_fp32_p99']:.4f}, mean "
        f"{d['int8_vs_fp32_mean']:.4f} (outputs in [-1, 1]; one 8-bit level is 0.0078)",
        f"export took {export['seconds']:.1f} s; tensorrt: {export['tensorrt']['skipped']}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main_cli()
