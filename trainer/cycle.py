"""One retrain cycle: snapshot, train, register, evaluate, promote or refuse.

:func:`run_cycle` is what the scheduler's job (and ``s2a models retrain``) calls, inside
its lease::

    1. freeze a snapshot of the approved pairs          trainer.dataset.create_snapshot
    2. register version N of settings.train.model_name  status training; its subjects
    3. train, in this process, main(parse_args([...])):
         no champion yet  a base run (``s2a train base`` semantics)
         a champion       a lora run on the champion's base, warm-started from the
                          champion's adapter, replaying a sample of the champion's
                          snapshot without the pairs of subjects erased since or with a
                          blob gone (``trainer.replay``; after an erasure too); N's
                          subjects become exactly its snapshot's and the replayed ones
    4. assemble models/<name>/<N>/: adapter/, the merged generator, config.json, and
       the export step's files (``trainer.export.export_version``: model.onnx, INT8,
       TensorRT where present, export.json; "not available" when it cannot be imported)
    5. move ``candidate`` to N; evaluate N and the champion on the new snapshot's
       validation split; the gate decides
    6. passed: ``champion`` -> N (compare-and-set against the champion evaluated), status
       promoted, and its :class:`~schemas.model_updates.ModelUpdate` queued in the outbox
       in the move's transaction (trainer.registry), sent by a relay;
       refused: status refused, the champion stays
    any failure from 2 on: status failed with the reason; the champion stays

Every metric is stored on the version either way (``metrics``: candidate, champion, gate
checks and verdict). The run's log, ``<run directory>.log`` beside the run directory (the
registry's ``log_path``), gets this module's and the family's log lines from step 2 on:
the snapshot with its counts, the replay chosen and what it left out, training started
and finished (steps, seconds), the export's files, the gate's verdict and its reason, and
the promotion, refusal or failure.

Example::

    result = run_cycle(settings, trigger="schedule")
    result.status                 # 'promoted' | 'refused' | 'failed'
    result.update                 # the ModelUpdate queued in the outbox, when promoted
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine

from agents.stages.embed import Embedder, build_embedder
from agents.stores.blobs import BlobStore, open_blobs
from agents.stores.db import create_engine_for
from schemas.model_updates import ModelUpdate, VersionStatus
from schemas.settings import Settings
from schemas.tables import ModelVersion
from trainer.assemble import ADAPTER, assemble_version, export
from trainer.dataset.snapshot import Manifest, create_snapshot, manifest_path, read_manifest
from trainer.errors import EvaluationError, RegistryError, TrainerError
from trainer.evaluate import (
    GateVerdict,
    evaluate,
    judge_candidate,
    load_generator,
    reference_statistics,
)
from trainer.families import get_family, script_argv
from trainer.registry import CANDIDATE, CHAMPION, Registry, hash_tree
from trainer.replay import ReplayPlan, plan_replay, write_replay
from trainer.retention import prune_model_files
from trainer.runs import write_json

log = logging.getLogger(__name__)

SUPPORTED_FAMILIES = ("pix2pix-lora",)
CONFIG_JSON = "config.json"

Freeze = Callable[[Engine, Settings], str]
Status = Literal["promoted", "refused", "failed"]


def freeze_snapshot(engine: Engine, settings: Settings) -> str:
    """The default step 1: a snapshot of every approved pair (an existing one when the
    data did not change: snapshots are named by their content)."""
    return create_snapshot(engine, settings).snapshot_id


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle did. ``update`` is set when the champion moved: the record queued
    in the outbox with the move (a relay sends it; see :mod:`infra.outbox`)."""

    status: Status
    name: str
    trigger: str
    reason: str
    version: int | None = None
    snapshot_id: str | None = None
    parent_version: int | None = None
    champion: int | None = None
    """the champion after the cycle"""
    previous_champion: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    version_dir: str | None = None
    run_dir: str | None = None
    update: ModelUpdate | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "name": self.name,
            "trigger": self.trigger,
            "reason": self.reason,
            "version": self.version,
            "snapshot_id": self.snapshot_id,
            "parent_version": self.parent_version,
            "champion": self.champion,
            "previous_champion": self.previous_champion,
            "metrics": self.metrics,
            "version_dir": self.version_dir,
            "run_dir": self.run_dir,
            "update": None if self.update is None else self.update.model_dump(mode="json"),
        }


