"""Topics ``faces`` and ``pairs``.

``faces`` (internal): one record per accepted face, sent by the ingest agent once the face
is stored; the pairs agent consumes it. ``pairs``: one record each time a face's pair for
a style is created or decided, for downstream consumers (dataset tools, dashboards).
Neither carries image bytes or a raw subject id; both are keyed by the subject pseudonym so
that one subject's records stay in order.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

FACES_TOPIC = "faces"
PAIRS_TOPIC = "pairs"
SCHEMA_VERSION = 1


class PairStatus(StrEnum):
    APPROVED = "approved"
    """confident enough to train on, automatically or by a reviewer"""
    PENDING = "pending"
    """waiting in the review queue"""
    REJECTED = "rejected"
    """a reviewer found no usable reference for this face"""
    UNMATCHED = "unmatched"
    """no reference of the style passed the filters; waits for the library to grow"""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class FaceAccepted(_Record):
    """A face the ingest agent stored; the pairs agent takes it from here."""

    schema_version: int = SCHEMA_VERSION
    face_id: str = Field(max_length=36)
    upload_id: str = Field(max_length=128)
    subject: str = Field(max_length=64, description="subject pseudonym")
    accepted_at: AwareDatetime

    @classmethod
    def from_bytes(cls, raw: bytes) -> FaceAccepted:
        return cls.model_validate_json(raw)


class Candidate(BaseModel):
    """One reference considered for a face, with the parts of its score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref_id: str
    score: float = Field(description="the pair score, 0..1, that approval thresholds compare")
    similarity: float = Field(description="embedding similarity to the face")
    label_agreement: float = Field(description="share of comparable labels that agree, 0..1")


class PairRecord(_Record):
    """A face's pair for one style, as created or last decided."""

    schema_version: int = SCHEMA_VERSION
    pair_id: str
    face_id: str
    subject: str = Field(max_length=64, description="subject pseudonym")
    style: str
    ref_id: str | None = None
    score: float | None = None
    status: PairStatus
    decided_by: str | None = Field(None, description="auto | human:<name> | import:<file>")
    candidates: list[Candidate] = Field(default_factory=list)
    library_version: int | None = None
    at: AwareDatetime

    @classmethod
    def from_bytes(cls, raw: bytes) -> PairRecord:
        return cls.model_validate_json(raw)
