"""Errors of the training side.

TrainerError
 └── DatasetError        a snapshot or export cannot be built or read; says why
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class for every error raised by :mod:`trainer`."""


class DatasetError(TrainerError):
    """A dataset snapshot or export cannot be made or read."""