def run_cycle(
    settings: Settings,
    trigger: str,
    *,
    engine: Engine | None = None,
    freeze: Freeze = freeze_snapshot,
    embedder: Embedder | Literal["settings"] | None = "settings",
    train_args: Sequence[str] = (),
    actor: str = "scheduler",
) -> CycleResult:
    """Run one cycle (module docstring) and say what happened; never raises for a failed
    training or evaluation (the version records it), only for a registry it cannot reach.

    ``engine`` is a migrated database's (default: one on ``settings.sql_url``, disposed
    after). ``freeze`` makes the snapshot and returns its id. ``embedder`` scores identity
    (``"settings"``: the one ``settings.models`` names; None: identity not measured).
    ``train_args`` are extra flags of the family's script (tests: a tiny model).
    """
    own_engine = engine is None
    engine = engine or create_engine_for(settings.sql_url)
    try:
        result = _cycle(settings, trigger, engine, freeze, embedder, train_args, actor)
        _retain(settings, engine)
        return result
    finally:
        if own_engine:
            engine.dispose()


def _retain(settings: Settings, engine: Engine) -> None:
    """Delete old versions' files (:mod:`trainer.retention`); a failure is logged: the
    cycle's outcome stands, and the next cycle tries again."""
    name, keep = settings.train.model_name, settings.train.keep_versions
    try:
        prune_model_files(Registry.from_settings(settings, engine), name, keep=keep)
    except TrainerError as exc:
        log.warning("model retention of %s skipped: %s", name, exc)


def _cycle(
    settings: Settings,
    trigger: str,
    engine: Engine,
    freeze: Freeze,
    embedder: Embedder | Literal["settings"] | None,
    train_args: Sequence[str],
    actor: str,
) -> CycleResult:
    name = settings.train.model_name
    registry = Registry.from_settings(settings, engine)
    champion = registry.alias(name, CHAMPION)
    previous = None if champion is None else champion.version
    family_name = settings.train.family
    if family_name not in SUPPORTED_FAMILIES:
        reason = f"the retrain cycle supports {', '.join(SUPPORTED_FAMILIES)}, not {family_name}"
        return CycleResult("failed", name, trigger, reason, champion=previous)
    try:
        snapshot_id = freeze(engine, settings)
        manifest = read_manifest(settings.dataset_dir, snapshot_id)
    except TrainerError as exc:
        log.warning("retrain (%s) made no snapshot: %s", trigger, exc)
        return CycleResult("failed", name, trigger, f"snapshot: {exc}", champion=previous)

    subjects = {r.subject for r in manifest.records}
    if champion is not None:
        # Until its replay is drawn, a lora version may train on any subject still recorded
        # on the champion: record them all, so an erasure meanwhile finds this version too;
        # the draw narrows them (registry.retain_subjects) before training starts.
        subjects |= set(registry.subjects(name, champion.version))
    mode = "base" if champion is None else "lora"
    row = registry.register(
        name,
        family=family_name,
        snapshot_id=snapshot_id,
        parent_version=previous,
        config={"mode": mode, "trigger": trigger},
        subjects=subjects,
        runs_dir=settings.train_dir,
        trigger=trigger,
    )
    base = _result(row, trigger, previous)
    handler = _log_to(Path(row.log_path))
    try:
        log.info("%s v%d: %s run on %s (trigger %s)", name, row.version, mode, snapshot_id, trigger)
        summary = manifest.summary
        log.info(
            "snapshot %s frozen: %d pairs of %d subjects (train %d, validation %d)",
            snapshot_id,
            summary.records,
            summary.subjects,
            len(manifest.split("train")),
            len(manifest.split("validation")),
        )
        try:
            verdict, metrics = _train_and_gate(
                settings, registry, row, champion, manifest, embedder, train_args, actor
            )
        except Exception as exc:
            # Recorded on the version, logged with its traceback, and the champion stays:
            # the scheduler must survive one bad run (a bug included) and try again later.
            log.exception("%s v%d failed", name, row.version)
            reason = f"{type(exc).__name__}: {exc}"
            registry.update(name, row.version, status=VersionStatus.FAILED, reason=reason)
            return _done(base, "failed", reason, {})
        held_by = "no champion" if previous is None else f"champion v{previous}"
        if not verdict.promote:
            log.info("refused: %s stays", held_by)
            return _done(base, "refused", verdict.reason, metrics)
        try:
            move = registry.move_alias(
                name,
                CHAMPION,
                row.version,
                actor=actor,
                reason=verdict.reason,
                expect=previous,
                status=VersionStatus.PROMOTED,
            )
        except RegistryError as exc:  # the champion moved by hand while we trained
            log.warning("not promoted, the champion stays: %s", exc)
            registry.update(name, row.version, status=VersionStatus.REFUSED, reason=str(exc))
            return _done(base, "refused", str(exc), metrics)
        log.info(
            "promoted: %s -> champion v%d by %s; model update queued in the outbox",
            held_by,
            row.version,
            actor,
        )
        update = move.update
        return _done(base, "promoted", verdict.reason, metrics, champion=row.version, update=update)
    finally:
        _stop_logging(handler)


