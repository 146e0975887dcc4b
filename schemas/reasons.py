"""The closed lists of pipeline stages, terminal states and rejection reasons.

A producer in another language finds the same lists in ``schemas/jsonschema``; adding a
member is a contract change and bumps the record's ``schema_version``.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """Where an upload was when its fate was decided."""

    VALIDATE = "validate"
    ANONYMIZE = "anonymize"
    DETECT = "detect"
    QUALITY = "quality"
    ALIGN = "align"
    EMBED = "embed"
    STORE = "store"


class UploadState(StrEnum):
    """The three terminal states of an upload (``pending`` is never stored)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERASED = "erased"


class FaceFlag(StrEnum):
    """Why an accepted face needs a person's look (``faces.flag``); it stays stored, but its
    pairs wait for review instead of being approved automatically."""

    IDENTITY_MISMATCH = "identity_mismatch"
    """its identity embedding is far from every earlier face of the same subject
    (``settings.worker.identity_mismatch_distance``): another person, or a wrong subject id"""


class RefStatus(StrEnum):
    """Whether an anime reference is in the library's index."""

    ACTIVE = "active"
    """indexed: pairs may use it"""
    QUARANTINED = "quarantined"
    """kept with its reason but out of the index (a style outlier)"""


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
    BY_HAND = "by_hand"
    """quarantined by a person (``s2a refs quarantine``); ``detail`` holds their reason and
    ``status_by``/``status_at`` who and when"""


class ReasonCode(StrEnum):
    """Why an upload was rejected. Closed list: a rejection never carries free text alone."""

    BAD_SCHEMA = "bad_schema"
    """The record is not valid JSON or does not match the UploadEvent contract."""
    NO_CONSENT = "no_consent"
    """Consent is missing, or its scopes do not include ``training``."""
    CONSENT_EXPIRED = "consent_expired"
    """Consent expired before the upload was processed."""
    SUBJECT_ERASED = "subject_erased"
    """The subject was erased after this upload's consent was granted (an upload queued
    before the erasure, or re-sent with the old consent): nothing of it is stored. An
    upload with a consent granted after the erasure is processed as usual."""
    BAD_URI = "bad_uri"
    """The image URI has a scheme or location the worker may not read, or is unreadable."""
    TOO_LARGE = "too_large"
    """Bytes, pixels or a side exceed the configured limits (decompression bombs included)."""
    ANIMATED = "animated"
    """An animated image (GIF, WebP, APNG, a HEIF sequence) with more frames than
    ``limits.max_frames``: which frame is the selfie is not ours to guess."""
    DECODE_ERROR = "decode_error"
    """The bytes are not a complete image in an accepted format (truncated files included)."""
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    FACE_TOO_SMALL = "face_too_small"
    FACE_CUT_OFF = "face_cut_off"
    """The face is partly outside the photo (a landmark beyond its edge, or more of the face
    box than ``quality.max_outside_share``): its crops would mirror the edge into the face."""
    LOW_CONFIDENCE = "low_confidence"
    """A face was found, but the detector is not confident enough to train on it."""
    BLURRY = "blurry"
    BAD_EXPOSURE = "bad_exposure"
    BAD_POSE = "bad_pose"
    DUPLICATE = "duplicate"
    """A near-identical face of the same subject is already stored."""
    INTERNAL_ERROR = "internal_error"
    """An unexpected error while processing this one upload; the detail names it."""
