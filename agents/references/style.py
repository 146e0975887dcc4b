"""What an art style looks like, in numbers: statistics, outlier judging, palettes.

Pure numpy/OpenCV functions over RGB uint8 arrays; nothing here reads files or settings.

* :func:`measure` gives the style statistics of a face region (:data:`STATISTICS`, each a
  function below with what it measures). They were chosen on the test images
  (``tests/data/anime``, ``tests/data/real``) for separating anime art from photos and
  from other (vector, western cartoon) art; see ``tests/unit/agents/references/test_style.py``.
* :func:`judge` flags references whose statistics are far from their style's: a robust
  z-score (median and MAD) per statistic, on the scale named in :data:`STATISTICS`.
* :class:`Palette` is a style's colour distribution (per-channel CDFs in CIE Lab, pooled
  over its references); :func:`match_histogram` moves an image onto it and
  :func:`training_image` makes the 512 px training version of a reference.

Example::

    stats = measure(region)                       # {'chroma': 24.9, 'flat_fraction': 0.43, ...}
    verdicts = judge([stats], style_refs, z_limit=3.5, min_size=5)
    palette = Palette.pooled([r1, r2, r3])
    train = training_image(region, palette)       # 512 x 512 x 3 uint8
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from agents.records import RGBImage

__all__ = [
    "STATISTICS",
    "STATS_SIDE",
    "TRAINING_SIDE",
    "Palette",
    "Statistic",
    "Verdict",
    "cdf_distance",
    "chroma",
    "colourful_fraction",
    "edge_density",
    "fine_noise",
    "flat_fraction",
    "judge",
    "match_histogram",
    "measure",
    "palette_size",
    "resize_square",
    "robust_z",
    "square_pad",
    "training_image",
]

STATS_SIDE = 256
"""Statistics are measured on the face region resized to this square."""
TRAINING_SIDE = 512
"""The training version of a reference is this square."""

#: Lab chroma above which a pixel counts as colourful (skin in a studio photo is ~10,
#: painted anime skin 20-30, hair and eyes more).
COLOURFUL_CHROMA = 15.0
#: 8x8 blocks whose grey levels vary less than this (standard deviation) are flat.
FLAT_BLOCK_STD = 4.0
#: A pixel is in a smooth area when its 7x7 neighbourhood varies less than this.
SMOOTH_LOCAL_STD = 8.0
#: Palette size counts the quantised colours that cover this share of the pixels.
PALETTE_COVERAGE = 0.95

Stats = dict[str, float]
FloatArray = npt.NDArray[np.float64]


# -- statistics ---------------------------------------------------------------------------


def _lab(rgb: RGBImage) -> npt.NDArray[np.float32]:
    """CIE Lab with L in 0..100 and a, b centred on 0 (OpenCV's 8-bit Lab, rescaled)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    return lab


def _grey(rgb: RGBImage) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def chroma(rgb: RGBImage) -> float:
    """Mean CIE Lab chroma (``sqrt(a² + b²)``): how colourful the image is overall.

    Studio photos sit at 4-6 (12 for warm event photos), anime crops at 15-31; a pencil
    sketch is 0.
    """
    lab = _lab(rgb)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def colourful_fraction(rgb: RGBImage) -> float:
    """Share of pixels with Lab chroma above :data:`COLOURFUL_CHROMA`.

    Anime paints skin, hair and eyes in saturated colour (0.47-0.99 of a face crop);
    photographed skin and backgrounds are pale (0.02-0.17 of a London portrait).
    """
    lab = _lab(rgb)
    return float((np.hypot(lab[..., 1], lab[..., 2]) > COLOURFUL_CHROMA).mean())


def edge_density(rgb: RGBImage) -> float:
    """Share of pixels on a Canny edge (thresholds 100/200): how much line art there is.

    Inked outlines give anime 0.05-0.16; soft-lit photo faces 0.02-0.07.
    """
    return float((cv2.Canny(_grey(rgb), 100, 200) > 0).mean())


def flat_fraction(rgb: RGBImage) -> float:
    """Share of 8x8 blocks whose grey levels vary less than :data:`FLAT_BLOCK_STD`.

    Cel-shaded anime and vector art fill regions with one colour; a studio photo's flat
    backdrop also counts, which is why this is judged per style and not alone.
    """
    grey = _grey(rgb).astype(np.float32)
    h, w = (grey.shape[0] // 8) * 8, (grey.shape[1] // 8) * 8
    blocks = grey[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
    return float((blocks.std(axis=1) < FLAT_BLOCK_STD).mean())


def palette_size(rgb: RGBImage) -> float:
    """How many colours (RGB quantised to 4 bits a channel) cover 95 % of the pixels.

    Vector art needs 4-40, cel-shaded sprites 60-230, painted anime 80-150; a grayscale
    pencil sketch about 8.
    """
    q = (rgb >> 4).astype(np.int32)
    codes = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]
    counts = np.sort(np.bincount(codes.ravel(), minlength=4096))[::-1]
    covered = np.cumsum(counts) / codes.size
    return float(np.searchsorted(covered, PALETTE_COVERAGE) + 1)


def fine_noise(rgb: RGBImage) -> float:
    """Mean absolute difference from a 5x5 Gaussian blur, over smooth areas only.

    Smooth areas (local 7x7 spread under :data:`SMOOTH_LOCAL_STD`) are where a drawing is
    clean and a photo still has sensor noise and skin texture: about 0 for rendered
    vector art, 0.2 for cel-shaded sprites, 0.5-1.5 for photos and JPEG-painted art.
    """
    grey = _grey(rgb).astype(np.float32)
    residual = np.abs(grey - cv2.GaussianBlur(grey, (5, 5), 0))
    mean = cv2.blur(grey, (7, 7))
    spread = np.sqrt(np.maximum(cv2.blur(grey * grey, (7, 7)) - mean * mean, 0.0))
    smooth = spread < SMOOTH_LOCAL_STD
    return float(residual[smooth].mean()) if smooth.any() else 0.0


@dataclass(frozen=True, slots=True)
class Statistic:
    """One style statistic and the scale its robust z-score is taken on.

    ``scale`` maps a value to where differences are comparable (colourfulness and
    palette size vary by ratios, so they are judged on a log scale); ``floor`` is the
    smallest spread assumed on that scale, so that a style of near-identical images
    (one character in several poses) does not flag every small change.
    """

    name: str
    measure: Callable[[RGBImage], float]
    scale: Callable[[float], float]
    floor: float


def _identity(value: float) -> float:
    return value


#: The judged statistics, in report order. Floors are on the judging scale.
STATISTICS: tuple[Statistic, ...] = (
    Statistic("chroma", chroma, math.log1p, floor=0.15),
    Statistic("colourful_fraction", colourful_fraction, lambda v: math.log(v + 0.02), floor=0.2),
    Statistic("edge_density", edge_density, _identity, floor=0.02),
    Statistic("flat_fraction", flat_fraction, _identity, floor=0.06),
    Statistic("palette_size", palette_size, math.log2, floor=0.75),
    Statistic("fine_noise", fine_noise, lambda v: math.log(v + 0.05), floor=0.2),
)


def resize_square(rgb: RGBImage, side: int) -> RGBImage:
    """``rgb`` resized to ``side`` x ``side`` (area-averaged when shrinking)."""
    interpolation = cv2.INTER_AREA if min(rgb.shape[:2]) >= side else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(rgb, (side, side), interpolation=interpolation), dtype=np.uint8)


def measure(region: RGBImage) -> Stats:
    """Every statistic of :data:`STATISTICS` for a face region (any size, RGB uint8).

    The region is resized to :data:`STATS_SIDE` square first, so the numbers do not
    depend on the image's resolution (every statistic is a share or a density).
    """
    _check_rgb(region, "region")
    small = resize_square(region, STATS_SIDE)
    return {s.name: round(s.measure(small), 6) for s in STATISTICS}


# -- outliers -----------------------------------------------------------------------------

#: 1.4826 x MAD estimates the standard deviation of normally distributed values.
MAD_TO_SIGMA = 1.4826


def robust_z(values: Sequence[float], x: float, floor: float) -> float:
    """``(x - median) / max(1.4826 * MAD, floor)`` of ``x`` against ``values``.

    The median and MAD ignore a few outliers among ``values``, unlike a mean and a
    standard deviation, so an odd image cannot hide itself by widening the spread.
    """
    if not values:
        raise ValueError("values is empty; pass the statistics of at least one reference")
    if floor <= 0:
        raise ValueError(f"floor must be positive, got {floor}")
    data = np.asarray(values, dtype=np.float64)
    median = float(np.median(data))
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(data - median))), floor)
    return (x - median) / spread


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`judge` found for one image.

    ``score`` is the largest |z| over the statistics (``None`` when the style was too
    small to judge), ``outliers`` the statistics over the limit with their z-scores.
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
    stands out. With fewer than ``min_size`` images in the pool nothing is judged.
    """
    pool = [*references, *candidates]
    if len(pool) < min_size:
        note = (
            f"not judged: the style has {len(pool)} reference(s) with this batch; "
            f"outliers are judged from {min_size}"
        )
        return [Verdict(score=None, detail=note) for _ in candidates]
    scaled = {s.name: [s.scale(float(row[s.name])) for row in pool] for s in STATISTICS}
    verdicts = []
    for row in candidates:
        zs: dict[str, float] = {}
        for stat in STATISTICS:
            value = stat.scale(float(row[stat.name]))
            zs[stat.name] = robust_z(scaled[stat.name], value, stat.floor)
        outliers = {name: round(z, 2) for name, z in zs.items() if abs(z) > z_limit}
        score = round(max(abs(z) for z in zs.values()), 3)
        detail = None
        if outliers:
            medians = {name: float(np.median([r[name] for r in pool])) for name in outliers}
            detail = "; ".join(
                f"{name} z={z:+.1f} ({row[name]:.3g} vs style median {medians[name]:.3g})"
                for name, z in sorted(outliers.items(), key=lambda kv: -abs(kv[1]))
            )
        verdicts.append(Verdict(score=score, outliers=outliers, detail=detail))
    return verdicts


# -- palettes and training images ---------------------------------------------------------


def lab_histograms(rgb: RGBImage) -> FloatArray:
    """``(3, 256)`` normalised histograms of OpenCV's 8-bit L, a and b channels."""
    _check_rgb(rgb, "rgb")
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    hist = np.stack([np.bincount(lab[:, c], minlength=256) for c in range(3)]).astype(np.float64)
    normalised: FloatArray = hist / hist.sum(axis=1, keepdims=True)
    return normalised