def _train_and_gate(
    settings: Settings,
    registry: Registry,
    row: ModelVersion,
    champion: ModelVersion | None,
    manifest: Manifest,
    embedder: Embedder | Literal["settings"] | None,
    train_args: Sequence[str],
    actor: str,
) -> tuple[GateVerdict, dict[str, Any]]:
    """Steps 3 to 5 of the module docstring for the registered version ``row``: replay,
    train, assemble, export, record, move ``candidate``, gate. Each step is logged."""
    name, mode = row.name, str(row.config["mode"])
    trigger = row.trigger or ""
    version_dir, run_dir = Path(row.path), Path(row.run_dir)
    blobs = open_blobs(settings)
    family = get_family(row.family)
    argv = _train_argv(settings, champion, row.snapshot_id, None, run_dir, mode, train_args)
    args = family.parse_args(argv, settings.train)
    replay, replay_id = _replay(settings, registry, champion, manifest, args, blobs)
    trained_on = {r.subject for r in manifest.records} | (replay.subjects if replay else set())
    dropped = registry.retain_subjects(name, row.version, trained_on)
    log.info(
        "subjects: v%d trains on %d, its snapshot's and the replayed pairs' (%d recorded "
        "until the replay was drawn, removed)",
        row.version,
        len(trained_on),
        dropped,
    )
    if replay_id is not None:
        argv = _train_argv(
            settings, champion, row.snapshot_id, replay_id, run_dir, mode, train_args
        )
        args = family.parse_args(argv, settings.train)
    log.info(
        "training: %s run of %d steps, batch %d, %d px, into %s",
        mode,
        args.steps,
        args.batch_size,
        args.resolution,
        run_dir,
    )
    began = time.perf_counter()
    result = family.main(args)
    log.info(
        "training finished: %s steps in %.1f s (%s samples/s)",
        result.get("steps"),
        time.perf_counter() - began,
        result.get("samples_per_s"),
    )
    base_dir = version_dir if champion is None else Path(champion.config["base_dir"])
    config = assemble_version(run_dir, version_dir, base_dir, mode) | {
        "name": name,
        "version": row.version,
        "family": row.family,
        "trigger": trigger,
        "snapshot_id": row.snapshot_id,
        "parent_version": row.parent_version,
        # The snapshot replayed from (None: no replay), and what was drawn from it.
        "replay_snapshot": None if replay_id is None or replay is None else replay.source,
        "replay": None if replay is None else replay.as_dict() | {"manifest": replay_id},
        "argv": argv,
        "train": {k: result.get(k) for k in ("steps", "samples_per_s", "lora", "losses")},
    }
    write_json(version_dir / CONFIG_JSON, config)
    adapter = version_dir / ADAPTER if mode == "lora" else None
    # A base version exports from its run directory: the version's own copy of the
    # weights is what the export step overwrites.
    source = run_dir if mode == "base" else base_dir
    config["export"] = export(source, adapter, version_dir, manifest, blobs, config)
    registry.update(
        name,
        row.version,
        status=VersionStatus.TRAINED,
        config=config,
        artifacts=hash_tree(version_dir),
    )
    registry.move_alias(
        name,
        CANDIDATE,
        row.version,
        actor=actor,
        reason=f"trained by a {trigger} cycle",
        action="register",
    )
    log.info("candidate -> v%d", row.version)
    verdict, metrics = gate_version(registry, settings, name, row.version, embedder=embedder)
    return verdict, metrics


