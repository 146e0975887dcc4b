"""The one interface every engine has, and the per-item error handling they share.

Lifecycle (as a Triton python_backend model's): ``load`` a version directory (with the
engine serving now as ``previous``, which an engine may reuse: TensorRT refits its plan),
``warm_up``, ``infer`` batches, ``unload``. ``infer`` takes the generator's two inputs for
N images and returns N answers, each an output array or the error of that image alone: one
image that breaks the model never fails its batch mates.

Shapes: ``selfie`` and ``base`` are float32 ``(N, 3, R, R)`` RGB in [-1, 1] (see
:mod:`serving.version`); each output is float32 ``(3, R, R)`` in (-1, 1).

Threads: ``infer`` may be called from several threads at once (the batcher's workers run
batches side by side). ONNX Runtime sessions and eval-mode torch modules allow it; an
engine whose runtime does not (a TensorRT execution context) serialises its own runs.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt

from serving.errors import InferenceFailed, ModelLoadError
from serving.version import ModelVersion

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
Answer = Array | InferenceFailed
"""One image's answer: its (3, R, R) output, or why it has none."""


class Engine(ABC):
    """Runs one model version.

    Subclasses implement :meth:`_load`, :meth:`_run` (a whole batch, raising on failure) and
    :meth:`_unload`; this class isolates failures per image and checks outputs.

    Example::

        engine = OnnxEngine()
        engine.load(read_version(path))
        engine.warm_up(runs=2)
        answers = engine.infer(selfie, base)     # list of (3, R, R) arrays or errors
        engine.unload()
    """

    #: Reported in ModelInfo and logs: tensorrt, onnxruntime-cuda, onnxruntime-cpu, torch.
    name: str = "engine"

    def __init__(self) -> None:
        self.version: ModelVersion | None = None
        #: How the loaded model got in, for logs (TensorRT: ``"deserialized model.plan"`` or
        #: ``"refit from converter v3"``); empty for engines with one way to load.
        self.loaded_by = ""

    def load(self, version: ModelVersion, *, previous: Engine | None = None) -> None:
        """Load ``version``; raises :class:`ModelLoadError` (or :class:`EngineUnavailable`).

        ``previous``: the engine serving now (a swap's old model, or None). An engine may
        read it to load faster (TensorRT refits the serving plan with ``version``'s weights)
        but never changes it: it keeps answering until the swap flips.
        """
        try:
            self._load_beside(version, previous)
        except ModelLoadError:
            raise
        except Exception as exc:  # a runtime's own errors (ORT, torch, TensorRT) vary
            raise ModelLoadError(f"{self.name} cannot load {version.path}: {exc}") from exc
        self.version = version

    def warm_up(self, runs: int = 2) -> None:
        """Run ``runs`` batches of 1 and of 2 mid-grey images; the first real request then
        pays no lazy initialisation. Raises :class:`ModelLoadError` when the model fails or
        returns values outside [-1, 1] (a broken artifact never reaches a caller)."""
        version = self._loaded()
        side = version.resolution
        for run in range(max(1, runs)):
            batch = 1 + run % 2
            grey = np.zeros((batch, 3, side, side), dtype=np.float32)
            for answer in self.infer(grey, grey.copy()):
                if isinstance(answer, InferenceFailed):
                    raise ModelLoadError(
                        f"{version.label} failed its warm-up on {self.name}: {answer}"
                    )

    def infer(self, selfie: Array, base: Array) -> list[Answer]:
        """One answer per image of the batch (see the module docstring)."""
        self._loaded()
        if selfie.shape != base.shape or selfie.ndim != 4 or selfie.shape[1] != 3:
            raise ValueError(
                f"selfie and base must both be (N, 3, R, R); got {selfie.shape} and {base.shape}"
            )
        try:
            return [self._checked(row) for row in self._run(selfie, base)]
        except Exception as exc:  # the runtime's error; find which image caused it
            if len(selfie) == 1:
                log.warning("%s failed on one image: %s", self.name, exc)
                return [InferenceFailed(f"{self.name} failed on this image: {exc}")]
        return [self.infer(selfie[i : i + 1], base[i : i + 1])[0] for i in range(len(selfie))]

    def unload(self) -> None:
        """Release the model's memory; the engine may be loaded again."""
        if self.version is not None:
            self._unload()
            self.version = None
            self.loaded_by = ""

    def _checked(self, output: Array) -> Answer:
        if not np.all(np.isfinite(output)) or float(np.max(np.abs(output))) > 1.0 + 1e-3:
            return InferenceFailed(f"{self.name} returned values outside [-1, 1] for this image")
        return np.asarray(output, dtype=np.float32)

    def _loaded(self) -> ModelVersion:
        if self.version is None:
            raise ModelLoadError(f"{self.name} engine used before load()")
        return self.version

    def _load_beside(self, version: ModelVersion, previous: Engine | None) -> None:
        """:meth:`_load`, for engines that have no use for the serving one."""
        self._load(version)

    @abstractmethod
    def _load(self, version: ModelVersion) -> None: ...

    @abstractmethod
    def _run(self, selfie: Array, base: Array) -> Array:
        """The model on a whole batch: (N, 3, R, R) float32 out."""

    @abstractmethod
    def _unload(self) -> None: ...
