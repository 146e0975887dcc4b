"""Unit tests for :mod:`agents.stages.anonymize`: pseudonyms, identity stripping, and
reading images inline or by ``file://`` URI under the configured roots."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.errors import Rejected
from agents.records import ValidUpload
from agents.stages.anonymize import pseudonymize, read_image, strip_identity
from schemas.reasons import ReasonCode, Stage
from schemas.settings import LimitSettings
from schemas.uploads import Consent, ImagePayload, UploadEvent

KEY = b"k" * 32
SUBJECT = "alice.private@example.com"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = LimitSettings()

# Markers planted in metadata blocks; none may survive into a stored PNG.


# --- helpers -----------------------------------------------------------------------------


def rejection(call: Callable[..., object], *args: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        call(*args)
    assert info.value.stage is Stage.ANONYMIZE
    return info.value


def make_upload(**changes: Any) -> ValidUpload:
    event = UploadEvent(
        upload_id="u-1",
        subject_id=SUBJECT,
        consent=Consent(version="2026-01", scopes=["training"], granted_at=NOW),
        image=ImagePayload(data=b"bytes"),
        submitted_at=NOW,
    )
    return dataclasses.replace(strip_identity(event, KEY), **changes)


# --- identity ----------------------------------------------------------------------------


def test_pseudonym_is_stable_keyed_hex() -> None:
    first = pseudonymize(SUBJECT, KEY)
    assert first == pseudonymize(SUBJECT, KEY)
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert first != pseudonymize(SUBJECT, b"another key of 32 bytes........")
    assert first != pseudonymize(SUBJECT + " ", KEY)
    with pytest.raises(ValueError, match="key"):
        pseudonymize(SUBJECT, b"")


def test_strip_identity_drops_the_raw_subject_id() -> None:
    event = UploadEvent(
        upload_id="u-42",
        subject_id=SUBJECT,
        consent=Consent(
            version="2026-01",
            scopes=["training", "analytics"],
            granted_at=NOW,
            expires_at=NOW + timedelta(days=365),
        ),
        image=ImagePayload(uri="file:///srv/uploads/u-42.jpg"),
        submitted_at=NOW,
    )
    upload = strip_identity(event, KEY)
    assert upload.subject == pseudonymize(SUBJECT, KEY)
    assert upload.upload_id == "u-42"
    assert upload.consent_scopes == ("training", "analytics")
    assert upload.consent_expires_at == NOW + timedelta(days=365)
    assert upload.image_uri == "file:///srv/uploads/u-42.jpg"
    assert upload.image_data is None
    assert SUBJECT not in repr(upload)
    assert SUBJECT not in repr(dataclasses.asdict(upload))
    assert not hasattr(upload, "subject_id")


# --- reading -----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "uploads"
    path.mkdir()
    return path


def test_inline_bytes_are_returned() -> None:
    upload = make_upload(image_data=b"abc")
    assert read_image(upload, LIMITS, ()) == b"abc"


def test_inline_bytes_over_the_limit_are_too_large() -> None:
    upload = make_upload(image_data=b"x" * 101)
    error = rejection(read_image, upload, LimitSettings(max_upload_bytes=100), ())
    assert error.reason is ReasonCode.TOO_LARGE


def test_uri_inside_root_is_read(root: Path) -> None:
    (root / "sub dir").mkdir()
    target = root / "sub dir" / "a.jpg"
    target.write_bytes(b"jpeg bytes")
    upload = make_upload(image_data=None, image_uri=target.as_uri())
    assert read_image(upload, LIMITS, [root]) == b"jpeg bytes"
    # A symlink that stays inside the root is fine: it is the resolved target that counts.
    (root / "link.jpg").symlink_to(target)
    upload = make_upload(image_data=None, image_uri=(root / "link.jpg").as_uri())
    assert read_image(upload, LIMITS, [root]) == b"jpeg bytes"


def test_uri_outside_root_is_bad_uri(root: Path) -> None:
    outside = root.parent / "secret.jpg"
    outside.write_bytes(b"not yours")
    (root / "escape.jpg").symlink_to(outside)
    (root / "sub").mkdir()
    uris = [
        outside.as_uri(),
        f"file://{root}/../secret.jpg",
        f"file://{root}/sub/../../secret.jpg",
        (root / "escape.jpg").as_uri(),
        "file:///etc/passwd",
    ]
    for uri in uris:
        upload = make_upload(image_data=None, image_uri=uri)
        error = rejection(read_image, upload, LIMITS, [root])
        assert error.reason is ReasonCode.BAD_URI, uri
        assert "outside" in error.detail


def test_root_prefix_is_not_containment(tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "a.jpg").write_bytes(b"x")
    upload = make_upload(image_data=None, image_uri=(tmp_path / "uploads" / "a.jpg").as_uri())
    assert rejection(read_image, upload, LIMITS, [tmp_path / "up"]).reason is (ReasonCode.BAD_URI)


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/a.jpg",
        "https://example.com/a.jpg",
        "s3://bucket/a.jpg",
        "/srv/uploads/a.jpg",
        "file://otherhost/srv/a.jpg",
        "data:image/png;base64,AAAA",
    ],
)
def test_non_file_uris_are_bad_uri(uri: str, root: Path) -> None:
    upload = make_upload(image_data=None, image_uri=uri)
    assert rejection(read_image, upload, LIMITS, [root]).reason is ReasonCode.BAD_URI


def test_missing_directory_and_fifo_are_bad_uri(root: Path) -> None:
    os.mkfifo(root / "pipe")  # opening a FIFO for reading would block without O_NONBLOCK
    (root / "dir.jpg").mkdir()
    for name in ("missing.jpg", "dir.jpg", "pipe"):
        upload = make_upload(image_data=None, image_uri=(root / name).as_uri())
        error = rejection(read_image, upload, LIMITS, [root])
        assert error.reason is ReasonCode.BAD_URI, name


def test_no_roots_means_no_uris(root: Path) -> None:
    (root / "a.jpg").write_bytes(b"x")
    upload = make_upload(image_data=None, image_uri=(root / "a.jpg").as_uri())
    error = rejection(read_image, upload, LIMITS, [])
    assert error.reason is ReasonCode.BAD_URI
    assert "uri_roots" in error.detail
    # An over-size photo comes by URI: the detail names both ways out, by setting.
    assert "S2A_URI_ROOTS" in error.detail
    assert "S2A_LIMITS__MAX_INLINE_BYTES" in error.detail
    assert str(LIMITS.max_inline_bytes) in error.detail


def test_large_file_is_too_large_by_stat(root: Path) -> None:
    big = root / "big.jpg"
    with big.open("wb") as handle:
        handle.truncate(10 * 1024 * 1024)  # sparse: costs no disk and is never read
    upload = make_upload(image_data=None, image_uri=big.as_uri())
    limits = LimitSettings(max_upload_bytes=1000, max_inline_bytes=1000)
    error = rejection(read_image, upload, limits, [root])
    assert error.reason is ReasonCode.TOO_LARGE
    assert "limits.max_upload_bytes is 1000 (S2A_LIMITS__MAX_UPLOAD_BYTES)" in error.detail
    (root / "exact.jpg").write_bytes(b"x" * 1000)
    upload = make_upload(image_data=None, image_uri=(root / "exact.jpg").as_uri())
    assert len(read_image(upload, limits, [root])) == 1000
