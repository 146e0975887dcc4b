"""Every error :mod:`trainer` raises, drawn once.

    TrainerError
     ├── DatasetError                      a snapshot or export cannot be built or read;
     │                                     says why (no approved pair, a changed blob, a
     │                                     manifest that does not hash to its name)
     ├── StorageError (RuntimeError) [retry]
     │                                     the database (or the artifact store) failed while
     │                                     reading or recording a snapshot or a version;
     │                                     nothing half-written is kept
     ├── NotEnoughLabels (ValueError)      no label has enough reviewed faces for a head
     ├── TrainingConfigError (ValueError)  training flags that do not fit together, or a
     │                                     base model, adapter or weights file that is
     │                                     missing or does not match; names the flag
     ├── CheckpointError (RuntimeError)    a run directory that cannot be started or
     │                                     resumed: it already holds a run, it has no
     │                                     checkpoint, or its checkpoint was made with
     │                                     other settings
     ├── RegistryError (ValueError)        a model version or alias move the registry cannot
     │                                     do: an unknown version, no earlier champion to
     │                                     roll back to, an alias another process moved first
     ├── EvaluationError (RuntimeError)    a version that cannot be evaluated: no validation
     │                                     pair, missing weights, an unknown family
     └── ExportError                       a trained generator cannot be turned into
          │                                serving artifacts (trainer.export)
          ├── ExportInputError (ValueError) a base run, adapter or calibration image that
          │                                cannot be exported: a missing file, an adapter
          │                                of another generator shape, a crop that is not
          │                                H x W x 3 uint8; names the argument
          ├── ParityError (RuntimeError)   the exported ONNX model (or the merged weights)
          │                                disagrees with PyTorch eager beyond the
          │                                tolerance; gives the max abs difference
          └── TensorRTError (RuntimeError) TensorRT is present but cannot parse model.onnx
                                           or build the engine; gives its messages

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
    """The database or the artifact store failed under a dataset or registry operation;
    the message says which one."""


class NotEnoughLabels(TrainerError, ValueError):
    """No learnable label has enough reviewed faces to train a head."""


class TrainingConfigError(TrainerError, ValueError):
    """Training flags or model files that cannot work together; the message names the flag."""


class CheckpointError(TrainerError, RuntimeError):
    """A run directory that cannot be started or resumed as asked."""


class RegistryError(TrainerError, ValueError):
    """A model version or alias move that cannot be done; the message names the version."""


class EvaluationError(TrainerError, RuntimeError):
    """A model version that cannot be evaluated on a snapshot; the message says why."""


class ExportError(TrainerError):
    """A trained generator cannot be exported; the message says which step failed."""


class ExportInputError(ExportError, ValueError):
    """A base run, adapter or calibration input unfit for export; names the argument."""


class ParityError(ExportError, RuntimeError):
    """An exported model's outputs differ from PyTorch eager's beyond the tolerance."""


class TensorRTError(ExportError, RuntimeError):
    """TensorRT is importable but rejected model.onnx or failed to build the engine."""
