"""Face alignment: square crops in which every face has its eyes, nose and mouth at fixed
places, and the transforms to put a (converted) crop back into the photo.

A similarity transform (rotation, uniform scale, translation; no shear, so faces keep their
proportions) is fitted by least squares from the 5 detected landmarks to a canonical
template, and the image is warped with a reflected border. Two templates:

* ``LOOSE_TEMPLATE`` for training crops (256, 512): FFHQ's alignment, the whole head with
  hair, chin and some margin (the 5-point form of the FFHQ crop used by facexlib/GFPGAN).
* ``TIGHT_TEMPLATE`` for the embedder's own input (160): the face as facenet's MTCNN crop
  with a 14 px margin frames it, measured on the London set with the box's 1.34 aspect
  ratio spread evenly over both axes (that crop squashes; ours keeps proportions).

Example::

    aligned = align(image, report.face.landmarks)
    aligned.crops[512]                     # 512 x 512 x 3 RGB
    restored = paste_back(image.pixels, converted_512, aligned.transforms[512])
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from agents.errors import Rejected
from agents.records import ALIGN_SIZES, EMBED_SIZE, AlignedFace, CleanImage, RGBImage
from schemas.reasons import ReasonCode, Stage

__all__ = [
    "EMBED_SIZE",
    "LOOSE_TEMPLATE",
    "TIGHT_TEMPLATE",
    "align",
    "head_mask",
    "paste_back",
    "similarity_transform",
    "template_for",
]

Matrix = npt.NDArray[np.float64]
"""2 x 3 affine matrix."""

# Crops up to EMBED_SIZE use the tight template (the embedder's input); others the loose one.

#: Landmark positions as fractions of the crop side, in ``LANDMARK_NAMES`` order.
LOOSE_TEMPLATE: npt.NDArray[np.float64] = (
    np.array(
        [
            [192.98138, 239.94708],
            [318.90277, 240.19360],
            [256.63416, 314.01935],
            [201.26117, 371.41043],
            [313.08905, 371.15118],
        ]
    )
    / 512.0
)
TIGHT_TEMPLATE: npt.NDArray[np.float64] = np.array(
    [
        [0.3158, 0.3898],
        [0.6842, 0.3898],
        [0.5000, 0.5795],
        [0.3520, 0.7849],
        [0.6480, 0.7849],
    ]
)

# Bilinear sampling aliases when it shrinks by more than 2x (a 4000 px photo into a 256
# crop); below this scale the source is first halved with a Gaussian pyramid.
_MIN_DIRECT_SCALE = 0.5
#: The head region paste-back blends in, as fractions of a loose (FFHQ) crop's side: an
#: ellipse around the whole head with its hair (centre, semi-axes), feathered by a
#: Gaussian of sigma ``_HEAD_FEATHER``. The photo keeps everything outside it: a
#: converter's output paints its own background, and a square paste showed as a patch.
#: Sized from the loose template, whose face box (the mean MTCNN box mapped into it, see
#: trainer/evaluate.py) spans x 0.23-0.77 and y 0.18-0.90; the ellipse adds the hair.
_HEAD_CENTRE = (0.5, 0.5)
_HEAD_AXES = (0.38, 0.45)
_HEAD_FEATHER = 0.05
_FEATHER = 0.04
"""paste_back's square mask ramps to 0 over this fraction of the crop side at its edges, so
bilinear sampling never leaks crop pixels outside its footprint."""


def head_mask(side: int) -> npt.NDArray[np.float32]:
    """``side`` x ``side`` float32 weights in [0, 1] for pasting a loose crop back: 1 on the
    head (:data:`_HEAD_AXES` ellipse), fading over a Gaussian of ``_HEAD_FEATHER * side``
    pixels, and exactly 0 on the crop's outermost pixels."""
    cx, cy = (c * side for c in _HEAD_CENTRE)
    ax, ay = (a * side for a in _HEAD_AXES)
    mask = np.zeros((side, side), np.float32)
    cv2.ellipse(
        mask, (round(cx), round(cy)), (round(ax), round(ay)), 0.0, 0.0, 360.0, 1.0, thickness=-1
    )
    sigma = max(1.0, _HEAD_FEATHER * side)
    blurred = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)
    ramp = max(1.0, _FEATHER * side)
    idx = np.arange(side, dtype=np.float32)
    edge = np.clip(np.minimum(idx, side - 1 - idx) / ramp, 0.0, 1.0)
    return np.asarray(blurred * np.minimum.outer(edge, edge), dtype=np.float32)


def template_for(size: int) -> npt.NDArray[np.float64]:
    """The 5 template points, in pixels of a ``size`` x ``size`` crop."""
    base = TIGHT_TEMPLATE if size <= EMBED_SIZE else LOOSE_TEMPLATE
    return base * float(size)


