"""Training throughput per family: samples/s of pix2pix-lora's base and lora runs, or of an
sd-lora run.

Builds a snapshot of real test images (15 train + 4 validation London-set portraits with
anime references, as the trainer tests do), then for each thread count runs, through the
same ``main(parse_args([...]))`` the CLI and the scheduler call:

    --family pix2pix-lora   ``base`` for ``--steps`` steps and ``lora`` on that base
    --family sd-lora        ``lora`` on a random-weight InstructPix2Pix pipeline built in
                            code (``--sd-size tiny``: the test's toy; ``sd15``: Stable
                            Diffusion 1.5's shapes, 860 M UNet parameters, the compute of a
                            real base; ~4 GB written to a temporary folder)

samples/s counts training steps only (data loading included; start-up, checkpoints and
sample grids excluded), as the run's ``result.json`` reports it (the first step's one-off
start-up cost included).

Usage:  python bench/training.py [--family pix2pix-lora] [--steps 20] [--resolution 128]
            [--batch-size 4] [--threads 1,2] [--sd-size tiny|sd15] [--json OUT]
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "trainer"))

from snapshot_fixture import make_snapshot  # noqa: E402

from trainer.families import get_family  # noqa: E402


def _run(family: str, manifest: Path, mode: str, out: Path, flags: list[str]) -> dict[str, Any]:
    chosen = get_family(family)
    argv = [mode, "--manifest", str(manifest), "--out", str(out), *flags]
    return chosen.main(chosen.parse_args(argv, None))


def bench(
    steps: int,
    resolution: int,
    batch: int,
    threads: list[int],
    family: str = "pix2pix-lora",
    sd_size: str = "tiny",
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        snapshot = make_snapshot(root / "home", n_train=15, n_validation=4)
        if family == "sd-lora":
            from sd_fixture import make_pipeline

            pipeline = make_pipeline(root / "sd", size=sd_size)
            for count in threads:
                flags = [
                    "--steps", str(steps), "--resolution", str(resolution),
                    "--batch-size", str(batch), "--threads", str(count),
                    "--checkpoint-every", str(steps + 1), "--samples", "1",
                    "--sample-steps", "2", "--base", str(pipeline),
                ]  # fmt: skip
                result = _run(family, snapshot.manifest_path, "lora", root / f"sd-{count}", flags)
                rows.append(_row(f"sd-lora {sd_size}", count, resolution, batch, steps, result))
            return rows
        for count in threads:
            flags = [
                "--steps", str(steps), "--resolution", str(resolution),
                "--batch-size", str(batch), "--threads", str(count),
                "--checkpoint-every", str(steps + 1), "--samples", "2",
            ]  # fmt: skip
            base = root / f"base-{count}"
            result = _run(family, snapshot.manifest_path, "base", base, flags)
            rows.append(_row("base", count, resolution, batch, steps, result))
            flags += ["--base", str(base)]
            result = _run(family, snapshot.manifest_path, "lora", root / f"lora-{count}", flags)
            rows.append(_row("lora", count, resolution, batch, steps, result))
    return rows


def _row(
    mode: str, threads: int, resolution: int, batch: int, steps: int, result: dict[str, Any]
) -> dict[str, Any]:
    return {
        "mode": mode,
        "threads": threads,
        "resolution": resolution,
        "batch": batch,
        "steps": steps,
        "samples_per_s": result["samples_per_s"],
        "trainable": result["parameters"]["trainable"],
        # pix2pix-lora counts its generator, sd-lora its UNet (the model LoRA adapts).
        "parameters": result["parameters"].get("generator", result["parameters"].get("unet")),
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("pix2pix-lora", "sd-lora"), default="pix2pix-lora")
    parser.add_argument("--sd-size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = bench(
        args.steps,
        args.resolution,
        args.batch_size,
        [int(t) for t in args.threads.split(",")],
        args.family,
        args.sd_size,
    )
    lines = [
        "| mode | threads | px | batch | steps | samples/s | trainable / all params |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['mode']} | {r['threads']} | {r['resolution']} | {r['batch']} | {r['steps']} | "
        f"{r['samples_per_s']:.2f} | {r['trainable']:,} / {r['parameters']:,} |"
        for r in rows
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main_cli()
