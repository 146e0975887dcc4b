"""``export_version``: one trained generator -> the serving artifacts of a version directory.

See the package docstring (:mod:`trainer.export`) for the directory layout and
``export.json``, the contract serving reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import ExportInputError, ParityError
from trainer.export.calibration import check_crops, generator_inputs, random_inputs
from trainer.export.int8 import OP_TYPES, median_ms, onnx_runner, quantize_int8
from trainer.export.merge import LoadedGenerator, load_generator, save_generator, sha256_file
from trainer.export.onnx_export import (
    OPSET,
    Array,
    check_resolution,
    export_onnx,
    io_contract,
    max_abs_diff,
    run_eager,
    run_onnx,
    session,
)
from trainer.export.tensorrt import EngineResult, build_engine
from trainer.families.pix2pix_lora.train import ADAPTER_DIR, FAMILY
from trainer.runs import RUN_JSON, write_json

log = logging.getLogger(__name__)

EXPORT_JSON = "export.json"
MODEL_ONNX = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
MODEL_PLAN = "model.plan"
#: export.json's layout version: serving refuses a version directory it cannot read.
FORMAT_VERSION = 1
#: Export side when neither the caller nor the training run says: the aligned crop's size.
DEFAULT_RESOLUTION = 256
#: Batches the FP32 parity check runs (1, and 3 to prove the batch axis is dynamic).
PARITY_BATCHES = (1, 3)

#: ``(onnx_path, plan_path, resolution, calibration) -> EngineResult``; the TensorRT seam.
EngineBuilder = Callable[[Path, Path, int, tuple[Array, Array] | None], EngineResult]


def _default_engine_builder(
    onnx_path: Path, plan_path: Path, resolution: int, calibration: tuple[Array, Array] | None
) -> EngineResult:
    return build_engine(onnx_path, plan_path, resolution, calibration=calibration)


@dataclass(frozen=True)
class ExportOptions:
    """How to export; the defaults are what the retrain cycle uses.

    ``resolution``: the served side in px (None: the training run's, from its run.json,
    else 256). ``tolerance``: the largest max abs difference allowed between ONNX Runtime
    FP32 and PyTorch eager, and between the merged weights and base + adapter, on outputs
    in [-1, 1] (measured ~1e-6 and ~3e-6; 1e-4 is ~1/80 of one 8-bit level).
    ``int8``: also write ``model.int8.onnx`` (needs calibration crops). ``timing_runs``
    interleaved runs at batch ``timing_batch`` time FP32 against INT8 (median).
    ``tensorrt``: try the TensorRT engine (skips itself without tensorrt or a GPU);
    ``tensorrt_int8``: calibrate it on the same crops.
    """

    resolution: int | None = None
    tolerance: float = 1e-4
    int8: bool = True
    int8_op_types: tuple[str, ...] = OP_TYPES
    timing_runs: int = 10
    timing_batch: int = 1
    tensorrt: bool = True
    tensorrt_int8: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.resolution is not None and self.resolution < 8:
            raise ExportInputError(f"resolution must be at least 8 px, got {self.resolution}")
        if not self.tolerance >= 0:
            raise ExportInputError(f"tolerance must be >= 0, got {self.tolerance}")
        for name in ("timing_runs", "timing_batch"):
            if getattr(self, name) < 1:
                raise ExportInputError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ParityReport:
    """FP32 ONNX Runtime vs PyTorch eager (the merged generator) on ``inputs``
    ("calibration crops" or "random"): max abs difference per batch size and overall;
    ``merge_max_abs_diff``: merged weights vs base + adapter in peft (None: no adapter)."""

    tolerance: float
    max_abs_diff: float
    by_batch: dict[str, float]
    merge_max_abs_diff: float | None
    inputs: str


@dataclass(frozen=True)
class Int8Report:
    """``model.int8.onnx`` against ``model.onnx``: output differences on the check images
    (max and mean abs, outputs in [-1, 1]), median ms of each at ``batch`` and
    ``speedup`` = fp32_ms / int8_ms (measured in the same run, interleaved), and the
    quantization settings; or ``skipped`` with the reason and nothing else."""

    skipped: str | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    fp32_ms: float | None = None
    int8_ms: float | None = None
    speedup: float | None = None
    batch: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_version` wrote and measured; ``as_dict()`` is export.json."""

    version_dir: Path
    family: str
    generator: dict[str, Any]
    resolution: int
    opset: int
    io: dict[str, Any]
    files: dict[str, str]
    sources: dict[str, dict[str, str] | None]
    lora: dict[str, Any] | None
    parity: ParityReport
    int8: Int8Report
    tensorrt: EngineResult
    versions: dict[str, str]
    seconds: float
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version_dir"] = str(self.version_dir)
        return data


