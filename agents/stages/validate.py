"""Stage ``validate``: raw ``uploads`` record bytes -> a checked :class:`UploadEvent`.

The first stage every record meets. It parses the contract and checks consent; anything
else (the image, the subject's pseudonym) is the business of later stages. Once the
pseudonym is made, :func:`check_not_erased` refuses an upload of a subject erased after
its consent was granted (the pipeline reads the subject's tombstone for it).

Example::

    try:
        event = validate(message.value, now=datetime.now(UTC))
    except Rejected as exc:
        dead_letter(upload_id_of(message.value), exc.reason, exc.stage, exc.detail)

A rejection's detail names the failing fields and why, but never echoes a value back:
the record is untrusted, and its ``subject_id`` is personal data that must not reach the
dead-letter topic or a log line.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from agents.errors import Rejected
from schemas.reasons import ReasonCode, Stage
from schemas.uploads import OpaqueId, UploadEvent, fallback_upload_id

TRAINING_SCOPE = "training"
"""The consent scope without which an upload is never processed."""

# Compactness bounds for a BAD_SCHEMA detail: it travels on the DLQ and into logs, and a
# hostile record can produce thousands of errors or huge (attacker-chosen) key names.
_MAX_ERRORS = 5
_MAX_LOC_PART = 40
_MAX_MSG = 160

# The contract's own OpaqueId validator, so that "a usable upload_id" means exactly what
# the UploadEvent contract means by it.
_OPAQUE_ID: TypeAdapter[str] = TypeAdapter(OpaqueId)


def validate(raw: bytes, now: datetime) -> UploadEvent:
    """Parse ``raw`` as an :class:`UploadEvent` and check its consent at ``now``.

    Raises :class:`Rejected` at :attr:`Stage.VALIDATE` with ``bad_schema`` (not JSON, or not
    the contract), ``no_consent`` (no ``consent`` in an otherwise valid record, or scopes
    lacking ``training``) or ``consent_expired``.
    ``now`` must be timezone-aware, like every time in the contract.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware (got naive {now!r}); use datetime.now(UTC)")
    try:
        event = UploadEvent.from_bytes(raw)
    except ValidationError as exc:
        if _only_consent_missing(exc):
            # The record is otherwise sound: the reason is the missing consent, which is
            # what the producer must fix (ReasonCode.NO_CONSENT covers "missing").
            raise Rejected(
                ReasonCode.NO_CONSENT,
                Stage.VALIDATE,
                "consent is missing: the record has no 'consent' object; processing needs "
                f"consent with the {TRAINING_SCOPE!r} scope",
            ) from None
        raise Rejected(ReasonCode.BAD_SCHEMA, Stage.VALIDATE, _describe(exc)) from None
    consent = event.consent
    if not consent.covers(TRAINING_SCOPE):
        raise Rejected(
            ReasonCode.NO_CONSENT,
            Stage.VALIDATE,
            f"consent.scopes lacks {TRAINING_SCOPE!r} (consent version {consent.version!r})",
        )
    if consent.expired(now):
        # expired() is true only when expires_at is set; the isoformat is not personal data.
        expires = consent.expires_at.isoformat() if consent.expires_at else "?"
        raise Rejected(
            ReasonCode.CONSENT_EXPIRED,
            Stage.VALIDATE,
            f"consent version {consent.version!r} expired at {expires}",
        )
    return event


def check_not_erased(
    consent_granted_at: datetime, erased_at: datetime | None, stage: Stage = Stage.VALIDATE
) -> None:
    """Refuse an upload of a subject erased after its consent was granted.

    ``erased_at`` is the subject's latest erasure (its tombstone,
    :mod:`agents.stores.tombstones`), None when it was never erased. An upload queued
    before the erasure carries a consent granted before it: ``subject_erased``, whatever
    the upload holds. A consent granted after the erasure (the person came back and agreed
    again) lets the upload through. Both times must be timezone-aware.

    Raises :class:`Rejected` with ``subject_erased`` at ``stage`` (``validate`` where the
    pseudonym is first made; ``store`` when the erasure committed during the batch).
    """
    if erased_at is None or consent_granted_at > erased_at:
        return
    # Times only: the detail goes to the dead-letter topic and the uploads table, and
    # neither may tie the upload to the erased subject again.
    raise Rejected(
        ReasonCode.SUBJECT_ERASED,
        stage,
        f"the subject was erased at {erased_at.isoformat()}, after this upload's consent "
        f"was granted ({consent_granted_at.isoformat()}): nothing of it is stored; an "
        "upload needs a consent granted after the erasure",
    )


def upload_id_of(raw: bytes) -> str:
    """Best-effort ``upload_id`` of a record, for recording a rejection of it.

    The record's own ``upload_id`` when it is JSON with a string matching the contract's
    id pattern, else :func:`schemas.uploads.fallback_upload_id` (stable for the same
    bytes, so a re-delivered broken record is still recorded once). Never raises.
    """
    try:
        # The same JSON parser as UploadEvent.from_bytes, so both agree on what is JSON.
        doc: Any = pydantic_core.from_json(raw)
    except ValueError:
        return fallback_upload_id(raw)
    candidate = doc.get("upload_id") if isinstance(doc, dict) else None
    if isinstance(candidate, str):
        try:
            return _OPAQUE_ID.validate_python(candidate)
        except ValidationError:
            pass
    return fallback_upload_id(raw)


def _only_consent_missing(exc: ValidationError) -> bool:
    """Whether the one thing wrong with the record is that it has no ``consent``."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    return len(errors) == 1 and errors[0]["type"] == "missing" and errors[0]["loc"] == ("consent",)


def _describe(exc: ValidationError) -> str:
    """``field: why; field: why`` for the first few errors, with no input value in it.

    Pydantic's ``msg`` templates state the rule ("Field required", "String should have at
    most 256 characters"), never the input; ``input`` itself is deliberately left out.
    """
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{_loc(err['loc'])}: {_clip(err['msg'], _MAX_MSG)}" for err in errors[:_MAX_ERRORS]]
    more = len(errors) - _MAX_ERRORS
    if more > 0:
        parts.append(f"(+{more} more)")
    return "invalid UploadEvent: " + "; ".join(parts)


def _loc(loc: Sequence[int | str]) -> str:
    # An empty loc is an error about the whole document (e.g. invalid JSON).
    if not loc:
        return "record"
    return ".".join(_clip(str(part), _MAX_LOC_PART) for part in loc)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
