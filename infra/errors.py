"""Errors of the runtime layer.

InfraError
 ├── BrokerError (RuntimeError)      the embedded broker cannot start, or no broker answers
 └── UsageError (ValueError)         a command line asks for something impossible
"""

from __future__ import annotations


class InfraError(Exception):
    """Base class for every error raised by :mod:`infra`."""


class BrokerError(InfraError, RuntimeError):
    """The embedded broker did not start, or the configured broker does not answer."""


class UsageError(InfraError, ValueError):
    """Arguments that cannot work together; the message says which and what to do."""
