"""Topic ``uploads-dlq``: one record per rejected upload, with a reason from a closed list.

It carries no image bytes and no raw subject id: a consumer correlates it by
``upload_id``. ``origin`` names where the upload was read, for operators.
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.reasons import ReasonCode, Stage

TOPIC = "uploads-dlq"
SCHEMA_VERSION = 4
"""2: the ``face_cut_off`` reason (1 had no way to refuse a face cut by the frame).
3: the ``animated`` reason (2 called an animated image ``too_large``).
4: the ``subject_erased`` reason (3 ingested an erased subject's queued uploads)."""


class Origin(BaseModel):
    """Where a record was read: topic, partition and offset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    partition: int
    offset: int


class Rejection(BaseModel):
    """Why an upload ended ``rejected``.

    Example::

        Rejection(upload_id="u-1", reason=ReasonCode.BLURRY, stage=Stage.QUALITY,
                  detail="sharpness 12.0 below 40.0", rejected_at=now)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    upload_id: str
    reason: ReasonCode
    stage: Stage
    detail: str = Field(max_length=1024, description="what was wrong and, where it helps, the fix")
    subject: str | None = Field(
        None,
        description="subject pseudonym, when the upload had one; never with subject_erased",
    )
    origin: Origin | None = None
    rejected_at: AwareDatetime

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Rejection:
        return cls.model_validate_json(raw)
