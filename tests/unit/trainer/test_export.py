"""trainer.export by tiny real runs: a base and a LoRA adapter trained for two steps by the
family's own script into a temporary directory, exported, and the version directory
checked (ONNX parity at batch 1 and 3, INT8 beside it, export.json); the TensorRT path
through a fake ``tensorrt`` module handed in at its seam."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from snapshot_fixture import FixtureSnapshot

from agents.stores.blobs import BlobStore
from trainer.dataset.snapshot import read_manifest
from trainer.errors import ExportInputError, ParityError, TensorRTError
from trainer.export import (
    EXPORT_JSON,
    MODEL_INT8,
    MODEL_ONNX,
    MODEL_PLAN,
    EngineResult,
    ExportOptions,
    ExportReport,
    build_engine,
    export_version,
    generator_inputs,
    snapshot_calibration,
)
from trainer.export.merge import load_base
from trainer.export.tensorrt import SKIP_NO_GPU, SKIP_NOT_IMPORTABLE
from trainer.families.pix2pix_lora.train import main, parse_args

#: A ~40k-parameter generator trained at 32 px: each step and each export takes seconds.
TINY = [
    "--batch-size", "2",
    "--resolution", "32",
    "--width", "8",
    "--levels", "2",
    "--res-blocks", "1",
    "--d-width", "8",
    "--samples", "1",
    "--steps", "2",
    "--checkpoint-every", "5",
    "--threads", "1",
]  # fmt: skip
FAST = ExportOptions(timing_runs=2)


@pytest.fixture(scope="module")
def runs(snapshot: FixtureSnapshot, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base run, lora run) saved by pix2pix-lora's own training script."""
    root = tmp_path_factory.mktemp("export-runs")
    manifest = str(snapshot.manifest_path)
    main(parse_args(["base", "--manifest", manifest, "--out", str(root / "base"), *TINY]))
    lora = ["lora", "--manifest", manifest, "--out", str(root / "lora"), "--base"]
    main(parse_args([*lora, str(root / "base"), *TINY]))
    return root / "base", root / "lora"


@pytest.fixture(scope="module")
def crops(snapshot: FixtureSnapshot) -> list[np.ndarray]:
    manifest = read_manifest(snapshot.home / "datasets", snapshot.snapshot_id)
    return snapshot_calibration(manifest, BlobStore(snapshot.blob_dir), count=4)