def gate_version(
    registry: Registry,
    settings: Settings,
    name: str,
    version: int,
    *,
    embedder: Embedder | Literal["settings"] | None = "settings",
) -> tuple[GateVerdict, dict[str, Any]]:
    """Evaluate ``version`` and the current champion on ``version``'s snapshot's
    validation split, judge, and store every metric and the verdict on ``version``
    (status refused when it fails; promoting is the caller's move). Returns both."""
    row = registry.get(name, version)
    champion = registry.alias(name, CHAMPION)
    if champion is not None and champion.version == version:
        champion = None
    manifest = read_manifest(settings.dataset_dir, row.snapshot_id)
    blobs = open_blobs(settings)
    records = manifest.split("validation")
    if not records:
        raise EvaluationError(
            f"snapshot {row.snapshot_id} has no validation pair: the gate cannot judge "
            f"{name} v{version}; snapshot with more subjects (S2A_DATASET__VALIDATION_FRACTION)"
        )
    resolution = int(row.config.get("resolution") or settings.train.resolution)
    references = reference_statistics(manifest.records, blobs, resolution)
    scorer = build_embedder(settings.models) if embedder == "settings" else embedder
    from trainer.families.pix2pix_lora.model import stylise

    def measure(folder: Path) -> dict[str, float | None]:
        return evaluate(
            load_generator(folder),
            records,
            blobs,
            resolution=resolution,
            condition=stylise,
            embedder=scorer,
            references=references,
            embed_side=settings.gate.embed_side,
        )

    candidate = measure(Path(row.path))
    theirs = None if champion is None else measure(Path(champion.path))
    verdict = judge_candidate(candidate, theirs, settings.gate)
    metrics = {
        "split": {"snapshot_id": row.snapshot_id, "name": "validation", "pairs": len(records)},
        "resolution": resolution,
        "candidate": _finite(candidate),
        "champion": None if theirs is None else _finite(theirs),
        "champion_version": None if champion is None else champion.version,
        "gate": verdict.as_dict(),
    }
    status = VersionStatus.TRAINED if verdict.promote else VersionStatus.REFUSED
    registry.update(name, version, status=status, reason=verdict.reason, metrics=metrics)
    log.info(
        "gate on %d validation pairs of %s, against %s: %s",
        len(records),
        row.snapshot_id,
        "no champion" if champion is None else f"champion v{champion.version}",
        verdict.reason,
    )
    return verdict, metrics


# -- helpers --------------------------------------------------------------------------------


