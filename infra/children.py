"""Child processes that stop when the process that started them dies.

``s2a up`` and the demo start the broker, the worker, the scheduler and the Convert server
as children. Stopped normally, they stop them (SIGTERM, then SIGKILL); killed with SIGKILL,
or crashed, they cannot, and the children used to go on holding the broker's port and the
worker's consumer group. On Linux each child now asks the kernel for SIGTERM when its
parent dies (``prctl(PR_SET_PDEATHSIG)``, see prctl(2)); elsewhere nothing changes.

Written here: the standard library has no binding for ``prctl`` (``python-prctl`` is an
unmaintained C extension), and ``ctypes`` reaches it in two lines.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: ``PR_SET_PDEATHSIG`` from <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1


def _parent_death_signal(parent: int) -> Callable[[], None]:
    """The ``preexec_fn`` run in the child between fork and exec.

    The signal is delivered when the *thread* that forked the child exits; the stack starts
    its children from its main thread, whose end is the process's end. A parent that died
    before the call is noticed by its pid (the child was re-parented), and the child exits
    at once.
    """
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: no allocation after

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def start_child(args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **popen)`` that is sent SIGTERM when this process dies
    (Linux; a plain ``Popen`` elsewhere).

    Raises:
        OSError: as ``subprocess.Popen`` (the program cannot be run).
    """
    if sys.platform == "linux":
        popen.setdefault("preexec_fn", _parent_death_signal(os.getpid()))
    return subprocess.Popen(list(args), **popen)
