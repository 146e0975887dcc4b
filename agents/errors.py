"""Every error :mod:`agents` raises, drawn once.

    PipelineError
     ├── Rejected (ValueError)                 this upload ends 'rejected' with a reason code
     ├── ModelWeightsMissing (FileNotFoundError)
     │    │                                    a configured weights file is absent; says where
     │    └── PackageModelMissing              a model file an installed package should ship
     │                                         is absent; says which and how to install it
     ├── EmbedderMismatch (ValueError)         a store or index holds another embedder's
     │                                         vectors; says which and how to move them
     ├── StorageError (RuntimeError) [retry]   SQL, Qdrant or the blob store failed: the worker
     │    │                                    stops without committing, so nothing is lost
     │    └── RefVersionMissing (FileNotFoundError)
     │                                         no complete index folder for a library version
     ├── ObjectMissing (FileNotFoundError)     no blob or artifact under a key of the object
     │                                         store (a folder or an S3 bucket); names both
     ├── RefInputError (ValueError)            the reference index was handed bad points or a
     │                                         bad filter
     ├── ImportRefused (ValueError)            a pairs CSV has rows that cannot be imported;
     │                                         nothing was written
     ├── LabelHeadsError                       label heads cannot be loaded
     │    ├── HeadsMissing (FileNotFoundError) no heads file; says how to make one
     │    └── HeadsUnreadable (ValueError)     not a heads file of this version
     ├── ReferenceLibraryError
     │    ├── RefRefused (ValueError)          one file is refused with a RefReason; nothing
     │    │    ├── LicenseRefused              of it is stored, the rest of the call goes on
     │    │    └── ImageRefused
     │    ├── InvalidRequest (ValueError)      the call itself is wrong (style name, --label,
     │    │    └── SourcesFileError            --box, the --sources CSV): nothing is stored
     │    └── VersionConflict (RuntimeError) [retry]
     │                                         another ``refs add`` made the same library
     │                                         version first; run the command again
     └── ReviewError
          ├── NotFound (LookupError)           no such pair (or blob); HTTP 404
          ├── Conflict (RuntimeError)          another reviewer decided the pair since the
          │                                    page loaded it; HTTP 409, names who
          ├── InvalidDecision (ValueError)     the decision itself is wrong (unknown action, a
          │                                    reference that is not a candidate, a label
          │                                    outside the vocabulary); HTTP 400
          ├── AccountError (ValueError)        a reviewer account cannot be made or changed as
          │                                    asked (name taken, password too short)
          └── Refused                          a request refused before it reaches the store,
                                               with the HTTP status to answer

Two kinds, told apart by class: ``[retry]`` errors also subclass
:class:`~schemas.errors.Transient` (the same call may succeed later, unchanged); every other
error is about the caller's input or setup and needs a change first. ``Rejected`` is about
one upload and never stops a batch; ``StorageError`` is about the infrastructure and always
stops the worker (the record is re-delivered after restart). A refused reference file is
an outcome of ``refs add``, not a failure of the call.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

from schemas.errors import Transient
from schemas.reasons import ReasonCode, RefReason, Stage

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


class PackageModelMissing(ModelWeightsMissing):
    """A model file that an installed package ships is missing (package absent or broken).

    Example::

        raise PackageModelMissing("dlib ResNet", "face_recognition_models",
                                  Path(".../models/dlib_face_recognition_resnet_model_v1.dat"))
    """

    def __init__(self, model: str, package: str, path: Path | None) -> None:
        where = f"at {path}" if path is not None else f"(package {package} is not installed)"
        PipelineError.__init__(
            self,
            f"{model} model file not found {where}; install it with "
            f"`pip install {package}` (the Makefile's install step does)",
        )
        self.path = path


class EmbedderMismatch(PipelineError, ValueError):
    """A vector store or index was built by another embedder; its vectors are not comparable.

    Example::

        raise EmbedderMismatch("reference index version 3", "inception-resnet-v1/...",
                               "dlib-resnet/...", "add the references again with this embedder")
    """

    def __init__(self, what: str, found: str | None, expected: str, fix: str) -> None:
        built = f"embedder {found!r}" if found else "an embedder it does not record"
        super().__init__(
            f"{what} was built by {built}, not by {expected!r} (S2A_MODELS__EMBEDDER); "
            f"vectors of two embedders cannot be compared: {fix}"
        )
        self.found = found
        self.expected = expected


# -- stores --------------------------------------------------------------------------------


class StorageError(PipelineError, Transient, RuntimeError):
    """A store (SQL, Qdrant, blobs, the object store) failed; the upload is retried, never
    rejected for it."""


class RefVersionMissing(StorageError, FileNotFoundError):
    """No complete index folder exists for a library version."""

    def __init__(self, version: int, folder: Path, manifest: str) -> None:
        super().__init__(
            f"anime reference index version {version} not found: {folder} is missing or "
            f"incomplete (no {manifest}); publish it with `s2a refs add`, or open "
            "latest_local_version()"
        )
        self.version = version
        self.folder = folder


class ObjectMissing(PipelineError, FileNotFoundError):
    """The object store (:mod:`agents.objects`) has nothing under a key.

    Not a :class:`StorageError`: the store answered, and asking again finds nothing again;
    a reader treats it as it treated a missing file (it is a ``FileNotFoundError``).

    Example::

        raise ObjectMissing("ab/cd/abcd....png", "s3://s2a-prod/blobs/")
    """

    def __init__(self, key: str, where: str) -> None:
        super().__init__(f"no object {key!r} in {where}")
        self.key = key
        self.where = where


class RefInputError(PipelineError, ValueError):
    """A caller handed the reference index something it cannot take (the message names it)."""


# -- pairing and labels --------------------------------------------------------------------


class ImportRefused(PipelineError, ValueError):
    """The pairs CSV has rows that cannot be imported; nothing was written."""


class LabelHeadsError(PipelineError):
    """Label heads cannot be loaded."""


class HeadsMissing(LabelHeadsError, FileNotFoundError):
    """No heads file where one is expected."""


class HeadsUnreadable(LabelHeadsError, ValueError):
    """A heads file that is damaged, or not of this version."""


# -- the reference library ------------------------------------------------------------------


class ReferenceLibraryError(PipelineError):
    """Base class for errors of :mod:`agents.references`."""


class RefRefused(ReferenceLibraryError, ValueError):
    """One reference file is refused: nothing of it is stored.

    Example::

        raise LicenseRefused(RefReason.LICENSE_NOT_ALLOWED, "'CC-BY-NC-4.0' is not allowed")
    """

    def __init__(self, reason: RefReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class LicenseRefused(RefRefused):
    """The file's license is missing or not allowed, or its required credit is missing."""


