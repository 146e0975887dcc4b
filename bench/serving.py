"""Convert service throughput and latency: the bare engine, the server's pipeline called in
process, and the full gRPC path, in one run; and p99 during hot-swaps against steady state.

Exports two versions of a pix2pix-lora generator (``--width``/``--levels``/``--res-blocks``,
the family's defaults: 3.6 M parameters) at ``--resolution`` with the real export code,
starts a server on loopback with the settings' thread plan (as ``s2a serve`` does, PyTorch's
threads included), then at each concurrency C runs, back to back:

    engine          C threads each calling ``engine.infer`` on one ready model input, in
                    process, with the server's engine settings (its intra-op threads)
    in-process crop C threads calling the server's own :class:`~serving.service.Conversion`
                    (``server.conversion``) on a 256 px PNG crop with skip_align, aligned
                    crop out: decode, model inputs (the family's cel-shaded base), the
                    micro-batcher and engine, PNG encode; no gRPC
    gRPC crop       the same request through Convert on loopback with the real client
    in-process full the server's Conversion on a real 512 px selfie (JPEG): decode, MTCNN,
                    align, model inputs, batcher and engine, paste-back, PNG encode
    gRPC full       the same through Convert
    swap            gRPC crop at concurrency 8 while the server swaps between the two
                    versions every ``--swap-every`` seconds (admin Reload), against the same
                    run without (steady)

What each ratio measures: gRPC crop / engine is the issue's comparison, and it includes
the pipeline's own work (decode, model inputs, encode); gRPC / in-process (crop or full) is
the server's own overhead (protobuf, gRPC, handler threads), which the 90 % target is about.

Each point runs ``--seconds`` after a warm-up second; ``--rounds`` repeats every point and
reports each figure's median over rounds (a shared machine's neighbours come and go).
Latencies are per call, measured by the caller. ``CPU ms/call`` is this process's CPU time
(every thread: callers, gRPC, batcher, runtime pools) per answered call: unlike calls/s it
hardly moves when other jobs share the cores. Clients run in this process and share its
cores with the server: the gRPC figures include the client's own CPU.

Usage:  python bench/serving.py [--resolution 128] [--seconds 5] [--rounds 1]
            [--concurrency 1,8,32] [--engine onnxruntime] [--json OUT]
Prints two Markdown tables (the runs, the ratios) and the machine's load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
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

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from schemas.settings import Settings  # noqa: E402
from serving.client import ConvertClient  # noqa: E402
from serving.engines import default_factory, load_engine, thread_plan  # noqa: E402
from serving.preprocess import Options  # noqa: E402
from serving.server import create_server  # noqa: E402
from serving.version import read_version  # noqa: E402
from trainer.export import ExportOptions, export_version  # noqa: E402
from trainer.export.merge import save_generator  # noqa: E402
from trainer.families.pix2pix_lora.model import GeneratorConfig, build_model  # noqa: E402

SELFIE = ROOT / "tests" / "data" / "real" / "london_001_neutral.jpg"
Stats = dict[str, float]


def export(models: Path, version: int, config: GeneratorConfig, resolution: int) -> Path:
    generator = build_model(config)
    base = models.parent / f"base-{version}"
    base.mkdir(parents=True)
    save_generator(generator, base)
    out = models / "converter" / str(version)
    export_version(base, None, out, None, ExportOptions(resolution=resolution, int8=False))
    return out


def load(calls: Callable[[], object], concurrency: int, seconds: float) -> Stats:
    """Run ``calls`` from ``concurrency`` threads for ``seconds`` after 1 s of warm-up.

    calls/s and CPU time count the calls that end inside the window (steady state: about
    as many are in flight at its end as at its start); latencies, the calls that begin in
    it."""
    latencies: list[float] = []
    ended = [0]
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
            done = time.monotonic()
            with lock:
                if now >= start:
                    latencies.append(done - now)
                if start <= done < end:
                    ended[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start - time.monotonic()))
    cpu_start = time.process_time()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu = time.process_time() - cpu_start
    for thread in threads:
        thread.join()
    ms = np.array(latencies) * 1000
    return {
        "per_s": ended[0] / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "cpu_ms": cpu * 1000 / ended[0] if ended[0] else float("nan"),
        "failures": failures[0],
    }


def median(runs: list[Stats]) -> Stats:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = GeneratorConfig(args.width, args.levels, args.res_blocks)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        v1 = export(home / "models", 1, config, args.resolution)
        v2 = export(home / "models", 2, config, args.resolution)
        settings = Settings(
            home=home,
            serving={"port": 0, "follow_updates": False, "engine": args.engine, "max_queue": 256},
        )
        plan = thread_plan(settings.serving.intra_op_threads)
        torch.set_num_threads(plan.threads)  # what serving.server.serve does
        server, port = create_server(settings, updates=None)
        server.start(initial_model=v1)
        server.wait_until_serving(120)
        engine = load_engine(
            read_version(v1), args.engine, factory=default_factory(threads=plan.threads)
        )
        rng = np.random.default_rng(0)
        side = args.resolution
        ready = rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(png, "PNG")
        crop, selfie = png.getvalue(), SELFIE.read_bytes()
        client = ConvertClient(f"127.0.0.1:{port}", retries=0)
        conversion = server.conversion

        def in_process(data: bytes, options: Options) -> Callable[[], object]:
            return lambda: conversion.run(data, options, time.monotonic() + 60)

        paths: dict[str, Callable[[], object]] = {
            f"engine ({engine.name})": lambda: engine.infer(ready, ready),
            "in-process crop": in_process(crop, Options(skip_align=True, paste_back=False)),
            "gRPC crop": lambda: client.convert(crop, skip_align=True, output="crop"),
            "in-process full": in_process(selfie, Options()),
            "gRPC full": lambda: client.convert(selfie),
        }
        for c in args.concurrency:
            runs: dict[str, list[Stats]] = {name: [] for name in paths}
            for _round in range(args.rounds):
                for name, call in paths.items():
                    runs[name].append(load(call, c, args.seconds))
            for name in paths:
                rows.append({"path": name, "concurrency": c, **median(runs[name])})
        engine.unload()

        stop = threading.Event()
        swaps = [0]

        def swapper() -> None:
            target = [v2, v1]
            while not stop.wait(args.swap_every):
                server.reload(target[swaps[0] % 2])
                swaps[0] += 1

        steady_runs, swap_runs = [], []
        for _round in range(args.rounds):
            steady_runs.append(load(paths["gRPC crop"], 8, args.seconds))
            stop.clear()
            thread = threading.Thread(target=swapper)
            thread.start()
            swap_runs.append(load(paths["gRPC crop"], 8, args.seconds))
            stop.set()
            thread.join()
        rows.append({"path": "gRPC crop, steady", "concurrency": 8, **median(steady_runs)})
        rows.append(
            {"path": f"gRPC crop, {swaps[0]} hot-swaps", "concurrency": 8, **median(swap_runs)}
        )
        client.close()
        server.stop()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| path | concurrency | calls/s | p50 ms | p99 ms | CPU ms/call | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['cpu_ms']:.1f} | {r['failures']:.0f} |"
        )
    return "\n".join(lines)


RATIOS = (
    ("gRPC crop / engine", "gRPC crop", "engine"),
    ("in-process crop / engine", "in-process crop", "engine"),
    ("gRPC crop / in-process crop", "gRPC crop", "in-process crop"),
    ("gRPC full / in-process full", "gRPC full", "in-process full"),
    ("gRPC full / engine", "gRPC full", "engine"),
)


def ratios(rows: list[dict[str, Any]]) -> str:
    """calls/s of one path over another's at each concurrency, and the same from CPU time
    per call (the capacity ratio on equal cores, steadier on a shared machine)."""
    by = {(r["path"].split(" (")[0], r["concurrency"]): r for r in rows}
    levels = sorted({c for name, c in by if name == "engine"})
    head = " | ".join(f"{c} callers: calls/s, CPU" for c in levels)
    lines = [f"| ratio | {head} |", "|---|" + "---:|" * len(levels)]
    for label, top, bottom in RATIOS:
        cells = []
        for c in levels:
            a, b = by.get((top, c)), by.get((bottom, c))
            if a is None or b is None:
                cells.append("-")
                continue
            cells.append(f"{a['per_s'] / b['per_s']:.0%}, {b['cpu_ms'] / a['cpu_ms']:.0%}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--res-blocks", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--swap-every", type=float, default=1.0)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    before = os.getloadavg()
    results = bench(arguments)
    after = os.getloadavg()
    sys.stdout.write(table(results) + "\n\n" + ratios(results) + "\n\n")
    sys.stdout.write(
        f"load average (1 min) before {before[0]:.2f}, after {after[0]:.2f}, "
        f"on {os.cpu_count()} CPUs\n"
    )
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")
