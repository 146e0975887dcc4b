"""TensorRT engine: a version's ``model.plan`` (FP16, refittable, built by the export where
tensorrt and a GPU were present), or the serving engine's plan refit with the version's
weights; run with torch CUDA tensors as its buffers.

Switched on only where ``tensorrt`` imports *and* a CUDA GPU is present; the module and
the GPU check are constructor parameters (the seam tests use: nothing imports tensorrt
until :meth:`TensorRTEngine.load` runs). Anywhere else :meth:`load` raises
:class:`EngineUnavailable` saying which of the two is missing, and engine selection moves
on to ONNX Runtime.

Which plan a version runs, in order:

    its own model.plan          deserialized ("deserialized model.plan")
    the serving engine's plan   when the version has no plan of its own, or one that does
                                not deserialize here (plans are tied to the GPU and the
                                TensorRT release that built them), and only its weights
                                changed (:class:`Architecture`): a NEW engine is
                                deserialized from the plan the serving one runs and refit
                                from the version's model.onnx ("refit from converter v3");
                                the serving engine is never touched and keeps answering
                                until the swap flips
    none                        :class:`EngineUnavailable` with both reasons (``auto``
                                moves on to ONNX Runtime)

A refit is not tried from an INT8 plan (its calibration scales belong to the old weights
and a refit keeps them) nor from one its export.json does not record as refittable. A refit
that is tried and fails (TensorRT rejects the graph's weights, leaves some unset, or fails
to apply them) raises :class:`ModelLoadError`, not :class:`EngineUnavailable`: the version
does not fit a plan of its declared network, so the swap is refused and the old model keeps
serving rather than the new one being served on a slower engine.

API used (TensorRT 10): ``Runtime(logger).deserialize_cuda_engine(bytes)``,
``create_execution_context()``, ``get_tensor_profile_shape(name, 0)`` (min, opt, max),
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3(stream)``; to refit,
``Refitter(engine, logger)`` (TypeError for an engine built without REFIT),
``OnnxParserRefitter(refitter, logger).refit_from_file(path)`` (False on failure, with
``num_errors``/``get_error(i)``), ``Refitter.get_missing_weights()`` (must be empty) and
``Refitter.refit_cuda_engine()`` (False on failure).

Example::

    engine = TensorRTEngine()
    engine.load(version)            # EngineUnavailable('tensorrt not importable') here
    engine.load(v8, previous=serving_v7_engine)
    engine.loaded_by                # 'refit from converter v7' on a GPU machine
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

import numpy as np

from serving.engines.base import Array, Engine
from serving.errors import EngineUnavailable, ModelLoadError
from serving.version import EXPORT_JSON, MODEL_ONNX, MODEL_PLAN, ModelVersion

# One probe for TensorRT and a GPU, shared with the exporter that builds model.plan.
from trainer.export.tensorrt import cuda_available, import_tensorrt

log = logging.getLogger(__name__)

INPUTS = ("selfie", "base")
OUTPUT = "anime"
DESERIALIZED = f"deserialized {MODEL_PLAN}"
#: The only plan precision a refit is tried on (export.json's ``tensorrt.precision``).
REFIT_PRECISION = "fp16"


def unavailable_reason(trt: ModuleType | None, gpu: Callable[[], bool]) -> str | None:
    """Why TensorRT cannot run here (None: it can)."""
    if trt is None:
        return "tensorrt not importable (pip install .[tensorrt] from NVIDIA's index)"
    if not gpu():
        return "no CUDA GPU"
    return None


@dataclass(frozen=True, slots=True)
class Architecture:
    """What fixes the layer names and weight shapes of a version's TensorRT network, as its
    export.json records them. Two versions that agree on all of it differ in their weights
    alone (a new adapter merged in, or a new base of the same shape): one's plan can be
    refit with the other's weights.

    ``generator``: export.json's ``generator`` (width, levels, res_blocks...) as sorted
    JSON, ``"{}"`` where it records none; ``opset``: the ONNX opset of model.onnx, whose
    initializer names the refit maps onto the plan's weights.
    """

    family: str
    resolution: int
    generator: str
    opset: int | None

    @classmethod
    def of(cls, version: ModelVersion, export: Mapping[str, Any]) -> Architecture:
        opset = export.get("opset")
        return cls(
            family=version.family,
            resolution=version.resolution,
            generator=json.dumps(version.generator, sort_keys=True),
            opset=opset if isinstance(opset, int) else None,
        )

    def differences(self, other: Architecture) -> list[str]:
        """``"resolution 256 vs 512"`` for each field that differs (self's value first)."""
        return [
            f"{f.name} {getattr(self, f.name)} vs {getattr(other, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


@dataclass(frozen=True, slots=True)
class Plan:
    """A serialized engine as read from one version's ``model.plan``, kept by the engine
    that runs it (host memory: the file's size) so that the next version can be refit
    from it without a plan of its own.

    ``origin``: the version whose model.plan it is (``"converter v3"``); ``architecture``:
    that version's; ``precision`` and ``refittable``: its export.json ``tensorrt`` record.
    """

    data: bytes
    origin: str
    architecture: Architecture
    precision: str | None
    refittable: bool


def refit_refusal(plan: Plan | None, target: Architecture, label: str) -> str | None:
    """Why the version ``label`` (of network ``target``) is not refit from ``plan``, the
    plan of the engine serving now; None: it is."""
    if plan is None:
        return "no TensorRT engine serves now whose plan could be refit with its weights"
    source = f"the serving plan (model.plan of {plan.origin})"
    if not plan.refittable:
        return f"{source} is not recorded as refittable in its export.json"
    if plan.precision != REFIT_PRECISION:
        # An INT8 plan's activation scales were calibrated on the old weights; a refit
        # would keep them. An unrecorded precision may be INT8 as well.
        return (
            f"{source} is {plan.precision or 'of unrecorded precision'}, not "
            f"{REFIT_PRECISION}: INT8 scales calibrated on the old weights would outlive a refit"
        )
    if target.generator == "{}":
        return (
            f"the export.json of {label} records no generator shape, so nothing says its "
            "network is the plan's"
        )
    differences = plan.architecture.differences(target)
    if differences:
        return f"{label} is another network than {source}: {'; '.join(differences)}"
    return None


def refit(trt: ModuleType, logger: Any, plan: Plan, version: ModelVersion) -> Any:
    """A new TensorRT engine deserialized from ``plan`` and refit with the weights of
    ``version``'s model.onnx; nothing else holds it (the engine that ran ``plan`` first is
    a separate object, untouched).

    Raises :class:`ModelLoadError` naming the step that failed: the plan does not
    deserialize, is not refittable, TensorRT rejects the graph's weights
    (``refit_from_file`` False, with the parser's errors), weights of the plan are left
    without a value, or ``refit_cuda_engine`` fails.
    """
    onnx_path = version.file(MODEL_ONNX)
    what = f"refitting the TensorRT plan of {plan.origin} with the weights of {onnx_path} failed"
    fix = (
        f"{version.label} does not fit the plan of the network its export.json declares: "
        f"export it on a GPU machine with tensorrt so it has its own {MODEL_PLAN}, or serve "
        "it with S2A_SERVING__ENGINE=onnxruntime; the current model keeps serving"
    )
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan.data)
    if engine is None:
        raise ModelLoadError(
            f"{what}: the plan, which deserialized here before, no longer does; see "
            "TensorRT's log (GPU memory?) and retry the swap"
        )
    try:
        refitter = trt.Refitter(engine, logger)
    except TypeError as exc:  # pybind11's answer to the null refitter of a non-REFIT engine
        raise ModelLoadError(
            f"{what}: the plan was built without BuilderFlag.REFIT although its export.json "
            f"says refittable ({exc}); re-export {plan.origin}, or {fix}"
        ) from exc
    parser = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(int(parser.num_errors))]
        raise ModelLoadError(f"{what}: {'; '.join(errors) or 'see TensorRT log'}; {fix}")
    missing = sorted(str(name) for name in refitter.get_missing_weights())
    if missing:
        raise ModelLoadError(
            f"{what}: {len(missing)} weights of the plan got no value from the graph "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); {fix}"
        )
    if not refitter.refit_cuda_engine():
        raise ModelLoadError(f"{what}: refit_cuda_engine returned False (see TensorRT log); {fix}")
    return engine