class ImageRefused(RefRefused):
    """The file does not decode, is over the limits, or its face region is unusable."""


class InvalidRequest(ReferenceLibraryError, ValueError):
    """An argument of the whole call is invalid; the message names it and the fix."""


class SourcesFileError(InvalidRequest):
    """The ``--sources`` CSV cannot be read or lacks a required column."""


class VersionConflict(ReferenceLibraryError, Transient, RuntimeError):
    """Another ``refs add`` committed the library version this one was building.

    Nothing of this call is current: its blobs and index folder are unreferenced and the
    next call overwrites or ignores them. Running the command again is safe.
    """


# -- the review page ------------------------------------------------------------------------


class ReviewError(PipelineError):
    """Base class for the errors of the review page."""


class NotFound(ReviewError, LookupError):
    """The pair (or blob) asked for does not exist."""


class Conflict(ReviewError, RuntimeError):
    """The pair changed since the reviewer saw it; reload it before deciding.

    Example::

        raise Conflict("pair 4f.. was approved by human:bob at 2026-11-25T10:00:00+00:00")
    """


class InvalidDecision(ReviewError, ValueError):
    """A decision that cannot be applied as given; the message names the fix."""


class AccountError(ReviewError, ValueError):
    """An account cannot be made or changed as asked (name taken, password too short);
    the message names the fix."""


class Refused(ReviewError):
    """A request refused before it reaches the store, with the HTTP status to answer."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
