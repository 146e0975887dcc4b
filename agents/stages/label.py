"""Label stage: the labels a face gets at ingestion, in the vocabulary of
:mod:`schemas.labels`.

* **declared**: what the subject said about themselves (age, gender, glasses, hair
  colour) or a dataset says about the photo (expression), mapped onto the vocabulary;
  confidence 1.0 (it is their word, and a human review may still override it).
* **measured**: pose, lighting and blur bands from the quality scores of every accepted
  face (:func:`measured_labels`).

Confidence of a measured band: the probability that the true value lies inside the band,
if the measured score is off by a Gaussian error of the band's ``sigma``. On the edge of
a wide band a score gets 0.5 (a coin toss between two bands), one ``sigma`` inside 0.84,
two ``sigma`` 0.98; a narrow middle band gets less everywhere (at most 0.68 for the
pose's "slight") because the measurement cannot place a face that precisely.

Example::

    for m in measured_labels(report):
        m.name, m.value, m.confidence      # LabelName.POSE_BAND, 'frontal', 0.95
    declared_values(upload.attributes)     # {LabelName.AGE_BAND: '18-29', ...}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

from agents.records import QualityReport
from schemas.labels import LabelName, LabelSource, age_band
from schemas.tables import Label
from schemas.uploads import DeclaredAttributes

__all__ = [
    "BLUR",
    "LIGHTING",
    "POSE",
    "Band",
    "Measurement",
    "declared_values",
    "measured_labels",
    "off_axis_deg",
]


@dataclass(frozen=True, slots=True)
class Band:
    """Cut points of a measured score into label values.

    ``values[i]`` holds scores in ``[edges[i - 1], edges[i])`` (open-ended at both ends);
    ``sigma`` is the score's measurement error, in the units of ``edges``.
    """

    name: LabelName
    edges: tuple[float, ...]
    values: tuple[str, ...]
    sigma: float

    def classify(self, score: float) -> tuple[str, float]:
        """The band of ``score`` and the confidence that it is the right one."""
        i = sum(1 for edge in self.edges if score >= edge)
        lo = self.edges[i - 1] if i > 0 else -math.inf
        hi = self.edges[i] if i < len(self.edges) else math.inf
        inside = _normal_cdf((hi - score) / self.sigma) - _normal_cdf((lo - score) / self.sigma)
        return self.values[i], round(inside, 4)


# Pose: the off-axis angle (see off_axis_deg) cut at 15 and 25 degrees, so the three bands
# split the 0-35 degrees the quality gate lets through (max_yaw_deg) into thirds of
# similar width. The pose model is rough to about +-10 degrees on frontal faces (see
# agents.stages.quality.pose_from_landmarks): sigma 5 treats that as two standard errors.
# Measured on the London set: neutral frontal photos give 2-13 degrees (frontal), a
# smiling one 21 (its raised mouth corners read as a lowered chin).
POSE = Band(LabelName.POSE_BAND, (15.0, 25.0), ("frontal", "slight", "turned"), sigma=5.0)

# Lighting: mean grey level of the face box. The quality gate rejects below 40 and above
# 220; well-lit London studio faces sit at 99-154, a dim indoor phone selfie at 62. The
# dark edge is low on purpose: mean brightness also follows skin tone, and a darker-skinned
# face in good light must not read as "dark" (70 is below every well-lit face we have).
# sigma 10: a few grey levels of exposure or white-balance change move a face that much.
LIGHTING = Band(LabelName.LIGHTING_BAND, (70.0, 180.0), ("dark", "normal", "bright"), sigma=10.0)

# Blur: log of the Laplacian variance of the face at 128 px. The quality gate rejects below
# 40; sharp London faces measure 209-579, and a Gaussian blur of sigma 1 px brings them to
# 57-126, so 150 separates in-focus photos from visibly soft ones. Laplacian variance
# changes by factors (noise, JPEG, resizing), hence the log scale; sigma 0.3 is +-35%.
BLUR = Band(LabelName.BLUR, (math.log(150.0),), ("soft", "sharp"), sigma=0.3)

#: Smallest sharpness the log is taken of (a face box outside the image scores 0).
_MIN_SHARPNESS = 1e-3


@dataclass(frozen=True, slots=True)
class Measurement:
    """A measured label of one face, before it has a row."""

    name: LabelName
    value: str
    confidence: float

    def row(self, face_id: str, now: datetime) -> Label:
        return Label(
            face_id=face_id,
            name=self.name.value,
            value=self.value,
            source=LabelSource.MEASURED.value,
            confidence=self.confidence,
            created_at=now,
        )


def off_axis_deg(yaw: float, pitch: float) -> float:
    """How far the face turns away from the camera, in degrees, whichever way.

    The angle between the face's forward direction and the camera axis after a yaw and a
    pitch; a face turned 20 degrees sideways and one tilted 20 degrees up both read 20.
    """
    # cos(angle) = cos(yaw) cos(pitch), in its haversine form, which stays exact for
    # small angles; rounded so that a pure yaw of 15.0 reads 15.0, not 14.999999.
    y, p = math.radians(yaw), math.radians(pitch)
    half = math.sin(y / 2) ** 2 + math.cos(y) * math.sin(p / 2) ** 2
    return round(math.degrees(2 * math.asin(math.sqrt(min(1.0, half)))), 6)


def measured_labels(report: QualityReport) -> list[Measurement]:
    """Pose, lighting and blur bands of a face from its quality scores.

    Needs the ``yaw``, ``pitch``, ``brightness`` and ``sharpness`` scores of
    :func:`agents.stages.quality.measure`.
    """
    scores = report.scores
    missing = [k for k in ("yaw", "pitch", "brightness", "sharpness") if k not in scores]
    if missing:
        raise ValueError(
            f"quality report lacks {', '.join(missing)}; measure the face with "
            "agents.stages.quality.measure before labelling it"
        )
    sharpness = max(float(scores["sharpness"]), _MIN_SHARPNESS)
    measured = (
        (POSE, off_axis_deg(scores["yaw"], scores["pitch"])),
        (LIGHTING, float(scores["brightness"])),
        (BLUR, math.log(sharpness)),
    )
    out = []
    for band, score in measured:
        value, confidence = band.classify(score)
        out.append(Measurement(band.name, value, confidence))
    return out


# -- declared -------------------------------------------------------------------------------

_GENDERS: dict[str, tuple[str, ...]] = {
    "female": ("female", "f", "woman", "girl", "cis female", "cis woman"),
    "male": ("male", "m", "man", "boy", "cis male", "cis man"),
}
_HAIR: dict[str, tuple[str, ...]] = {
    "black": ("black", "jet black"),
    "brown": ("brown", "brunette", "dark brown", "light brown", "chestnut"),
    "blond": ("blond", "blonde", "fair", "golden", "light blond", "light blonde"),
    "red": ("red", "ginger", "auburn", "copper", "strawberry blond", "strawberry blonde"),
    "grey": ("grey", "gray", "white", "silver", "salt and pepper"),
}


def _lookup(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {spelling: value for value, spellings in table.items() for spelling in spellings}


_GENDER_OF = _lookup(_GENDERS)
_HAIR_OF = _lookup(_HAIR)


def _normalise(text: str) -> str:
    """Lower case, words separated by single spaces (``"Dark-Brown "`` -> ``"dark brown"``)."""
    return " ".join(re.split(r"[\s_\-/]+", text.strip().lower())).strip()


def declared_values(attributes: DeclaredAttributes) -> dict[LabelName, str]:
    """The self-declared attributes as vocabulary values.

    Age becomes its band; gender and hair colour map common spellings onto the
    vocabulary and anything else declared onto ``other`` (a declaration we cannot place
    is still a declaration); a blank text means nothing was declared. The expression is
    declared in the vocabulary already (the contract admits only its values).

    Example::

        declared_values(DeclaredAttributes(age=24, gender="Woman", expression="smiling"))
        # {age_band: '18-29', gender: 'female', expression: 'smiling'}
    """
    out: dict[LabelName, str] = {}
    if attributes.age is not None:
        out[LabelName.AGE_BAND] = age_band(attributes.age)
    if attributes.gender is not None and _normalise(attributes.gender):
        out[LabelName.GENDER] = _GENDER_OF.get(_normalise(attributes.gender), "other")
    if attributes.glasses is not None:
        out[LabelName.GLASSES] = "yes" if attributes.glasses else "no"
    if attributes.hair_colour is not None and _normalise(attributes.hair_colour):
        out[LabelName.HAIR_COLOUR] = _HAIR_OF.get(_normalise(attributes.hair_colour), "other")
    if attributes.expression is not None:
        out[LabelName.EXPRESSION] = attributes.expression
    return out


def _normal_cdf(z: float) -> float:
    if math.isinf(z):
        return 1.0 if z > 0 else 0.0
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
