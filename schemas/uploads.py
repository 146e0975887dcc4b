"""Topic ``uploads``: one record per consented upload, published by the app backend.

The value is UTF-8 JSON matching ``schemas/jsonschema/upload_event.json``. The key should
be the ``subject_id``: one subject's uploads then share a partition and are processed in
order, so two copies of one photo cannot race past the duplicate check on two workers,
and a re-delivery lands where the first delivery did. A record
that fails validation is not lost: it becomes a ``bad_schema`` rejection on
``uploads-dlq``.

Example::

    event = UploadEvent(
        upload_id="u-123",
        subject_id="app-user-42",
        consent=Consent(version="2026-01", scopes=["training"], granted_at=now),
        image=ImagePayload(data=jpeg_bytes),
        submitted_at=now,
    )
    producer.send(settings.topic(TOPIC), key=event.partition_key(), value=event.to_bytes())
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

TOPIC = "uploads"
SCHEMA_VERSION: Final = 2
"""2: ``attributes.expression`` (1 had no way to declare one). Version 1 events, which
cannot carry it, are still read."""

#: Opaque identifiers: no e-mail addresses or free text, so nothing personal hides in them.
OpaqueId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", strip_whitespace=False)
]


class _Record(BaseModel):
    # bytes travel as base64 in JSON (pydantic's default would be raw UTF-8).
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


class Source(StrEnum):
    SELFIE = "selfie"
    PUBLIC_DATASET = "public-dataset"


class Consent(_Record):
    """What the subject agreed to. Processing needs the ``training`` scope, unexpired."""

    version: str = Field(min_length=1, max_length=64, description="consent text version")
    scopes: list[str] = Field(min_length=1, description="e.g. ['training']")
    granted_at: AwareDatetime
    expires_at: AwareDatetime | None = None

    def covers(self, scope: str) -> bool:
        return scope in self.scopes

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class ImagePayload(_Record):
    """The image: inline bytes (base64 in JSON) or a URI the worker can read. Exactly one."""

    data: bytes | None = Field(None, description="encoded image, base64 in JSON")
    uri: str | None = Field(None, max_length=2048, description="file:// URI under a worker root")
    content_type: str | None = Field(None, max_length=64, description="a hint only; never trusted")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImagePayload:
        if (self.data is None) == (self.uri is None):
            raise ValueError("image needs exactly one of 'data' (inline bytes) or 'uri'")
        return self


#: A declared expression: the ``expression`` values of :data:`schemas.labels.VALUES`
#: (a test keeps the two lists equal).
Expression = Literal["neutral", "smiling", "other"]


class DeclaredAttributes(_Record):
    """Optional self-declared attributes; stored as labels with source ``declared``.

    ``expression`` (since ``schema_version`` 2) is the photo's, not the person's: the
    label vocabulary's own values, e.g. CelebA's ``Smiling`` flag as ``smiling`` or
    ``neutral``.

    Example::

        DeclaredAttributes(age=34, gender="female", glasses=False, expression="smiling")
    """

    age: int | None = Field(None, ge=13, le=120)
    gender: str | None = Field(None, max_length=32)
    glasses: bool | None = None
    hair_colour: str | None = Field(None, max_length=32)
    expression: Expression | None = Field(
        None, description="the photo's expression (schema_version 2 and later)"
    )


class UploadEvent(_Record):
    """One consented upload. ``upload_id`` is the idempotency key."""

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    upload_id: OpaqueId
    subject_id: str = Field(
        min_length=1,
        max_length=256,
        description="the app's user id; pseudonymized with a keyed HMAC on entry, never stored",
    )
    consent: Consent
    image: ImagePayload
    source: Source = Source.SELFIE
    license: str | None = Field(
        None, max_length=128, description="required for public-dataset images, e.g. CC-BY-4.0"
    )
    attribution: str | None = Field(None, max_length=512)
    attributes: DeclaredAttributes = DeclaredAttributes()
    submitted_at: AwareDatetime

    @model_validator(mode="after")
    def _license_for_public(self) -> UploadEvent:
        if self.source is Source.PUBLIC_DATASET and not self.license:
            raise ValueError("source 'public-dataset' needs a 'license' (e.g. 'CC-BY-4.0')")
        return self

    @model_validator(mode="after")
    def _fields_of_its_version(self) -> UploadEvent:
        # A version 1 producer cannot mean a field version 1 does not have.
        if self.schema_version < 2 and self.attributes.expression is not None:
            raise ValueError(
                "attributes.expression needs schema_version 2; send schema_version 2 "
                "or leave the expression out"
            )
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def partition_key(self) -> bytes:
        return self.subject_id.encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> UploadEvent:
        return cls.model_validate_json(raw)


def fallback_upload_id(raw: bytes) -> str:
    """A stable id for a record so broken that it has no readable ``upload_id``.

    Derived from the bytes, so a re-delivery of the same broken record maps to the same
    id and is recorded once.
    """
    return "invalid-" + hashlib.sha256(raw).hexdigest()[:32]
