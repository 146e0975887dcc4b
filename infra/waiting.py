"""Waiting for another process to reach a state: one polling loop with a deadline.

Used wherever this package (or its tests and benchmarks) waits on a broker, a worker or
the stores, so a wait is always bounded, always names what it waited for, and stops early
when what it waits on has died.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from infra.errors import WaitTimeout


def wait_until(
    done: Callable[[], bool],
    *,
    deadline_s: float,
    what: str,
    poll_s: float = 0.1,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``done()`` every ``poll_s`` until it is true.

    ``alive()`` runs before each poll and raises when waiting has become pointless (the
    process that should get us there has exited). Raises :class:`WaitTimeout` naming
    ``what`` after ``deadline_s``.

    Example::

        wait_until(lambda: port_open(host, port), deadline_s=30, what="the broker")
    """
    end = time.monotonic() + deadline_s
    while True:
        if alive is not None:
            alive()
        if done():
            return
        if time.monotonic() > end:
            raise WaitTimeout(f"{what}: not done after {deadline_s:.0f}s")
        time.sleep(poll_s)
