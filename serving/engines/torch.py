"""PyTorch engine: the merged generator (``generator.safetensors`` + ``generator.json``)
built by the trainer's own model code, on CUDA when torch sees a GPU, else the CPU.

Example::

    engine = TorchEngine()
    engine.load(version)
    engine.name          # 'torch'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.engines.base import Array, Engine
from serving.errors import EngineUnavailable
from serving.version import GENERATOR_CONFIG, GENERATOR_WEIGHTS, ModelVersion


class TorchEngine(Engine):
    """Eager PyTorch; ``threads`` sets torch's intra-op threads for the process."""

    name = "torch"

    def __init__(self, *, threads: int | None = None) -> None:
        super().__init__()
        self.threads = threads
        self._model: Any = None
        self._device: Any = None

    def _load(self, version: ModelVersion) -> None:
        import torch
        from safetensors.torch import load_file

        from trainer.families.pix2pix_lora.model import GeneratorConfig, build_model

        for name in (GENERATOR_WEIGHTS, GENERATOR_CONFIG):
            if not version.has(name):
                raise EngineUnavailable(f"{version.file(name)} is missing; PyTorch needs it")
        if self.threads:
            torch.set_num_threads(self.threads)
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = build_model(GeneratorConfig.load(version.path))
        model.load_state_dict(load_file(version.file(GENERATOR_WEIGHTS)))
        self._model = model.eval().to(self._device)
        self.name = "torch-cuda" if self._device.type == "cuda" else "torch"

    def _run(self, selfie: Array, base: Array) -> Array:
        import torch

        with torch.inference_mode():
            out = self._model(
                torch.from_numpy(np.ascontiguousarray(selfie)).to(self._device),
                torch.from_numpy(np.ascontiguousarray(base)).to(self._device),
            )
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def _unload(self) -> None:
        self._model = None
