"""The quality gate on real photos and on edited copies of them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from agents.errors import Rejected
from agents.records import CleanImage, Detection
from agents.stages.detect import MtcnnDetector
from agents.stages.quality import assess, measure, pose_from_landmarks
from schemas.reasons import ReasonCode, Stage
from schemas.settings import QualitySettings

Q = QualitySettings()
SCORES = {
    "face_px",
    "detection_prob",
    "n_faces",
    "second_face_ratio",
    "outside_share",
    "landmarks_outside",
    "sharpness",
    "brightness",
    "clipped_fraction",
    "yaw",
    "pitch",
    "roll",
}
# A frontal face: eyes level, nose on the midline at the calibrated height, mouth below.
FRONTAL = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.5], [44.0, 92.8], [76.0, 92.8]])


def _image(pixels: np.ndarray) -> CleanImage:
    return CleanImage(pixels=np.ascontiguousarray(pixels, dtype=np.uint8), format="PNG")


def _rotate(pixels: np.ndarray, degrees: float) -> np.ndarray:
    h, w = pixels.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    return cv2.warpAffine(pixels, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def _rejection(image: CleanImage, faces: list[Detection], q: QualitySettings = Q) -> Rejected:
    with pytest.raises(Rejected) as caught:
        assess(image, faces, q)
    return caught.value


@pytest.fixture(scope="module")
def london(photo: Callable[[str], CleanImage]) -> CleanImage:
    return photo("london_001_neutral.jpg")


@pytest.fixture(scope="module")
def london_face(london: CleanImage, portrait_faces: dict[str, list[Detection]]) -> Detection:
    return portrait_faces["london_001_neutral.jpg"][0]


def test_every_real_portrait_passes_with_default_settings(
    portraits: dict[str, CleanImage], portrait_faces: dict[str, list[Detection]]
) -> None:
    for name, image in portraits.items():
        report = assess(image, portrait_faces[name], Q)
        assert set(report.scores) == SCORES, name
        assert report.face is portrait_faces[name][0]
        assert report.scores["n_faces"] == 1.0
        assert report.scores["sharpness"] > Q.min_sharpness
        assert report.scores["outside_share"] == 0.0, name
        assert report.scores["landmarks_outside"] == 0.0, name


def test_no_face_is_rejected_at_detect(london: CleanImage) -> None:
    err = _rejection(london, [])
    assert (err.reason, err.stage) == (ReasonCode.NO_FACE, Stage.DETECT)


def test_two_portraits_side_by_side_are_multiple_faces(
    detector: MtcnnDetector, portraits: dict[str, CleanImage]
) -> None:
    pair = np.hstack(
        [portraits["london_001_neutral.jpg"].pixels, portraits["london_004_neutral.jpg"].pixels]
    )
    image = _image(pair)
    [faces] = detector.detect([image])
    assert len(faces) == 2
    err = _rejection(image, faces)
    assert (err.reason, err.stage) == (ReasonCode.MULTIPLE_FACES, Stage.QUALITY)
    assert "S2A_QUALITY__SECOND_FACE_RATIO" in err.detail


def test_small_background_face_is_ignored(london: CleanImage, london_face: Detection) -> None:
    # A face at 30% of the main face's size (someone far behind) does not count...
    x1, y1, _, _ = london_face.box
    side = 0.3 * london_face.size
    background = dataclasses.replace(
        london_face,
        box=(x1, y1, x1 + side, y1 + side),
        landmarks=london_face.landmarks * 0.3,
    )
    report = assess(london, [background, london_face], Q)
    assert report.face is london_face
    assert report.scores["n_faces"] == 2.0
    assert report.scores["second_face_ratio"] == pytest.approx(0.3, abs=0.01)
    # ...but it does once the threshold says so.
    err = _rejection(
        london, [background, london_face], Q.model_copy(update={"second_face_ratio": 0.25})
    )
    assert err.reason == ReasonCode.MULTIPLE_FACES


def test_low_confidence(london: CleanImage, london_face: Detection) -> None:
    unsure = dataclasses.replace(london_face, prob=0.8)
    err = _rejection(london, [unsure])
    assert err.reason == ReasonCode.LOW_CONFIDENCE
    assert "0.800" in err.detail
    assert "S2A_QUALITY__MIN_DETECTION_PROB" in err.detail


def test_photo_downscaled_in_big_canvas_is_face_too_small(
    detector: MtcnnDetector, london: CleanImage
) -> None:
    canvas = np.full((800, 800, 3), 190, dtype=np.uint8)
    canvas[300:500, 300:500] = cv2.resize(london.pixels, (200, 200), interpolation=cv2.INTER_AREA)
    image = _image(canvas)
    [faces] = detector.detect([image])
    assert len(faces) == 1
    err = _rejection(image, faces)
    assert (err.reason, err.stage) == (ReasonCode.FACE_TOO_SMALL, Stage.QUALITY)
    assert "S2A_QUALITY__MIN_FACE_PX" in err.detail
    assert f"below {Q.min_face_px} px" in err.detail


def test_heavily_blurred_photo_is_blurry(detector: MtcnnDetector, london: CleanImage) -> None:
    image = _image(cv2.GaussianBlur(london.pixels, (0, 0), sigmaX=6))
    [faces] = detector.detect([image])
    assert len(faces) == 1
    err = _rejection(image, faces)
    assert (err.reason, err.stage) == (ReasonCode.BLURRY, Stage.QUALITY)
    assert err.detail.startswith("sharpness ")
    assert f"below {Q.min_sharpness:.1f} (S2A_QUALITY__MIN_SHARPNESS)" in err.detail


def test_darkened_photo_is_bad_exposure(detector: MtcnnDetector, london: CleanImage) -> None:
    image = _image((london.pixels.astype(np.float32) * 0.12).astype(np.uint8))
    [faces] = detector.detect([image])
    assert len(faces) == 1
    err = _rejection(image, faces)
    # Also far below the sharpness limit: exposure is the cause and is reported first.
    assert err.reason == ReasonCode.BAD_EXPOSURE
    assert "S2A_QUALITY__MIN_BRIGHTNESS" in err.detail


def test_blown_out_face_is_bad_exposure(london: CleanImage, london_face: Detection) -> None:
    blown = np.clip(london.pixels.astype(np.float32) * 2.2 + 40, 0, 255).astype(np.uint8)
    report = measure(_image(blown), [london_face])
    assert report.scores["clipped_fraction"] > Q.max_clipped_fraction
    err = _rejection(_image(blown), [london_face])
    assert err.reason == ReasonCode.BAD_EXPOSURE


def test_pose_of_ideal_landmarks() -> None:
    yaw, pitch, roll = pose_from_landmarks(FRONTAL)
    assert (yaw, roll) == (pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9))
    assert pitch == pytest.approx(0.0, abs=0.5)


def test_pose_roll_follows_cv2_rotation_sign() -> None:
    centre = FRONTAL.mean(axis=0)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 30.0, 1.0)
    rotated = FRONTAL @ matrix[:, :2].T + matrix[:, 2]
    yaw, pitch, roll = pose_from_landmarks(rotated)
    assert roll == pytest.approx(30.0, abs=1e-6)
    assert yaw == pytest.approx(pose_from_landmarks(FRONTAL)[0], abs=1e-6)
    assert pitch == pytest.approx(pose_from_landmarks(FRONTAL)[1], abs=1e-6)


def test_pose_yaw_and_pitch_signs() -> None:
    turned = FRONTAL.copy()
    turned[2, 0] += 10.0  # nose towards the image's right
    raised = FRONTAL.copy()
    raised[2, 1] -= 8.0  # nose tip closer to the eyes: chin up
    yaw, _, _ = pose_from_landmarks(turned)
    _, pitch, _ = pose_from_landmarks(raised)
    # nose depth 0.55 eye distances (40 px): atan(10 / 22) = 24.4 degrees
    assert yaw == pytest.approx(math.degrees(math.atan(10.0 / 22.0)), abs=0.5)
    assert pitch > 15.0


def test_pose_near_zero_on_frontal_photos(portrait_faces: dict[str, list[Detection]]) -> None:
    for name in ("london_001_neutral.jpg", "london_004_neutral.jpg", "london_007_neutral.jpg"):
        yaw, pitch, roll = pose_from_landmarks(portrait_faces[name][0].landmarks)
        assert abs(yaw) < 10.0, name
        assert abs(pitch) < 10.0, name
        assert abs(roll) < 6.0, name


def test_rotated_photo_has_known_roll_and_can_fail_pose(
    detector: MtcnnDetector, london: CleanImage, london_face: Detection
) -> None:
    image = _image(_rotate(london.pixels, 30.0))
    [faces] = detector.detect([image])
    assert len(faces) == 1
    yaw0, pitch0, roll0 = pose_from_landmarks(london_face.landmarks)
    yaw, pitch, roll = pose_from_landmarks(faces[0].landmarks)
    assert roll - roll0 == pytest.approx(30.0, abs=5.0)
    assert abs(yaw - yaw0) < 8.0
    assert abs(pitch - pitch0) < 8.0
    assess(image, faces, Q)  # 30 degrees is within the default 45
    err = _rejection(image, faces, Q.model_copy(update={"max_roll_deg": 20.0}))
    assert (err.reason, err.stage) == (ReasonCode.BAD_POSE, Stage.QUALITY)
    assert err.detail.startswith("roll ")
    assert "S2A_QUALITY__MAX_ROLL_DEG" in err.detail


# --- faces cut by the frame ------------------------------------------------------------------


def _crop_side(pixels: np.ndarray, box: tuple[float, ...], side: str, share: float) -> np.ndarray:
    """The photo cut so that ``share`` of the face box's width (height) lies beyond ``side``;
    a negative share leaves that much margin between the box and the new edge."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    if side == "left":
        return pixels[:, round(x1 + share * width) :]
    if side == "right":
        return pixels[:, : round(x2 - share * width)]
    if side == "top":
        return pixels[round(y1 + share * height) :, :]
    return pixels[: round(y2 - share * height), :]


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_face_leaving_the_frame_by_30_percent_is_cut_off(
    detector: MtcnnDetector, london: CleanImage, london_face: Detection, side: str
) -> None:
    image = _image(_crop_side(london.pixels, london_face.box, side, 0.30))
    [faces] = detector.detect([image])
    assert len(faces) == 1  # the detector still finds the face: only quality can refuse it
    report = measure(image, faces)
    assert report.scores["outside_share"] > Q.max_outside_share
    err = _rejection(image, faces)
    assert (err.reason, err.stage) == (ReasonCode.FACE_CUT_OFF, Stage.QUALITY)
    share = f"{report.scores['outside_share']:.0%} of the face box beyond the image's edge"
    assert share in err.detail
    assert f"at most {Q.max_outside_share:.0%}, S2A_QUALITY__MAX_OUTSIDE_SHARE" in err.detail


