"""Registered similarity: whether two aligned face crops are one photo, after registering
one onto the other.

Two aligned crops of the same photo differ by where the detector put the five landmarks
(a few pixels after a rescale), so comparing them pixel for pixel mixes that jitter with
real change. Here the second crop is first registered onto the first by an affine
transform (OpenCV's ECC maximisation, Evangelidis & Psarakis, "Parametric Image Alignment
Using Enhanced Correlation Coefficient Maximization", IEEE TPAMI 2008), then compared tile
by tile: the mean normalised cross-correlation of a 4 x 4 grid over the face. Local tiles
catch what a global score averages away: a smile changes the mouth tiles, a blink the eye
tiles, while a copy matches in every tile.

Measured on the London set (``bench/duplicates.py``, BENCHMARKS.md "Near-duplicates"):
copies (JPEG q70, 40 px cropped, 0.6x rescaled and JPEG q60) score 0.990-0.9997; the same
person's neutral and smiling photos from one session 0.71-0.975. About 3 ms a comparison
on one core.

Example::

    registered_similarity(aligned.crops[256], earlier_crop)    # 0.996: the same photo
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
import numpy.typing as npt

from agents.records import RGBImage

__all__ = ["GRID", "SIDE", "registered_similarity"]

#: Side in pixels both crops are compared at: enough to see a smile, cheap to register.
SIDE = 128
#: Tiles per side of the compared grid.
GRID = 4
#: ECC stops after this many iterations or when the correlation moves less than EPS.
_ITERATIONS = 50
_EPS = 1e-4
#: ECC's input mask: every pixel counts (the same as no mask).
_WHOLE = np.ones((SIDE, SIDE), dtype=np.uint8)


def registered_similarity(first: RGBImage, second: RGBImage) -> float:
    """Mean tile NCC (-1..1) of ``second`` registered onto ``first``.

    Both are aligned face crops (H x W x 3 uint8 RGB, any equal framing: the template's 256
    or 512 px crops); they are compared in grey at :data:`SIDE` px, over the central 3/4 of
    the frame (the face; the border is padding and background). When ECC does not converge
    (flat or very different images), the crops are compared as they are.
    """
    a, b = _grey(first), _grey(second)
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, _ITERATIONS, _EPS)
    # Not converging is itself a sign the two are not one photo; compare unregistered.
    with contextlib.suppress(cv2.error):
        _, found = cv2.findTransformECC(a, b, warp, cv2.MOTION_AFFINE, criteria, _WHOLE, 1)
        warp = np.asarray(found, dtype=np.float32)
    registered = np.asarray(
        cv2.warpAffine(b, warp, (SIDE, SIDE), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP),
        dtype=np.float32,
    )
    margin = SIDE // 8
    tile = (SIDE - 2 * margin) // GRID
    scores = []
    for row in range(GRID):
        for column in range(GRID):
            window = (
                slice(margin + row * tile, margin + (row + 1) * tile),
                slice(margin + column * tile, margin + (column + 1) * tile),
            )
            scores.append(_ncc(a[window], registered[window]))
    return float(np.mean(scores))


def _grey(crop: RGBImage) -> npt.NDArray[np.float32]:
    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.asarray(
        cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA), dtype=np.float32
    )


def _ncc(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    x = a.ravel() - a.mean()
    y = b.ravel() - b.mean()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    # A flat tile (a blank wall) carries no evidence either way: it counts as a match
    # only if both are flat.
    if norm == 0.0:
        return 1.0 if not x.any() and not y.any() else 0.0
    return float(x @ y) / norm
