"""Starting the long-running parts: the Faust worker, and the embedded stack for ``s2a up``
and the demo (broker + worker processes, restarted when a worker asks for it)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from agents.errors import EXIT_RESTART
from infra.broker import EmbeddedBroker
from infra.errors import BrokerError
from infra.kafka import ensure_topics
from infra.logs import logging_config
from schemas.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Run the ingestion worker in this process until it is stopped (SIGINT/SIGTERM)."""
    import faust

    from agents.app import create_app
    from agents.stores.db import create_engine_for
    from agents.stores.keys import checked_pseudonym_key
    from schemas.migrate import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    # A lost or changed pseudonym key stops the worker here, with one line saying what to
    # do, rather than in its first batch (which would exit to be restarted, again and again).
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        checked_pseudonym_key(settings, engine)
    finally:
        engine.dispose()
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
        self.proc = subprocess.Popen(
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
            self.worker.start()
            for service in self.services:
                service.start()
        except BaseException:
            self.close()
            raise
        return self

    def supervise(self) -> None:
        """Block while the worker runs; restart it when it asks to be restarted."""
        while True:
            proc = self.worker.proc
            if proc is None:
                raise BrokerError("worker was never started")
            code = proc.wait()
            if code != EXIT_RESTART:
                raise BrokerError(f"worker exited with status {code}; see {self.worker.log_path}")
            log.warning("worker asked for a restart after a failed batch; restarting")
            self.worker.start()

    def worker_alive(self) -> bool:
        return self.worker.proc is not None and self.worker.proc.poll() is None

    def check_worker(self) -> None:
        """Raise when the worker has exited (for :func:`infra.waiting.wait_until`)."""
        if not self.worker_alive():
            tail = self.worker.log_path.read_text()[-3000:] if self.worker.log_path.exists() else ""
            raise BrokerError(f"the worker stopped; see {self.worker.log_path}\n{tail}")

    def close(self) -> None:
        for service in self.services:
            service.stop()
        self.worker.stop()
        if self.broker is not None:
            self.broker.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
