"""A style's palette and the training version of a reference.

:class:`Palette` pools the Lab colour distributions of a style's references;
:func:`match_histogram` moves an image onto it; :func:`training_image` makes the
:data:`TRAINING_SIDE` square training version of a reference, matched to its style's
palette. Pure functions on RGB uint8 arrays, like :mod:`agents.references.style`.

Example::

    palette = Palette.pooled([r1, r2, r3])
    train = training_image(region, palette)       # 512 x 512 x 3 uint8
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from agents.records import RGBImage
from agents.references.style import FloatArray, check_rgb, resize_square

__all__ = [
    "STATS_SIDE",
    "TRAINING_SIDE",
    "Palette",
    "cdf_distance",
    "lab_histograms",
    "match_histogram",
    "square_pad",
    "training_image",
]

STATS_SIDE = 256
"""Palette histograms are taken on the face region resized to this square."""
TRAINING_SIDE = 512
"""The training version of a reference is this square."""


def lab_histograms(rgb: RGBImage) -> FloatArray:
    """``(3, 256)`` normalised histograms of OpenCV's 8-bit L, a and b channels."""
    check_rgb(rgb, "rgb")
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
    check_rgb(rgb, "rgb")
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
    check_rgb(region, "region")
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
