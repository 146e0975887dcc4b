"""A stand-in for ``tensorrt`` at :class:`~serving.engines.TensorRTEngine`'s seam, for
machines without it (all of this project's): it records the TensorRT 10 runtime and refit
calls it receives, in order, and its engines hold fake weights.

A plan here is any bytes; deserializing one gives a :class:`FakeCudaEngine` whose weights
are ``{name: "plan:<the bytes>"}`` for each of :data:`WEIGHTS`. Refitting from a model.onnx
sets every weight to ``"onnx:<sha256 of the file, 12 hex>"``, so a test can tell which
weights an engine carries. The knobs make each refit step fail as TensorRT would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

#: The refittable weights every fake engine has.
WEIGHTS = ("head.weight", "head.bias")
#: Plans starting with these bytes do not deserialize (built for another GPU or release).
FOREIGN = b"FOREIGN"
#: Plans starting with these bytes give an engine built without REFIT.
FIXED = b"FIXED"


def onnx_weights(path: Path) -> str:
    """The value a refit from ``path`` gives every weight."""
    return "onnx:" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@dataclass(eq=False)
class FakeCudaEngine:
    plan: bytes
    max_batch: int
    resolution: int
    weights: dict[str, str] = field(default_factory=dict)
    contexts: int = 0

    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def create_execution_context(self) -> object:
        self.calls.append(("create_execution_context",))
        self.contexts += 1
        return object()

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        image = (3, self.resolution, self.resolution)
        return (1, *image), (max(1, self.max_batch // 2), *image), (self.max_batch, *image)


@dataclass
class Knobs:
    """How the fake's refit goes: ``parse_ok`` False makes ``refit_from_file`` fail with
    ``parse_error``; ``leave_unset`` names weights the graph gives no value;
    ``apply_ok`` False makes ``refit_cuda_engine`` fail."""

    parse_ok: bool = True
    parse_error: str = "no initializer named head.weight in the graph"
    leave_unset: tuple[str, ...] = ()
    apply_ok: bool = True
    max_batch: int = 16
    resolution: int = 32


def fake_tensorrt(knobs: Knobs | None = None) -> ModuleType:
    """A module with ``Logger``, ``Runtime``, ``Refitter`` and ``OnnxParserRefitter``;
    ``trt.calls`` lists the calls, ``trt.engines`` every engine deserialized."""
    knobs = knobs or Knobs()
    trt = ModuleType("tensorrt")
    calls: list[tuple[Any, ...]] = []
    engines: list[FakeCudaEngine] = []
    trt.calls = calls  # type: ignore[attr-defined]
    trt.engines = engines  # type: ignore[attr-defined]
    trt.knobs = knobs  # type: ignore[attr-defined]
    trt.__version__ = "10.9.0"  # type: ignore[attr-defined]

    class Logger:
        WARNING = "warning"

        def __init__(self, severity: str) -> None:
            self.severity = severity

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> FakeCudaEngine | None:
            calls.append(("deserialize_cuda_engine", bytes(plan)))
            if plan.startswith(FOREIGN):
                return None
            engine = FakeCudaEngine(
                plan=bytes(plan),
                max_batch=knobs.max_batch,
                resolution=knobs.resolution,
                weights={name: f"plan:{plan.decode(errors='replace')}" for name in WEIGHTS},
                calls=calls,
            )
            engines.append(engine)
            return engine

    class Refitter:
        def __init__(self, engine: FakeCudaEngine, logger: Logger) -> None:
            calls.append(("Refitter", engines.index(engine)))
            if engine.plan.startswith(FIXED):
                # What pybind11 raises for the null refitter of a non-refittable engine.
                raise TypeError("__init__(): incompatible constructor arguments")
            self.engine = engine
            self.pending: dict[str, str] = {}

        def get_missing_weights(self) -> list[str]:
            calls.append(("get_missing_weights",))
            return [name for name in WEIGHTS if name not in self.pending]

        def refit_cuda_engine(self) -> bool:
            calls.append(("refit_cuda_engine",))
            if not knobs.apply_ok:
                return False
            self.engine.weights.update(self.pending)
            return True

    class OnnxParserRefitter:
        def __init__(self, refitter: Refitter, logger: Logger) -> None:
            calls.append(("OnnxParserRefitter",))
            self.refitter = refitter
            self.errors: list[str] = []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

        def refit_from_file(self, path: str) -> bool:
            calls.append(("refit_from_file", path))
            if not knobs.parse_ok:
                self.errors.append(knobs.parse_error)
                return False
            value = onnx_weights(Path(path))
            for name in WEIGHTS:
                if name not in knobs.leave_unset:
                    self.refitter.pending[name] = value
            return True

    for cls in (Logger, Runtime, Refitter, OnnxParserRefitter):
        setattr(trt, cls.__name__, cls)
    return trt
