"""Hot-swap: the one reference to the serving model, and how a new version replaces it.

:class:`ModelHolder` holds the current :class:`LoadedModel`. A batch takes a *lease* on
it (:meth:`ModelHolder.lease`) for as long as it runs, so a swap can flip the reference
at any moment and still know when the old model is no longer in use.

:meth:`Swapper.load` is the whole swap, one at a time::

    fetch (S3 storage only)         the version from the artifact store into the cache
    read the version directory      export.json (and config.json)
    verify every hash               export.json's files + the update's artifacts
    load and warm up beside         a second engine; the old one keeps answering (a
                                    loader gets the old engine as ``previous``, to
                                    reuse read-only: TensorRT refits its plan)
    flip                            one assignment under the holder's lock
    drain                           wait until every lease on the old model is returned
    unload the old engine

Any failure before the flip (a missing file, a hash that differs, a model that does not
load or fails its warm-up) leaves the old model serving; it is logged and counted
(``s2a_serving_swaps_total{outcome="failed"}``) and raised to the caller. Rolling back in
the registry is the same path with an older version number.

Example::

    holder = ModelHolder()
    swapper = Swapper(holder, loader=lambda v, previous=None: load_engine(v, previous=previous))
    swapper.load(Path("models/converter/7"), artifacts=update.artifacts)
    with holder.lease() as model:
        model.engine.infer(selfie, base)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from serving.engines import Engine
from serving.errors import ModelLoadError, NotReady
from serving.metrics import ServingMetrics
from serving.version import ModelVersion, read_version, verify

log = logging.getLogger(__name__)

#: How long a swap waits for in-flight batches on the old model before unloading it anyway
#: (a batch takes milliseconds; this only bounds a stuck one).
DRAIN_TIMEOUT_S = 60.0


@dataclass(eq=False)
class LoadedModel:
    """A version with its engine, serving or about to; ``leases`` counts running batches."""

    version: ModelVersion
    engine: Engine
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    leases: int = 0

    @property
    def ref(self) -> tuple[str, int, str]:
        return self.version.name, self.version.version, self.engine.name


class ModelHolder:
    """The single reference to the serving model (see the module docstring)."""

    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._changed = threading.Condition()
        #: What a call is told while no model is loaded; the server says why when it knows
        #: (none promoted yet, one loading, the last load failed).
        self.waiting = "no model is loaded yet; retry shortly"

    def not_ready(self) -> NotReady:
        """The error a call gets while no model is loaded (:attr:`waiting`)."""
        return NotReady(self.waiting)

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """The current model, kept loaded until the block ends; :class:`NotReady` when
        none is loaded yet."""
        with self._changed:
            model = self._current
            if model is None:
                raise self.not_ready()
            model.leases += 1
        try:
            yield model
        finally:
            with self._changed:
                model.leases -= 1
                self._changed.notify_all()

    def flip(self, new: LoadedModel | None) -> LoadedModel | None:
        """Make ``new`` the current model; returns the one it replaced."""
        with self._changed:
            old, self._current = self._current, new
            self._changed.notify_all()
        return old

    def drain(self, model: LoadedModel, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until no batch holds ``model``; False when ``timeout_s`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: model.leases == 0, timeout=timeout_s)


class Loader(Protocol):
    """``version -> a loaded, warmed-up engine`` (``serving.engines.load_engine`` bound to
    the settings), handed the engine serving now as ``previous`` (None before the first
    load), e.g. ``lambda v, previous=None: load_engine(v, "auto", previous=previous)``.
    It may read that engine (TensorRT refits its plan) but must leave it serving; raises
    :class:`ModelLoadError`."""

    def __call__(self, version: ModelVersion, *, previous: Engine | None = None) -> Engine: ...


class Swapper:
    """Loads versions into a :class:`ModelHolder`, one at a time (see the module doc).

    ``loader``: a :class:`Loader`, handed the serving engine with each load. ``on_change(model)``
    runs after each successful flip (the server sets health SERVING there); ``metrics``
    counts swaps and failed swaps.
    """

    def __init__(
        self,
        holder: ModelHolder,
        loader: Loader,
        *,
        metrics: ServingMetrics | None = None,
        on_change: Callable[[LoadedModel], None] | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        self.holder = holder
        self.loader = loader
        self.metrics = metrics
        self.on_change = on_change
        self.drain_timeout_s = drain_timeout_s
        self.swaps = 0
        self.failed_swaps = 0
        self._one_at_a_time = threading.Lock()

    def load(
        self,
        path: Path,
        *,
        name: str | None = None,
        version: int | None = None,
        artifacts: Mapping[str, str] | None = None,
        fetch: Callable[[], Path] | None = None,
    ) -> tuple[LoadedModel, bool]:
        """Swap to the version at ``path``; returns the serving model and whether it
        changed (False: that version already serves). Raises :class:`ModelLoadError`
        (the old model keeps serving).

        ``fetch``: brings the version from the artifact store first and returns the local
        directory to load (:func:`serving.version.fetch_version`, bound by the server);
        its failure counts as a failed swap like any other."""
        with self._one_at_a_time:
            began = time.perf_counter()
            try:
                if fetch is not None:
                    path = fetch()
                info = read_version(path, name, version)
                current = self.holder.current
                if current is not None and _same(current.version, info):
                    return current, False
                verify(info, artifacts)
                engine = self._load_engine(info, current)
            except ModelLoadError as exc:
                self.failed_swaps += 1
                if self.metrics is not None:
                    self.metrics.swaps.labels(outcome="failed").inc()
                log.error("swap to %s refused, the current model keeps serving: %s", path, exc)
                raise
            new = LoadedModel(info, engine)
            old = self.holder.flip(new)
            self.swaps += 1
            if self.metrics is not None:
                self.metrics.swaps.labels(outcome="ok").inc()
                self.metrics.set_model(info.name, info.version, engine.name)
            if self.on_change is not None:
                self.on_change(new)
            log.info(
                "serving %s on %s%s (was %s), loaded and warmed up in %.2fs",
                info.label,
                engine.name,
                f", {engine.loaded_by}" if engine.loaded_by else "",
                old.version.label if old else "none",
                time.perf_counter() - began,
            )
        if old is not None:
            self._retire(old)
        return new, True

    def _load_engine(self, version: ModelVersion, current: LoadedModel | None) -> Engine:
        # The current model cannot be retired meanwhile: swaps and unload() take turns.
        previous = current.engine if current is not None else None
        return self.loader(version, previous=previous)

    def unload(self) -> None:
        """Take the current model out of service and free it (server shutdown)."""
        with self._one_at_a_time:
            old = self.holder.flip(None)
        if old is not None:
            self._retire(old)

    def _retire(self, old: LoadedModel) -> None:
        # In-flight batches finish on the model they started with; only then is it freed.
        if not self.holder.drain(old, self.drain_timeout_s):
            log.warning(
                "%s still had %d batches running after %.0fs; unloading it anyway",
                old.version.label,
                old.leases,
                self.drain_timeout_s,
            )
        old.engine.unload()


def _same(current: ModelVersion, new: ModelVersion) -> bool:
    return (current.name, current.version, current.path.resolve()) == (
        new.name,
        new.version,
        new.path.resolve(),
    )
