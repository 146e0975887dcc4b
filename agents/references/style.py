"""What an art style looks like, in numbers: statistics and outlier judging.

Pure numpy/OpenCV functions over RGB uint8 arrays; nothing here reads files or settings.

* :func:`measure` gives the style statistics of a face region (:data:`STATISTICS`). Most
  describe **how the image is rendered** (``kind="rendering"``): edge crispness, line work,
  the power spectrum, fine detail and noise, paper and tones. They are measured on
  luminance stretched to its own 1-99 % range, so recolouring a drawing (another hue,
  monochrome, a near-black palette) barely moves them. Three describe its **palette**
  (``kind="palette"``): colourfulness and colour count; they are weak evidence only.
* :func:`judge` flags references whose rendering is far from their style's. Each statistic
  gets a robust z-score against the style (median, and the spread of the middle 75 %);
  two one-sided composites of them, :data:`INDICES`, ask "does it look *photographed*?"
  and "does it look *sketched*?" and decide at the limit; one statistic alone decides only
  at :data:`GROSS` times it. Palette statistics decide only when a composite is already
  borderline (within :data:`PALETTE_MARGIN` of the limit).
* A style's palette and the training version of a reference are in
  :mod:`agents.references.palette`.

Every threshold below names its source. The statistics, the composites' terms and the
floors were chosen and measured on the labelled check set of ``bench/style_check.py``
(Ren'Py cel-shaded and Pepper&Carrot painted references, their recolourings, photos, tight
photo crops and pencil sketches); its numbers are in ``BENCHMARKS.md`` and
``tests/unit/agents/references/test_style.py`` keeps them true.

Example::

    stats = measure(region)                       # {'edge_crispness': 2.8, ...}
    verdicts = judge([stats], style_refs, z_limit=3.5, min_size=5)
    verdicts[0].outliers                          # {'photographic': 6.2}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from agents.records import RGBImage

__all__ = [
    "GROSS",
    "INDICES",
    "MEASURE_SIDE",
    "PALETTE_MARGIN",
    "STATISTICS",
    "Index",
    "Statistic",
    "Verdict",
    "check_rgb",
    "chroma",
    "colourful_fraction",
    "edge_crispness",
    "edge_density",
    "fine_detail",
    "fine_noise",
    "judge",
    "line_density",
    "measure",
    "missing_statistics",
    "palette_size",
    "paper_fraction",
    "resize_square",
    "robust_z",
    "spectral_slope",
    "tone_entropy",
]

MEASURE_SIDE = 128
"""Statistics are measured on the face region shrunk to this square (never enlarged when
``refs.min_side_px`` holds, which defaults to the same 128). Enlarging invents smoothness:
measured at 256, the 200 px painted ``pc_pepper2015_face.jpg`` looked like a photo crop,
because the crops were kept at full detail and the other references shrunk."""

#: Lab chroma above which a pixel counts as colourful (skin in a studio photo is ~10,
#: painted anime skin 20-30, hair and eyes more).
COLOURFUL_CHROMA = 15.0
#: Palette size counts the quantised colours that cover this share of the pixels.
PALETTE_COVERAGE = 0.95
#: A pixel is in a smooth area when its 7x7 neighbourhood of stretched luminance (0-255)
#: varies less than this (standard deviation); the old flat-area rule, kept.
SMOOTH_LOCAL_STD = 8.0
#: Stretched luminance above this (of 255) is paper: the blank of a sketch, or a white fill.
PAPER_LEVEL = 230.0
#: Hessian response (stretched levels, Gaussian sigma 1 px) above which a pixel lies on a
#: thin dark line, when it also exceeds 3 x the other principal curvature (a ridge, not a
#: blob). 8 levels: below it, JPEG ringing of the bundled references starts to count.
RIDGE_RESPONSE = 8.0

Stats = dict[str, float]
FloatArray = npt.NDArray[np.float64]
GreyArray = npt.NDArray[np.float32]


# -- rendering statistics ----------------------------------------------------------------


def _stretched(rgb: RGBImage) -> GreyArray:
    """Luminance stretched so its 1st and 99th percentiles become 0 and 255.

    The stretch is what makes the rendering statistics palette-blind: a drawing recoloured
    darker, paler or to one hue keeps its lines, fills and edges at the same relative
    strength.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lo, hi = np.percentile(grey, [1.0, 99.0])
    gain = np.float32(255.0 / max(float(hi - lo), 1.0))
    return np.clip((grey - np.float32(lo)) * gain, 0.0, 255.0).astype(np.float32)


