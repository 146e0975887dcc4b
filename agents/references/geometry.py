"""Where a reference's face is: its five landmarks, and its training version aligned to the
faces' template.

A selfie's training crop (``Face.crop_512``) puts the eyes, nose and mouth corners at the
loose template's places (:mod:`agents.stages.align`). A reference whose five landmarks are
known gets a training version warped with the same template at the same size, so a pair
shows both faces in one geometry and the converter learns style, not a shift of the head.
Landmarks come from the face detector (MTCNN finds them on the painted-style bundled
references, none on the cel-style ones) or from a person (``s2a refs add --landmarks``, or
a ``landmarks`` column in the ``--sources`` CSV); ``anime_refs.landmarks_source`` records
which. A reference without landmarks keeps the padded square of its face region
(:func:`agents.references.palette.training_image`).

Example::

    points = parse_landmarks("120,140,200,138,160,190,130,230,192,228")   # 5 x 2
    train = aligned_training_image(original, points, palette)            # 512 x 512 x 3
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from agents.errors import InvalidRequest, SourcesFileError
from agents.records import Detection, RGBImage
from agents.references.palette import TRAINING_SIDE, Palette, match_histogram
from agents.references.style import check_rgb
from agents.stages.align import similarity_transform, template_for

__all__ = [
    "HUMAN",
    "LANDMARKS_COLUMN",
    "MIN_FACE_PROB",
    "MIN_FACE_SHARE",
    "aligned_training_image",
    "find_landmarks",
    "inside",
    "parse_landmarks",
    "read_landmarks",
]

Points = npt.NDArray[np.float64]
"""5 x 2 float64, pixels of the upright original image, in ``LANDMARK_NAMES`` order."""

#: ``landmarks_source`` of landmarks a person gave.
HUMAN = "human"
#: The optional column of the ``--sources`` CSV that gives a file's landmarks.
LANDMARKS_COLUMN = "landmarks"
#: A detected face counts only when its box's shorter side is at least this share of the
#: face region's shorter side: a reference's region is chosen as the face, so a small
#: detection inside it is a face in the background or a false positive, not the face.
MIN_FACE_SHARE = 0.25

#: Least detector probability for a reference's face. Lower than the selfies' gate (0.95):
#: drawn faces score lower. On the bundled references MTCNN gives the painted-style faces
#: 0.86-1.0 (8 of the 9 painted faces; the ninth, an old woman in profile-like three
#: quarters, none) and the cel-style faces nothing at all, so 0.85 takes every painted face
#: it finds without letting a cel drawing in.
MIN_FACE_PROB = 0.85

_SEPARATORS = re.compile(r"[\s,;]+")


def parse_landmarks(text: str, what: str = "--landmarks") -> Points:
    """``"x1,y1,...,x5,y5"`` (pixels of the upright image; commas, spaces or semicolons
    between numbers) -> 5 x 2 points, or :class:`InvalidRequest` saying what is wrong.

    The order is left eye, right eye, nose tip, left mouth corner, right mouth corner, as
    seen in the image (MTCNN's order).
    """
    parts = [p for p in _SEPARATORS.split(text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 10 or not all(math.isfinite(v) for v in values):
        raise InvalidRequest(
            f"{what} {text!r} is not ten numbers x1,y1,...,x5,y5 (pixels: left eye, right eye, "
            "nose tip, left and right mouth corner as seen in the image)"
        )
    points = np.asarray(values, dtype=np.float64).reshape(5, 2)
    if points[1, 0] <= points[0, 0] or min(points[3, 1], points[4, 1]) <= points[2, 1]:
        raise InvalidRequest(
            f"{what} {text!r}: the right eye must lie right of the left eye and the mouth "
            "corners below the nose tip; give the points in the order left eye, right eye, "
            "nose, left mouth corner, right mouth corner"
        )
    return points


def read_landmarks(path: Path) -> dict[str, Points]:
    """Per-file landmarks from the optional ``landmarks`` column of a sources CSV.

    Keys are the ``file`` values as written and their base names (as
    :func:`agents.references.inputs.read_sources`); rows with an empty cell give none. A
    file without the column gives an empty mapping.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if LANDMARKS_COLUMN not in (reader.fieldnames or ()):
                return {}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourcesFileError(f"--sources {path}: cannot read it: {exc}") from exc
    found: dict[str, Points] = {}
    for line, row in enumerate(rows, start=2):
        name = (row.get("file") or "").strip()
        cell = (row.get(LANDMARKS_COLUMN) or "").strip()
        if not name or not cell:
            continue
        try:
            points = parse_landmarks(cell, what=f"--sources {path} line {line} landmarks")
        except InvalidRequest as exc:
            raise SourcesFileError(str(exc)) from None
        for key in dict.fromkeys((name, Path(name).name)):
            found[key] = points
    return found


def inside(points: Points, width: int, height: int) -> bool:
    """Whether every point lies on the ``width`` x ``height`` image."""
    return bool(
        np.all((points[:, 0] >= 0) & (points[:, 0] <= width))
        and np.all((points[:, 1] >= 0) & (points[:, 1] <= height))
    )


def find_landmarks(
    detections: Sequence[Detection], region_box: Sequence[float], min_prob: float = MIN_FACE_PROB
) -> Points | None:
    """The landmarks of the face a reference's region shows, in original-image pixels.

    ``detections`` are a detector's finds on the region (``Detection`` objects, region
    pixels); the largest one counts when its probability is at least ``min_prob`` and its
    box at least :data:`MIN_FACE_SHARE` of the region's shorter side. None otherwise.
    """
    x1, y1, x2, y2 = region_box
    shorter = min(x2 - x1, y2 - y1)
    faces = [d for d in detections if d.prob >= min_prob]
    if not faces:
        return None
    best = max(faces, key=lambda d: d.size)
    if best.size < MIN_FACE_SHARE * shorter:
        return None
    points = np.asarray(best.landmarks, dtype=np.float64).reshape(5, 2)
    return np.asarray(points + np.array([math.floor(x1), math.floor(y1)]), dtype=np.float64)


def aligned_training_image(
    original: RGBImage, landmarks: Points, palette: Palette | None
) -> RGBImage:
    """The training version of a reference with landmarks: ``original`` warped so that its
    landmarks land on the loose template at :data:`TRAINING_SIDE` (the geometry of a
    face's ``crop_512``), then matched to ``palette`` (``None``: colours as they are).

    Outside the original the crop is filled with the median colour of the original's
    border, not mirrored: a drawing's edge mirrored would add a second chin or hat.
    """
    check_rgb(original, "original")
    edge = np.concatenate([original[0], original[-1], original[:, 0], original[:, -1]])
    fill = tuple(int(v) for v in np.median(edge, axis=0))
    source, points = original, np.asarray(landmarks, dtype=np.float64)
    matrix = similarity_transform(points, template_for(TRAINING_SIDE))
    # As agents.stages.align does: bilinear sampling aliases when it shrinks by more than
    # 2x, so a large original is halved first (cv2.pyrDown keeps the even samples).
    while _scale(matrix) < 0.5 and min(source.shape[:2]) > 2 * TRAINING_SIDE:
        source, points = np.asarray(cv2.pyrDown(source), dtype=np.uint8), points / 2.0
        matrix = similarity_transform(points, template_for(TRAINING_SIDE))
    warped = np.asarray(
        cv2.warpAffine(
            source,
            matrix,
            (TRAINING_SIDE, TRAINING_SIDE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=fill,
        ),
        dtype=np.uint8,
    )
    return warped if palette is None else match_histogram(warped, palette)


def _scale(matrix: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
