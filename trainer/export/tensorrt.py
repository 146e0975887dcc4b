"""A TensorRT engine (``model.plan``) from ``model.onnx``: FP16, refittable, the batch axis
dynamic through one optimization profile; INT8 on top when calibration images are given
(an ``IInt8EntropyCalibrator2`` over the same snapshot crops as ONNX Runtime's INT8).

TensorRT is an optional extra (``pip install .[tensorrt]``, from NVIDIA's index) and
building needs a CUDA GPU, so :func:`build_engine` first says whether it can run at all:

    tensorrt not importable      no ``tensorrt`` module (every machine of this project so far)
    no CUDA GPU                  the module imports but torch sees no CUDA device
    tensorrt X lacks ...         a TensorRT without the TensorRT 10 builder API used here
                                 (11 removed ``BuilderFlag.FP16`` and implicit INT8)

and returns ``EngineResult(built=False, skipped=reason)`` without touching anything. The
module and the GPU check are parameters (the seam the tests fake): nothing imports
``tensorrt`` until :func:`build_engine` runs.

API used (TensorRT 10 Python API, docs.nvidia.com/deeplearning/tensorrt): ``Builder(logger)``,
``create_network(0)`` (explicit batch is the only mode in 10), ``OnnxParser(network,
logger).parse(bytes)`` with ``num_errors``/``get_error(i)``, ``create_builder_config()``,
``set_flag(BuilderFlag.FP16 | REFIT | INT8)``, ``set_memory_pool_limit(MemoryPoolType.
WORKSPACE, bytes)``, ``create_optimization_profile().set_shape(name, min, opt, max)``,
``add_optimization_profile``, ``int8_calibrator`` and ``set_calibration_profile``
(deprecated since 10.1 in favour of explicit Q/DQ quantization, still present in 10.x),
``build_serialized_network(network, config)`` (``None`` on failure).

Example::

    result = build_engine(Path("v7/model.onnx"), Path("v7/model.plan"), resolution=256)
    result.as_dict()        # {"built": False, "skipped": "tensorrt not importable", ...}
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.errors import TensorRTError
from trainer.export.onnx_export import INPUT_NAMES

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]

#: Builder scratch memory; the generator's largest activations at batch 16 and 256 px
#: are ~40 MB, so 1 GiB leaves tactics room without crowding a serving GPU.
WORKSPACE_BYTES = 1 << 30
CALIBRATION_CACHE = "model.plan.calibration"

SKIP_NOT_IMPORTABLE = "tensorrt not importable"
SKIP_NO_GPU = "no CUDA GPU"


@dataclass(frozen=True)
class EngineResult:
    """What the TensorRT step did: ``built`` with the ``plan`` file name and its
    ``precision`` ("fp16" or "fp16+int8"), or ``skipped`` with the reason."""

    built: bool
    skipped: str | None = None
    plan: str | None = None
    precision: str | None = None
    refittable: bool = False
    batch: dict[str, int] = field(default_factory=dict)
    tensorrt_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_tensorrt() -> ModuleType | None:
    """The ``tensorrt`` module, or None where it is not installed."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        return None


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def skip_reason(trt: ModuleType | None, gpu: bool) -> str | None:
    """Why no engine can be built here, or None when it can."""
    if trt is None:
        return SKIP_NOT_IMPORTABLE
    if not gpu:
        return SKIP_NO_GPU
    flags = getattr(trt, "BuilderFlag", None)
    if flags is None or not hasattr(flags, "FP16") or not hasattr(flags, "REFIT"):
        version = getattr(trt, "__version__", "?")
        return f"tensorrt {version} lacks BuilderFlag.FP16/REFIT (this builder targets 10.x)"
    return None


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    resolution: int,
    *,
    calibration: tuple[Array, Array] | None = None,
    max_batch: int = 16,
    opt_batch: int = 8,
    trt: ModuleType | None = None,
    gpu: Callable[[], bool] = cuda_available,
) -> EngineResult:
    """Build ``plan_path`` from ``onnx_path`` where TensorRT and a GPU are present.

    ``calibration`` is ``(selfie, base)``, float32 ``(N, 3, R, R)`` each: with it the
    engine also runs INT8 where TensorRT finds it faster (FP16 elsewhere). Batch sizes
    1..``max_batch`` are accepted, tuned for ``opt_batch``. ``trt`` defaults to importing
    ``tensorrt``; ``gpu`` to torch's CUDA check. Raises :class:`TensorRTError` when
    TensorRT is there but rejects the model or fails to build.
    """
    trt = trt if trt is not None else import_tensorrt()
    reason = skip_reason(trt, gpu() if trt is not None else False)
    if reason is not None or trt is None:
        log.info("TensorRT engine skipped: %s", reason)
        return EngineResult(built=False, skipped=reason)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT cannot parse {onnx_path}: {'; '.join(errors)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    # Refittable: a retrain that keeps the generator's shape can swap weights into a
    # serving engine (trt.Refitter) instead of rebuilding it.
    config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    opt_batch = min(opt_batch, max_batch)
    image = (3, resolution, resolution)
    for name in INPUT_NAMES:
        profile.set_shape(name, (1, *image), (opt_batch, *image), (max_batch, *image))
    config.add_optimization_profile(profile)
    precision = "fp16"
    calibrator = None
    if calibration is not None and len(calibration[0]):
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = entropy_calibrator(
            trt, calibration, plan_path.with_name(CALIBRATION_CACHE), batch=1
        )
        config.int8_calibrator = calibrator
        # Calibration runs at the profile's shapes: a calibration profile fixes batch 1.
        calibration_profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            calibration_profile.set_shape(name, (1, *image), (1, *image), (1, *image))
        config.set_calibration_profile(calibration_profile)
        precision = "fp16+int8"

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(
            f"TensorRT failed to build an engine from {onnx_path} (see its log above)"
        )
    plan_path.write_bytes(bytes(serialized))
    return EngineResult(
        built=True,
        plan=plan_path.name,
        precision=precision,
        refittable=True,
        batch={"min": 1, "opt": opt_batch, "max": max_batch},
        tensorrt_version=str(getattr(trt, "__version__", "")) or None,
    )


def entropy_calibrator(
    trt: ModuleType, calibration: tuple[Array, Array], cache: Path, batch: int = 1
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``(selfie, base)`` pairs, ``batch`` at a time,
    from CUDA memory (torch tensors: no pycuda needed); the scales are cached in
    ``cache`` so a rebuild on the same images skips calibration.

    Built inside a function because its base class exists only where tensorrt imports.
    """
    import torch

    selfie, base = calibration

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.position = 0
            self.batches = len(selfie) // batch
            self.device: dict[str, Any] = {}  # keeps the current batch alive on the GPU

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if self.position >= self.batches:
                return None
            sl = slice(self.position * batch, (self.position + 1) * batch)
            arrays = {"selfie": selfie[sl], "base": base[sl]}
            self.device = {
                name: torch.from_numpy(np.ascontiguousarray(arrays[name])).cuda() for name in names
            }
            self.position += 1
            return [int(self.device[name].data_ptr()) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()