def export_version(
    base_dir: Path,
    adapter_dir: Path | None,
    out_dir: Path,
    calibration: Sequence[np.ndarray] | None,
    options: ExportOptions | None = None,
    *,
    engine_builder: EngineBuilder | None = None,
) -> ExportReport:
    """Export a pix2pix-lora generator (base run + optional adapter) into ``out_dir``.

    ``calibration``: aligned selfie crops, RGB uint8 ``H x W x 3`` (``snapshot_calibration``
    reads them from a snapshot); they calibrate INT8 and are the parity check's inputs
    (seeded random inputs in [-1, 1] otherwise, and no INT8). ``engine_builder`` replaces
    the TensorRT step (tests; default :func:`trainer.export.tensorrt.build_engine`).

    Raises :class:`ExportInputError` for a bad argument (missing run files, an adapter of
    another shape, a crop that is not RGB uint8, an ``out_dir`` already exported),
    :class:`ParityError` when FP32 ONNX or the merge is off by more than the tolerance
    (``export.json`` is then not written), :class:`TensorRTError` when TensorRT is present
    and fails. ``export.json`` is written last: a directory without it is incomplete.
    """
    began = time.perf_counter()
    options = options or ExportOptions()
    crops = list(calibration or [])
    check_crops(crops)
    if (out_dir / EXPORT_JSON).exists():
        raise ExportInputError(
            f"out_dir {out_dir} already holds an export ({EXPORT_JSON}); versions are "
            "immutable: export into a new version directory"
        )
    loaded = load_generator(base_dir, adapter_dir)
    resolution = options.resolution or _trained_resolution(base_dir, adapter_dir)
    check_resolution(loaded.generator, resolution)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = save_generator(loaded.generator, out_dir)

    selfie, base = generator_inputs(crops, resolution)
    parity = _check_parity(loaded, out_dir / MODEL_ONNX, resolution, selfie, base, options)
    int8 = _int8(out_dir, selfie, base, parity_inputs(selfie, base, resolution), options)
    if options.tensorrt:
        builder = engine_builder or _default_engine_builder
        with_int8 = (selfie, base) if options.tensorrt_int8 and len(selfie) else None
        engine = builder(out_dir / MODEL_ONNX, out_dir / MODEL_PLAN, resolution, with_int8)
    else:
        engine = EngineResult(built=False, skipped="switched off (ExportOptions.tensorrt)")

    names = written + [n for n in (MODEL_ONNX, MODEL_INT8) if (out_dir / n).is_file()]
    if engine.built and engine.plan:
        names.append(engine.plan)
    report = ExportReport(
        version_dir=out_dir,
        family=FAMILY,
        generator=loaded.config.as_dict(),
        resolution=resolution,
        opset=OPSET,
        io=io_contract(resolution),
        files={n: sha256_file(out_dir / n) for n in sorted(names)},
        sources=loaded.sources,
        lora=loaded.adapter_settings,
        parity=parity,
        int8=int8,
        tensorrt=engine,
        versions=_versions(),
        seconds=round(time.perf_counter() - began, 3),
    )
    write_json(out_dir / EXPORT_JSON, report.as_dict())
    log.info(
        "exported %s to %s: parity %.2e, int8 %s, tensorrt %s",
        base_dir if adapter_dir is None else adapter_dir,
        out_dir,
        parity.max_abs_diff,
        int8.skipped or f"x{int8.speedup:.2f}",
        engine.skipped or engine.precision,
    )
    return report


