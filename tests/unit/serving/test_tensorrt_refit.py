"""TensorRT refit, through a fake ``tensorrt`` at the engine's seam: a version whose weights
alone changed runs the serving engine's plan, refit into a new engine beside the old one;
another network is never refit; a refit that fails is refused with its reason, and a swap
to it leaves the old model serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_tensorrt import FIXED, FOREIGN, WEIGHTS, Knobs, fake_tensorrt, onnx_weights
from fakes import GateEngine

from schemas.digests import sha256_file
from serving.engines import Engine, TensorRTEngine, default_factory, load_engine
from serving.engines.base import Array
from serving.errors import EngineUnavailable, InferenceFailed, ModelLoadError
from serving.swap import ModelHolder, Swapper
from serving.version import MODEL_ONNX, MODEL_PLAN, ModelVersion, read_version

V1_PLAN = b"PLAN converter v1"


def make_version(
    home: Path,
    source: Path,
    number: int,
    *,
    plan: bytes | None = None,
    precision: str = "fp16",
    refittable: bool = True,
    export: dict[str, Any] | None = None,
) -> ModelVersion:
    """A copy of the exported ``source`` as ``home/converter/<number>``, with ``plan`` as
    its model.plan (recorded in export.json as the exporter does) and ``export``'s keys
    replacing export.json's."""
    target = home / "converter" / str(number)
    shutil.copytree(source, target)
    record = json.loads((target / "export.json").read_text())
    if plan is not None:
        (target / MODEL_PLAN).write_bytes(plan)
        record["files"][MODEL_PLAN] = sha256_file(target / MODEL_PLAN)
        record["tensorrt"] = {
            "built": True,
            "plan": MODEL_PLAN,
            "precision": precision,
            "refittable": refittable,
            "tensorrt_version": "10.9.0",
        }
    record.update(export or {})
    (target / "export.json").write_text(json.dumps(record))
    return read_version(target)


def trt_engine(trt: Any) -> TensorRTEngine:
    return TensorRTEngine(trt=trt, gpu=lambda: True)


def plan_weights(plan: bytes) -> dict[str, str]:
    return {name: f"plan:{plan.decode()}" for name in WEIGHTS}


@pytest.fixture
def exported(models_dir: Path) -> tuple[Path, Path]:
    """The two tiny versions: same network, different weights."""
    return models_dir / "converter" / "1", models_dir / "converter" / "2"


