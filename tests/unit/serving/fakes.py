"""In-memory fakes at the serving seams: an engine that can be held mid-batch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from serving.engines.base import Array, Engine
from serving.swap import LoadedModel
from serving.version import ModelVersion


def fake_version(version: int = 1, resolution: int = 32) -> ModelVersion:
    return ModelVersion(
        name="converter",
        version=version,
        path=Path(f"/nowhere/converter/{version}"),
        family="pix2pix-lora",
        resolution=resolution,
        files={},
    )


class GateEngine(Engine):
    """Answers ``base`` (so outputs are recognisable); records each batch size. While
    ``hold`` is set, each batch signals ``entered`` and waits for ``release``."""

    name = "gate"

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.unloaded = threading.Event()

    def _load(self, version: ModelVersion) -> None:
        pass

    def _run(self, selfie: Array, base: Array) -> Array:
        self.batches.append(len(selfie))
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(30)
        return np.asarray(base, dtype=np.float32)

    def _unload(self) -> None:
        self.unloaded.set()


def loaded(version: int = 1, resolution: int = 32) -> tuple[LoadedModel, GateEngine]:
    engine = GateEngine()
    info = fake_version(version, resolution)
    engine.load(info)
    return LoadedModel(info, engine), engine
