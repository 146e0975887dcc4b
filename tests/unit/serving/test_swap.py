"""Hot-swap in process: a swap loads beside the old model, flips, waits for in-flight
batches on the old one, then unloads it; a broken version never replaces a working one."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from fakes import GateEngine
from serving_fixture import corrupt

from infra.waiting import wait_until
from serving.engines import Engine, load_engine
from serving.errors import ArtifactMismatch, ModelLoadError, NotReady
from serving.metrics import ServingMetrics
from serving.swap import ModelHolder, Swapper
from serving.version import ModelVersion


def _real_swapper(metrics: ServingMetrics | None = None) -> tuple[ModelHolder, Swapper]:
    holder = ModelHolder()

    def loader(version: ModelVersion, *, previous: Engine | None = None) -> Engine:
        return load_engine(version, "onnxruntime", warmup_runs=1, previous=previous)

    return holder, Swapper(holder, loader, metrics=metrics)


def test_a_swap_moves_the_reference_and_reports_no_change_for_the_same_version(
    models_dir: Path,
) -> None:
    metrics = ServingMetrics()
    holder, swapper = _real_swapper(metrics)
    with pytest.raises(NotReady), holder.lease():
        pass
    first, changed = swapper.load(models_dir / "converter" / "1")
    assert changed
    assert holder.current is first
    second, changed = swapper.load(models_dir / "converter" / "2")
    assert changed
    assert holder.current is second
    assert first.engine.version is None
    again, changed = swapper.load(models_dir / "converter" / "2")
    assert not changed
    assert again is second
    assert metrics.value("s2a_serving_swaps_total", outcome="ok") == 2
    assert metrics.value("s2a_serving_model_version", name="converter") == 2
    swapper.unload()
    assert holder.current is None


def test_a_corrupt_or_missing_version_keeps_the_old_model(models_dir: Path, tmp_path: Path) -> None:
    metrics = ServingMetrics()
    holder, swapper = _real_swapper(metrics)
    good, _ = swapper.load(models_dir / "converter" / "1")
    broken = tmp_path / "converter" / "3"
    shutil.copytree(models_dir / "converter" / "2", broken)
    corrupt(broken)
    with pytest.raises(ArtifactMismatch, match=r"model\.onnx"):
        swapper.load(broken)
    with pytest.raises(ModelLoadError, match="does not exist"):
        swapper.load(tmp_path / "converter" / "9")
    with pytest.raises(ArtifactMismatch, match=r"generator\.json"):
        swapper.load(models_dir / "converter" / "2", artifacts={"generator.json": "f" * 64})
    assert holder.current is good
    assert good.engine.version is not None
    assert (swapper.swaps, swapper.failed_swaps) == (1, 3)
    assert metrics.value("s2a_serving_swaps_total", outcome="failed") == 3


def test_the_old_model_is_unloaded_only_after_its_batches_finish(models_dir: Path) -> None:
    holder = ModelHolder()
    engines: list[GateEngine] = []

    def loader(version: ModelVersion, *, previous: Engine | None = None) -> GateEngine:
        engine = GateEngine()
        engine.load(version)
        engines.append(engine)
        return engine

    swapper = Swapper(holder, loader)
    old, _ = swapper.load(models_dir / "converter" / "1")
    leased = threading.Event()
    finish = threading.Event()

    def in_flight_batch() -> None:
        with holder.lease() as model:
            assert model is old
            leased.set()
            finish.wait(30)

    batch = threading.Thread(target=in_flight_batch)
    batch.start()
    assert leased.wait(10)
    swap = threading.Thread(target=swapper.load, args=(models_dir / "converter" / "2",))
    swap.start()
    # The flip happens at once; the unload waits for the batch (it holds a lease).
    wait_until(
        lambda: holder.current is not None and holder.current.version.version == 2,
        deadline_s=30,
        what="the swap to version 2",
    )
    assert not engines[0].unloaded.is_set()
    finish.set()
    batch.join(10)
    swap.join(10)
    assert engines[0].unloaded.is_set()
    assert not engines[1].unloaded.is_set()
