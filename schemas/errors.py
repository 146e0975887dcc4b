"""Errors raised while reading or checking contracts.

    SchemaError
     ├── ConfigError (ValueError)        a setting is missing or contradicts another
     ├── RecordError (ValueError)        a record does not match its contract
     └── LabelError (ValueError)         a label name or value outside the vocabulary

Every one is an error in the caller's input (settings, a record, a label): retrying the
same call cannot succeed; the message says what to change.
"""

from __future__ import annotations


class SchemaError(Exception):
    """Base class for every error raised by :mod:`schemas`."""


class ConfigError(SchemaError, ValueError):
    """A setting is missing, malformed or contradicts another setting."""


class RecordError(SchemaError, ValueError):
    """A topic record does not match its contract; the message says which field and why."""


class LabelError(SchemaError, ValueError):
    """A label name or value outside the vocabulary; the message lists what is allowed."""