def _gradient(grey: GreyArray) -> GreyArray:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(np.hypot(gx, gy), dtype=np.float32)


def _smooth_mask(grey: GreyArray) -> npt.NDArray[np.bool_]:
    mean = cv2.blur(grey, (7, 7))
    spread = np.sqrt(np.maximum(cv2.blur(grey * grey, (7, 7)) - mean * mean, 0.0))
    return np.asarray(spread < SMOOTH_LOCAL_STD)


def edge_crispness(rgb: RGBImage) -> float:
    """How sharp edges are: the median, over Canny edges (50/150), of the Sobel gradient
    divided by the 5x5 range of levels around it. Unitless, ~2-3.2.

    A drawn edge steps from one fill to the next within a pixel or two (Ren'Py faces
    2.82-2.98, Pepper&Carrot 2.54-3.01 at 128 px); lens blur spreads a photographed one
    (tight photo crops 2.19-2.73, most under 2.45).
    """
    grey = _stretched(rgb)
    edges = cv2.Canny(grey.astype(np.uint8), 50, 150) > 0
    if not edges.any():
        return 0.0
    kernel = np.ones((5, 5), np.uint8)
    local_range = cv2.dilate(grey, kernel) - cv2.erode(grey, kernel)
    return float(np.median(_gradient(grey)[edges] / np.maximum(local_range[edges], 1.0)))


