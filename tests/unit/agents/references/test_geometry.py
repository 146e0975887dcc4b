"""A reference's landmarks: parsing what a person gives, choosing what the detector finds,
and the aligned training version that puts the face where the selfies' crops have it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.errors import InvalidRequest, SourcesFileError
from agents.records import Detection
from agents.references.geometry import (
    aligned_training_image,
    find_landmarks,
    parse_landmarks,
    read_landmarks,
)
from agents.references.palette import TRAINING_SIDE
from agents.stages.align import template_for

_POINTS = "120,140,200,138,160,190,130,230,192,228"


def test_landmarks_parse_with_any_separator() -> None:
    points = parse_landmarks(_POINTS)
    assert points.shape == (5, 2)
    assert points[2].tolist() == [160.0, 190.0]
    assert np.array_equal(parse_landmarks(_POINTS.replace(",", " ")), points)


@pytest.mark.parametrize(
    "text",
    [
        "1,2,3",  # too few
        "a,b,c,d,e,f,g,h,i,j",
        "120,140,200,138,160,190,130,230,192,nan",
        "200,138,120,140,160,190,130,230,192,228",  # eyes swapped
        "120,140,200,138,160,250,130,230,192,228",  # nose below the mouth
    ],
)
def test_bad_landmarks_are_refused_with_the_form_to_use(text: str) -> None:
    with pytest.raises(InvalidRequest, match="--landmarks"):
        parse_landmarks(text)


def test_the_sources_csv_may_carry_landmarks(tmp_path: Path) -> None:
    csv_file = tmp_path / "sources.csv"
    csv_file.write_text(
        f'file,license,author,source,landmarks\nrefs/a.png,MIT,x,y,"{_POINTS}"\nb.png,MIT,x,y,\n'
    )
    found = read_landmarks(csv_file)
    assert set(found) == {"refs/a.png", "a.png"}
    assert found["a.png"].shape == (5, 2)
    plain = tmp_path / "plain.csv"
    plain.write_text("file,license,author,source\na.png,MIT,x,y\n")
    assert read_landmarks(plain) == {}
    bad = tmp_path / "bad.csv"
    bad.write_text('file,license,author,source,landmarks\na.png,MIT,x,y,"1,2"\n')
    with pytest.raises(SourcesFileError, match="line 2"):
        read_landmarks(bad)


def _detection(x: float, y: float, side: float, prob: float) -> Detection:
    marks = np.array(
        [[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32
    ) * side + np.array([x, y], np.float32)
    return Detection(box=(x, y, x + side, y + side), prob=prob, landmarks=marks)


def test_the_largest_sure_face_counts_in_original_pixels() -> None:
    region = (100.0, 50.0, 400.0, 350.0)  # a box in the original
    big = _detection(20, 20, 200, 0.99)
    small = _detection(0, 0, 60, 0.999)
    points = find_landmarks([small, big], region)
    assert points is not None
    # Region pixels plus the region's corner.
    assert points[0].tolist() == pytest.approx([100 + 20 + 60, 50 + 20 + 80])
    assert find_landmarks([_detection(20, 20, 200, 0.5)], region) is None  # unsure
    assert find_landmarks([small], region) is None  # a small face is not the face
    assert find_landmarks([], region) is None


def test_the_aligned_training_version_puts_the_face_on_the_template() -> None:
    # A drawn "face": five dots at known places on a 700 x 500 canvas.
    original = np.full((500, 700, 3), 240, np.uint8)
    points = np.array([[300, 200], [380, 205], [340, 250], [310, 290], [372, 293]], float)
    for x, y in points.astype(int):
        original[y - 3 : y + 4, x - 3 : x + 4] = (200, 0, 0)
    train = aligned_training_image(original, points, None)
    assert train.shape == (TRAINING_SIDE, TRAINING_SIDE, 3)
    assert train.dtype == np.uint8
    for x, y in template_for(TRAINING_SIDE).round().astype(int):
        # Each dot lands within a few pixels of its template place (least squares over
        # five points that are not exactly a similarity of the template).
        patch = train[y - 12 : y + 13, x - 12 : x + 13]
        assert (patch[..., 1] < 120).any(), f"no dot near template point {(x, y)}"
    # Outside the original: its border colour, not a mirror of it.
    assert train[0, 0].tolist() == [240, 240, 240]
