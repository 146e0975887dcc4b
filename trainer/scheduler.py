"""The retrain scheduler: when to run a cycle (:func:`trainer.cycle.run_cycle`), and never
two at once.

Three triggers (:func:`due`):

- **data**: at least ``settings.schedule.min_new_pairs`` approved pairs were decided after
  the snapshot of the newest model version (whatever its fate: a refused candidate also
  used them), or, before any version, that many approved pairs at all;
- **erasure**: the champion was trained on a subject erased since (the eraser counts them
  in ``version_erasures``), and no version was trained after it (a later attempt already
  left them out; firing again would loop on a candidate the gate keeps refusing);
- **schedule**: ``settings.schedule.cron``, a standing retrain (crontab syntax, UTC).

One cycle at a time across processes and machines: the cycle runs under the SQL lease
:data:`trainer.leases.RETRAIN_LEASE`, renewed from a timer while it runs, and the triggers
are checked again *after* the lease is taken, so two schedulers racing on the same new data
run one cycle between them (the second finds the data already used). A failed cycle is
recorded on its version and leaves the champion serving. When the champion moved, the
cycle's :class:`~schemas.model_updates.ModelUpdate` is in the outbox already, written with
the move (:mod:`trainer.registry`), so it cannot be lost; ``publish`` is then called to
hurry it out (the process that runs the scheduler wires it to its outbox relay, which sends
on ``model-updates``; this layer knows no broker).

APScheduler 3 runs the checks (``BlockingScheduler`` with a ``SQLAlchemyJobStore`` in the
same database, so the jobs and their next run times survive restarts). Its jobs are stored
by reference (``trainer.scheduler:check``): they find the running scheduler's settings and
``publish`` in this module's :data:`_RUNTIME`, set by :func:`build_scheduler`.

Example::

    scheduler = build_scheduler(settings, publish=lambda update: relay.flush())
    scheduler.start()                  # blocks; Ctrl-C stops it
    check(settings, publish)           # or one check now (``s2a scheduler --once``)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, Table, func, select
from sqlmodel import SQLModel

from agents.stores.db import create_engine_for, sql_errors
from schemas.errors import Transient
from schemas.model_updates import ModelUpdate, VersionStatus
from schemas.pairs import PairStatus
from schemas.settings import Settings
from schemas.tables import ModelVersion, Pair, Snapshot, VersionErasure
from trainer.cycle import CycleResult, run_cycle
from trainer.errors import StorageError
from trainer.leases import RETRAIN_LEASE, acquire, release, renew
from trainer.registry import CHAMPION, Registry

log = logging.getLogger(__name__)

_PAIRS: Table = SQLModel.metadata.tables[Pair.__tablename__]
_SNAPSHOTS: Table = SQLModel.metadata.tables[Snapshot.__tablename__]
_VERSIONS: Table = SQLModel.metadata.tables[ModelVersion.__tablename__]
_ERASURES: Table = SQLModel.metadata.tables[VersionErasure.__tablename__]

Publish = Callable[[ModelUpdate], None]
TriggerName = Literal["data", "erasure", "schedule"]

#: APScheduler job ids (stable: a restarted scheduler replaces its own jobs).
CHECK_JOB = "retrain-check"
CRON_JOB = "retrain-cron"
#: The job store's table, beside the product's tables in the same database.
JOBS_TABLE = "apscheduler_jobs"


@dataclass(frozen=True, slots=True)
class Trigger:
    """A reason to retrain now."""

    name: TriggerName
    reason: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check did: ``busy`` (another holder has the lease), ``idle`` (nothing due),
    or ``ran`` with the cycle's result and whether its update was published."""

    outcome: Literal["busy", "idle", "ran"]
    trigger: Trigger | None = None
    cycle: CycleResult | None = None
    published: bool = False
    publish_error: str | None = None
    """why the champion's model update was not announced (``published`` False after a
    promotion)"""

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "trigger": None if self.trigger is None else self.trigger.name,
            "reason": None if self.trigger is None else self.trigger.reason,
            "cycle": None if self.cycle is None else self.cycle.as_dict(),
            "published": self.published,
            "publish_error": self.publish_error,
        }


