"""Errors of the training side.

TrainerError
 ├── DatasetError                   a snapshot or export cannot be built or read; says why
 └── NotEnoughLabels (ValueError)   no label has enough reviewed faces for a head
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class for every error raised by :mod:`trainer`."""


class DatasetError(TrainerError):
    """A dataset snapshot or export cannot be made or read."""


class NotEnoughLabels(TrainerError, ValueError):
    """No learnable label has enough reviewed faces to train a head."""