def _replay(
    settings: Settings,
    registry: Registry,
    champion: ModelVersion | None,
    manifest: Manifest,
    args: argparse.Namespace,
    blobs: BlobStore,
) -> tuple[ReplayPlan | None, str | None]:
    """What a lora run replays (:mod:`trainer.replay`), logged: the plan and the replay
    manifest written for it, or ``(plan or None, None)`` when nothing is replayed: no
    champion, the champion's own snapshot, its manifest gone (an erasure removes every
    snapshot that held the erased subject), or no pair left. ``args`` are the family's
    parsed flags (``--replay-max``, ``--seed``)."""
    if champion is None:
        log.info("replay: none (no champion yet: a base run)")
        return None, None
    older_id = champion.snapshot_id
    if older_id == manifest.snapshot_id:
        log.info("replay: none (champion v%d was trained on this snapshot)", champion.version)
        return None, None
    if not manifest_path(settings.dataset_dir, older_id).is_file():
        log.warning(
            "replay: none (the manifest of %s, champion v%d's snapshot, is gone; an erasure "
            "removes the snapshots that held the erased subject)",
            older_id,
            champion.version,
        )
        return None, None
    older = read_manifest(settings.dataset_dir, older_id)
    plan = plan_replay(
        older,
        manifest.split("train"),
        known=registry.subjects(champion.name, champion.version),
        limit=args.replay_max,
        seed=args.seed,
        has_blob=blobs.exists,
    )
    log.info("replay of champion v%d's snapshot: %s", champion.version, plan.describe())
    if not plan.records:
        log.info("replay: none (no pair of %s left to replay)", older_id)
        return plan, None
    replay_id = write_replay(settings.dataset_dir, older, plan.records)
    log.info("replay manifest %s: %d pairs", replay_id, len(plan.records))
    return plan, replay_id


def _train_argv(
    settings: Settings,
    champion: ModelVersion | None,
    snapshot_id: str,
    replay_id: str | None,
    run_dir: Path,
    mode: str,
    extra: Sequence[str],
) -> list[str]:
    options: dict[str, object | None] = {}
    if champion is not None:
        options["--base"] = champion.config["base_dir"]
        adapter = Path(champion.path) / ADAPTER
        options["--parent-adapter"] = adapter if adapter.is_dir() else None
        if replay_id is not None:
            options["--replay-manifest"] = manifest_path(settings.dataset_dir, replay_id)
    return script_argv(settings, mode, snapshot_id, run_dir, options) + list(extra)


def _finite(metrics: dict[str, float | None]) -> dict[str, float | None]:
    """NaN and infinities as None: PostgreSQL's JSON refuses them."""
    return {
        k: (v if v is None or (v == v and abs(v) != float("inf")) else None)
        for k, v in metrics.items()
    }


def _result(row: ModelVersion, trigger: str, previous: int | None) -> dict[str, Any]:
    return {
        "name": row.name,
        "trigger": trigger,
        "version": row.version,
        "snapshot_id": row.snapshot_id,
        "parent_version": previous,
        "champion": previous,
        "previous_champion": previous,
        "version_dir": row.path,
        "run_dir": row.run_dir,
    }


def _done(
    base: dict[str, Any], status: Status, reason: str, metrics: dict[str, Any], **changes: Any
) -> CycleResult:
    log.info("%s v%s %s: %s", base["name"], base["version"], status, reason)
    return CycleResult(status=status, reason=reason, metrics=metrics, **(base | changes))


def _log_to(path: Path) -> tuple[logging.Handler, int]:
    """Copy the trainer's log lines (this cycle's and the family's), INFO and up, into
    ``path``; returns the handler and the logger's level before, for :func:`_stop_logging`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("trainer")
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler, level


def _stop_logging(logging_state: tuple[logging.Handler, int]) -> None:
    handler, level = logging_state
    logger = logging.getLogger("trainer")
    logger.removeHandler(handler)
    logger.setLevel(level)
    handler.close()
