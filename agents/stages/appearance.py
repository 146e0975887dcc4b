"""Appearance labels measured on a face: its expression (from the 5 landmarks) and its hair
colour (from the aligned crop above the face), as ``measured`` labels with a confidence.

Both feed pairing, where they are compared with the references' labels (a laughing face
should meet a smiling drawing, a blond one a blond drawing). Like the bands of
:mod:`agents.stages.label`, a confidence is the probability that the value is right if the
measured score is off by a Gaussian error of a stated size.

**Expression** (:func:`smile_score`, :data:`EXPRESSION`): with the roll removed (the eye
line made horizontal), the mouth's width over the eye line's height above the mouth, both in
pixels. A smile widens the mouth and lifts its corners towards the eyes, so both parts of
the ratio move the same way. Measured on the 114 neutral and smiling photos of the London
set (86 neutral, 28 smiling; each passes the quality gate; MTCNN landmarks;
``python bench/appearance.py --photos DIR``): neutral faces score 0.63-0.86 (median 0.75),
smiling ones 0.74-1.22 (median 0.93); AUC 0.966, and the cut at 0.85 labels 94.7 % of them
right (1 neutral face read as smiling, 5 smiling as neutral; 95.6 % when the cut is chosen
again with each person left out); each of the 28 people's smiling photo scores above their
neutral one. The mouth width over the eye distance alone separates less (AUC 0.951), and
the corners' height alone less still (0.866).

**Hair colour** (:func:`hair_colour`): the pixels of a band at the top of the 256 px aligned
crop (the top of the head in the loose template, well above the eyebrows) that differ from
both the skin (two cheek patches) and the background (the crop's top corners); their
median CIELAB colour is mapped to ``black``, ``brown``, ``blond``, ``red`` or ``grey``.
No label (abstain) when too little of the band is hair (a bald head, hair the colour of the
background or of the skin), when the band lies partly outside the photo (the crop there
mirrors the photo), when the colour is no hair colour (a hat, dyed hair), or when the
colour sits too near a border between two values to be sure.

Example::

    for m in appearance_labels(report, aligned, image):
        m.name, m.value, m.confidence       # LabelName.EXPRESSION, 'smiling', 0.97
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from agents.records import AlignedFace, CleanImage, QualityReport, RGBImage
from agents.stages.label import Band, Measurement
from schemas.labels import LabelName

__all__ = [
    "EXPRESSION",
    "HAIR_CROP",
    "HairReading",
    "appearance_labels",
    "expression_label",
    "hair_colour",
    "hair_value",
    "read_hair",
    "smile_score",
]

# -- expression ---------------------------------------------------------------------------

# Cut at 0.85 and sigma 0.045: the probit fit of P(smiling | score) on the London set
# (maximum likelihood: cut 0.855, sigma 0.045), so a face on the cut is a coin toss and one
# 0.09 past it is labelled with 0.98. See the module docstring for the separation.
EXPRESSION = Band(LabelName.EXPRESSION, (0.85,), ("neutral", "smiling"), sigma=0.045)

#: Below this eye-line-to-mouth height (in eye distances) the landmarks are no face shape
#: (a frontal face has 1.07, see agents.stages.quality.EYE_TO_MOUTH); no expression then.
_MIN_MOUTH_DROP = 0.3


def smile_score(landmarks: npt.ArrayLike) -> float | None:
    """Mouth width over the height of the eye line above the mouth, roll removed.

    ``landmarks``: 5 x 2 pixels in ``LANDMARK_NAMES`` order (MTCNN's). Unitless, about
    0.6-1.2 on real faces (neutral around 0.75, smiling around 0.93); ``None`` when the
    landmarks are no face shape (the mouth not clearly below the eyes).
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes = pts[1] - pts[0]
    eye_dist = float(np.hypot(*eyes))
    if not np.all(np.isfinite(pts)) or eye_dist < 1e-6:
        return None
    # Rotate about the eyes' middle so that the eye line is the x axis (y still down).
    angle = math.atan2(eyes[1], eyes[0])
    c, s = math.cos(-angle), math.sin(-angle)
    level = (pts - (pts[0] + pts[1]) / 2.0) @ np.array([[c, -s], [s, c]]).T
    drop = float(level[3, 1] + level[4, 1]) / 2.0
    if drop < _MIN_MOUTH_DROP * eye_dist:
        return None
    width = float(np.hypot(*(level[4] - level[3])))
    return width / drop


def expression_label(landmarks: npt.ArrayLike) -> Measurement | None:
    """``expression`` (neutral or smiling) from the landmarks, or None (no face shape).

    ``other`` (surprise, a frown) is never measured: 5 points cannot tell it.
    """
    score = smile_score(landmarks)
    if score is None:
        return None
    value, confidence = EXPRESSION.classify(score)
    return Measurement(EXPRESSION.name, value, confidence)


# -- hair colour --------------------------------------------------------------------------

HAIR_CROP = 256
"""Side of the aligned crop the hair is read on (``AlignedFace.crops[256]``, loose template)."""

# Regions as (x1, y1, x2, y2) fractions of the loose-template crop. In that template the
# eyes sit at y 0.47 and the mouth at 0.73 (agents.stages.align.LOOSE_TEMPLATE). The hair
# band spans the top of the head, 0.9 to 1.7 eye-to-mouth heights above the eyes, and the
# middle 44 % of the width (the head, not the shoulders or the background beside it); the
# cheeks lie just under the eyes, outside the eye and nose; the corners are background or,
# with big hair, hair (which then leaves too little hair to read: the face abstains).
# Placed by eye on the London set's crops (bench/appearance.py --sheet writes them).
_HAIR_BAND = (0.28, 0.04, 0.72, 0.24)
_CHEEKS = ((0.30, 0.53, 0.40, 0.60), (0.60, 0.53, 0.70, 0.60))
_CORNERS = ((0.0, 0.0, 0.08, 0.08), (0.92, 0.0, 1.0, 0.08))

# A band pixel is hair when its CIELAB colour is at least this far (Delta E 1976) from the
# skin's median and from the background's. Delta E 10-15 is a difference anyone sees at a
# glance; the skin's own shading varies by about 10 across the forehead.
_SKIN_DELTA_E = 15.0
_BACKGROUND_DELTA_E = 12.0
#: Least share of the band that must be hair. London faces with hair: 0.40-0.95; bald or
#: shaven heads 0.11-0.29 (their highlights and shadows only).
MIN_HAIR_SHARE = 0.35
#: Most share of the band that may lie outside the photo (the crop mirrors the photo there).
MAX_OUTSIDE_SHARE = 0.1
#: A value less sure than this is no label.
MIN_HAIR_CONFIDENCE = 0.6

# Measurement error of the band's median colour (L 0-100, chroma, hue in degrees). The same
# person's neutral and smiling photos (one session, London set) differ by 1.3 in L, 0.3 in
# chroma and 5 degrees in hue (standard deviations); the sigmas are about three times that
# in L and ten in chroma, for the exposure and white balance that change between cameras
# and rooms and that one studio session does not show.
_SIGMA = (4.0, 3.0, 10.0)
_QUADRATURE = np.polynomial.hermite_e.hermegauss(5)
"""Gauss-Hermite nodes and weights for the expectation over a standard normal error."""


@dataclass(frozen=True, slots=True)
class HairReading:
    """What the hair band showed: its hair share and, when any, the hair's median colour."""

    share: float
    """fraction of the band's pixels that are hair, 0..1"""
    lightness: float
    """median L* of the hair pixels, 0 (black) .. 100 (white); nan without hair"""
    chroma: float
    """sqrt(a*^2 + b*^2) of the median a*, b*; 0 is grey, about 10-40 for coloured hair"""
    hue: float
    """atan2(b*, a*) in degrees, -180..180: about 40-60 for red-brown, 60-90 for blond"""


def hair_value(lightness: float, chroma: float, hue: float) -> str | None:
    """The hair colour of a median CIELAB colour, or None when it is no hair colour.

    Cuts placed on the London set's crops, looked at one by one (sorted by lightness): black
    hair reads L 7-19, dark brown 20-30, light brown 30-40, blond from 38 with chroma 6+
    and a yellow hue (60-90); studio-lit red-brown (a warm brown) reaches chroma 18 at hue
    49, so red needs chroma 22+ at an orange hue (30-62). Grey and white hair are light and
    colourless (L 45+, chroma under 6). A coloured band (chroma 8+; below that the hue is
    noise) outside the hues of hair, 30-95, is no value at all: a red hat reads hue 20, a
    purple dye 2, while every London head with chroma 8+ reads 47-76.
    """
    if chroma >= 8.0 and not 30.0 <= hue <= 95.0:
        return None
    if lightness < 20.0:
        return "black"
    if chroma >= 22.0 and hue < 62.0:
        return "red"
    if lightness >= 45.0 and chroma < 6.0:
        return "grey"
    if lightness >= 38.0 and chroma >= 6.0:
        return "blond"
    return "brown"


def _confidence(lightness: float, chroma: float, hue: float, value: str) -> float:
    """P(the value stays ``value``) if L, chroma and hue are off by Gaussian :data:`_SIGMA`.

    Integrated by 5-point Gauss-Hermite quadrature on each axis (125 evaluations).
    """
    nodes, weights = _QUADRATURE
    weights = weights / weights.sum()
    total = 0.0
    for dl, wl in zip(nodes, weights, strict=True):
        for dc, wc in zip(nodes, weights, strict=True):
            for dh, wh in zip(nodes, weights, strict=True):
                same = (
                    hair_value(
                        lightness + _SIGMA[0] * dl,
                        max(0.0, chroma + _SIGMA[1] * dc),
                        hue + _SIGMA[2] * dh,
                    )
                    == value
                )
                total += wl * wc * wh * same
    return round(float(total), 4)


def _patch(lab: npt.NDArray[np.float32], box: tuple[float, float, float, float]) -> np.ndarray:
    side = lab.shape[0]
    x1, y1, x2, y2 = (round(v * side) for v in box)
    return lab[y1:y2, x1:x2].reshape(-1, 3)


def read_hair(crop: RGBImage) -> HairReading:
    """Hair share and median colour of the hair band of a loose-template aligned crop.

    ``crop``: square RGB uint8, any side (the regions are fractions; 256 px is what the
    pipeline hands in).
    """
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"crop must be a square RGB image, got shape {crop.shape}")
    lab = np.asarray(cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB), np.float32)
    skin = np.median(np.concatenate([_patch(lab, box) for box in _CHEEKS]), axis=0)
    background = np.median(np.concatenate([_patch(lab, box) for box in _CORNERS]), axis=0)
    band = _patch(lab, _HAIR_BAND)
    hair = (np.linalg.norm(band - skin, axis=1) > _SKIN_DELTA_E) & (
        np.linalg.norm(band - background, axis=1) > _BACKGROUND_DELTA_E
    )
    share = float(hair.mean())
    if not hair.any():
        return HairReading(share, math.nan, math.nan, math.nan)
    lightness, a, b = (float(v) for v in np.median(band[hair], axis=0))
    return HairReading(share, lightness, math.hypot(a, b), math.degrees(math.atan2(b, a)))


