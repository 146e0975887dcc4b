"""Every error :mod:`trainer` raises, drawn once.

    TrainerError
     ├── DatasetError                      a snapshot or export cannot be built or read;
     │                                     says why (no approved pair, a changed blob, a
     │                                     manifest that does not hash to its name)
     ├── StorageError (RuntimeError) [retry]
     │                                     the database failed while reading or recording
     │                                     a snapshot; nothing half-written is kept
     ├── NotEnoughLabels (ValueError)      no label has enough reviewed faces for a head
     ├── TrainingConfigError (ValueError)  training flags that do not fit together, or a
     │                                     base model, adapter or weights file that is
     │                                     missing or does not match; names the flag
     └── CheckpointError (RuntimeError)    a run directory that cannot be started or
                                           resumed: it already holds a run, it has no
                                           checkpoint, or its checkpoint was made with
                                           other settings

``[retry]`` errors also subclass :class:`~schemas.errors.Transient`: the same call may
succeed later, unchanged. The others need different data or settings first.
"""

from __future__ import annotations

from schemas.errors import Transient


class TrainerError(Exception):
    """Base class for every error raised by :mod:`trainer`."""


class DatasetError(TrainerError):
    """A dataset snapshot or export cannot be made or read."""


class StorageError(TrainerError, Transient, RuntimeError):
    """The database failed under a dataset operation; the message says which one."""


class NotEnoughLabels(TrainerError, ValueError):
    """No learnable label has enough reviewed faces to train a head."""


class TrainingConfigError(TrainerError, ValueError):
    """Training flags or model files that cannot work together; the message names the flag."""


class CheckpointError(TrainerError, RuntimeError):
    """A run directory that cannot be started or resumed as asked."""
