"""Engines on a tiny exported version: ONNX Runtime and PyTorch agree, failures stay with
their image, the best engine is chosen, and TensorRT switches itself off at its seam."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from serving.engines import OnnxEngine, TensorRTEngine, TorchEngine, load_engine
from serving.engines.base import Array, Engine
from serving.errors import ArtifactMismatch, EngineUnavailable, InferenceFailed, ModelLoadError
from serving.version import ModelVersion, latest_version, read_version, verify


def _inputs(n: int, side: int = 32, seed: int = 0) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    selfie = rng.uniform(-1, 1, (n, 3, side, side)).astype(np.float32)
    return selfie, np.tanh(selfie * 0.5).astype(np.float32)


def test_version_directory_is_read_and_verified(models_dir: Path) -> None:
    version = read_version(models_dir / "converter" / "2")
    assert (version.name, version.version, version.resolution) == ("converter", 2, 32)
    assert version.styles == ("cel",)
    assert {"model.onnx", "generator.safetensors", "generator.json"} <= set(version.files)
    verify(version, {"model.onnx": version.files["model.onnx"]})
    assert latest_version(models_dir, "converter") == models_dir / "converter" / "2"
    with pytest.raises(ArtifactMismatch, match=r"model\.onnx"):
        verify(version, {"model.onnx": "0" * 64})
    with pytest.raises(ModelLoadError, match="leaves"):
        verify(version, {"../1/model.onnx": "0" * 64})


def test_incomplete_export_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "converter" / "4").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"export\.json is missing"):
        read_version(tmp_path / "converter" / "4")
    (tmp_path / "converter" / "4" / "export.json").write_text(json.dumps({"format_version": 9}))
    with pytest.raises(ModelLoadError, match="format_version 9"):
        read_version(tmp_path / "converter" / "4")


def test_onnx_and_torch_agree_and_answer_per_image(models_dir: Path) -> None:
    version = read_version(models_dir / "converter" / "1")
    selfie, base = _inputs(3)
    outputs = {}
    for engine in (OnnxEngine(threads=1), TorchEngine()):
        engine.load(version)
        engine.warm_up(1)
        answers = engine.infer(selfie, base)
        assert len(answers) == 3
        outputs[engine.name] = np.stack([a for a in answers if not isinstance(a, InferenceFailed)])
        engine.unload()
    assert outputs["onnxruntime-cpu"].shape == (3, 3, 32, 32)
    assert np.max(np.abs(outputs["onnxruntime-cpu"] - outputs["torch"])) < 1e-4


class _PoisonEngine(Engine):
    """Fails any batch holding an image whose first pixel is exactly 1 (as a runtime
    error would), and returns NaN for one whose first pixel is exactly -1."""

    name = "poison"

    def _load(self, version: ModelVersion) -> None:
        pass

    def _run(self, selfie: Array, base: Array) -> Array:
        if np.any(selfie[:, 0, 0, 0] == 1.0):
            raise RuntimeError("kernel failed")
        out = np.zeros_like(selfie)
        out[selfie[:, 0, 0, 0] == -1.0] = np.nan
        return out

    def _unload(self) -> None:
        pass


def test_one_bad_image_never_fails_its_batch(models_dir: Path) -> None:
    engine = _PoisonEngine()
    engine.load(read_version(models_dir / "converter" / "1"))
    selfie, base = np.zeros((4, 3, 32, 32), np.float32), np.zeros((4, 3, 32, 32), np.float32)
    selfie[1, 0, 0, 0] = 1.0
    selfie[3, 0, 0, 0] = -1.0
    answers = engine.infer(selfie, base)
    assert [type(a).__name__ for a in answers] == [
        "ndarray",
        "InferenceFailed",
        "ndarray",
        "InferenceFailed",
    ]
    assert "kernel failed" in str(answers[1])
    assert "outside [-1, 1]" in str(answers[3])


def test_auto_picks_the_best_engine_that_runs_here(models_dir: Path) -> None:
    engine = load_engine(read_version(models_dir / "converter" / "1"), "auto", warmup_runs=1)
    assert engine.name in ("onnxruntime-cpu", "onnxruntime-cuda")  # no TensorRT here
    engine.unload()


def test_tensorrt_switches_itself_off_at_the_import_seam(models_dir: Path) -> None:
    version = read_version(models_dir / "converter" / "1")
    fake_trt = types.ModuleType("tensorrt")
    with pytest.raises(EngineUnavailable, match="no CUDA GPU"):
        TensorRTEngine(trt=fake_trt, gpu=lambda: False).load(version)
    with pytest.raises(EngineUnavailable, match=r"model\.plan is missing"):
        TensorRTEngine(trt=fake_trt, gpu=lambda: True).load(version)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(EngineUnavailable, match="tensorrt not importable"):
            TensorRTEngine().load(version)
    else:
        pytest.skip("tensorrt is installed here: the GPU path is measured in BENCHMARKS.md")
    with pytest.raises(ModelLoadError, match="tensorrt"):
        load_engine(version, "tensorrt")


def test_a_corrupt_graph_fails_its_load_not_later(models_dir: Path, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "converter" / "7"
    shutil.copytree(models_dir / "converter" / "1", target)
    (target / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match="onnxruntime"):
        load_engine(read_version(target), "onnxruntime")
