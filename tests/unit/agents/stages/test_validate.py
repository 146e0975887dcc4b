"""Unit tests for :mod:`agents.stages.validate`: contract parsing, consent, upload ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.errors import Rejected
from agents.stages.validate import upload_id_of, validate
from schemas.reasons import ReasonCode, Stage
from schemas.uploads import Consent, ImagePayload, Source, UploadEvent, fallback_upload_id

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SUBJECT = "alice.private@example.com"
IMAGE = b"\xff\xd8\xff\xe0 not really a jpeg, but bytes"


def make_event(**changes: Any) -> UploadEvent:
    fields: dict[str, Any] = {
        "upload_id": "u-0001",
        "subject_id": SUBJECT,
        "consent": Consent(version="2026-01", scopes=["training"], granted_at=NOW - timedelta(1)),
        "image": ImagePayload(data=IMAGE),
        "submitted_at": NOW,
    }
    fields.update(changes)
    return UploadEvent(**fields)


def make_doc(**changes: Any) -> dict[str, Any]:
    """A valid event as a JSON document, with top-level keys replaced or removed (None)."""
    doc: dict[str, Any] = json.loads(make_event().to_bytes())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def rejected(raw: bytes, now: datetime = NOW) -> Rejected:
    with pytest.raises(Rejected) as info:
        validate(raw, now)
    assert info.value.stage is Stage.VALIDATE
    return info.value


def test_valid_event_round_trips() -> None:
    event = make_event(attribution="me", source=Source.SELFIE)
    parsed = validate(event.to_bytes(), NOW)
    assert parsed == event
    # Inline bytes travel as base64 and come back as the same bytes.
    assert parsed.image.data == IMAGE


def test_uri_event_round_trips() -> None:
    event = make_event(image=ImagePayload(uri="file:///srv/uploads/a.jpg"))
    assert validate(event.to_bytes(), NOW).image.uri == "file:///srv/uploads/a.jpg"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b"null", b'"just a string"'],
)
def test_not_a_json_object_is_bad_schema(raw: bytes) -> None:
    assert rejected(raw).reason is ReasonCode.BAD_SCHEMA


def test_wrong_types_name_the_fields() -> None:
    doc = make_doc(upload_id=123, submitted_at="yesterday-ish")
    doc["consent"]["scopes"] = "training"
    error = rejected(encode(doc))
    assert error.reason is ReasonCode.BAD_SCHEMA
    for field in ("upload_id", "submitted_at", "consent.scopes"):
        assert field in error.detail


def test_missing_upload_id_is_bad_schema_with_a_stable_fallback_id() -> None:
    raw = encode(make_doc(upload_id=None))
    error = rejected(raw)
    assert error.reason is ReasonCode.BAD_SCHEMA
    assert "upload_id" in error.detail
    assert upload_id_of(raw) == fallback_upload_id(raw)
    assert upload_id_of(raw) == upload_id_of(bytes(raw))
    assert upload_id_of(raw).startswith("invalid-")
    assert upload_id_of(raw) != upload_id_of(raw + b" ")


@pytest.mark.parametrize(
    "image",
    [
        {"data": "aGVsbG8=", "uri": "file:///srv/uploads/a.jpg"},
        {},
        {"content_type": "image/jpeg"},
    ],
    ids=["both", "neither", "hint-only"],
)
def test_image_needs_exactly_one_of_data_and_uri(image: dict[str, str]) -> None:
    error = rejected(encode(make_doc(image=image)))
    assert error.reason is ReasonCode.BAD_SCHEMA
    assert "image" in error.detail


def test_invalid_base64_is_bad_schema() -> None:
    error = rejected(encode(make_doc(image={"data": "!!not base64!!"})))
    assert error.reason is ReasonCode.BAD_SCHEMA
    assert "image.data" in error.detail
    assert "!!not base64!!" not in error.detail


def test_public_dataset_without_license_is_bad_schema() -> None:
    error = rejected(encode(make_doc(source="public-dataset")))
    assert error.reason is ReasonCode.BAD_SCHEMA
    assert "license" in error.detail
    assert validate(encode(make_doc(source="public-dataset", license="CC-BY-4.0")), NOW)


def test_unknown_fields_and_versions_are_bad_schema() -> None:
    assert rejected(encode(make_doc(colour="blue"))).reason is ReasonCode.BAD_SCHEMA
    error = rejected(encode(make_doc(schema_version=3)))  # 1 and 2 are read
    assert "schema_version" in error.detail


def test_detail_never_echoes_the_subject_id_or_image() -> None:
    # Several failures at once, one of them in subject_id itself (too long).
    long_subject = SUBJECT * 20
    doc = make_doc(subject_id=long_subject, upload_id="has spaces", submitted_at=17)
    error = rejected(encode(doc))
    assert "subject_id" in error.detail
    assert SUBJECT not in error.detail
    assert SUBJECT not in str(error)
    assert "aGVsbG8" not in error.detail
    doc = make_doc(subject_id=["a", SUBJECT])
    assert SUBJECT not in rejected(encode(doc)).detail


def test_detail_stays_compact_for_many_errors() -> None:
    doc = {f"extra_{i}_{'x' * 200}": i for i in range(200)}
    error = rejected(encode(doc))
    assert error.reason is ReasonCode.BAD_SCHEMA
    assert "more" in error.detail
    assert len(error.detail) < 1000


def test_missing_consent_is_no_consent_not_bad_schema() -> None:
    error = rejected(encode(make_doc(consent=None)))
    assert error.reason is ReasonCode.NO_CONSENT
    assert "consent is missing" in error.detail
    # Missing consent in an otherwise broken record is the record's fault.
    error = rejected(encode(make_doc(consent=None, upload_id=None)))
    assert error.reason is ReasonCode.BAD_SCHEMA


def test_consent_without_training_scope_is_no_consent() -> None:
    consent = Consent(version="2026-01", scopes=["analytics"], granted_at=NOW)
    error = rejected(make_event(consent=consent).to_bytes())
    assert error.reason is ReasonCode.NO_CONSENT
    assert "training" in error.detail


def test_expired_consent_is_consent_expired() -> None:
    consent = Consent(
        version="2026-01",
        scopes=["training"],
        granted_at=NOW - timedelta(days=30),
        expires_at=NOW - timedelta(seconds=1),
    )
    raw = make_event(consent=consent).to_bytes()
    assert rejected(raw).reason is ReasonCode.CONSENT_EXPIRED
    # The same record was fine before its expiry, and exactly at expiry it is not.
    assert validate(raw, NOW - timedelta(seconds=2)).consent == consent
    assert rejected(raw, NOW - timedelta(seconds=1)).reason is ReasonCode.CONSENT_EXPIRED


def test_no_training_scope_wins_over_expiry() -> None:
    consent = Consent(
        version="v", scopes=["other"], granted_at=NOW - timedelta(2), expires_at=NOW - timedelta(1)
    )
    assert rejected(make_event(consent=consent).to_bytes()).reason is ReasonCode.NO_CONSENT


def test_naive_now_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware") as info:
        validate(make_event().to_bytes(), datetime(2026, 3, 1, 12, 0))
    assert not isinstance(info.value, Rejected)


def test_upload_id_of_prefers_the_records_own_id() -> None:
    raw = encode(make_doc(subject_id=None))  # invalid record, readable upload_id
    assert upload_id_of(raw) == "u-0001"
    assert upload_id_of(make_event().to_bytes()) == "u-0001"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x01\x02",
        b"{broken",
        b'["u-0001"]',
        b'{"upload_id": 42}',
        b'{"upload_id": "has spaces"}',
        b'{"upload_id": "alice@example.com"}',
        b'{"upload_id": ""}',
        b'{"upload_id": "u-1\\n"}',
        ('{"upload_id": "' + "a" * 129 + '"}').encode(),
    ],
)
def test_upload_id_of_falls_back_for_unusable_ids(raw: bytes) -> None:
    assert upload_id_of(raw) == fallback_upload_id(raw)
