"""Quality gate: is the detected face good enough to train on?

:func:`measure` computes every score of the main (largest) face; :func:`check` turns the
scores into at most one rejection; :func:`assess` does both. Scores are stored whether the
face passed or not, so thresholds can be re-decided later without reprocessing.

Checks, in the order a rejection is reported (the first failure wins):

=================  =====================================================================
multiple_faces     another face at least ``second_face_ratio`` of the main face's size
face_cut_off       a landmark outside the image, or more than ``max_outside_share`` of the
                   face box's width (height) beyond the left or right (top or bottom) edge
low_confidence     detector probability below ``min_detection_prob``
face_too_small     shorter side of the face box below ``min_face_px`` (original pixels)
bad_pose           ``|yaw|``, ``|pitch|`` or ``|roll|`` above its limit
bad_exposure       face too dark or too bright, or too many clipped pixels
blurry             variance of the Laplacian of the face (128 px grey) below the limit
=================  =====================================================================

Exposure is checked before sharpness because a dark face also has a low Laplacian
variance: the reason given should be the cause, not its symptom. For the same reason a
face cut by the frame is reported before confidence and pose: the detector is less sure
of half a face, and its landmarks (hence the pose) are guesses past the edge. A cut face
must not pass at all, because the align stage fills whatever lies outside the photo by
mirroring its edge: two half-faces and a second mouth in the stored crops.

Example::

    report = assess(image, faces, settings.quality)
    report.face, report.scores["sharpness"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from agents.errors import Rejected
from agents.records import CleanImage, Detection, QualityReport, RGBImage
from schemas.reasons import ReasonCode, Stage
from schemas.settings import QualitySettings

__all__ = ["assess", "check", "measure", "pose_from_landmarks"]

SHARPNESS_SIDE = 128
"""The face box is resized to this square before the Laplacian, so sharpness does not
depend on the photo's resolution."""
DARK_LEVEL = 8
"""Grey levels at or below this count as clipped black."""
BRIGHT_LEVEL = 247
"""Grey levels at or above this count as clipped white."""

# Pose model constants, in units of the distance between the eyes. Calibrated on the 86
# frontal neutral photos of the London set (MTCNN landmarks): the nose tip sits 0.48 of the
# way from the eye line to the mouth line, and the mouth line 1.07 eye distances below the
# eyes. NOSE_DEPTH is how far the nose tip stands in front of the eye/mouth plane
# (anthropometric: ~33 mm against ~62 mm between the pupils).
NOSE_DEPTH = 0.55
NOSE_HEIGHT = 0.48
EYE_TO_MOUTH = 1.07