class RecordingBuilder:
    """The TensorRT seam of export_version: records its call, reports a skip."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, Path, int, Any]] = []

    def __call__(
        self, onnx_path: Path, plan_path: Path, resolution: int, calibration: Any
    ) -> EngineResult:
        self.calls.append((onnx_path, plan_path, resolution, calibration))
        return EngineResult(built=False, skipped="recorded")


@pytest.fixture(scope="module")
def exported(
    runs: tuple[Path, Path], crops: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExportReport, RecordingBuilder]:
    base, lora = runs
    builder = RecordingBuilder()
    out = tmp_path_factory.mktemp("models") / "7"
    return export_version(base, lora, out, crops, FAST, engine_builder=builder), builder


def _inputs(crops: list[np.ndarray], batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    selfie, base = generator_inputs([crops[i % len(crops)] for i in range(batch)], size)
    return selfie, base


def test_calibration_crops_are_aligned_rgb_selfies(crops: list[np.ndarray]) -> None:
    assert len(crops) == 4
    assert all(c.shape == (256, 256, 3) and c.dtype == np.uint8 for c in crops)
    selfie, base = generator_inputs(crops, 32)
    assert selfie.shape == base.shape == (4, 3, 32, 32)
    assert selfie.dtype == np.float32
    assert selfie.min() >= -1
    assert selfie.max() <= 1
    assert not np.array_equal(selfie, base)  # base is the stylised crop


def test_the_version_directory_holds_merged_weights_onnx_int8_and_the_report(
    exported: tuple[ExportReport, RecordingBuilder], runs: tuple[Path, Path]
) -> None:
    report, _ = exported
    out = report.version_dir
    names = {"generator.safetensors", "generator.json", MODEL_ONNX, MODEL_INT8}
    assert set(report.files) == names
    assert {p.name for p in out.iterdir()} == names | {EXPORT_JSON}
    saved = json.loads((out / EXPORT_JSON).read_text())
    assert saved == json.loads(json.dumps(report.as_dict()))
    assert saved["format_version"] == 1
    assert saved["resolution"] == 32  # the lora run's training resolution, from run.json
    assert saved["io"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert saved["sources"]["adapter"]["path"].endswith("adapter")
    assert saved["lora"]["r"] == 8
    # The merged weights are a base run of their own: the family's loader reads them.
    merged, config = load_base(out)
    assert config.as_dict() == saved["generator"]
    original, _ = load_base(runs[0])
    assert any(
        not torch.equal(a, b)
        for a, b in zip(merged.state_dict().values(), original.state_dict().values(), strict=True)
    )


def test_onnx_matches_eager_at_batch_1_and_3(
    exported: tuple[ExportReport, RecordingBuilder], crops: list[np.ndarray]
) -> None:
    report, _ = exported
    parity = report.parity
    assert set(parity.by_batch) == {"1", "3"}
    assert parity.max_abs_diff <= parity.tolerance == 1e-4
    assert parity.merge_max_abs_diff is not None
    assert parity.merge_max_abs_diff <= 1e-4
    assert parity.inputs == "calibration crops"

    graph = onnx.load(str(report.version_dir / MODEL_ONNX))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 32, 32]
    session = ort.InferenceSession(str(report.version_dir / MODEL_ONNX))
    merged, _ = load_base(report.version_dir)
    for batch in (1, 3):
        selfie, base = _inputs(crops, batch, 32)
        out = session.run(["anime"], {"selfie": selfie, "base": base})[0]
        with torch.no_grad():
            eager = merged(torch.from_numpy(selfie), torch.from_numpy(base)).numpy()
        assert out.shape == (batch, 3, 32, 32)
        assert np.abs(out - eager).max() <= 1e-4


def test_int8_runs_beside_fp32_with_a_bounded_difference(
    exported: tuple[ExportReport, RecordingBuilder], crops: list[np.ndarray]
) -> None:
    report, _ = exported
    int8 = report.int8
    assert int8.skipped is None
    assert int8.settings["calibration_images"] == 4
    assert int8.fp32_ms is not None
    assert int8.int8_ms is not None
    assert int8.speedup == pytest.approx(int8.fp32_ms / int8.int8_ms, rel=0.01)
    assert int8.max_abs_diff is not None
    assert 0 < int8.max_abs_diff < 0.1
    graph = onnx.load(str(report.version_dir / MODEL_INT8))
    assert any(node.op_type == "QuantizeLinear" for node in graph.graph.node)
    fp32 = ort.InferenceSession(str(report.version_dir / MODEL_ONNX))
    quantized = ort.InferenceSession(str(report.version_dir / MODEL_INT8))
    selfie, base = _inputs(crops, 2, 32)
    feeds = {"selfie": selfie, "base": base}
    a, b = fp32.run(None, feeds)[0], quantized.run(None, feeds)[0]
    assert b.shape == (2, 3, 32, 32)
    assert np.abs(a - b).max() < 0.1  # outputs span [-1, 1]: under 13 of 255 levels


def test_export_hands_the_onnx_file_and_calibration_to_the_tensorrt_seam(
    exported: tuple[ExportReport, RecordingBuilder],
) -> None:
    report, builder = exported
    ((onnx_path, plan_path, resolution, calibration),) = builder.calls
    assert (onnx_path, plan_path) == (
        report.version_dir / MODEL_ONNX,
        report.version_dir / MODEL_PLAN,
    )
    assert resolution == 32
    assert calibration[0].shape == (4, 3, 32, 32)
    assert report.tensorrt.skipped == "recorded"


def test_base_alone_without_calibration_skips_int8_and_tensorrt(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    options = ExportOptions(resolution=64, timing_runs=1)
    report = export_version(runs[0], None, tmp_path / "v1", None, options)
    assert report.parity.inputs == "random"
    assert report.parity.merge_max_abs_diff is None
    assert report.parity.max_abs_diff <= 1e-4
    assert report.int8.skipped == "no calibration images"
    assert not (tmp_path / "v1" / MODEL_INT8).exists()
    assert report.sources["adapter"] is None
    assert report.io["output"]["shape"] == ["batch", 3, 64, 64]
    if importlib.util.find_spec("tensorrt") is None:
        assert report.tensorrt.skipped == SKIP_NOT_IMPORTABLE
    assert not (tmp_path / "v1" / MODEL_PLAN).exists()
    with pytest.raises(ExportInputError, match="already holds an export"):
        export_version(runs[0], None, tmp_path / "v1", None, options)


def test_parity_beyond_the_tolerance_fails_without_a_report(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    # ORT and torch never agree to 1e-12 on a trained conv net: the check must trip.
    options = ExportOptions(tolerance=1e-12, int8=False, tensorrt=False)
    with pytest.raises(ParityError, match="ONNX Runtime FP32 differs"):
        export_version(runs[0], None, tmp_path / "v1", None, options)
    assert not (tmp_path / "v1" / EXPORT_JSON).exists()


def test_bad_inputs_are_named(runs: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportInputError, match=r"base_dir .* no generator"):
        export_version(tmp_path, None, tmp_path / "v", None)
    with pytest.raises(ExportInputError, match=r"adapter_dir .* no adapter_config"):
        export_version(runs[0], tmp_path, tmp_path / "v", None)
    with pytest.raises(ExportInputError, match=r"calibration\[1\] must be an H x W x 3 uint8"):
        export_version(runs[0], None, tmp_path / "v", [np.zeros((8, 8, 3), np.uint8), np.zeros(3)])
    with pytest.raises(ExportInputError, match="resolution 36 must be a positive multiple of 8"):
        export_version(runs[0], None, tmp_path / "v", None, ExportOptions(resolution=36))
    other = tmp_path / "other-adapter"
    shutil.copytree(runs[1] / "adapter", other)
    (other / "generator.json").write_text(json.dumps({"width": 16, "levels": 2, "res_blocks": 1}))
    with pytest.raises(ExportInputError, match="pair the adapter with its own base"):
        export_version(runs[0], other, tmp_path / "v", None)


# -- TensorRT, through a fake module at the seam ---------------------------------------------


def fake_tensorrt(parse_ok: bool = True, version: str = "10.9.0") -> ModuleType:
    """A stand-in for ``tensorrt`` recording the TensorRT 10 builder calls it receives."""
    trt = ModuleType("tensorrt")
    calls: list[tuple[Any, ...]] = []
    trt.calls = calls  # type: ignore[attr-defined]
    trt.__version__ = version  # type: ignore[attr-defined]

    class Logger:
        WARNING = "warning"

        def __init__(self, severity: str) -> None:
            calls.append(("Logger", severity))

    class BuilderFlag:
        FP16 = "FP16"
        REFIT = "REFIT"
        INT8 = "INT8"

    if not version.startswith("10."):
        del BuilderFlag.FP16  # TensorRT 11 removed it (strong typing instead)

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class Profile:
        def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
            calls.append(("set_shape", name, *shapes))

    class Config:
        int8_calibrator: Any = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag: str) -> None:
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile: Profile) -> None:
            calls.append(("add_optimization_profile",))

        def set_calibration_profile(self, profile: Profile) -> None:
            calls.append(("set_calibration_profile",))

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.config = Config()

        def create_network(self, flags: int) -> str:
            calls.append(("create_network", flags))
            return "network"

        def create_builder_config(self) -> Config:
            return self.config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: str, config: Config) -> bytes:
            calls.append(("build", network, config.int8_calibrator is not None))
            trt.last_config = config  # type: ignore[attr-defined]
            return b"PLAN"

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: str, logger: Logger) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, i: int) -> str:
            return "unsupported operator Atanh"

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            calls.append(("calibrator",))

    for cls in (
        Logger,
        BuilderFlag,
        MemoryPoolType,
        Builder,
        OnnxParser,
        IInt8EntropyCalibrator2,
    ):
        setattr(trt, cls.__name__, cls)
    return trt


def _gpu(present: bool) -> Callable[[], bool]:
    return lambda: present


def test_tensorrt_skips_with_its_reason(tmp_path: Path) -> None:
    onnx_path, plan = tmp_path / MODEL_ONNX, tmp_path / MODEL_PLAN
    if importlib.util.find_spec("tensorrt") is None:
        result = build_engine(onnx_path, plan, 32)
        assert (result.built, result.skipped) == (False, SKIP_NOT_IMPORTABLE)
    result = build_engine(onnx_path, plan, 32, trt=fake_tensorrt(), gpu=_gpu(False))
    assert (result.built, result.skipped) == (False, SKIP_NO_GPU)
    result = build_engine(onnx_path, plan, 32, trt=fake_tensorrt(version="11.0"), gpu=_gpu(True))
    assert result.skipped is not None
    assert "lacks BuilderFlag" in result.skipped
    assert not plan.exists()


def test_tensorrt_builds_an_fp16_refittable_engine_with_a_dynamic_batch(tmp_path: Path) -> None:
    onnx_path, plan = tmp_path / MODEL_ONNX, tmp_path / MODEL_PLAN
    onnx_path.write_bytes(b"onnx-bytes")
    trt = fake_tensorrt()
    result = build_engine(onnx_path, plan, 32, max_batch=16, opt_batch=8, trt=trt, gpu=_gpu(True))
    assert result.built
    assert result.precision == "fp16"
    assert result.refittable
    assert plan.read_bytes() == b"PLAN"
    calls = trt.calls  # type: ignore[attr-defined]
    assert ("parse", len(b"onnx-bytes")) in calls
    assert ("set_flag", "FP16") in calls
    assert ("set_flag", "REFIT") in calls
    assert ("set_flag", "INT8") not in calls
    for name in ("selfie", "base"):
        assert ("set_shape", name, (1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32)) in calls
    assert calls[-1] == ("build", "network", False)


def test_tensorrt_int8_uses_an_entropy_calibrator_over_the_crops(
    tmp_path: Path, crops: list[np.ndarray]
) -> None:
    onnx_path, plan = tmp_path / MODEL_ONNX, tmp_path / MODEL_PLAN
    onnx_path.write_bytes(b"onnx-bytes")
    trt = fake_tensorrt()
    calibration = generator_inputs(crops, 32)
    result = build_engine(onnx_path, plan, 32, calibration=calibration, trt=trt, gpu=_gpu(True))
    assert result.precision == "fp16+int8"
    calls = trt.calls  # type: ignore[attr-defined]
    assert ("set_flag", "INT8") in calls
    assert ("calibrator",) in calls
    assert ("set_calibration_profile",) in calls
    assert calls[-1] == ("build", "network", True)
    calibrator = trt.last_config.int8_calibrator  # type: ignore[attr-defined]
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2)  # type: ignore[attr-defined]
    assert calibrator.get_batch_size() == 1
    assert calibrator.batches == len(crops)
    assert calibrator.read_calibration_cache() is None  # nothing cached yet
    calibrator.write_calibration_cache(b"scales")
    assert calibrator.read_calibration_cache() == b"scales"


def test_tensorrt_parse_errors_are_raised(tmp_path: Path) -> None:
    onnx_path = tmp_path / MODEL_ONNX
    onnx_path.write_bytes(b"onnx-bytes")
    with pytest.raises(TensorRTError, match="unsupported operator Atanh"):
        build_engine(
            onnx_path, tmp_path / MODEL_PLAN, 32, trt=fake_tensorrt(parse_ok=False), gpu=_gpu(True)
        )