def similarity_transform(src: npt.ArrayLike, dst: npt.ArrayLike) -> Matrix:
    """Least-squares similarity (no reflection) mapping ``src`` points onto ``dst``.

    Solves ``u = a x - b y + tx``, ``v = b x + a y + ty`` for all points at once: the same
    answer as Umeyama's method for 2-D points, without its outlier-robust variants (with 5
    points, every one of them matters).
    """
    s = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    n = s.shape[0]
    a = np.zeros((2 * n, 4))
    a[0::2] = np.column_stack([s[:, 0], -s[:, 1], np.ones(n), np.zeros(n)])
    a[1::2] = np.column_stack([s[:, 1], s[:, 0], np.zeros(n), np.ones(n)])
    (ca, cb, tx, ty), *_ = np.linalg.lstsq(a, d.reshape(-1), rcond=None)
    return np.array([[ca, -cb, tx], [cb, ca, ty]])


def _scale_of(matrix: Matrix) -> float:
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def align(
    image: CleanImage, landmarks: npt.ArrayLike, sizes: Sequence[int] = ALIGN_SIZES
) -> AlignedFace:
    """Crops of the face at each of ``sizes``, and each crop's original->crop transform.

    Raises ``ValueError`` for landmarks that are not 5 finite points or for a size under 16,
    and ``Rejected(bad_pose)`` at the align stage when the landmarks collapse to (nearly)
    one point, which no transform can map onto a face.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks must be 5 finite (x, y) points, got shape {pts.shape}")
    if any(int(size) < 16 for size in sizes):
        raise ValueError(f"sizes must all be at least 16 px, got {tuple(sizes)}")
    spread = float(np.sqrt(np.mean(np.sum((pts - pts.mean(axis=0)) ** 2, axis=1))))
    if spread < 1.0:
        raise Rejected(
            ReasonCode.BAD_POSE,
            Stage.ALIGN,
            f"landmarks spread {spread:.2f} px around their centre: too collapsed to align",
        )
    pyramid: list[RGBImage] = [image.pixels]
    crops: dict[int, RGBImage] = {}
    transforms: dict[int, list[list[float]]] = {}
    for size in sizes:
        size = int(size)
        matrix = similarity_transform(pts, template_for(size))
        crops[size] = _warp(pyramid, matrix, size)
        transforms[size] = matrix.tolist()
    return AlignedFace(crops=crops, transforms=transforms)


def _warp(pyramid: list[RGBImage], matrix: Matrix, size: int) -> RGBImage:
    """Warp from the pyramid level that leaves at most a 2x shrink to bilinear sampling.

    ``pyramid`` starts with the full image and grows as levels are needed, so sizes that
    share a level compute it once. Level k pixel (x, y) is level 0 pixel (2^k x, 2^k y)
    (``cv2.pyrDown`` keeps the even samples), so its matrix is the original with the linear
    part multiplied by 2^k.
    """
    level, scale = 0, _scale_of(matrix)
    while scale < _MIN_DIRECT_SCALE and min(pyramid[level].shape[:2]) > 2 * size:
        level += 1
        scale *= 2.0
        if level == len(pyramid):
            pyramid.append(np.asarray(cv2.pyrDown(pyramid[level - 1]), dtype=np.uint8))
    m = matrix.copy()
    m[:, :2] *= 2.0**level
    crop = cv2.warpAffine(
        pyramid[level],
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    return np.asarray(crop, dtype=np.uint8)


def paste_back(
    image: RGBImage,
    crop: RGBImage,
    transform: Sequence[Sequence[float]] | npt.NDArray[np.floating],
    transform_size: int | None = None,
) -> RGBImage:
    """``image`` with ``crop`` warped back where it came from; a new array.

    ``transform`` is the original->crop matrix from :attr:`AlignedFace.transforms`. A crop
    of another resolution than the one the transform was made for (a converter's 512 px
    output for the 256 transform) is fine when ``transform_size`` says which that was.
    Only the head is pasted (:func:`head_mask`, for crops of the loose template), blended
    over a feathered edge so no seam or patch shows.
    """
    m = np.asarray(transform, dtype=np.float64).reshape(2, 3).copy()
    crop_h, crop_w = crop.shape[:2]
    if crop_h != crop_w:
        raise ValueError(f"crop must be square, got {crop_w} x {crop_h}")
    if transform_size is not None and transform_size != crop_w:
        m *= crop_w / float(transform_size)
    inverse = cv2.invertAffineTransform(m)
    height, width = image.shape[:2]
    warped = cv2.warpAffine(
        crop, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    # The head's feathered mask, warped the same way as the crop.
    mask = head_mask(crop_w)
    alpha = cv2.warpAffine(
        mask, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )[..., None]
    out = image.astype(np.float32) * (1.0 - alpha) + warped.astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