def test_face_with_a_landmark_outside_is_cut_off(
    detector: MtcnnDetector, london: CleanImage, london_face: Detection
) -> None:
    # Cut through the left eye, 12 px past its centre: the detector places that eye beyond
    # the new left edge. (With 4 px it sees the visible half and puts the eye just inside;
    # the box then leaves the frame by 19 % and the face is refused on that instead.)
    eye_x = float(london_face.landmarks[0, 0])
    image = _image(london.pixels[:, round(eye_x) + 12 :])
    [faces] = detector.detect([image])
    assert len(faces) == 1
    report = measure(image, faces)
    assert report.scores["landmarks_outside"] >= 1
    err = _rejection(image, faces)
    assert (err.reason, err.stage) == (ReasonCode.FACE_CUT_OFF, Stage.QUALITY)
    assert f"{int(report.scores['landmarks_outside'])} of 5 landmarks outside" in err.detail
    assert "S2A_QUALITY__MAX_OUTSIDE_SHARE" in err.detail


def test_one_landmark_outside_is_cut_off_whatever_the_box(
    london: CleanImage, london_face: Detection
) -> None:
    # Even with a box inside (and any share allowed), a landmark past the edge is refused.
    marks = london_face.landmarks.copy()
    marks[4, 0] = london.width + 1.0
    err = _rejection(
        london,
        [dataclasses.replace(london_face, landmarks=marks)],
        Q.model_copy(update={"max_outside_share": 1.0}),
    )
    assert err.reason is ReasonCode.FACE_CUT_OFF
    assert err.detail.startswith("face cut by the frame: 1 of 5 landmarks outside the image")


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_whole_face_near_the_edge_passes(
    detector: MtcnnDetector, london: CleanImage, london_face: Detection, side: str
) -> None:
    # The box 10% of its side from the new edge: the face is whole, only the padding of its
    # crops will mirror (plain background).
    image = _image(_crop_side(london.pixels, london_face.box, side, -0.10))
    [faces] = detector.detect([image])
    assert len(faces) == 1
    report = assess(image, faces, Q)
    assert report.scores["landmarks_outside"] == 0.0
    assert report.scores["outside_share"] <= Q.max_outside_share


def test_outside_share_threshold_is_the_setting(
    detector: MtcnnDetector, london: CleanImage, london_face: Detection
) -> None:
    # A bottom cut of 10% of the box passes by default and fails under a stricter setting.
    image = _image(_crop_side(london.pixels, london_face.box, "bottom", 0.10))
    [faces] = detector.detect([image])
    report = assess(image, faces, Q)
    assert 0.05 < report.scores["outside_share"] <= Q.max_outside_share
    assert report.scores["landmarks_outside"] == 0.0
    err = _rejection(image, faces, Q.model_copy(update={"max_outside_share": 0.05}))
    assert err.reason is ReasonCode.FACE_CUT_OFF
    assert "(at most 5%, S2A_QUALITY__MAX_OUTSIDE_SHARE)" in err.detail
