"""Properties of ``uploads`` record parsing (:mod:`agents.stages.validate`,
:class:`schemas.uploads.UploadEvent`) on bytes and JSON no producer should send.

* Any bytes: :func:`validate` returns an event or raises :class:`Rejected` at ``validate``
  with one of its three reasons, never another exception, and its detail never echoes the
  subject id; :func:`upload_id_of` never raises and always gives a usable id.
* Any valid event round-trips through its bytes, matches the published JSON Schema, and
  passes :func:`validate` unchanged when its consent covers training.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from agents.errors import Rejected
from agents.stages.validate import TRAINING_SCOPE, upload_id_of, validate
from schemas.json_schemas import schema_of
from schemas.reasons import ReasonCode, Stage
from schemas.uploads import (
    Consent,
    DeclaredAttributes,
    ImagePayload,
    OpaqueId,
    Source,
    UploadEvent,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: A subject id no generated field can contain by chance: it must never reach a detail.
SUBJECT = "fuzz-subject-7f3a9c@example.com"
VALIDATE_REASONS = {ReasonCode.BAD_SCHEMA, ReasonCode.NO_CONSENT, ReasonCode.CONSENT_EXPIRED}
_OPAQUE = TypeAdapter(OpaqueId)
_SCHEMA = jsonschema.Draft202012Validator(
    schema_of("upload_event"), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)

# From 1970: older zone offsets (local mean time) have seconds, which JSON's RFC 3339
# offsets cannot carry (pydantic writes +00:19 for Amsterdam's +00:19:32 of 1880).
aware = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.timezones()
)
opaque_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")

consents = st.builds(
    Consent,
    version=st.text(min_size=1, max_size=64),
    scopes=st.lists(st.sampled_from([TRAINING_SCOPE, "research", "marketing", ""]), min_size=1),
    granted_at=aware,
    expires_at=st.none() | aware,
)
images = st.one_of(
    st.builds(ImagePayload, data=st.binary(max_size=64)),
    st.builds(
        ImagePayload, uri=st.text(max_size=80), content_type=st.none() | st.text(max_size=64)
    ),
)
attributes = st.builds(
    DeclaredAttributes,
    age=st.none() | st.integers(13, 120),
    gender=st.none() | st.text(max_size=32),
    glasses=st.none() | st.booleans(),
    hair_colour=st.none() | st.text(max_size=32),
    expression=st.none() | st.sampled_from(["neutral", "smiling", "other"]),
)


@st.composite
def events(draw: st.DrawFn) -> UploadEvent:
    source = draw(st.sampled_from(Source))
    return UploadEvent(
        upload_id=draw(opaque_ids),
        subject_id=draw(st.text(min_size=1, max_size=256)),
        consent=draw(consents),
        image=draw(images),
        source=source,
        license=draw(
            st.text(min_size=1, max_size=128)
            if source is Source.PUBLIC_DATASET
            else st.none() | st.text(max_size=128)
        ),
        attribution=draw(st.none() | st.text(max_size=512)),
        attributes=draw(attributes),
        submitted_at=draw(aware),
    )


def _valid_doc() -> dict[str, Any]:
    event = UploadEvent(
        upload_id="u-fuzz",
        subject_id=SUBJECT,
        consent=Consent(version="2026-01", scopes=["training"], granted_at=NOW - timedelta(1)),
        image=ImagePayload(data=b"\xff\xd8\xff not a jpeg"),
        submitted_at=NOW,
    )
    doc: dict[str, Any] = json.loads(event.to_bytes())
    return doc


def _check_outcome(raw: bytes) -> UploadEvent | Rejected:
    """validate's outcome, asserting that it is one of the two allowed kinds."""
    outcome: UploadEvent | Rejected
    try:
        outcome = validate(raw, NOW)
    except Rejected as exc:  # anything else fails the property
        outcome = exc
    if isinstance(outcome, Rejected):
        assert outcome.stage is Stage.VALIDATE
        assert outcome.reason in VALIDATE_REASONS
        assert outcome.detail
        assert SUBJECT not in outcome.detail
        return outcome
    assert isinstance(outcome, UploadEvent)
    assert outcome.consent.covers(TRAINING_SCOPE)
    assert not outcome.consent.expired(NOW)
    return outcome


def _check_upload_id(raw: bytes) -> None:
    upload_id = upload_id_of(raw)
    assert _OPAQUE.validate_python(upload_id) == upload_id
    assert upload_id_of(raw) == upload_id


@settings(max_examples=settings.default.max_examples * 3)
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff\xfe{}")
@example(b"[]")
@example(b"null")
@example(b'{"upload_id": "u-1"' + b"[" * 5000)
def test_any_bytes_are_an_event_or_a_validate_rejection(raw: bytes) -> None:
    _check_outcome(raw)
    _check_upload_id(raw)


@settings(max_examples=settings.default.max_examples * 2)
@given(json_values)
def test_any_json_is_an_event_or_a_validate_rejection(value: Any) -> None:
    raw = json.dumps(value).encode()
    _check_outcome(raw)
    _check_upload_id(raw)


@settings(max_examples=settings.default.max_examples * 3)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(sorted(_valid_doc())),
            st.sampled_from(["drop", "replace", "nest"]),
            json_values,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_a_valid_record_with_broken_fields_never_escapes_as_another_error(
    edits: list[tuple[str, str, Any]],
) -> None:
    doc = _valid_doc()
    for key, how, value in edits:
        if how == "drop":
            doc.pop(key, None)
        elif how == "replace":
            doc[key] = value
        elif isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], "x": value} if value is not None else {}
    raw = json.dumps(doc).encode()
    outcome = _check_outcome(raw)
    if isinstance(outcome, UploadEvent):
        assert outcome.subject_id == doc["subject_id"]
    _check_upload_id(raw)


@settings(max_examples=settings.default.max_examples)
@given(events())
def test_a_valid_event_round_trips_and_matches_the_json_schema(event: UploadEvent) -> None:
    raw = event.to_bytes()
    # Compared as bytes: the same instant in another tzinfo object is not == when it falls
    # in a DST fold (PEP 495), yet it is the same record.
    assert UploadEvent.from_bytes(raw).to_bytes() == raw
    _SCHEMA.validate(json.loads(raw))
    assert upload_id_of(raw) == event.upload_id
    outcome = _check_outcome(raw)
    consent = event.consent
    if consent.covers(TRAINING_SCOPE) and not consent.expired(NOW):
        assert isinstance(outcome, UploadEvent)
        assert outcome.to_bytes() == raw
    else:
        assert isinstance(outcome, Rejected)
        assert outcome.reason in (ReasonCode.NO_CONSENT, ReasonCode.CONSENT_EXPIRED)
