"""Engines behind one interface (:class:`~serving.engines.base.Engine`), and the choice of
the best one a machine can run.

``auto`` tries, in order: TensorRT (a ``model.plan``, ``tensorrt`` importable and a CUDA
GPU), ONNX Runtime (``model.onnx``; CUDA provider where present, else CPU), PyTorch eager
(the merged weights). The first that loads and warms up serves; what was skipped, and why,
is logged.

Example::

    engine = load_engine(version, choice="auto", warmup_runs=2)
    engine.name        # 'onnxruntime-cpu' on this project's CI machines
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from serving.engines.base import Answer, Array, Engine
from serving.engines.onnx import OnnxEngine, onnx_providers
from serving.engines.tensorrt import TensorRTEngine, cuda_available, import_tensorrt
from serving.engines.tensorrt import unavailable_reason as tensorrt_unavailable
from serving.engines.torch import TorchEngine
from serving.errors import EngineUnavailable, ModelLoadError
from serving.version import ModelVersion

log = logging.getLogger(__name__)

Choice = Literal["auto", "tensorrt", "onnxruntime", "torch"]
ORDER: tuple[Choice, ...] = ("tensorrt", "onnxruntime", "torch")

__all__ = [
    "ORDER",
    "Answer",
    "Array",
    "Choice",
    "Engine",
    "EngineFactory",
    "OnnxEngine",
    "TensorRTEngine",
    "TorchEngine",
    "available_engines",
    "load_engine",
]

EngineFactory = Callable[[str], Engine]
"""``kind -> a new, unloaded engine`` (``kind`` one of :data:`ORDER`); the tests' seam."""


def default_factory(int8: bool = False, threads: int | None = None) -> EngineFactory:
    def make(kind: str) -> Engine:
        if kind == "tensorrt":
            return TensorRTEngine()
        if kind == "onnxruntime":
            return OnnxEngine(int8=int8, threads=threads)
        if kind == "torch":
            return TorchEngine(threads=threads)
        raise ValueError(f"unknown engine {kind!r}; choose one of {ORDER}")

    return make


def available_engines() -> list[str]:
    """Engines that can run on this machine, best first (files of a version aside)."""
    found = []
    if tensorrt_unavailable(import_tensorrt(), cuda_available) is None:
        found.append("tensorrt")
    providers = onnx_providers()
    if providers:
        found.append(
            "onnxruntime-cuda" if "CUDAExecutionProvider" in providers else "onnxruntime-cpu"
        )
    found.append("torch-cuda" if cuda_available() else "torch")
    return found


def load_engine(
    version: ModelVersion,
    choice: Choice = "auto",
    *,
    warmup_runs: int = 2,
    factory: EngineFactory | None = None,
) -> Engine:
    """A loaded, warmed-up engine for ``version``: the one asked for, or with ``auto`` the
    best of :data:`ORDER` that loads.

    Raises :class:`ModelLoadError` when none can (with each engine's reason), or when the
    one asked for cannot.
    """
    make = factory or default_factory()
    kinds = ORDER if choice == "auto" else (choice,)
    reasons = []
    for kind in kinds:
        engine = make(kind)
        try:
            engine.load(version)
            engine.warm_up(warmup_runs)
        except EngineUnavailable as exc:
            engine.unload()
            reasons.append(f"{kind}: {exc}")
            log.info("engine %s skipped for %s: %s", kind, version.label, exc)
            continue
        except ModelLoadError:
            engine.unload()
            raise
        log.info("engine %s serves %s", engine.name, version.label)
        return engine
    raise ModelLoadError(f"no engine can serve {version.path}: {'; '.join(reasons)}")
