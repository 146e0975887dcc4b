"""Topic ``model-updates``: a converter version became (or went back to being) champion.

The retrain cycle (:mod:`trainer.cycle`) and ``s2a models promote|rollback`` produce one
record each time the ``champion`` alias of a model moves; the serving fleet consumes it,
loads ``path`` (a numbered version directory, ``S2A_HOME/models/<name>/<version>/``),
checks its files against ``artifacts`` and swaps. Keyed by the model name, so the moves of
one model stay in order. Carries no image and no subject.

Example::

    update = ModelUpdate(name="converter", version=3, previous_version=2, action="promote",
                         family="pix2pix-lora", snapshot_id="ds-3f2a9c0d1e2b4a5f",
                         path="/srv/s2a/models/converter/3", artifacts={...}, metrics={...},
                         reason="gate passed", actor="scheduler", at=datetime.now(UTC))
    producer.send(settings.topic(MODEL_UPDATES_TOPIC), key=update.key(), value=update.to_bytes())
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

MODEL_UPDATES_TOPIC = "model-updates"
SCHEMA_VERSION = 1


class VersionStatus(StrEnum):
    """Where a registered model version stands (``model_versions.status``)."""

    TRAINING = "training"
    """registered, its run in progress (or killed: a stale ``training`` row is a dead run)"""
    TRAINED = "trained"
    """trained and holding the ``candidate`` alias, not evaluated yet"""
    PROMOTED = "promoted"
    """passed the evaluation gate (or was promoted by hand) and became champion"""
    REFUSED = "refused"
    """evaluated and refused by the gate: the champion stayed; metrics say why"""
    FAILED = "failed"
    """training, export or evaluation failed; ``reason`` says where"""


class ModelUpdate(BaseModel):
    """A model's ``champion`` alias moved to ``version``: serving should load it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str = Field(max_length=64, description="model name, e.g. converter")
    version: int = Field(ge=1, description="the new champion's version number")
    previous_version: int | None = Field(description="the champion it replaces, if any")
    action: Literal["promote", "rollback"] = Field(
        description="promote: a new champion (by the gate or by hand); rollback: back to the "
        "previous one"
    )
    family: str = Field(max_length=64, description="model family, e.g. pix2pix-lora")
    snapshot_id: str = Field(max_length=64, description="dataset snapshot it was trained on")
    path: str = Field(description="the version directory serving loads")
    artifacts: dict[str, str] = Field(
        description="file path relative to the version directory -> SHA-256 hex digest"
    )
    metrics: dict[str, float] = Field(
        description="the version's validation metrics (trainer.evaluate names and units)"
    )
    reason: str = Field(max_length=1024, description="why the alias moved")
    actor: str = Field(max_length=128, description="who moved it: scheduler or a person")
    at: AwareDatetime

    def key(self) -> bytes:
        return self.name.encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ModelUpdate:
        return cls.model_validate_json(raw)
