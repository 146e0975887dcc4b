"""Errors of the anime reference library, and why a reference file was not added.

    PipelineError                                (agents.errors)
     └── ReferenceLibraryError
          ├── RefRefused (ValueError)            one file is refused with a RefReason;
          │    ├── LicenseRefused                 nothing of it is stored, the rest of
          │    └── ImageRefused                   the call goes on
          ├── InvalidRequest (ValueError)        the call itself is wrong (style name,
          │    └── SourcesFileError               --label, --box, the --sources CSV):
          │                                       nothing is read or stored
          └── VersionConflict (RuntimeError)     another ``refs add`` made the same library
                                                  version first; run the command again

A refused file is an outcome, not a failure of the call: :meth:`RefLibrary.add` reports
it beside the files that were added. Database and blob failures stay
:class:`~agents.errors.StorageError`.
"""

from __future__ import annotations

from enum import StrEnum

from agents.errors import PipelineError


class RefReason(StrEnum):
    """Why a reference file was refused or quarantined (a closed list)."""

    LICENSE_MISSING = "license_missing"
    """no license given on the command line or in the --sources CSV"""
    LICENSE_NOT_ALLOWED = "license_not_allowed"
    """the license is not in ``settings.refs.allowed_licenses``"""
    ATTRIBUTION_MISSING = "attribution_missing"
    """the license requires crediting an author, and none was given"""
    DECODE_ERROR = "decode_error"
    """not a complete image in an accepted format"""
    TOO_LARGE = "too_large"
    """over the decode limits uploads have (bytes, pixels, side, frames)"""
    TOO_SMALL = "too_small"
    """the face region's shorter side is under ``settings.refs.min_side_px``"""
    BAD_BOX = "bad_box"
    """the --box does not lie inside the image"""
    STYLE_OUTLIER = "style_outlier"
    """stored but quarantined: a style statistic is far from the style's references"""


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


class VersionConflict(ReferenceLibraryError, RuntimeError):
    """Another ``refs add`` committed the library version this one was building.

    Nothing of this call is current: its blobs and index folder are unreferenced and the
    next call overwrites or ignores them. Running the command again is safe.
    """