# -- the triggers ----------------------------------------------------------------------------


def due(engine: Engine, settings: Settings, *, scheduled: bool = False) -> Trigger | None:
    """The trigger that calls for a cycle now, if any: erasure first (privacy before
    freshness), then data, then a ``scheduled`` (cron) run."""
    name = settings.train.model_name
    with sql_errors("checking the retrain triggers", StorageError), engine.connect() as db:
        newest = db.execute(
            select(_VERSIONS.c.id, _VERSIONS.c.version, _VERSIONS.c.snapshot_id)
            .where(_VERSIONS.c.name == name)
            .order_by(_VERSIONS.c.version.desc())
            .limit(1)
        ).first()
        champion = Registry(engine, settings.models_dir).alias(name, CHAMPION)
        if champion is not None and newest is not None and newest.version == champion.version:
            erased = db.scalar(
                select(_ERASURES.c.erased_subjects).where(_ERASURES.c.version_id == champion.id)
            )
            if erased:
                return Trigger(
                    "erasure",
                    f"champion v{champion.version} was trained on {erased} subject(s) erased since",
                )
        decided = select(func.count()).where(_PAIRS.c.status == PairStatus.APPROVED.value)
        since = "in all"
        if newest is not None:
            frozen = db.scalar(
                select(_SNAPSHOTS.c.created_at).where(
                    _SNAPSHOTS.c.snapshot_id == newest.snapshot_id
                )
            )
            if frozen is not None:
                decided = decided.where(_PAIRS.c.decided_at > frozen)
                since = f"since the snapshot of v{newest.version}"
        fresh = int(db.scalar(decided) or 0)
    needed = settings.schedule.min_new_pairs
    if fresh >= needed:
        return Trigger("data", f"{fresh} approved pairs {since} (at least {needed})")
    if scheduled:
        return Trigger("schedule", f"standing retrain ({settings.schedule.cron})")
    return None


# -- one check, under the lease ----------------------------------------------------------------


def holder_name() -> str:
    """This process's name on the lease: host, pid and a random part (a restarted process
    with a reused pid is another holder)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@contextmanager
def _lease_kept(engine: Engine, holder: str, ttl_s: float) -> Iterator[None]:
    """Renew the retrain lease every third of ``ttl_s`` until the block ends, then release
    it. A renewal that fails is logged: the lease then lapses at its expiry, which is what
    a dead holder's does."""
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                if not renew(engine, RETRAIN_LEASE, holder, ttl_s):
                    log.error("lost the retrain lease to another holder while a cycle ran")
                    return
            except StorageError as exc:
                log.warning("could not renew the retrain lease: %s", exc)

    keeper = threading.Thread(target=keep, name="retrain-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        release(engine, RETRAIN_LEASE, holder)


def check(
    settings: Settings,
    publish: Publish | None = None,
    *,
    engine: Engine | None = None,
    scheduled: bool = False,
    run: Callable[..., CycleResult] = run_cycle,
) -> CheckResult:
    """Take the retrain lease, and run a cycle when a trigger is due (:func:`due`).

    ``publish`` receives the cycle's model update when the champion moved (queued in the
    outbox with the move) and sends it; a publish that fails is logged and reported
    (``published`` False), never undone: the registry has moved, and the update waits in
    the outbox for a relay to send it when a broker answers. ``run`` is
    :func:`trainer.cycle.run_cycle` (tests pass tiny training flags through it). Raises
    :class:`StorageError` when SQL cannot be reached.
    """
    own = engine is None
    engine = engine or create_engine_for(settings.sql_url)
    holder = holder_name()
    try:
        if not acquire(engine, RETRAIN_LEASE, holder, settings.schedule.lease_s):
            log.info("retrain check: another scheduler holds the lease")
            return CheckResult("busy")
        with _lease_kept(engine, holder, settings.schedule.lease_s):
            # Checked under the lease: a racing scheduler that ran first has used the data.
            trigger = due(engine, settings, scheduled=scheduled)
            if trigger is None:
                return CheckResult("idle")
            _fail_dead_runs(engine, settings)
            log.info("retrain: %s (%s)", trigger.name, trigger.reason)
            result = run(settings, trigger.name, engine=engine, actor="scheduler")
        log.info("retrain %s: %s (%s)", result.status, result.reason, trigger.name)
        published, error = False, None
        if result.update is not None and publish is not None:
            # ``publish`` is the caller's (an outbox relay in `s2a scheduler`), so any
            # error it raises is caught: the registry has already moved, and the answer
            # must say that the announcement, not the cycle, is late.
            try:
                publish(result.update)
                published = True
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "champion is v%s but its model update is not announced yet (%s); it "
                    "waits in the outbox and goes out when a broker answers, and servers "
                    "keep the previous model until then",
                    result.update.version,
                    error,
                    # A broker that does not answer is expected; anything else is a bug.
                    exc_info=not isinstance(exc, Transient),
                )
        return CheckResult("ran", trigger, result, published, error)
    finally:
        if own:
            engine.dispose()