@dataclass(frozen=True, slots=True)
class Palette:
    """A style's colour distribution: the CDF of each Lab channel, pooled over references.

    Lab rather than RGB because matching treats channels independently: in Lab, light
    (L) and colour (a, b) are nearly uncorrelated, so moving one leaves the others
    alone, while per-channel RGB matching shifts hues whenever it changes brightness.

    Example::

        palette = Palette.pooled(regions_of_the_style)
        matched = match_histogram(photo, palette)
    """

    cdf: FloatArray
    """``(3, 256)``, non-decreasing, each row ending at 1"""
    references: int

    @classmethod
    def from_histograms(cls, histograms: Sequence[FloatArray]) -> Palette:
        """Every reference weighs the same, whatever its size."""
        if not histograms:
            raise ValueError("a palette needs at least one reference histogram")
        pooled = np.mean(np.stack(histograms), axis=0)
        cdf = np.cumsum(pooled, axis=1)
        return cls(cdf=cdf / cdf[:, -1:], references=len(histograms))

    @classmethod
    def pooled(cls, regions: Sequence[RGBImage]) -> Palette:
        return cls.from_histograms([lab_histograms(r) for r in regions])


def match_histogram(rgb: RGBImage, palette: Palette) -> RGBImage:
    """``rgb`` with each Lab channel's distribution moved onto ``palette``'s.

    Classic CDF matching: a level at quantile q of the image becomes the palette's level
    at quantile q, so the order of levels (the drawing) is kept.
    """
    _check_rgb(rgb, "rgb")
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    out = np.empty_like(lab)
    for c in range(3):
        hist = np.bincount(lab[..., c].ravel(), minlength=256).astype(np.float64)
        # Mid-bin quantiles: a level's pixels sit in the middle of their CDF step, so a
        # flat image maps to the palette's median rather than to its top.
        source = (np.cumsum(hist) - hist / 2) / hist.sum()
        lut = np.searchsorted(palette.cdf[c], source, side="left").clip(0, 255)
        out[..., c] = lut.astype(np.uint8)[lab[..., c]]
    return np.asarray(cv2.cvtColor(out, cv2.COLOR_LAB2RGB), dtype=np.uint8)


