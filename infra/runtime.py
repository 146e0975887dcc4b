"""Starting the long-running parts: the Faust worker, and the embedded stack for ``s2a up``
and the demo (broker + worker processes, restarted when a worker asks for it)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from agents.errors import EXIT_RESTART
from infra.broker import EmbeddedBroker
from infra.children import start_child
from infra.errors import BrokerError
from infra.kafka import ensure_topics
from infra.logs import logging_config
from schemas.settings import Settings

log = logging.getLogger(__name__)
#: First and longest wait before restarting a worker that asked for it, in seconds.
RESTART_BACKOFF_S = (1.0, 30.0)
#: A worker that ran this long before asking for a restart starts the backoff over.
STABLE_RUN_S = 60.0


def run_worker(settings: Settings) -> None:
    """Run the ingestion worker in this process until it is stopped (SIGINT/SIGTERM)."""
    import faust

    from agents.app import create_app
    from agents.errors import StorageError
    from agents.stores.db import create_engine_for, sql_errors
    from agents.stores.keys import checked_pseudonym_key
    from schemas.migrate import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    # A lost or changed pseudonym key stops the worker here, with one line saying what to
    # do, rather than in its first batch (which would exit to be restarted, again and again).
    # A database that does not answer is different: it may be restarting, so the worker
    # exits for its supervisor to start it again (Stack.check_worker, or Kubernetes).
    try:
        with sql_errors("migrating the database"):
            upgrade(settings.sql_url)
        engine = create_engine_for(settings.sql_url)
        try:
            checked_pseudonym_key(settings, engine)
        finally:
            engine.dispose()
    except StorageError as exc:
        log.error("database not reachable at start (%s); exiting for a restart", exc)
        sys.exit(EXIT_RESTART)
    ensure_topics(settings)
    app = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_format),
        quiet=True,
        redirect_stdouts=False,
        workdir=str(settings.home),
    )
    worker.execute_from_commandline()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process build the same settings as this one."""
    env = dict(os.environ)
    for name, value in settings.model_dump(
        mode="json", exclude={"pseudonym_key", "qdrant_api_key"}
    ).items():
        if value is None:
            env.pop(f"S2A_{name.upper()}", None)
        else:
            env[f"S2A_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    for secret in ("pseudonym_key", "qdrant_api_key"):
        value = getattr(settings, secret)
        if value is not None:
            env[f"S2A_{secret.upper()}"] = value.get_secret_value()
    return env


class ChildProcess:
    """An ``s2a VERB`` as a child process, its log in ``home/run/<verb>.log``."""

    verb: ClassVar[str]

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = env or settings_env(settings)
        self.log_path: Path = settings.run_dir / f"{self.verb}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        self.proc = start_child(
            [sys.executable, "-m", "infra.cli", self.verb],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()

    def stop(self, grace_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerProcess(ChildProcess):
    """``s2a worker``: the stream's ingestion and pairing agents."""

    verb = "worker"


class SchedulerProcess(ChildProcess):
    """``s2a scheduler``: retrains when new data or an erasure calls for it."""

    verb = "scheduler"


class ServerProcess(ChildProcess):
    """``s2a serve``: the gRPC Convert server, following ``model-updates``."""

    verb = "serve"


class Stack:
    """The embedded default: broker (unless a cluster is configured), one worker and, for
    ``s2a up`` (``services``), the retrain scheduler and the Convert server.

    Example::

        with Stack(settings) as stack:
            ...  # publish; the worker ingests
    """

    def __init__(self, settings: Settings, *, services: bool = False) -> None:
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        if settings.embedded_broker:
            self.broker = EmbeddedBroker(
                settings.broker_host, settings.broker_port, settings.run_dir / "broker.log"
            )
        self.worker = WorkerProcess(settings)
        #: Restarts made by :meth:`check_worker`, for the logs and tests.
        self.restarts = 0
        self._started_at = time.monotonic()
        self._restart_due: float | None = None
        self._backoff_s = RESTART_BACKOFF_S[0] / 2
        self.services: list[ChildProcess] = (
            [SchedulerProcess(settings), ServerProcess(settings)] if services else []
        )

    def __enter__(self) -> Stack:
        from schemas.migrate import upgrade

        self.settings.home.mkdir(parents=True, exist_ok=True)
        # Migrate before the worker starts, so readers (the CLI, tests) find the tables.
        upgrade(self.settings.sql_url)
        if self.broker is not None:
            self.broker.start()
        try:
            ensure_topics(self.settings)
            self.start_worker()
            for service in self.services:
                service.start()
        except BaseException:
            self.close()
            raise
        return self

    def supervise(self) -> None:
        """Block while the worker runs; restart it whenever it asks to be restarted."""
        while True:
            proc = self.worker.proc
            if proc is None:
                raise BrokerError("worker was never started")
            proc.wait()
            self.check_worker()
            if self._restart_due is not None:
                time.sleep(max(0.0, self._restart_due - time.monotonic()))
                self.check_worker()

    def worker_alive(self) -> bool:
        return self.worker.proc is not None and self.worker.proc.poll() is None

    def check_worker(self) -> None:
        """Restart the worker if it exited asking for it (:data:`EXIT_RESTART`: a failed
        batch, or a database down at start), once its backoff has passed; raise when it
        exited for any other reason. Non-blocking: for :func:`infra.waiting.wait_until`'s
        ``alive`` and for :meth:`supervise`.

        The backoff doubles from 1 s to 30 s while restarted workers keep exiting within
        a minute of their start (a database that stays down), and starts again at 1 s
        after a worker that ran longer.
        """
        proc = self.worker.proc
        if proc is None:
            raise BrokerError("worker was never started")
        code = proc.poll()
        if code is None:
            return
        if code != EXIT_RESTART:
            tail = self.worker.log_path.read_text()[-3000:] if self.worker.log_path.exists() else ""
            raise BrokerError(
                f"the worker exited with status {code}; see {self.worker.log_path}\n{tail}"
            )
        now = time.monotonic()
        if self._restart_due is None:
            ran_s = now - self._started_at
            self._backoff_s = (
                RESTART_BACKOFF_S[0]
                if ran_s > STABLE_RUN_S
                else min(self._backoff_s * 2, RESTART_BACKOFF_S[1])
            )
            self._restart_due = now + self._backoff_s
            log.warning(
                "worker asked for a restart after %.0f s; restarting in %.0f s",
                ran_s,
                self._backoff_s,
            )
        if now >= self._restart_due:
            self._restart_due = None
            self.restarts += 1
            self.start_worker()

    def start_worker(self) -> None:
        """Start the worker (again, after a kill: what an outside supervisor does)."""
        self._started_at = time.monotonic()
        self.worker.start()

    def close(self) -> None:
        for service in self.services:
            service.stop()
        self.worker.stop()
        if self.broker is not None:
            self.broker.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
