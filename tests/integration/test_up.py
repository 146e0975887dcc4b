"""``s2a up`` starts the broker, a worker, the scheduler and the Convert server, and
SIGTERM stops them all (no orphans)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infra.broker import free_port, port_open
from infra.waiting import wait_until

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0


def test_sigterm_stops_every_part(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    env = dict(
        os.environ,
        S2A_HOME=str(tmp_path),
        S2A_BROKER_PORT=str(port),
        S2A_SERVING__PORT=str(grpc_port),
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _stop_when_up(up, port, grpc_port, tmp_path / "run")
    finally:
        # Whatever happened, leave no process of this session behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)


def _stop_when_up(up: subprocess.Popen[str], port: int, grpc_port: int, logs: Path) -> None:
    worker_log = logs / "worker.log"

    def up_alive() -> None:
        if up.poll() is not None:
            raise AssertionError(up.stderr.read() if up.stderr else "s2a up exited")

    # Ready when the broker listens, the worker has loaded its models, the Convert server
    # listens (not serving yet: no model was trained) and the scheduler has started.
    wait_until(
        lambda: (
            port_open("127.0.0.1", port)
            and worker_log.exists()
            and "loading models" in worker_log.read_text()
            and port_open("127.0.0.1", grpc_port)
            and (logs / "scheduler.log").exists()
            and "scheduler: checking every" in (logs / "scheduler.log").read_text()
        ),
        deadline_s=DEADLINE_S,
        what="s2a up",
        alive=up_alive,
    )
    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=DEADLINE_S) == 0
    assert not port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", grpc_port)
    # Nothing of the session is left: every part was its child.
    leftover = subprocess.run(
        ["pgrep", "-s", str(up.pid)], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []
