"""Alignment on real photos: template fit, rotation invariance, paste-back round trip."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from agents.errors import Rejected
from agents.records import AlignedFace, CleanImage, Detection
from agents.stages.align import (
    align,
    head_mask,
    paste_back,
    similarity_transform,
    template_for,
)
from agents.stages.detect import MtcnnDetector
from schemas.reasons import ReasonCode, Stage

SIZES = (160, 256, 512)


def _image(pixels: np.ndarray) -> CleanImage:
    return CleanImage(pixels=np.ascontiguousarray(pixels, dtype=np.uint8), format="PNG")


def _apply(transform: list[list[float]], points: np.ndarray) -> np.ndarray:
    m = np.asarray(transform, dtype=np.float64)
    return points.astype(np.float64) @ m[:, :2].T + m[:, 2]


def _ncc(a: np.ndarray, b: np.ndarray, blur: float = 0.0) -> float:
    """Normalized cross-correlation of two crops' grey levels (1.0 = same picture).

    ``blur`` (a Gaussian sigma in pixels) first smooths away the few-pixel landmark jitter
    of the detector, which otherwise dominates the comparison of textured crops.
    """
    if blur > 0:
        a, b = cv2.GaussianBlur(a, (0, 0), blur), cv2.GaussianBlur(b, (0, 0), blur)
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
    ga -= ga.mean()
    gb -= gb.mean()
    return float(ga @ gb / math.sqrt((ga @ ga) * (gb @ gb)))


@pytest.fixture(scope="module")
def london(photo: Callable[[str], CleanImage]) -> CleanImage:
    return photo("london_001_neutral.jpg")


@pytest.fixture(scope="module")
def london_face(portrait_faces: dict[str, list[Detection]]) -> Detection:
    return portrait_faces["london_001_neutral.jpg"][0]


@pytest.fixture(scope="module")
def aligned(london: CleanImage, london_face: Detection) -> AlignedFace:
    return align(london, london_face.landmarks, SIZES)


def test_similarity_transform_recovers_a_known_one() -> None:
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 500, size=(5, 2))
    angle, scale = math.radians(25.0), 1.7
    truth = np.array(
        [
            [scale * math.cos(angle), -scale * math.sin(angle), 12.0],
            [scale * math.sin(angle), scale * math.cos(angle), -40.0],
        ]
    )
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)


def test_crops_have_every_size_and_put_landmarks_on_the_template(
    aligned: AlignedFace, london_face: Detection
) -> None:
    assert set(aligned.crops) == set(aligned.transforms) == set(SIZES)
    for size in SIZES:
        crop = aligned.crops[size]
        assert crop.shape == (size, size, 3)
        assert crop.dtype == np.uint8
        transform = aligned.transforms[size]
        assert len(transform) == 2
        assert all(len(row) == 3 and all(isinstance(v, float) for v in row) for row in transform)
        mapped = _apply(transform, london_face.landmarks)
        # 5 points, 4 degrees of freedom: a real face fits the template to a few percent.
        assert np.abs(mapped - template_for(size)).max() < 0.05 * size


def test_loose_crop_frames_more_than_tight_crop(aligned: AlignedFace) -> None:
    def eye_distance_fraction(size: int) -> float:
        t = template_for(size)
        return float(np.hypot(*(t[1] - t[0])) / size)

    # The embedder's crop is tight on the face, the training crops keep the whole head.
    assert eye_distance_fraction(160) > 1.3 * eye_distance_fraction(256)
    assert eye_distance_fraction(256) == pytest.approx(eye_distance_fraction(512))


def test_rotated_photo_aligns_like_the_upright_one(
    detector: MtcnnDetector, london: CleanImage, aligned: AlignedFace
) -> None:
    h, w = london.pixels.shape[:2]
    rotation = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), 30.0, 1.0)
    rotated = _image(cv2.warpAffine(london.pixels, rotation, (w, h), borderMode=cv2.BORDER_REFLECT))
    [[face]] = detector.detect([rotated])
    turned = align(rotated, face.landmarks, SIZES)
    for size in SIZES:
        eyes = _apply(turned.transforms[size], face.landmarks[:2])
        assert abs(eyes[0, 1] - eyes[1, 1]) < 0.01 * size  # eyes level again
        # MTCNN's landmarks on the rotated photo are off by 3-6 px (it is not rotation
        # equivariant), hence the blur; without alignment the crops would not match at all.
        upright = aligned.crops[size]
        tilted = cv2.warpAffine(
            upright, cv2.getRotationMatrix2D((size / 2, size / 2), 30.0, 1.0), (size, size)
        )
        similarity = _ncc(turned.crops[size], upright, blur=size / 80)
        assert similarity > 0.9
        assert similarity > _ncc(tilted, upright, blur=size / 80) + 0.2


def test_large_photo_goes_through_the_pyramid_to_the_same_crop(
    detector: MtcnnDetector, london: CleanImage, london_face: Detection, aligned: AlignedFace
) -> None:
    # 4x: the 160 crop shrinks the photo ~6x, past where plain bilinear sampling aliases.
    big = _image(cv2.resize(london.pixels, None, fx=4.0, fy=4.0, interpolation=cv2.INTER_CUBIC))
    big_aligned = align(big, london_face.landmarks * 4.0, SIZES)
    for size in SIZES:
        assert _ncc(big_aligned.crops[size], aligned.crops[size]) > 0.97
        np.testing.assert_allclose(
            np.asarray(big_aligned.transforms[size])[:, :2] * 4.0,
            np.asarray(aligned.transforms[size])[:, :2],
            atol=1e-6,
        )


def test_paste_back_round_trip(
    london: CleanImage, london_face: Detection, aligned: AlignedFace
) -> None:
    restored = paste_back(london.pixels, aligned.crops[256], aligned.transforms[256])
    assert restored.shape == london.pixels.shape
    assert restored.dtype == np.uint8
    x1, y1, x2, y2 = (int(v) for v in london_face.box)
    diff = np.abs(restored.astype(np.int16) - london.pixels.astype(np.int16))
    assert diff[y1:y2, x1:x2].mean() < 4.0
    # A crop of another resolution goes back through the same transform.
    upscaled = cv2.resize(aligned.crops[256], (512, 512), interpolation=cv2.INTER_CUBIC)
    restored_512 = paste_back(london.pixels, upscaled, aligned.transforms[256], transform_size=256)
    diff_512 = np.abs(restored_512.astype(np.int16) - london.pixels.astype(np.int16))
    assert diff_512[y1:y2, x1:x2].mean() < 5.0


def test_paste_back_changes_only_the_face_region(
    london: CleanImage, london_face: Detection, aligned: AlignedFace
) -> None:
    converted = 255 - aligned.crops[256]  # stand-in for a converter's output
    pasted = paste_back(london.pixels, converted, aligned.transforms[256])
    cx, cy = (int(v) for v in london_face.landmarks[2])  # the nose
    assert np.abs(pasted[cy, cx].astype(int) - (255 - london.pixels[cy, cx].astype(int))).max() <= 8
    # Outside the crop's footprint the photo is untouched, pixel for pixel.
    corners = _apply(
        cv2.invertAffineTransform(np.asarray(aligned.transforms[256])).tolist(),
        np.array([[0.0, 0.0], [256.0, 0.0], [0.0, 256.0], [256.0, 256.0]]),
    )
    outside = np.ones(london.pixels.shape[:2], dtype=bool)
    cv2.fillConvexPoly(outside.view(np.uint8), cv2.convexHull(corners.astype(np.int32)), 0)
    assert np.array_equal(pasted[outside], london.pixels[outside])
    # Inside the crop but off the head (its corners: background the converter repainted),
    # the photo shows, not a square patch of the output.
    inverse = cv2.invertAffineTransform(np.asarray(aligned.transforms[256])).tolist()
    for x, y in _apply(inverse, np.array([[20.0, 20.0], [236.0, 20.0], [20.0, 236.0]])):
        px, py = round(x), round(y)
        if 0 <= px < london.width and 0 <= py < london.height:
            assert np.abs(pasted[py, px].astype(int) - london.pixels[py, px]).max() <= 2


def test_head_mask_covers_the_head_and_fades_to_nothing_at_the_edge() -> None:
    mask = head_mask(256)
    assert mask.dtype == np.float32
    assert mask[128, 128] > 0.99  # the face
    assert mask[40, 128] > 0.5  # the hair above it
    assert mask[10, 10] < 0.01  # a corner: background
    assert mask[0].max() == mask[:, 0].max() == 0.0  # nothing leaks past the footprint


def test_invalid_landmarks(london: CleanImage) -> None:
    with pytest.raises(ValueError, match="5 finite"):
        align(london, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="5 finite"):
        align(london, np.full((5, 2), np.nan))
    with pytest.raises(Rejected) as caught:
        align(london, np.full((5, 2), 100.0))
    assert (caught.value.reason, caught.value.stage) == (ReasonCode.BAD_POSE, Stage.ALIGN)
