"""The label stage: measured bands from quality scores, declared attributes mapped onto the
vocabulary, and real photos through the real detector and quality stage."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import get_args

import cv2
import numpy as np
import pytest
from pydantic import ValidationError
from records import valid_upload

from agents.records import CleanImage, Detection, QualityReport
from agents.stages.detect import MtcnnDetector
from agents.stages.label import (
    BLUR,
    LIGHTING,
    POSE,
    declared_values,
    measured_labels,
    off_axis_deg,
)
from agents.stages.prepare import declared_labels
from agents.stages.quality import assess
from schemas.labels import VALUES, LabelName, check
from schemas.settings import QualitySettings
from schemas.uploads import DeclaredAttributes, Expression

_FACE = Detection(
    box=(10.0, 10.0, 210.0, 250.0), prob=0.999, landmarks=np.zeros((5, 2), np.float32)
)
_WELL_LIT = {"yaw": 0.0, "pitch": 0.0, "brightness": 128.0, "sharpness": 400.0}


def _bands(**scores: float) -> dict[LabelName, tuple[str, float]]:
    report = QualityReport(face=_FACE, scores={**_WELL_LIT, **scores})
    return {m.name: (m.value, m.confidence) for m in measured_labels(report)}


# -- measured -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaw", "pitch", "band"),
    [
        (0.0, 0.0, "frontal"),
        (14.9, 0.0, "frontal"),
        (-14.9, 0.0, "frontal"),
        (15.0, 0.0, "slight"),
        (0.0, -15.0, "slight"),
        (24.9, 0.0, "slight"),
        (25.0, 0.0, "turned"),
        (-34.0, 0.0, "turned"),
        (0.0, 29.0, "turned"),
        # Each angle alone is frontal; together the face turns 17 degrees off the camera.
        (12.0, 12.0, "slight"),
    ],
)
def test_pose_band_at_and_around_its_edges(yaw: float, pitch: float, band: str) -> None:
    assert _bands(yaw=yaw, pitch=pitch)[LabelName.POSE_BAND][0] == band


def test_off_axis_angle_combines_yaw_and_pitch() -> None:
    assert off_axis_deg(0.0, 0.0) == 0.0
    assert off_axis_deg(20.0, 0.0) == pytest.approx(20.0)
    assert off_axis_deg(0.0, -20.0) == pytest.approx(20.0)
    assert off_axis_deg(12.0, 12.0) == pytest.approx(16.908, abs=0.001)


@pytest.mark.parametrize(
    ("brightness", "band"),
    [
        (0.0, "dark"),
        (69.9, "dark"),
        (70.0, "normal"),
        (128.0, "normal"),
        (179.9, "normal"),
        (180.0, "bright"),
        (255.0, "bright"),
    ],
)
def test_lighting_band_at_and_around_its_edges(brightness: float, band: str) -> None:
    assert _bands(brightness=brightness)[LabelName.LIGHTING_BAND][0] == band


@pytest.mark.parametrize(
    ("sharpness", "band"),
    [(0.0, "soft"), (40.0, "soft"), (149.9, "soft"), (150.0, "sharp"), (2000.0, "sharp")],
)
def test_blur_band_at_and_around_its_edge(sharpness: float, band: str) -> None:
    assert _bands(sharpness=sharpness)[LabelName.BLUR][0] == band


def test_confidence_is_a_coin_toss_on_an_edge_and_grows_away_from_it() -> None:
    on_edge = _bands(yaw=25.0, brightness=70.0, sharpness=150.0)
    for name in (LabelName.POSE_BAND, LabelName.LIGHTING_BAND, LabelName.BLUR):
        assert on_edge[name][1] == pytest.approx(0.5, abs=0.01)
    lighting = [_bands(brightness=b)[LabelName.LIGHTING_BAND][1] for b in (70, 75, 80, 90, 125)]
    assert lighting == sorted(lighting)
    assert lighting[-1] > 0.999
    # One sigma inside a wide band: the one-sided normal probability.
    assert _bands(brightness=80.0)[LabelName.LIGHTING_BAND][1] == pytest.approx(0.841, abs=0.002)
    # The 10-degree "slight" band is narrower than the pose error allows: never near 1.
    assert _bands(yaw=20.0)[LabelName.POSE_BAND] == ("slight", pytest.approx(0.683, abs=0.002))
    assert _bands(yaw=0.0)[LabelName.POSE_BAND][1] > 0.99


def test_measured_labels_are_vocabulary_with_sane_confidence() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = {
            "yaw": float(rng.uniform(-35, 35)),
            "pitch": float(rng.uniform(-30, 30)),
            "brightness": float(rng.uniform(0, 255)),
            "sharpness": float(rng.uniform(0, 1000)),
        }
        measured = measured_labels(QualityReport(face=_FACE, scores=scores))
        assert [m.name for m in measured] == [POSE.name, LIGHTING.name, BLUR.name]
        for m in measured:
            assert check(m.name, m.value) == (m.name, m.value)
            assert 0.0 < m.confidence <= 1.0


def test_measurement_row_carries_source_and_face() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    rows = [m.row("face-1", now) for m in measured_labels(QualityReport(_FACE, dict(_WELL_LIT)))]
    assert {(r.name, r.value, r.source) for r in rows} == {
        ("pose_band", "frontal", "measured"),
        ("lighting_band", "normal", "measured"),
        ("blur", "sharp", "measured"),
    }
    assert all(r.face_id == "face-1" and r.created_at == now for r in rows)


def test_a_report_without_the_scores_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="lacks pitch, sharpness"):
        measured_labels(QualityReport(_FACE, {"yaw": 0.0, "brightness": 100.0}))


# -- declared -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (13, "teen"),
        (17, "teen"),
        (18, "18-29"),
        (29, "18-29"),
        (30, "30-44"),
        (44, "30-44"),
        (45, "45-59"),
        (59, "45-59"),
        (60, "60+"),
        (120, "60+"),
    ],
)
def test_declared_age_becomes_its_band(age: int, band: str) -> None:
    assert declared_values(DeclaredAttributes(age=age)) == {LabelName.AGE_BAND: band}


@pytest.mark.parametrize(
    ("declared", "value"),
    [
        ("female", "female"),
        ("Female", "female"),
        (" WOMAN ", "female"),
        ("f", "female"),
        ("Male", "male"),
        ("man", "male"),
        ("M", "male"),
        ("non-binary", "other"),
        ("prefer to self-describe", "other"),
    ],
)
def test_declared_gender_spellings(declared: str, value: str) -> None:
    assert declared_values(DeclaredAttributes(gender=declared)) == {LabelName.GENDER: value}


@pytest.mark.parametrize(
    ("declared", "value"),
    [
        ("Blonde", "blond"),
        ("dark-brown", "brown"),
        ("Gray", "grey"),
        ("ginger", "red"),
        ("BLACK", "black"),
        ("purple", "other"),
    ],
)
def test_declared_hair_colour_spellings(declared: str, value: str) -> None:
    assert declared_values(DeclaredAttributes(hair_colour=declared)) == {
        LabelName.HAIR_COLOUR: value
    }


def test_declared_glasses_and_blanks() -> None:
    assert declared_values(DeclaredAttributes(glasses=True)) == {LabelName.GLASSES: "yes"}
    assert declared_values(DeclaredAttributes(glasses=False)) == {LabelName.GLASSES: "no"}
    # A blank answer is no answer: nothing is stored, not "other".
    assert declared_values(DeclaredAttributes(gender="  ", hair_colour="")) == {}
    assert declared_values(DeclaredAttributes()) == {}


def test_declared_expression_is_the_vocabulary_value() -> None:
    for value in VALUES[LabelName.EXPRESSION]:
        assert declared_values(DeclaredAttributes(expression=value)) == {  # type: ignore[arg-type]
            LabelName.EXPRESSION: value
        }
    # The contract admits exactly the vocabulary's values, nothing else.
    assert set(get_args(Expression)) == set(VALUES[LabelName.EXPRESSION])
    with pytest.raises(ValidationError, match="expression"):
        DeclaredAttributes(expression="grinning")  # type: ignore[arg-type]


def test_declared_labels_of_an_upload_are_vocabulary_rows() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    upload = valid_upload(
        subject="a" * 64,
        consent_granted_at=now,
        submitted_at=now,
        attributes=DeclaredAttributes(
            age=24, gender="Female", glasses=True, hair_colour="auburn", expression="smiling"
        ),
    )
    rows = declared_labels(upload, "face-1", now)
    assert [(r.name, r.value) for r in rows] == [
        ("age_band", "18-29"),
        ("expression", "smiling"),
        ("gender", "female"),
        ("glasses", "yes"),
        ("hair_colour", "red"),
    ]
    assert {(r.source, r.confidence, r.face_id) for r in rows} == {("declared", 1.0, "face-1")}
    nothing = dataclasses.replace(upload, attributes=DeclaredAttributes())
    assert declared_labels(nothing, "face-1", now) == []


# -- real photos ----------------------------------------------------------------------------


def _measured_photo(detector: MtcnnDetector, image: CleanImage) -> dict[str, str]:
    report = assess(image, detector.detect([image])[0], QualitySettings())
    return {m.name.value: m.value for m in measured_labels(report)}


def test_a_studio_portrait_is_frontal_normal_sharp(
    detector: MtcnnDetector, photo: Callable[[str], CleanImage]
) -> None:
    assert _measured_photo(detector, photo("london_002_neutral.jpg")) == {
        "pose_band": "frontal",
        "lighting_band": "normal",
        "blur": "sharp",
    }


def test_a_dim_phone_selfie_and_a_blurred_portrait_read_as_such(
    detector: MtcnnDetector, photo: Callable[[str], CleanImage]
) -> None:
    selfie = _measured_photo(detector, photo("selfie_lisa1.jpg"))
    assert (selfie["lighting_band"], selfie["blur"]) == ("dark", "soft")
    sharp = photo("london_002_neutral.jpg")
    blurred = CleanImage(cv2.GaussianBlur(sharp.pixels, (0, 0), 1.2), sharp.format)
    assert _measured_photo(detector, blurred)["blur"] == "soft"
