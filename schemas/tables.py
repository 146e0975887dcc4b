"""SQL tables (SQLModel). SQLite is the embedded default, PostgreSQL the production one.

Every change here needs a migration in ``schemas/migrations/versions``;
``tests/integration/test_migrations.py`` fails while the two disagree.

No column holds a raw subject id or image bytes: subjects are HMAC pseudonyms and images
are content hashes of metadata-free crops in the blob store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from schemas.reasons import UploadState


def _utc_column(nullable: bool = False) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable))


def _json_column(nullable: bool = False) -> Any:
    return Field(sa_column=Column(JSON, nullable=nullable))


class Subject(SQLModel, table=True):
    """A person, known only by the keyed-HMAC pseudonym of the app's user id."""

    __tablename__ = "subjects"

    pseudonym: str = Field(primary_key=True, max_length=64)
    first_seen_at: datetime = _utc_column()
    consent_version: str = Field(max_length=64)
    consent_scopes: list[str] = _json_column()
    consent_granted_at: datetime = _utc_column()
    consent_expires_at: datetime | None = _utc_column(nullable=True)


class Upload(SQLModel, table=True):
    """One upload and the terminal state it reached. ``upload_id`` is the idempotency key."""

    __tablename__ = "uploads"

    upload_id: str = Field(primary_key=True, max_length=128)
    subject: str | None = Field(
        default=None, foreign_key="subjects.pseudonym", index=True, max_length=64
    )
    # Stored as the lower-case values as plain VARCHAR: readable in raw SQL, and a new
    # state needs no ALTER TYPE on PostgreSQL.
    state: UploadState = Field(
        sa_column=Column(
            SAEnum(
                UploadState,
                native_enum=False,
                length=16,
                values_callable=lambda states: [s.value for s in states],
            ),
            nullable=False,
            index=True,
        )
    )
    reason: str | None = Field(default=None, max_length=32, index=True)
    stage: str | None = Field(default=None, max_length=16)
    detail: str | None = Field(default=None, max_length=1024)
    source: str | None = Field(default=None, max_length=32)
    license: str | None = Field(default=None, max_length=128)
    consent_version: str | None = Field(default=None, max_length=64)
    submitted_at: datetime | None = _utc_column(nullable=True)
    finished_at: datetime = _utc_column()
    origin_topic: str | None = Field(default=None, max_length=255)
    origin_partition: int | None = None
    origin_offset: int | None = Field(default=None, sa_column=Column(BigInteger))


class Face(SQLModel, table=True):
    """An accepted face: where its crops are, how it was found, aligned and embedded."""

    __tablename__ = "faces"

    face_id: str = Field(primary_key=True, max_length=36)
    upload_id: str = Field(foreign_key="uploads.upload_id", unique=True, max_length=128)
    subject: str = Field(foreign_key="subjects.pseudonym", index=True, max_length=64)
    source: str = Field(max_length=32)
    license: str | None = Field(default=None, max_length=128)
    attribution: str | None = Field(default=None, max_length=512)
    detector: str = Field(max_length=64)
    detection_prob: float
    box: list[float] = _json_column()
    landmarks: list[list[float]] = _json_column()
    quality: dict[str, float] = _json_column()
    crop_256: str = Field(max_length=64, description="sha256 of the 256px aligned PNG")
    crop_512: str = Field(max_length=64, description="sha256 of the 512px aligned PNG")
    align: dict[str, Any] = _json_column()
    embedder: str = Field(max_length=128)
    embedder_random_init: bool
    image_width: int
    image_height: int
    created_at: datetime = _utc_column()


class Label(SQLModel, table=True):
    """One attribute of a face with where it came from and how sure we are."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("face_id", "name", "source"),)

    id: int | None = Field(default=None, primary_key=True)
    face_id: str = Field(foreign_key="faces.face_id", index=True, max_length=36)
    name: str = Field(max_length=32)
    value: str = Field(max_length=64)
    source: str = Field(max_length=16, description="declared | measured | model | human")
    confidence: float
    created_at: datetime = _utc_column()