def spectral_slope(rgb: RGBImage) -> float:
    """Slope of log power against log spatial frequency, over the low-middle band (4 to
    1/4 of the Nyquist radius; Hann-windowed, stretched luminance). About -1.5 to -3.

    Fills bounded by lines put their energy into edges at middle frequencies
    (Pepper&Carrot -1.60 to -2.38); photographed faces put it into broad shading (tight
    crops -2.20 to -2.94). Flat backdrops steepen it too (Ren'Py -1.97 to -3.26), which is
    why it is judged against the style.
    """
    grey = _stretched(rgb)
    h, w = grey.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))) ** 2
    yy, xx = np.indices(power.shape)
    radius = np.hypot(yy - h // 2, xx - w // 2).astype(int).ravel()
    radial = np.bincount(radius, power.ravel()) / np.maximum(np.bincount(radius), 1)
    nyquist = min(h, w) // 2
    band = np.arange(4, max(nyquist // 4, 6))
    slope = np.polyfit(np.log(band), np.log(radial[band] + 1e-9), 1)[0]
    return float(slope)


def line_density(rgb: RGBImage) -> float:
    """Share of pixels on a thin dark line: Hessian (Gaussian sigma 1 px) with its larger
    principal curvature over :data:`RIDGE_RESPONSE` and over 3x the other. 0-1.

    Ink outlines give the drawings 0.20-0.26; a photographed face has fewer thin dark
    lines (whole London portraits 0.10-0.15, tight crops 0.19-0.25, mostly hair).
    """
    grey = cv2.GaussianBlur(_stretched(rgb), (0, 0), 1.0)
    dxx = cv2.Sobel(grey, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(grey, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(grey, cv2.CV_32F, 1, 1, ksize=3)
    root = np.sqrt((dxx - dyy) ** 2 + 4.0 * dxy**2)
    larger, smaller = (dxx + dyy + root) / 2.0, (dxx + dyy - root) / 2.0
    return float(((larger > RIDGE_RESPONSE) & (larger > 3.0 * np.abs(smaller))).mean())


def fine_detail(rgb: RGBImage) -> float:
    """Energy of the finest detail (under a 1 px Gaussian) over that of the next octave
    (1-3 px): mean absolute differences of Gaussian blurs. Unitless, ~0.4-0.9.

    Crisp ink and brush edges keep detail at the pixel scale (drawings 0.52-0.88); optics
    and demosaicing soften a photo's finest scale (tight crops 0.42-0.70).
    """
    grey = _stretched(rgb)
    blur1 = cv2.GaussianBlur(grey, (0, 0), 1.0)
    blur3 = cv2.GaussianBlur(grey, (0, 0), 3.0)
    finest = float(np.abs(grey - blur1).mean())
    return finest / (float(np.abs(blur1 - blur3).mean()) + 1e-6)


def fine_noise(rgb: RGBImage) -> float:
    """Mean absolute difference of raw luminance (levels of 255, not stretched) from a 5x5
    Gaussian blur, over smooth areas only (:data:`SMOOTH_LOCAL_STD`).

    Smooth areas are where a drawing is clean and a photo still has sensor noise and skin
    texture: 0.07-0.11 for the cel-shaded PNG sprites, 0.65-1.12 for the JPEG-painted
    faces, 0.68-1.59 for tight photo crops. Not stretched, so darkening a drawing lowers
    it; it is judged upwards only (:attr:`Statistic.upward_only`).
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    residual = np.abs(grey - cv2.GaussianBlur(grey, (5, 5), 0))
    smooth = _smooth_mask(_stretched(rgb))
    return float(residual[smooth].mean()) if smooth.any() else 0.0


def paper_fraction(rgb: RGBImage) -> float:
    """Share of pixels at the top of the stretched luminance (over :data:`PAPER_LEVEL`).

    The blank paper of a sketch (0.54-0.81); a white backdrop or outfit in a coloured
    drawing counts too (Ren'Py faces on white 0.41-0.43), which is why it is judged
    against the style.
    """
    return float((_stretched(rgb) > PAPER_LEVEL).mean())


def tone_entropy(rgb: RGBImage) -> float:
    """Entropy (bits, 0-6) of the stretched luminance in 64 bins: how many tones are used.

    Shaded fills spread over many tones (Pepper&Carrot 5.35-5.83, Ren'Py 4.38-4.66); a
    pencil rendering is mostly paper and a few greys (2.5-4.5).
    """
    levels = (_stretched(rgb).astype(np.uint8) >> 2).ravel()
    p = np.bincount(levels, minlength=64) / levels.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def edge_density(rgb: RGBImage) -> float:
    """Share of pixels on a Canny edge (100/200) of the stretched luminance: how much is
    drawn. Drawings 0.12-0.21; strokes and hatching raise it in sketches (up to 0.31),
    soft photographed faces have fewer (0.08-0.14)."""
    return float((cv2.Canny(_stretched(rgb).astype(np.uint8), 100, 200) > 0).mean())


# -- palette statistics (weak evidence) --------------------------------------------------


def _lab(rgb: RGBImage) -> npt.NDArray[np.float32]:
    """CIE Lab with L in 0..100 and a, b centred on 0 (OpenCV's 8-bit Lab, rescaled)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    return lab


def chroma(rgb: RGBImage) -> float:
    """Mean CIE Lab chroma (``sqrt(a² + b²)``): how colourful the image is overall.

    Studio photos sit at 4-6 (12 for warm event photos), anime crops at 15-31; a pencil
    sketch, or a monochrome recolouring of any drawing, is 0.
    """
    lab = _lab(rgb)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def colourful_fraction(rgb: RGBImage) -> float:
    """Share of pixels with Lab chroma above :data:`COLOURFUL_CHROMA`."""
    lab = _lab(rgb)
    return float((np.hypot(lab[..., 1], lab[..., 2]) > COLOURFUL_CHROMA).mean())


def palette_size(rgb: RGBImage) -> float:
    """How many colours (RGB quantised to 4 bits a channel) cover 95 % of the pixels.

    Vector art needs 4-40, cel-shaded sprites 60-230, painted anime 80-150; a grayscale
    image (a pencil sketch, a monochrome recolouring) at most 16.
    """
    q = (rgb >> 4).astype(np.int32)
    codes = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]
    counts = np.sort(np.bincount(codes.ravel(), minlength=4096))[::-1]
    covered = np.cumsum(counts) / codes.size
    return float(np.searchsorted(covered, PALETTE_COVERAGE) + 1)


# -- the statistics table ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Statistic:
    """One style statistic and how it is judged.

    ``scale`` maps a value to where differences are comparable (colourfulness and palette
    size vary by ratios, so they are judged on a log scale). ``floor`` is the smallest
    spread assumed on that scale, so that a style of near-identical images (one character
    in several poses) does not flag every small change: for the rendering statistics it is
    the 90th percentile of how much the statistic moves when a reference is re-encoded
    (JPEG q80), shrunk to 0.8x or cropped by 5 % (measured over the 20 bundled references
    by ``python bench/style_check.py --floors``). ``kind`` says whether it describes the
    rendering (decides) or the palette (weak evidence); ``upward_only`` judges only values
    above the style's (noise: a cleaner image is not rendered differently).
    """

    name: str
    measure: Callable[[RGBImage], float]
    kind: Literal["rendering", "palette"]
    floor: float
    scale: Callable[[float], float] = field(default=lambda v: v)
    upward_only: bool = False


def _log_plus(offset: float) -> Callable[[float], float]:
    def scale(value: float) -> float:
        return math.log(value + offset)

    return scale


#: The judged statistics, in report order. Rendering floors: ``--floors`` of the bench
#: (p90 of benign re-encoding, shrinking and cropping); palette floors are on their log
#: scale, as before this change.
STATISTICS: tuple[Statistic, ...] = (
    Statistic("edge_crispness", edge_crispness, "rendering", floor=0.043),
    Statistic("spectral_slope", spectral_slope, "rendering", floor=0.19),
    Statistic("line_density", line_density, "rendering", floor=0.011),
    Statistic("fine_detail", fine_detail, "rendering", floor=0.074),
    Statistic("fine_noise", fine_noise, "rendering", floor=0.092, upward_only=True),
    Statistic("paper_fraction", paper_fraction, "rendering", floor=0.063),
    Statistic("tone_entropy", tone_entropy, "rendering", floor=0.33),
    Statistic("edge_density", edge_density, "rendering", floor=0.012),
    Statistic("chroma", chroma, "palette", floor=0.15, scale=math.log1p),
    Statistic(
        "colourful_fraction", colourful_fraction, "palette", floor=0.2, scale=_log_plus(0.02)
    ),
    Statistic("palette_size", palette_size, "palette", floor=0.75, scale=math.log2),
)


@dataclass(frozen=True, slots=True)
class Index:
    """A one-sided composite: how far an image leans, against its style, towards one way
    of rendering.

    Its z-score is ``sum(sign * z) / sqrt(len(terms))`` over the statistics' robust
    z-scores (each clipped to ±:data:`Z_CLIP`): independent unit z-scores give a unit
    composite, so it is judged against the same limit as one statistic, and a photo that
    is moderately off on five statistics at once is caught where no single one is. Only
    values above the limit count (leaning the other way is not being photographed).
    """

    name: str
    terms: tuple[tuple[str, int], ...]
    """(statistic name, +1 or -1: the sign of the statistic's z that points this way)"""
    meaning: str

    def z(self, zs: Mapping[str, float]) -> float:
        total = sum(sign * max(-Z_CLIP, min(Z_CLIP, zs[name])) for name, sign in self.terms)
        return total / math.sqrt(len(self.terms))


#: One wild statistic moves a composite by at most this: it is flagged on its own anyway.
Z_CLIP = 10.0

#: The composites judged besides the statistics. Terms and signs: the searched subset of
#: the rendering statistics that caught every tight photo crop (resp. sketch) of the check
#: set with no same-style reference or recolouring above the limit (``bench/style_check.py``);
#: each sign is the direction a photo (a sketch) moves the statistic, and has a physical
#: reading (lens-soft edges, broad shading, few ink lines, softened finest scale, sensor
#: noise; paper, few tones, many strokes).
INDICES: tuple[Index, ...] = (
    Index(
        "photographic",
        (
            ("edge_crispness", -1),
            ("spectral_slope", -1),
            ("line_density", -1),
            ("fine_detail", -1),
            ("fine_noise", +1),
        ),
        "soft edges, broad shading, few ink lines and sensor noise: looks photographed",
    ),
    Index(
        "sketched",
        (("paper_fraction", +1), ("tone_entropy", -1), ("edge_density", +1)),
        "paper, few tones and many strokes: looks like a line sketch",
    ),
)

#: One rendering statistic alone decides only this many times as far out as a composite
#: must be. Single statistics stray in small mixed styles: on bulk loads of 5-9 of the
#: bundled references of one style, some statistic passed 3.5 for 10-17 % of them, 7 for
#: 1.5 % and 10 for 0.14 %, while the composites passed 3.5 for under 0.5 %.
GROSS = 3.0

#: Palette evidence (a palette statistic past the limit) decides only when a composite of
#: :data:`INDICES` is already within this many z units of the limit: it corroborates a
#: borderline "photographed" or "sketched", never overrules the rendering. Recolouring a
#: drawing moves its palette arbitrarily far, but its composites stayed under 2.0 (1.95)
#: on the check set (``bench/style_check.py``), so one unit below the 3.5 default keeps
#: every recolouring in.
PALETTE_MARGIN = 1.0


def resize_square(rgb: RGBImage, side: int) -> RGBImage:
    """``rgb`` resized to ``side`` x ``side`` (area-averaged when shrinking)."""
    interpolation = cv2.INTER_AREA if min(rgb.shape[:2]) >= side else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(rgb, (side, side), interpolation=interpolation), dtype=np.uint8)


def measure(region: RGBImage) -> Stats:
    """Every statistic of :data:`STATISTICS` for a face region (any size, RGB uint8).

    The region is shrunk to :data:`MEASURE_SIDE` square first (area-averaged; a smaller
    region is kept at its own shorter side rather than enlarged), so the numbers describe
    the rendering at one scale whatever the image's resolution.
    """
    check_rgb(region, "region")
    side = min(MEASURE_SIDE, *region.shape[:2])
    small = np.asarray(
        cv2.resize(region, (side, side), interpolation=cv2.INTER_AREA), dtype=np.uint8
    )
    return {s.name: round(s.measure(small), 6) for s in STATISTICS}


def missing_statistics(stats: Mapping[str, float]) -> list[str]:
    """The statistics of :data:`STATISTICS` that ``stats`` lacks (measured by an older
    version of this module): such a reference is measured again before it is judged."""
    return [s.name for s in STATISTICS if s.name not in stats]


# -- outliers -----------------------------------------------------------------------------

#: The style's spread is the 75th percentile of absolute deviations from its median,
#: scaled to a normal standard deviation. Not the MAD (50th): a style often mixes two
#: artists (Ren'Py: 3 Eileen and 8 Sylvie faces) or two finishes (painted and model-sheet
#: Pepper&Carrot), and the MAD of the majority called the minority outliers; the 75th
#: percentile still ignores up to a quarter of odd images in a pool.
SPREAD_QUANTILE = 0.75
_SPREAD_TO_SIGMA = 1.0 / NormalDist().inv_cdf(0.5 + SPREAD_QUANTILE / 2)


def robust_z(values: Sequence[float], x: float, floor: float) -> float:
    """``(x - median) / max(spread, floor)`` of ``x`` against ``values``.

    ``spread`` is the :data:`SPREAD_QUANTILE` quantile of absolute deviations from the
    median, scaled so that it estimates the standard deviation of normal values. The
    median and the quantile ignore a few outliers among ``values``, unlike a mean and a
    standard deviation, so an odd image cannot hide itself by widening the spread.
    """
    if not values:
        raise ValueError("values is empty; pass the statistics of at least one reference")
    if floor <= 0:
        raise ValueError(f"floor must be positive, got {floor}")
    data = np.asarray(values, dtype=np.float64)
    median = float(np.median(data))
    deviation = float(np.quantile(np.abs(data - median), SPREAD_QUANTILE))
    return (x - median) / max(_SPREAD_TO_SIGMA * deviation, floor)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`judge` found for one image.

    ``score`` is the rendering evidence: the largest z over the rendering statistics (|z|,
    or z for upward-only ones) and the composites of :data:`INDICES` (``None`` when the
    style was too small to judge). ``outliers`` maps what made it an outlier (a statistic
    or a composite) to its z-score; palette statistics appear there only when they tipped
    a borderline rendering.
    """

    score: float | None
    outliers: dict[str, float] = field(default_factory=dict)
    detail: str | None = None

    @property
    def is_outlier(self) -> bool:
        return bool(self.outliers)


def judge(
    candidates: Sequence[Mapping[str, float]],
    references: Sequence[Mapping[str, float]],
    *,
    z_limit: float,
    min_size: int,
) -> list[Verdict]:
    """One :class:`Verdict` per candidate, judged against ``references`` + ``candidates``.

    Pooling the candidates with the style's active references lets a first bulk load
    judge itself: the median of a batch of anime crops is anime, and a photo among them
    stands out. Each candidate is compared with the pool *without itself*: with a style of
    ten images, an extreme candidate counted in its own spread hid itself (tight photo
    crops of the painted style: 9 of 21 caught pooled, 21 of 21 left out). With fewer than
    ``min_size`` images in the pool (itself included) nothing is judged.

    A candidate is an outlier when a composite of :data:`INDICES` is past ``z_limit``, or
    one rendering statistic past :data:`GROSS` x ``z_limit``; or when a palette statistic's
    |z| is past ``z_limit`` while a composite is within :data:`PALETTE_MARGIN` of it.
    """
    pool = [*references, *candidates]
    if len(pool) < min_size:
        note = (
            f"not judged: the style has {len(pool)} reference(s) with this batch; "
            f"outliers are judged from {min_size}"
        )
        return [Verdict(score=None, detail=note) for _ in candidates]
    verdicts = []
    for i, row in enumerate(candidates):
        others = [*references, *candidates[:i], *candidates[i + 1 :]]
        scaled = {s.name: [s.scale(float(r[s.name])) for r in others] for s in STATISTICS}
        medians = {s.name: float(np.median([float(r[s.name]) for r in others])) for s in STATISTICS}
        verdicts.append(_verdict(row, scaled, medians, z_limit))
    return verdicts


def _verdict(
    row: Mapping[str, float],
    scaled: Mapping[str, Sequence[float]],
    medians: Mapping[str, float],
    z_limit: float,
) -> Verdict:
    zs = {
        s.name: robust_z(scaled[s.name], s.scale(float(row[s.name])), s.floor) for s in STATISTICS
    }
    rendering = {
        s.name: zs[s.name] if s.upward_only else abs(zs[s.name])
        for s in STATISTICS
        if s.kind == "rendering"
    }
    composite = {index.name: index.z(zs) for index in INDICES}
    score = max([*rendering.values(), *composite.values()])
    outliers = {name: zs[name] for name, judged in rendering.items() if judged > GROSS * z_limit}
    outliers |= {name: z for name, z in composite.items() if z > z_limit}
    palette = {
        s.name: zs[s.name] for s in STATISTICS if s.kind == "palette" and abs(zs[s.name]) > z_limit
    }
    leaning = max(composite.values())
    tipped = not outliers and bool(palette) and leaning > z_limit - PALETTE_MARGIN
    if tipped:
        outliers = dict(palette)
    if not outliers:
        return Verdict(score=round(score, 3))
    parts = []
    for name, z in sorted(outliers.items(), key=lambda kv: -abs(kv[1])):
        index = next((i for i in INDICES if i.name == name), None)
        if index is None:
            parts.append(f"{name} z={z:+.1f} ({row[name]:.3g} vs style median {medians[name]:.3g})")
        else:
            terms = ", ".join(f"{term} z={zs[term]:+.1f}" for term, _ in index.terms)
            parts.append(f"{name} z={z:+.1f} ({index.meaning}: {terms})")
    detail = "; ".join(parts)
    if tipped:
        lean = max(composite, key=lambda name: composite[name])
        detail += f" (palette, counted because {lean} z={leaning:+.1f} is borderline)"
    return Verdict(
        score=round(score, 3),
        outliers={name: round(z, 2) for name, z in outliers.items()},
        detail=detail,
    )


def check_rgb(image: RGBImage, name: str) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"{name} must be a non-empty height x width x 3 uint8 RGB array, "
            f"got shape {image.shape} {image.dtype}"
        )
