"""TensorRT engine: a version's ``model.plan`` (FP16, refittable, built by the export where
tensorrt and a GPU were present), run with torch CUDA tensors as its buffers.

Switched on only where ``tensorrt`` imports *and* a CUDA GPU is present; the module and
the GPU check are constructor parameters (the seam tests use: nothing imports tensorrt
until :meth:`TensorRTEngine.load` runs). Anywhere else :meth:`load` raises
:class:`EngineUnavailable` saying which of the two is missing, and engine selection moves
on to ONNX Runtime.

API used (TensorRT 10): ``Runtime(logger).deserialize_cuda_engine(bytes)``,
``create_execution_context()``, ``get_tensor_profile_shape(name, 0)`` (min, opt, max),
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3(stream)``.

Example::

    engine = TensorRTEngine()
    engine.load(version)            # EngineUnavailable('tensorrt not importable') here
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from serving.engines.base import Array, Engine
from serving.errors import EngineUnavailable
from serving.version import MODEL_PLAN, ModelVersion

# One probe for TensorRT and a GPU, shared with the exporter that builds model.plan.
from trainer.export.tensorrt import cuda_available, import_tensorrt

INPUTS = ("selfie", "base")
OUTPUT = "anime"


def unavailable_reason(trt: ModuleType | None, gpu: Callable[[], bool]) -> str | None:
    """Why TensorRT cannot run here (None: it can)."""
    if trt is None:
        return "tensorrt not importable (pip install .[tensorrt] from NVIDIA's index)"
    if not gpu():
        return "no CUDA GPU"
    return None


class TensorRTEngine(Engine):
    """A deserialized TensorRT engine; batches larger than its profile's maximum run in
    slices, one batch at a time (an execution context holds one run's shapes and buffer
    addresses)."""

    name = "tensorrt"

    def __init__(
        self,
        *,
        trt: ModuleType | None = None,
        gpu: Callable[[], bool] = cuda_available,
    ) -> None:
        super().__init__()
        self._trt = trt
        self._gpu = gpu
        self._engine: Any = None
        self._context: Any = None
        self._max_batch = 1
        self._run_lock = threading.Lock()

    def _load(self, version: ModelVersion) -> None:
        trt = self._trt if self._trt is not None else import_tensorrt()
        reason = unavailable_reason(trt, self._gpu)
        if reason is not None or trt is None:
            raise EngineUnavailable(f"TensorRT cannot run here: {reason}")
        if not version.has(MODEL_PLAN):
            raise EngineUnavailable(
                f"{version.file(MODEL_PLAN)} is missing: the version was exported without "
                "TensorRT; export it on a GPU machine with tensorrt installed"
            )
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(version.file(MODEL_PLAN).read_bytes())
        if engine is None:
            raise EngineUnavailable(
                f"{version.file(MODEL_PLAN)} does not deserialize with tensorrt "
                f"{getattr(trt, '__version__', '?')} on this GPU (plans are tied to both); "
                "rebuild it here"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        self._max_batch = int(engine.get_tensor_profile_shape(INPUTS[0], 0)[2][0])

    def _run(self, selfie: Array, base: Array) -> Array:
        with self._run_lock:
            outs = [
                self._run_slice(selfie[i : i + self._max_batch], base[i : i + self._max_batch])
                for i in range(0, len(selfie), self._max_batch)
            ]
        return np.concatenate(outs)

    def _run_slice(self, selfie: Array, base: Array) -> Array:
        import torch

        inputs = {
            "selfie": torch.from_numpy(np.ascontiguousarray(selfie)).cuda(),
            "base": torch.from_numpy(np.ascontiguousarray(base)).cuda(),
        }
        out = torch.empty_like(inputs["selfie"])
        for name, tensor in inputs.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, int(tensor.data_ptr()))
        self._context.set_tensor_address(OUTPUT, int(out.data_ptr()))
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 returned False")
        stream.synchronize()
        return np.asarray(out.cpu().numpy(), dtype=np.float32)

    def _unload(self) -> None:
        self._context = None
        self._engine = None