def pose_from_landmarks(landmarks: npt.ArrayLike) -> tuple[float, float, float]:
    """Yaw, pitch and roll in degrees from the 5 landmarks (``LANDMARK_NAMES`` order).

    * roll: in-plane rotation of the eye line, positive counter-clockwise as seen in the
      image (the sign ``cv2.getRotationMatrix2D`` uses for its angle);
    * yaw: positive when the nose points to the image's right;
    * pitch: positive when the chin is up (the nose tip moves towards the eye line).

    Yaw and pitch come from a rigid model: the nose tip stands ``NOSE_DEPTH`` eye distances
    in front of the plane of the eyes and mouth, so turning by an angle a moves it
    ``NOSE_DEPTH * tan(a)`` (in projected eye distances) off where a frontal face has it.
    Rough by nature (about +-10 degrees on frontal faces); meant to reject clear profiles
    and strong tilts, not to measure head pose precisely.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_vec = pts[1] - pts[0]
    # y grows downwards, so a counter-clockwise (as seen) tilt makes dy negative.
    roll = math.degrees(math.atan2(-eye_vec[1], eye_vec[0]))
    # Undo the roll around the eyes' middle: the eye line becomes the x axis (x to the
    # image's right, y down) and the eyes' middle the origin.
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    level = np.array([[c, -s], [s, c]])
    _, _, nose, mouth_left, mouth_right = (pts - (pts[0] + pts[1]) / 2.0) @ level.T
    eye_dist = float(np.hypot(*eye_vec))
    mouth_mid = (mouth_left + mouth_right) / 2.0
    height = float(mouth_mid[1])
    # Where the face's midline (eyes' middle to mouth's middle) passes at the nose's height.
    along = nose[1] / height if abs(height) > 1e-9 else 0.0
    yaw = math.degrees(math.atan2(nose[0] - mouth_mid[0] * along, NOSE_DEPTH * eye_dist))
    # The eye-to-mouth height shrinks with cos(pitch) like the rest of the face, so the
    # nose's offset from its frontal height, in units of that height, is
    # (NOSE_DEPTH / EYE_TO_MOUTH) * tan(pitch).
    pitch = math.degrees(
        math.atan2(NOSE_HEIGHT * height - nose[1], NOSE_DEPTH / EYE_TO_MOUTH * abs(height))
    )
    return yaw, pitch, roll


def _face_crop(pixels: RGBImage, box: tuple[float, float, float, float]) -> RGBImage | None:
    """The face box clipped to the image, or None when nothing of it lies inside."""
    h, w = pixels.shape[:2]
    x1, y1, x2, y2 = box
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(w, math.ceil(x2)), min(h, math.ceil(y2))
    if right - left < 2 or bottom - top < 2:
        return None
    return pixels[top:bottom, left:right]


def _sharpness(grey: npt.NDArray[np.uint8]) -> float:
    small = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(small, cv2.CV_64F).var())


def _outside(face: Detection, width: int, height: int) -> tuple[float, int]:
    """How far the face leaves a ``width`` x ``height`` image.

    The largest share of the box lying beyond one edge (the overhang in pixels over the
    box's width for the left and right edges, over its height for the top and bottom;
    0 when the box is inside), and the number of landmarks outside ``[0, width] x
    [0, height]`` (pixel coordinates: the last column's centre is ``width - 0.5``).
    """
    x1, y1, x2, y2 = face.box
    box_w, box_h = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    share = max(0.0, -x1 / box_w, (x2 - width) / box_w, -y1 / box_h, (y2 - height) / box_h)
    pts = np.asarray(face.landmarks, dtype=np.float64).reshape(-1, 2)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= width) & (pts[:, 1] >= 0) & (pts[:, 1] <= height)
    return float(share), int(np.count_nonzero(~inside))


def measure(image: CleanImage, faces: Sequence[Detection]) -> QualityReport:
    """Every score of the largest face; raises ``Rejected(no_face)`` when there is none.

    ``second_face_ratio`` is the second largest face's size over the main face's (0 when
    alone); ``n_faces`` counts every detection, background faces included;
    ``outside_share`` is the largest share of the face box's side beyond one edge of the
    image (0 inside) and ``landmarks_outside`` how many of the 5 landmarks lie outside it.
    """
    if not faces:
        raise Rejected(ReasonCode.NO_FACE, Stage.DETECT, "the detector found no face")
    ordered = sorted(faces, key=lambda f: f.size, reverse=True)
    main = ordered[0]
    second_ratio = ordered[1].size / main.size if len(ordered) > 1 and main.size > 0 else 0.0
    crop = _face_crop(image.pixels, main.box)
    if crop is None:
        sharpness, brightness, clipped = 0.0, 0.0, 1.0
    else:
        grey = np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
        sharpness = _sharpness(grey)
        brightness = float(grey.mean())
        clipped = float(np.count_nonzero((grey <= DARK_LEVEL) | (grey >= BRIGHT_LEVEL)))
        clipped /= grey.size
    yaw, pitch, roll = pose_from_landmarks(main.landmarks)
    outside_share, landmarks_outside = _outside(main, image.width, image.height)
    scores = {
        "face_px": main.size,
        "detection_prob": main.prob,
        "n_faces": float(len(faces)),
        "second_face_ratio": second_ratio,
        "outside_share": outside_share,
        "landmarks_outside": float(landmarks_outside),
        "sharpness": sharpness,
        "brightness": brightness,
        "clipped_fraction": clipped,
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
    }
    return QualityReport(face=main, scores=scores)


def check(report: QualityReport, q: QualitySettings) -> None:
    """Raise ``Rejected`` at the quality stage for the first failed check (in the order of
    the module's table), else nothing."""
    s = report.scores

    def reject(reason: ReasonCode, detail: str) -> Rejected:
        return Rejected(reason, Stage.QUALITY, detail)

    if s["second_face_ratio"] >= q.second_face_ratio:
        raise reject(
            ReasonCode.MULTIPLE_FACES,
            f"second face ratio {s['second_face_ratio']:.2f} (its size over the main "
            f"face's) not below {q.second_face_ratio:.2f} (S2A_QUALITY__SECOND_FACE_RATIO); "
            f"{int(s['n_faces'])} faces found",
        )
    # Scores stored before this check existed have neither key; re-checking them must not
    # fail, and nothing says their face was cut.
    outside, cut_marks = s.get("outside_share", 0.0), int(s.get("landmarks_outside", 0.0))
    if cut_marks or outside > q.max_outside_share:
        marks = f"{cut_marks} of 5 landmarks outside the image, " if cut_marks else ""
        raise reject(
            ReasonCode.FACE_CUT_OFF,
            f"face cut by the frame: {marks}{outside:.0%} of the face box beyond the "
            f"image's edge (at most {q.max_outside_share:.0%}, "
            "S2A_QUALITY__MAX_OUTSIDE_SHARE)",
        )
    if s["detection_prob"] < q.min_detection_prob:
        raise reject(
            ReasonCode.LOW_CONFIDENCE,
            f"detection probability {s['detection_prob']:.3f} below "
            f"{q.min_detection_prob:.3f} (S2A_QUALITY__MIN_DETECTION_PROB)",
        )
    if s["face_px"] < q.min_face_px:
        raise reject(
            ReasonCode.FACE_TOO_SMALL,
            f"face size {s['face_px']:.1f} px below {q.min_face_px} px (S2A_QUALITY__MIN_FACE_PX)",
        )
    for angle, limit, setting in (
        ("yaw", q.max_yaw_deg, "S2A_QUALITY__MAX_YAW_DEG"),
        ("pitch", q.max_pitch_deg, "S2A_QUALITY__MAX_PITCH_DEG"),
        ("roll", q.max_roll_deg, "S2A_QUALITY__MAX_ROLL_DEG"),
    ):
        if abs(s[angle]) > limit:
            raise reject(
                ReasonCode.BAD_POSE,
                f"{angle} {s[angle]:.1f} deg beyond +-{limit:.1f} ({setting})",
            )
    if s["brightness"] < q.min_brightness:
        raise reject(
            ReasonCode.BAD_EXPOSURE,
            f"brightness {s['brightness']:.1f} below {q.min_brightness:.1f} "
            "(S2A_QUALITY__MIN_BRIGHTNESS)",
        )
    if s["brightness"] > q.max_brightness:
        raise reject(
            ReasonCode.BAD_EXPOSURE,
            f"brightness {s['brightness']:.1f} above {q.max_brightness:.1f} "
            "(S2A_QUALITY__MAX_BRIGHTNESS)",
        )
    if s["clipped_fraction"] > q.max_clipped_fraction:
        raise reject(
            ReasonCode.BAD_EXPOSURE,
            f"clipped fraction {s['clipped_fraction']:.3f} above {q.max_clipped_fraction:.3f} "
            "(S2A_QUALITY__MAX_CLIPPED_FRACTION)",
        )
    if s["sharpness"] < q.min_sharpness:
        raise reject(
            ReasonCode.BLURRY,
            f"sharpness {s['sharpness']:.1f} below {q.min_sharpness:.1f} "
            "(S2A_QUALITY__MIN_SHARPNESS)",
        )


def assess(image: CleanImage, faces: Sequence[Detection], q: QualitySettings) -> QualityReport:
    """Measure the main face and reject it if any check fails.

    Raises ``Rejected(no_face)`` at the detect stage when ``faces`` is empty, and
    ``Rejected`` at the quality stage for the first failed check (see the module table).
    """
    report = measure(image, faces)
    check(report, q)
    return report