class TensorRTEngine(Engine):
    """A TensorRT engine, deserialized from a plan (and refit, see the module docstring);
    batches larger than its profile's maximum run in slices, one batch at a time (an
    execution context holds one run's shapes and buffer addresses).

    ``plan``: the plan it runs, while loaded (what the next version may be refit from);
    ``loaded_by``: ``"deserialized model.plan"`` or ``"refit from converter v3"`` (with
    ``" (model.plan of converter v1)"`` when that engine was itself refit).
    """

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
        self.plan: Plan | None = None

    def _load(self, version: ModelVersion) -> None:
        self._load_beside(version, None)

    def _load_beside(self, version: ModelVersion, previous: Engine | None) -> None:
        trt = self._trt if self._trt is not None else import_tensorrt()
        reason = unavailable_reason(trt, self._gpu)
        if reason is not None or trt is None:
            raise EngineUnavailable(f"TensorRT cannot run here: {reason}")
        export = _export_record(version)
        architecture = Architecture.of(version, export)
        # Read once: a later swap may unload the serving engine (never during this one).
        plan = previous.plan if isinstance(previous, TensorRTEngine) else None
        served = previous.version.label if previous is not None and previous.version else None
        if not version.has(MODEL_ONNX):
            refusal: str | None = f"{version.file(MODEL_ONNX)} is missing (the weights to refit)"
        else:
            refusal = refit_refusal(plan, architecture, version.label)
        own = version.file(MODEL_PLAN)
        if not version.has(MODEL_PLAN) and refusal is not None:
            raise EngineUnavailable(
                f"{own} is missing: the version was exported without TensorRT; export it on "
                f"a GPU machine with tensorrt installed (no refit either: {refusal})"
            )
        logger = trt.Logger(trt.Logger.WARNING)
        if version.has(MODEL_PLAN):
            data = own.read_bytes()
            engine = trt.Runtime(logger).deserialize_cuda_engine(data)
            if engine is not None:
                record = export.get("tensorrt") or {}
                own_plan = Plan(
                    data=data,
                    origin=version.label,
                    architecture=architecture,
                    precision=record.get("precision"),
                    refittable=record.get("refittable") is True,
                )
                self._install(engine, own_plan, DESERIALIZED)
                return
            if refusal is not None:
                raise EngineUnavailable(
                    f"{own} does not deserialize with tensorrt "
                    f"{getattr(trt, '__version__', '?')} on this GPU (plans are tied to "
                    f"both); rebuild it here (no refit either: {refusal})"
                )
            log.warning(
                "%s does not deserialize here; refitting the serving plan with its weights",
                own,
            )
        if plan is None:  # refit_refusal said so already; this narrows the type
            raise EngineUnavailable("no TensorRT plan serves now to refit")
        engine = refit(trt, logger, plan, version)
        source = served or plan.origin
        note = f" ({MODEL_PLAN} of {plan.origin})" if source != plan.origin else ""
        self._install(engine, plan, f"refit from {source}{note}")

    def _install(self, engine: Any, plan: Plan, loaded_by: str) -> None:
        context = engine.create_execution_context()
        max_batch = int(engine.get_tensor_profile_shape(INPUTS[0], 0)[2][0])
        self._engine, self._context, self._max_batch = engine, context, max_batch
        self.plan = plan
        self.loaded_by = loaded_by

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
        self.plan = None


def _export_record(version: ModelVersion) -> dict[str, Any]:
    """``version``'s export.json (read again: :class:`ModelVersion` keeps only part of it).

    Raises :class:`ModelLoadError` when it cannot be read any more."""
    path = version.file(EXPORT_JSON)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read as JSON any more: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data
