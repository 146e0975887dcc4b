"""The label vocabulary: which attributes a face or an anime reference carries, their
allowed values, and where a value may come from.

One closed list, shared by ingestion (declared and measured labels), the label heads
(``model``), the review page (``human``), matching filters and dataset captions. A label
row keeps ``(name, value, source, confidence)``; several sources may hold a value for the
same name, and :func:`resolve` picks the one that counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from schemas.errors import LabelError


class LabelSource(StrEnum):
    """Where a label value came from, most trusted first (see :data:`PRECEDENCE`)."""

    HUMAN = "human"
    """set or confirmed on the review page"""
    DECLARED = "declared"
    """self-declared in the upload event"""
    MEASURED = "measured"
    """computed by the pipeline (pose, lighting, blur)"""
    MODEL = "model"
    """predicted by a label head trained on human-reviewed labels"""


#: A human decision overrides what the subject declared, which overrides a measurement,
#: which overrides a model guess.
PRECEDENCE: tuple[LabelSource, ...] = (
    LabelSource.HUMAN,
    LabelSource.DECLARED,
    LabelSource.MEASURED,
    LabelSource.MODEL,
)


class LabelName(StrEnum):
    AGE_BAND = "age_band"
    GENDER = "gender"
    EXPRESSION = "expression"
    GLASSES = "glasses"
    OCCLUSION = "occlusion"
    HAIR_COLOUR = "hair_colour"
    POSE_BAND = "pose_band"
    LIGHTING_BAND = "lighting_band"
    BLUR = "blur"


#: Allowed values per label, in display order. ``unknown`` is never stored: a label that
#: cannot be given is absent.
VALUES: dict[LabelName, tuple[str, ...]] = {
    LabelName.AGE_BAND: ("child", "teen", "18-29", "30-44", "45-59", "60+"),
    LabelName.GENDER: ("female", "male", "other"),
    LabelName.EXPRESSION: ("neutral", "smiling", "other"),
    LabelName.GLASSES: ("no", "yes"),
    LabelName.OCCLUSION: ("no", "yes"),
    LabelName.HAIR_COLOUR: ("black", "brown", "blond", "red", "grey", "other"),
    LabelName.POSE_BAND: ("frontal", "slight", "turned"),
    LabelName.LIGHTING_BAND: ("dark", "normal", "bright"),
    LabelName.BLUR: ("sharp", "soft"),
}

#: Labels a label head may learn (the measured ones are computed, never predicted).
LEARNABLE: tuple[LabelName, ...] = (
    LabelName.AGE_BAND,
    LabelName.GENDER,
    LabelName.EXPRESSION,
    LabelName.GLASSES,
    LabelName.OCCLUSION,
    LabelName.HAIR_COLOUR,
)

#: Labels the pipeline measures on every accepted face.
MEASURED: tuple[LabelName, ...] = (LabelName.POSE_BAND, LabelName.LIGHTING_BAND, LabelName.BLUR)


def check(name: str, value: str) -> tuple[LabelName, str]:
    """The label as vocabulary members, or :class:`LabelError` naming what is allowed."""
    try:
        label = LabelName(name)
    except ValueError:
        allowed = ", ".join(n.value for n in LabelName)
        raise LabelError(f"unknown label {name!r}; labels are: {allowed}") from None
    normalised = value.strip().lower()
    if normalised not in VALUES[label]:
        raise LabelError(
            f"{value!r} is not a value of {label.value}; allowed: {', '.join(VALUES[label])}"
        )
    return label, normalised


def age_band(age: int) -> str:
    """The age band of an age in years."""
    if age < 13:
        return "child"
    if age < 18:
        return "teen"
    if age < 30:
        return "18-29"
    if age < 45:
        return "30-44"
    if age < 60:
        return "45-59"
    return "60+"


@dataclass(frozen=True, slots=True)
class LabelValue:
    """One label as it counts: the value, its source and confidence."""

    value: str
    source: LabelSource
    confidence: float


def resolve(
    rows: Iterable[tuple[str, str, str, float]], min_model_confidence: float = 0.0
) -> dict[str, LabelValue]:
    """The label that counts per name, from ``(name, value, source, confidence)`` rows.

    The most trusted source wins (:data:`PRECEDENCE`); a ``model`` label counts only at or
    above ``min_model_confidence``, so an unsure guess leaves the label open for review.
    """
    rank = {source: i for i, source in enumerate(PRECEDENCE)}
    best: dict[str, tuple[int, LabelValue]] = {}
    for name, value, source, confidence in rows:
        origin = LabelSource(source)
        if origin is LabelSource.MODEL and confidence < min_model_confidence:
            continue
        candidate = (rank[origin], LabelValue(value, origin, float(confidence)))
        held = best.get(name)
        if held is None or candidate[0] < held[0]:
            best[name] = candidate
    return {name: held[1] for name, held in sorted(best.items())}


def as_values(labels: Mapping[str, LabelValue]) -> dict[str, str]:
    """``{name: value}`` of resolved labels."""
    return {name: label.value for name, label in labels.items()}
