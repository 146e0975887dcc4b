"""Convert service throughput and latency: the bare engine in process against the full gRPC
path, and p99 during hot-swaps against steady state.

Exports two versions of a pix2pix-lora generator (``--width``/``--levels``/``--res-blocks``,
the family's defaults: 3.6 M parameters) at ``--resolution`` with the real export code, then:

    engine    C threads each calling ``OnnxEngine.infer`` on one image, in process
    grpc      C client threads calling Convert (skip_align, aligned crop, PNG out) on a
              server on loopback: decode, stylise, micro-batch, engine, encode, gRPC
    swap      the grpc run at concurrency 8 while the server swaps between the two versions
              every ``--swap-every`` seconds (admin Reload), against the same run without

Each point runs ``--seconds`` after one warm-up second; latencies are per call, measured by
the caller. Clients run in this process and share its cores with the server: on a small
machine the gRPC figures include the client's own CPU.

Usage:  python bench/serving.py [--resolution 128] [--seconds 5] [--concurrency 1,8,32]
            [--engine onnxruntime] [--json OUT]
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from schemas.settings import Settings  # noqa: E402
from serving.client import ConvertClient  # noqa: E402
from serving.engines import load_engine  # noqa: E402
from serving.server import create_server  # noqa: E402
from serving.version import read_version  # noqa: E402
from trainer.export import ExportOptions, export_version  # noqa: E402
from trainer.export.merge import save_generator  # noqa: E402
from trainer.families.pix2pix_lora.model import GeneratorConfig, build_model  # noqa: E402


def export(models: Path, version: int, config: GeneratorConfig, resolution: int) -> Path:
    generator = build_model(config)
    base = models.parent / f"base-{version}"
    base.mkdir(parents=True)
    save_generator(generator, base)
    out = models / "converter" / str(version)
    export_version(base, None, out, None, ExportOptions(resolution=resolution, int8=False))
    return out


def load(calls: Callable[[], None], concurrency: int, seconds: float) -> dict[str, float]:
    """Run ``calls`` from ``concurrency`` threads for ``seconds`` after 1 s of warm-up."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic() + 1.0
    end = start + seconds
    failures = [0]

    def worker() -> None:
        while (now := time.monotonic()) < end:
            try:
                calls()
            except Exception:
                failures[0] += 1
                continue
            if now >= start:
                with lock:
                    latencies.append(time.monotonic() - now)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ms = np.array(latencies) * 1000
    return {
        "per_s": round(len(ms) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else float("nan"),
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else float("nan"),
        "failures": failures[0],
    }


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = GeneratorConfig(args.width, args.levels, args.res_blocks)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        v1 = export(home / "models", 1, config, args.resolution)
        v2 = export(home / "models", 2, config, args.resolution)
        side = args.resolution
        rng = np.random.default_rng(0)
        selfie = rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)
        engine = load_engine(read_version(v1), args.engine)
        for c in args.concurrency:
            stats = load(lambda: engine.infer(selfie, selfie), c, args.seconds)
            rows.append({"path": f"engine ({engine.name})", "concurrency": c, **stats})
        engine.unload()

        settings = Settings(
            home=home,
            serving={"port": 0, "follow_updates": False, "engine": args.engine, "max_queue": 256},
        )
        server, port = create_server(settings, updates=None)
        server.start(initial_model=v1)
        server.wait_until_serving(120)
        crop = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(crop, "PNG")
        data = crop.getvalue()
        client = ConvertClient(f"127.0.0.1:{port}", retries=0)

        def convert() -> None:
            client.convert(data, skip_align=True, output="crop")

        for c in args.concurrency:
            stats = load(convert, c, args.seconds)
            rows.append({"path": "grpc Convert", "concurrency": c, **stats})
        steady = load(convert, 8, args.seconds)
        rows.append({"path": "grpc, steady", "concurrency": 8, **steady})
        stop = threading.Event()
        swaps = [0]

        def swapper() -> None:
            target = [v2, v1]
            while not stop.wait(args.swap_every):
                server.reload(target[swaps[0] % 2])
                swaps[0] += 1

        thread = threading.Thread(target=swapper)
        thread.start()
        during = load(convert, 8, args.seconds)
        stop.set()
        thread.join()
        rows.append({"path": f"grpc, {swaps[0]} hot-swaps", "concurrency": 8, **during})
        client.close()
        server.stop()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| path | concurrency | calls/s | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['failures']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--res-blocks", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--swap-every", type=float, default=1.0)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    results = bench(arguments)
    sys.stdout.write(table(results) + "\n")
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")
