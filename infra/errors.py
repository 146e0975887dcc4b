"""Every error :mod:`infra` raises, drawn once.

    InfraError
     ├── BrokerError (RuntimeError) [retry]   the embedded broker cannot start, or no broker
     │                                        answers
     ├── WaitTimeout (TimeoutError) [retry]   a bounded wait ended before its condition held
     ├── ChildExited (RuntimeError)           a process we started (``s2a serve``…) exited
     └── UsageError (ValueError)              a command line asks for something impossible

``[retry]`` errors also subclass :class:`~schemas.errors.Transient`: the same call may
succeed later, unchanged. A ``UsageError`` needs different arguments first.
"""

from __future__ import annotations

from schemas.errors import Transient


class InfraError(Exception):
    """Base class for every error raised by :mod:`infra`."""


class BrokerError(InfraError, Transient, RuntimeError):
    """The embedded broker did not start, or the configured broker does not answer."""


class WaitTimeout(InfraError, Transient, TimeoutError):
    """The condition did not hold before the deadline."""


class ChildExited(InfraError, RuntimeError):
    """A child process this package started and waits on has exited; the message ends with
    the tail of its log."""


class UsageError(InfraError, ValueError):
    """Arguments that cannot work together; the message says which and what to do."""