def parity_inputs(selfie: Array, base: Array, resolution: int) -> tuple[Array, Array]:
    """The ``max(PARITY_BATCHES)`` check images: the first calibration crops (repeated when
    there are fewer), else seeded random inputs."""
    count = max(PARITY_BATCHES)
    if len(selfie) == 0:
        return random_inputs(count, resolution)
    index = np.arange(count) % len(selfie)
    return selfie[index], base[index]


def _check_parity(
    loaded: LoadedGenerator,
    onnx_path: Path,
    resolution: int,
    selfie: Array,
    base: Array,
    options: ExportOptions,
) -> ParityReport:
    check_selfie, check_base = parity_inputs(selfie, base, resolution)
    eager = run_eager(loaded.generator, check_selfie, check_base)
    merge_diff = None
    if loaded.unmerged is not None:
        merge_diff = max_abs_diff(run_eager(loaded.unmerged, check_selfie, check_base), eager)
        if merge_diff > options.tolerance:
            raise ParityError(
                f"merging the adapter changed the outputs by up to {merge_diff:.3g} "
                f"(tolerance {options.tolerance:g}); the adapter may not match its base"
            )
    export_onnx(loaded.generator, onnx_path, resolution)
    sess = session(onnx_path, options.threads)
    by_batch = {}
    for batch in PARITY_BATCHES:
        out = run_onnx(sess, check_selfie[:batch], check_base[:batch])
        by_batch[str(batch)] = max_abs_diff(out, eager[:batch])
    worst = max(by_batch.values())
    if not worst <= options.tolerance:  # NaN fails too
        raise ParityError(
            f"ONNX Runtime FP32 differs from PyTorch eager by up to {worst:.3g} (per batch "
            f"size: {by_batch}; tolerance {options.tolerance:g}) in {onnx_path}; the graph "
            "is kept for inspection and export.json is not written"
        )
    return ParityReport(
        tolerance=options.tolerance,
        max_abs_diff=worst,
        by_batch=by_batch,
        merge_max_abs_diff=merge_diff,
        inputs="calibration crops" if len(selfie) else "random",
    )


def _int8(
    out_dir: Path,
    selfie: Array,
    base: Array,
    check: tuple[Array, Array],
    options: ExportOptions,
) -> Int8Report:
    if not options.int8:
        return Int8Report(skipped="switched off (ExportOptions.int8)")
    if len(selfie) == 0:
        return Int8Report(skipped="no calibration images")
    settings = quantize_int8(
        out_dir / MODEL_ONNX, out_dir / MODEL_INT8, selfie, base, options.int8_op_types
    )
    fp32 = session(out_dir / MODEL_ONNX, options.threads)
    int8 = session(out_dir / MODEL_INT8, options.threads)
    reference = run_onnx(fp32, *check)
    quantized = run_onnx(int8, *check)
    diff = np.abs(quantized.astype(np.float64) - reference)
    batch = max(1, options.timing_batch)
    index = np.arange(batch) % len(check[0])
    times = median_ms(
        {"fp32": onnx_runner(fp32), "int8": onnx_runner(int8)},
        check[0][index],
        check[1][index],
        runs=options.timing_runs,
    )
    return Int8Report(
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        fp32_ms=round(times["fp32"], 3),
        int8_ms=round(times["int8"], 3),
        speedup=round(times["fp32"] / times["int8"], 3),
        batch=batch,
        settings=settings,
    )


def _trained_resolution(base_dir: Path, adapter_dir: Path | None) -> int:
    """The resolution the newest run trained at (its run.json), else 256."""
    runs = [base_dir]
    if adapter_dir is not None:
        runs.insert(0, adapter_dir.parent if adapter_dir.name == ADAPTER_DIR else adapter_dir)
    for run in runs:
        try:
            info = json.loads((run / RUN_JSON).read_text())
            return int(info["fingerprint"]["resolution"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return DEFAULT_RESOLUTION


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import peft
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "peft": peft.__version__,
    }