def _fail_dead_runs(engine: Engine, settings: Settings) -> None:
    """Versions left ``training`` by a killed cycle: dead, since we hold the lease now."""
    registry = Registry(engine, settings.models_dir)
    for row in registry.versions(settings.train.model_name):
        if row.status is VersionStatus.TRAINING:
            registry.update(
                row.name,
                row.version,
                status=VersionStatus.FAILED,
                reason="its cycle died (the process stopped before it finished)",
            )


# -- APScheduler -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Runtime:
    settings: Settings
    publish: Publish | None


#: The running scheduler's settings and publisher, for the stored jobs (see the docstring).
_RUNTIME: _Runtime | None = None


def _runtime() -> _Runtime:
    if _RUNTIME is None:
        raise RuntimeError("a retrain job ran outside build_scheduler's process")
    return _RUNTIME


def check_job() -> None:
    """The periodic job: data and erasure triggers."""
    runtime = _runtime()
    check(runtime.settings, runtime.publish)


def cron_job() -> None:
    """The standing retrain: runs a cycle even without new data. A cron job stored by an
    earlier run whose settings had a cron (the store keeps it) does nothing once the cron
    setting is gone."""
    runtime = _runtime()
    if runtime.settings.schedule.cron:
        check(runtime.settings, runtime.publish, scheduled=True)


def build_scheduler(settings: Settings, publish: Publish | None, *, blocking: bool = True) -> Any:
    """A ``BlockingScheduler`` (``blocking`` False: a ``BackgroundScheduler``, for a process
    that does other work) with the check job every ``check_every_s`` and, when
    ``settings.schedule.cron`` is set, the cron job; jobs persist in SQL."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    global _RUNTIME
    _RUNTIME = _Runtime(settings, publish)
    kind = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = kind(
        jobstores={"default": SQLAlchemyJobStore(url=settings.sql_url, tablename=JOBS_TABLE)},
        # One run of a job at a time; a run missed while the process was down runs once.
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone=UTC,
    )
    scheduler.add_job(
        f"{__name__}:check_job",
        IntervalTrigger(seconds=settings.schedule.check_every_s, timezone=UTC),
        id=CHECK_JOB,
        replace_existing=True,
        next_run_time=datetime.now(UTC),
    )
    if settings.schedule.cron:
        scheduler.add_job(
            f"{__name__}:cron_job",
            CronTrigger.from_crontab(settings.schedule.cron, timezone=UTC),
            id=CRON_JOB,
            replace_existing=True,
        )
    return scheduler