def _outside_share(transform: list[list[float]], size: int, width: int, height: int) -> float:
    """Share of the hair band (in a ``size`` crop) that maps outside a ``width`` x ``height``
    photo, sampled on a 9 x 9 grid of the band."""
    inverse = cv2.invertAffineTransform(np.asarray(transform, dtype=np.float64))
    x1, y1, x2, y2 = (v * size for v in _HAIR_BAND)
    xs, ys = np.meshgrid(np.linspace(x1, x2, 9), np.linspace(y1, y2, 9))
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1) @ inverse.T
    inside = (
        (points[:, 0] >= 0)
        & (points[:, 0] <= width)
        & (points[:, 1] >= 0)
        & (points[:, 1] <= height)
    )
    return float(1.0 - inside.mean())


def hair_colour(aligned: AlignedFace, image: CleanImage | None = None) -> Measurement | None:
    """``hair_colour`` of a face from its 256 px aligned crop, or None (abstain).

    With ``image`` (the photo the crop was cut from), a band lying partly outside the photo
    abstains too: the crop there is the photo mirrored, not the head.
    """
    crop = aligned.crops.get(HAIR_CROP)
    if crop is None:
        raise ValueError(f"hair colour is read on the {HAIR_CROP} px aligned crop; align at it")
    if image is not None:
        outside = _outside_share(
            aligned.transforms[HAIR_CROP], HAIR_CROP, image.width, image.height
        )
        if outside > MAX_OUTSIDE_SHARE:
            return None
    reading = read_hair(crop)
    if reading.share < MIN_HAIR_SHARE:
        return None
    value = hair_value(reading.lightness, reading.chroma, reading.hue)
    if value is None:
        return None
    confidence = _confidence(reading.lightness, reading.chroma, reading.hue, value)
    if confidence < MIN_HAIR_CONFIDENCE:
        return None
    return Measurement(LabelName.HAIR_COLOUR, value, confidence)


# -- both ---------------------------------------------------------------------------------


def appearance_labels(
    report: QualityReport, aligned: AlignedFace, image: CleanImage | None = None
) -> list[Measurement]:
    """The expression and hair colour a face can be given (zero, one or two labels)."""
    found = (expression_label(report.face.landmarks), hair_colour(aligned, image))
    return [m for m in found if m is not None]
