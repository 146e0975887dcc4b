"""Settings of the anime reference library (``refs``: licences, the style check, the
index backend) and of matching faces to its references (``pairing``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.settings.base import Group


class RefSettings(Group):
    """The anime reference library: what it accepts and how it keeps styles consistent."""

    allowed_licenses: tuple[str, ...] = Field(
        ("CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-2.0", "MIT", "public-domain"),
        description="SPDX-style ids a reference may carry; anything else is refused",
    )
    min_side_px: int = Field(128, gt=0, description="shorter side of the face region")
    outlier_z: float = Field(
        3.5,
        gt=0,
        description="style check limit: a reference whose rendering composite z-score "
        "(looks photographed / sketched; agents/references/style.py) passes it is quarantined; "
        "one statistic alone needs 3x it, palette evidence only tips a composite within 1 of it",
    )
    min_style_size: int = Field(
        5, ge=2, description="references a style needs before outliers are judged against it"
    )
    index_backend: Literal["edge", "qdrant-local"] = Field(
        "edge",
        description="embedded reference index when no qdrant_url is set (BENCHMARKS.md: "
        "matching); with qdrant_url the server's anime_refs collection is used",
    )
    keep_index_versions: int = Field(
        3,
        ge=1,
        description="embedded index: library version folders kept after each new version "
        "(the newest ones; older folders are deleted once the new version is committed)",
    )


class PairingSettings(Group):
    """Matching accepted faces to anime references."""

    styles: tuple[str, ...] = Field(
        (), description="styles every face is paired for; empty = every style in the library"
    )
    candidates: int = Field(10, ge=1, le=100, description="references scored per face")
    auto_approve: float = Field(
        0.8, ge=0, le=1, description="pair score at or above which a pair is approved"
    )
    min_model_confidence: float = Field(
        0.85, ge=0, le=1, description="a label head's guess counts only at this confidence"
    )
    usage_penalty: float = Field(
        0.04,
        ge=0,
        le=1,
        description="most a reference's score is lowered for the pairs (approved or pending, "
        "in the style) already using it: usage_penalty * uses / (uses + 1); under 0.05 it "
        "only reorders references equally good on labels (see agents.pairing.match)",
    )
