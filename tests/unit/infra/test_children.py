"""A child started by the stack stops when its parent is killed with SIGKILL (Linux)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from infra.waiting import wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

# The parent: starts a child that waits for a signal, the way the stack does, prints its pid, waits.
PARENT = textwrap.dedent(
    """
    import subprocess, sys
    from infra.children import start_child
    start = start_child if sys.argv[1] == "start_child" else subprocess.Popen
    child = start([sys.executable, "-c", "import signal; signal.pause()"])  # waits for a signal
    print(child.pid, flush=True)
    sys.stdin.read()
    """
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _orphan_after_parent_killed(how: str) -> int:
    """Start a parent that starts a child with ``how``; SIGKILL the parent; the child's pid."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert not _gone(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return pid


def test_a_child_is_terminated_when_its_parent_is_killed() -> None:
    pid = _orphan_after_parent_killed("start_child")
    wait_until(lambda: _gone(pid), deadline_s=60, what=f"child {pid} to stop")


def test_a_plain_popen_child_outlives_its_killed_parent() -> None:
    """The case the module exists for: without it the child is left running."""
    pid = _orphan_after_parent_killed("popen")
    try:
        assert not _gone(pid)  # still running, its parent gone
    finally:
        os.kill(pid, signal.SIGKILL)