def test_new_weights_refit_a_new_engine_from_the_serving_plan(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    trt = fake_tensorrt()
    v1 = make_version(tmp_path, exported[0], 1, plan=V1_PLAN)
    v2 = make_version(tmp_path, exported[1], 2)
    old = trt_engine(trt)
    old.load(v1)
    assert old.loaded_by == "deserialized model.plan"
    trt.calls.clear()

    new = trt_engine(trt)
    new.load(v2, previous=old)

    assert trt.calls == [
        ("deserialize_cuda_engine", V1_PLAN),
        ("Refitter", 1),
        ("OnnxParserRefitter",),
        ("refit_from_file", str(v2.file(MODEL_ONNX))),
        ("get_missing_weights",),
        ("refit_cuda_engine",),
        ("create_execution_context",),
    ]
    served, refit = trt.engines
    assert refit is not served
    assert served.weights == plan_weights(V1_PLAN)  # the old engine keeps its weights
    assert refit.weights == dict.fromkeys(WEIGHTS, onnx_weights(v2.file(MODEL_ONNX)))
    assert refit.weights != dict.fromkeys(WEIGHTS, onnx_weights(v1.file(MODEL_ONNX)))
    assert (served.contexts, refit.contexts) == (1, 1)
    assert new.loaded_by == "refit from converter v1"
    assert (new.version, old.version) == (v2, v1)
    assert new.plan is not None
    assert new.plan.origin == "converter v1"


def test_a_refit_engine_hands_the_plan_on(exported: tuple[Path, Path], tmp_path: Path) -> None:
    trt = fake_tensorrt()
    v1 = make_version(tmp_path, exported[0], 1, plan=V1_PLAN)
    v2 = make_version(tmp_path, exported[1], 2)
    v3 = make_version(tmp_path, exported[0], 3)
    first, second, third = trt_engine(trt), trt_engine(trt), trt_engine(trt)
    first.load(v1)
    second.load(v2, previous=first)
    first.unload()  # the swap retired it; its plan lives on in the second engine
    third.load(v3, previous=second)
    assert third.loaded_by == "refit from converter v2 (model.plan of converter v1)"
    assert [call[1] for call in trt.calls if call[0] == "deserialize_cuda_engine"] == [V1_PLAN] * 3
    assert trt.engines[2].weights == dict.fromkeys(WEIGHTS, onnx_weights(v3.file(MODEL_ONNX)))
    assert trt.engines[1].weights == dict.fromkeys(WEIGHTS, onnx_weights(v2.file(MODEL_ONNX)))


def test_own_plan_comes_first_and_refit_covers_one_that_does_not_deserialize(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    trt = fake_tensorrt()
    old = trt_engine(trt)
    old.load(make_version(tmp_path, exported[0], 1, plan=V1_PLAN))

    own = trt_engine(trt)
    own.load(make_version(tmp_path, exported[1], 2, plan=b"PLAN converter v2"), previous=old)
    assert own.loaded_by == "deserialized model.plan"
    assert "Refitter" not in [call[0] for call in trt.calls]
    assert trt.engines[-1].weights == plan_weights(b"PLAN converter v2")

    foreign = make_version(tmp_path, exported[1], 3, plan=FOREIGN + b" built on another GPU")
    refit = trt_engine(trt)
    refit.load(foreign, previous=old)
    assert refit.loaded_by == "refit from converter v1"
    assert trt.engines[-1].weights == dict.fromkeys(WEIGHTS, onnx_weights(foreign.file(MODEL_ONNX)))


GENERATOR = {"family": "pix2pix-lora", "levels": 2, "res_blocks": 1, "width": 4}


@pytest.mark.parametrize(
    ("export", "reason"),
    [
        ({"resolution": 64}, "another network .* resolution 32 vs 64"),
        ({"generator": {**GENERATOR, "width": 8}}, "another network .*generator.*width.*4.*8"),
        ({"family": "sd-lora"}, "another network .* family pix2pix-lora vs sd-lora"),
        ({"opset": 18}, "another network .* opset 20 vs 18"),
        ({"generator": {}}, "records no generator shape"),
    ],
    ids=["resolution", "generator", "family", "opset", "unrecorded"],
)
def test_another_network_is_not_refit(
    exported: tuple[Path, Path], tmp_path: Path, export: dict[str, Any], reason: str
) -> None:
    trt = fake_tensorrt()
    old = trt_engine(trt)
    old.load(make_version(tmp_path, exported[0], 1, plan=V1_PLAN))
    other = make_version(tmp_path, exported[1], 2, export=export)
    with pytest.raises(EngineUnavailable, match=rf"model\.plan is missing.*{reason}"):
        trt_engine(trt).load(other, previous=old)
    assert "Refitter" not in [call[0] for call in trt.calls]
    assert len(trt.engines) == 1


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        ({"precision": "fp16+int8"}, r"is fp16\+int8, not fp16: INT8 scales"),
        ({"refittable": False}, "not recorded as refittable"),
    ],
    ids=["int8", "not-refittable"],
)
def test_a_plan_that_must_not_be_refit_is_not(
    exported: tuple[Path, Path], tmp_path: Path, plan: dict[str, Any], reason: str
) -> None:
    trt = fake_tensorrt()
    old = trt_engine(trt)
    old.load(make_version(tmp_path, exported[0], 1, plan=V1_PLAN, **plan))
    with pytest.raises(EngineUnavailable, match=reason):
        trt_engine(trt).load(make_version(tmp_path, exported[1], 2), previous=old)
    assert "Refitter" not in [call[0] for call in trt.calls]


def test_nothing_is_refit_without_a_serving_tensorrt_engine(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    v1 = make_version(tmp_path, exported[0], 1)
    v2 = make_version(tmp_path, exported[1], 2)
    gate = GateEngine()
    gate.load(v1)
    for previous in (None, gate):
        trt = fake_tensorrt()
        with pytest.raises(EngineUnavailable, match="no TensorRT engine serves now"):
            trt_engine(trt).load(v2, previous=previous)
        assert trt.calls == []


def test_auto_serves_another_network_on_onnx_runtime(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    trt = fake_tensorrt()
    old = trt_engine(trt)
    old.load(make_version(tmp_path, exported[0], 1, plan=V1_PLAN))
    other = make_version(tmp_path, exported[1], 2, export={"generator": {**GENERATOR, "width": 8}})

    def factory(kind: str) -> Engine:
        return trt_engine(trt) if kind == "tensorrt" else default_factory(threads=1)(kind)

    engine = load_engine(other, "auto", warmup_runs=1, factory=factory, previous=old)
    assert engine.name.startswith("onnxruntime")
    assert engine.loaded_by == ""
    engine.unload()
    assert old.version is not None


FAILURES = [
    (Knobs(parse_ok=False), "no initializer named head.weight in the graph"),
    (Knobs(leave_unset=("head.bias",)), r"1 weights of the plan got no value .*\(head\.bias\)"),
    (Knobs(apply_ok=False), "refit_cuda_engine returned False"),
]
FAILURE_IDS = ["refit_from_file", "missing-weights", "refit_cuda_engine"]


@pytest.mark.parametrize(("knobs", "reason"), FAILURES, ids=FAILURE_IDS)
def test_a_failed_refit_raises_its_reason(
    exported: tuple[Path, Path], tmp_path: Path, knobs: Knobs, reason: str
) -> None:
    trt = fake_tensorrt(knobs)
    old = trt_engine(trt)
    old.load(make_version(tmp_path, exported[0], 1, plan=V1_PLAN))
    new = trt_engine(trt)
    with pytest.raises(ModelLoadError, match=reason) as raised:
        new.load(make_version(tmp_path, exported[1], 2), previous=old)
    assert not isinstance(raised.value, EngineUnavailable)  # auto must not move on
    assert "refitting the TensorRT plan of converter v1" in str(raised.value)
    assert "S2A_SERVING__ENGINE=onnxruntime" in str(raised.value)
    if knobs.leave_unset:  # the missing-weights check comes before the refit is applied
        assert ("refit_cuda_engine",) not in trt.calls
    assert new.version is None
    assert trt.engines[0].weights == plan_weights(V1_PLAN)


def test_a_plan_built_without_refit_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    trt = fake_tensorrt()
    old = trt_engine(trt)
    old.load(make_version(tmp_path, exported[0], 1, plan=FIXED + b" plan"))
    with pytest.raises(ModelLoadError, match=r"built without BuilderFlag\.REFIT"):
        trt_engine(trt).load(make_version(tmp_path, exported[1], 2), previous=old)
    assert "OnnxParserRefitter" not in [call[0] for call in trt.calls]


class CpuRunTensorRT(TensorRTEngine):
    """Loads (and refits) through the fake module; runs its batches on the CPU, since
    the real run needs torch CUDA buffers: the output is the ``base`` input."""

    def _run(self, selfie: Array, base: Array) -> Array:
        return np.asarray(base, dtype=np.float32)


@pytest.mark.parametrize(("knobs", "reason"), FAILURES, ids=FAILURE_IDS)
def test_a_swap_whose_refit_fails_keeps_the_old_model(
    exported: tuple[Path, Path], tmp_path: Path, knobs: Knobs, reason: str
) -> None:
    trt = fake_tensorrt(Knobs())
    v1 = make_version(tmp_path, exported[0], 1, plan=V1_PLAN)
    v2 = make_version(tmp_path, exported[1], 2)
    handed: list[Engine | None] = []

    def loader(version: ModelVersion, *, previous: Engine | None = None) -> Engine:
        handed.append(previous)
        return load_engine(
            version,
            "tensorrt",
            warmup_runs=1,
            factory=lambda kind: CpuRunTensorRT(trt=trt, gpu=lambda: True),
            previous=previous,
        )

    holder = ModelHolder()
    swapper = Swapper(holder, loader)
    first, _ = swapper.load(v1.path)
    assert first.engine.loaded_by == "deserialized model.plan"

    _set_knobs(trt, knobs)
    with pytest.raises(ModelLoadError, match=reason):
        swapper.load(v2.path)
    assert holder.current is first
    assert first.engine.version == v1
    with holder.lease() as model:
        grey = np.zeros((1, 3, 32, 32), np.float32)
        assert not isinstance(model.engine.infer(grey, grey)[0], InferenceFailed)
    assert trt.engines[0].weights == plan_weights(V1_PLAN)
    assert (swapper.swaps, swapper.failed_swaps) == (1, 1)

    _set_knobs(trt, Knobs())
    second, changed = swapper.load(v2.path)
    assert changed
    assert holder.current is second
    assert second.engine.loaded_by == "refit from converter v1"
    assert first.engine.version is None  # retired after the flip
    assert handed == [None, first.engine, first.engine]


def _set_knobs(trt: Any, knobs: Knobs) -> None:
    """Make ``trt`` behave as ``knobs`` say from its next call on."""
    for name, value in vars(knobs).items():
        setattr(trt.knobs, name, value)
