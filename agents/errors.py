"""Errors of the ingestion pipeline.

    PipelineError
     ├── Rejected (ValueError)            this upload ends 'rejected' with a reason code
     ├── ModelWeightsMissing (FileNotFoundError)
     │                                    a configured weights file is absent; says where
     └── StorageError (RuntimeError)      SQL, Qdrant or the blob store failed: the worker
                                          stops without committing, so nothing is lost

``Rejected`` is about one upload and never stops a batch; ``StorageError`` is about the
infrastructure and always stops the worker (the record is re-delivered after restart).
"""

from __future__ import annotations

from pathlib import Path

from schemas.reasons import ReasonCode, Stage

#: A worker that stops after a failed batch exits with this (EX_TEMPFAIL): its supervisor
#: (``s2a up``) restarts it, and the uncommitted batch is re-delivered.
EXIT_RESTART = 75


class PipelineError(Exception):
    """Base class for every error raised by :mod:`agents`."""


class Rejected(PipelineError, ValueError):
    """The upload fails a check: it ends ``rejected`` with ``reason`` at ``stage``.

    Example::

        raise Rejected(ReasonCode.BLURRY, Stage.QUALITY, "sharpness 12.1 is below 40.0")
    """

    def __init__(self, reason: ReasonCode, stage: Stage, detail: str) -> None:
        super().__init__(f"{reason.value} at {stage.value}: {detail}")
        self.reason = reason
        self.stage = stage
        self.detail = detail


class ModelWeightsMissing(PipelineError, FileNotFoundError):
    """A model's weights file is not where the settings say; nothing is downloaded."""

    def __init__(self, model: str, path: Path | None, setting: str, how: str) -> None:
        where = f"at {path}" if path is not None else "(no path configured)"
        super().__init__(f"{model} weights not found {where}; set {setting} to a local file. {how}")
        self.path = path


class StorageError(PipelineError, RuntimeError):
    """A store (SQL, Qdrant, blobs) failed; the upload is retried, never rejected for it."""
