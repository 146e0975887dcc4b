"""Errors raised while reading or checking contracts.

    SchemaError
     ├── ConfigError (ValueError)        a setting is missing or contradicts another
     ├── RecordError (ValueError)        a record does not match its contract
     └── LabelError (ValueError)         a label name or value outside the vocabulary

Every one is an error in the caller's input (settings, a record, a label): retrying the
same call cannot succeed; the message says what to change.

:class:`Transient` marks, in every package's tree, the errors a caller may retry unchanged
(a store, broker or lock was busy or briefly unreachable); every other error needs a change
of input or setup first.
"""

from __future__ import annotations


class Transient:
    """Mixin for errors a caller may retry unchanged: the cause is outside the input (a
    store, the broker or a lock was busy or briefly unreachable).

    Example::

        except PipelineError as exc:
            if isinstance(exc, Transient):
                schedule_retry()
    """


class SchemaError(Exception):
    """Base class for every error raised by :mod:`schemas`."""


class ConfigError(SchemaError, ValueError):
    """A setting is missing, malformed or contradicts another setting."""


class RecordError(SchemaError, ValueError):
    """A topic record does not match its contract; the message says which field and why."""


class LabelError(SchemaError, ValueError):
    """A label name or value outside the vocabulary; the message lists what is allowed."""
