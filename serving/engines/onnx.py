"""ONNX Runtime engine: ``model.onnx`` (or ``model.int8.onnx``) on the CUDA execution
provider where ONNX Runtime has it, else on the CPU.

Example::

    engine = OnnxEngine(int8=False, threads=4)
    engine.load(version)
    engine.name          # 'onnxruntime-cuda' or 'onnxruntime-cpu'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.engines.base import Array, Engine
from serving.errors import EngineUnavailable
from serving.version import MODEL_INT8, MODEL_ONNX, ModelVersion

INPUTS = ("selfie", "base")
OUTPUT = "anime"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def onnx_providers() -> list[str]:
    """Execution providers to ask for, best first (CUDA only when this ORT has it)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    available = ort.get_available_providers()
    return [p for p in (CUDA, CPU) if p in available]


class OnnxEngine(Engine):
    """ONNX Runtime session over a version's graph; batches run as one ``run`` call."""

    def __init__(self, *, int8: bool = False, threads: int | None = None) -> None:
        super().__init__()
        self.int8 = int8
        self.threads = threads
        self._session: Any = None
        providers = onnx_providers()
        self.name = "onnxruntime-cuda" if CUDA in providers else "onnxruntime-cpu"

    def _load(self, version: ModelVersion) -> None:
        import onnxruntime as ort

        graph = MODEL_INT8 if self.int8 and version.has(MODEL_INT8) else MODEL_ONNX
        if not version.has(graph):
            raise EngineUnavailable(f"{version.file(graph)} is missing; ONNX Runtime needs it")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        providers = onnx_providers()
        self._session = ort.InferenceSession(str(version.file(graph)), options, providers=providers)
        # ORT falls back to the CPU silently when CUDA cannot start: report what runs.
        self.name = (
            "onnxruntime-cuda" if CUDA in self._session.get_providers() else "onnxruntime-cpu"
        )
        names = {i.name for i in self._session.get_inputs()}
        if names != set(INPUTS):
            raise EngineUnavailable(
                f"{version.file(graph)} takes inputs {sorted(names)}, not {list(INPUTS)}; "
                "it is not a pix2pix-lora export"
            )

    def _run(self, selfie: Array, base: Array) -> Array:
        out = self._session.run(
            [OUTPUT],
            {"selfie": np.ascontiguousarray(selfie), "base": np.ascontiguousarray(base)},
        )[0]
        return np.asarray(out, dtype=np.float32)

    def _unload(self) -> None:
        self._session = None
