"""The one polling loop: returns when done, stops early when what it waits on died, and
names what it waited for when the deadline passes."""

from __future__ import annotations

import pytest

from infra.errors import WaitTimeout
from infra.waiting import wait_until


def test_returns_once_the_condition_holds() -> None:
    polls = iter([False, False, True])
    wait_until(lambda: next(polls), deadline_s=10, what="x", poll_s=0)


def test_dead_process_stops_the_wait_at_once() -> None:
    def alive() -> None:
        raise RuntimeError("worker exited")

    with pytest.raises(RuntimeError, match="worker exited"):
        wait_until(lambda: False, deadline_s=10, what="x", alive=alive)


def test_deadline_names_what_was_awaited() -> None:
    with pytest.raises(WaitTimeout, match="the broker: not done after 0s"):
        wait_until(lambda: False, deadline_s=0, what="the broker", poll_s=0)
