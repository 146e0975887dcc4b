"""Engines behind one interface (:class:`~serving.engines.base.Engine`), and the choice of
the best one a machine can run.

``auto`` tries, in order: TensorRT (a ``model.plan``, or the serving TensorRT plan refit
with the version's weights when only the weights changed; ``tensorrt`` importable and a
CUDA GPU), ONNX Runtime (``model.onnx``; CUDA provider where present, else CPU), PyTorch eager
(the merged weights). The first that loads and warms up serves; what was skipped, and why,
is logged.

Example::

    engine = load_engine(version, choice="auto", warmup_runs=2)
    engine.name        # 'onnxruntime-cpu' on this project's CI machines
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
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
    "ThreadPlan",
    "TorchEngine",
    "available_engines",
    "load_engine",
    "thread_plan",
    "usable_cores",
]

EngineFactory = Callable[[str], Engine]
"""``kind -> a new, unloaded engine`` (``kind`` one of :data:`ORDER`); the tests' seam."""

#: Most batches a server runs side by side when its settings leave the threads to it.
MAX_WORKERS = 4


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    """How a server spends its cores: ``workers`` batches run side by side, each on
    ``threads`` intra-op threads (ONNX Runtime's, and PyTorch's for the detector and the
    torch engine)."""

    cores: int
    workers: int
    threads: int


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_plan(intra_op_threads: int | None, cores: int | None = None) -> ThreadPlan:
    """Threads for the engine and the batcher, without oversubscribing ``cores``.

    Given ``intra_op_threads`` (``S2A_SERVING__INTRA_OP_THREADS``): as many workers as fit
    in the cores. Unset: ``min(cores, MAX_WORKERS)`` workers sharing the cores. On this
    project's 2-core machine that is 2 workers of 1 thread: one batch over 2 intra-op
    threads cost ~20 ms CPU per image against ~15 ms for single-threaded runs side by side
    (the difference is the runtime's threads waiting on each other), so parallel batches
    beat parallel operators for a small convolutional generator.
    """
    cores = cores or usable_cores()
    if intra_op_threads:
        return ThreadPlan(cores, max(1, cores // intra_op_threads), intra_op_threads)
    workers = max(1, min(cores, MAX_WORKERS))
    return ThreadPlan(cores, workers, max(1, cores // workers))


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
    previous: Engine | None = None,
) -> Engine:
    """A loaded, warmed-up engine for ``version``: the one asked for, or with ``auto`` the
    best of :data:`ORDER` that loads.

    ``previous``: the engine serving now (a swap's old model), handed to each engine's
    :meth:`~Engine.load` and left serving (TensorRT refits its plan; see
    :mod:`serving.engines.tensorrt`).

    Raises :class:`ModelLoadError` when none can (with each engine's reason), or when the
    one asked for cannot. An engine's :class:`EngineUnavailable` moves ``auto`` on to the
    next one; any other :class:`ModelLoadError` (a failed TensorRT refit among them) is
    raised at once, so a swap keeps the old model rather than serve on a lesser engine.
    """
    make = factory or default_factory()
    kinds = ORDER if choice == "auto" else (choice,)
    reasons = []
    for kind in kinds:
        engine = make(kind)
        try:
            engine.load(version, previous=previous)
            engine.warm_up(warmup_runs)
        except EngineUnavailable as exc:
            engine.unload()
            reasons.append(f"{kind}: {exc}")
            log.info("engine %s skipped for %s: %s", kind, version.label, exc)
            continue
        except ModelLoadError:
            engine.unload()
            raise
        log.info(
            "engine %s serves %s%s",
            engine.name,
            version.label,
            f" ({engine.loaded_by})" if engine.loaded_by else "",
        )
        return engine
    raise ModelLoadError(f"no engine can serve {version.path}: {'; '.join(reasons)}")