def cdf_distance(rgb: RGBImage, palette: Palette) -> float:
    """Mean over L, a, b of the earth mover's distance (in 8-bit levels) to ``palette``.

    The area between the two CDFs: 0 when the image's channel distributions equal the
    palette's, ``d`` when every level is off by ``d``.
    """
    cdf = np.cumsum(lab_histograms(rgb), axis=1)
    return float(np.abs(cdf - palette.cdf).sum(axis=1).mean())


def square_pad(region: RGBImage) -> RGBImage:
    """``region`` centred on a square filled with its border colour (median of the edge).

    Padding rather than centre-cropping: face crops of sprites are taller than wide and
    a crop would cut off the chin or the hair the pair is about; the border of an anime
    crop is mostly background, so the padding continues it without a visible seam.
    """
    _check_rgb(region, "region")
    h, w = region.shape[:2]
    if h == w:
        return region
    edge = np.concatenate([region[0], region[-1], region[:, 0], region[:, -1]])
    colour = [int(v) for v in np.median(edge, axis=0)]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return np.asarray(
        cv2.copyMakeBorder(
            region,
            top,
            side - h - top,
            left,
            side - w - left,
            cv2.BORDER_CONSTANT,
            value=colour,
        ),
        dtype=np.uint8,
    )


def training_image(region: RGBImage, palette: Palette | None) -> RGBImage:
    """The training version of a reference: padded square, 512 px, matched to ``palette``.

    ``None`` leaves the colours as they are (a style with no active reference yet).
    """
    square = resize_square(square_pad(region), TRAINING_SIDE)
    return square if palette is None else match_histogram(square, palette)


def _check_rgb(image: RGBImage, name: str) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"{name} must be a non-empty height x width x 3 uint8 RGB array, "
            f"got shape {image.shape} {image.dtype}"
        )
