"""Face detection on real photos: MTCNN batched over mixed sizes, RetinaFace's loading."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from agents.errors import ModelWeightsMissing
from agents.records import CleanImage, Detection
from agents.stages.detect import (
    MtcnnDetector,
    PaddedBatch,
    RetinaFaceDetector,
    bucket_size,
    build_detector,
    detections_from_retinaface,
    power_of_two_runs,
)
from schemas.settings import ModelSettings

PORTRAIT_NAMES = (
    "london_001_neutral.jpg",
    "london_001_smiling.jpg",
    "london_004_neutral.jpg",
    "london_004_smiling.jpg",
    "london_007_neutral.jpg",
    "london_013_neutral.jpg",
    "selfie_lisa1.jpg",
    "selfie_zoom_30cm.jpg",
    "commons_chris_pratt_2018.jpg",
)


def _image(pixels: np.ndarray) -> CleanImage:
    return CleanImage(pixels=np.ascontiguousarray(pixels, dtype=np.uint8), format="PNG")


@pytest.mark.parametrize("name", PORTRAIT_NAMES)
def test_one_face_with_landmarks_inside_its_box(
    name: str, portraits: dict[str, CleanImage], portrait_faces: dict[str, list[Detection]]
) -> None:
    image = portraits[name]
    faces = portrait_faces[name]
    assert len(faces) == 1
    face = faces[0]
    assert face.prob > 0.95
    assert face.landmarks.shape == (5, 2)
    assert face.landmarks.dtype == np.float32
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= image.width + 1
    assert 0 <= y1 < y2 <= image.height + 1
    xs, ys = face.landmarks[:, 0], face.landmarks[:, 1]
    assert np.all((xs > x1) & (xs < x2) & (ys > y1) & (ys < y2))
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    # LANDMARK_NAMES order: image-left before image-right; eyes above nose above mouth.
    assert left_eye[0] < right_eye[0]
    assert mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_coordinates_are_in_full_resolution(
    detector: MtcnnDetector, photo: Callable[[str], CleanImage]
) -> None:
    small = photo("london_001_neutral.jpg")
    big = _image(cv2.resize(small.pixels, None, fx=3.0, fy=3.0, interpolation=cv2.INTER_CUBIC))
    [[face_small], [face_big]] = detector.detect([small, big])
    # The big one went through the 640 px downscale; its coordinates must come back x3.
    scale = face_small.size
    np.testing.assert_allclose(np.array(face_big.box) / 3.0, face_small.box, atol=0.06 * scale)
    np.testing.assert_allclose(face_big.landmarks / 3.0, face_small.landmarks, atol=0.04 * scale)


def test_batch_results_equal_single_image_results(
    detector: MtcnnDetector, photo: Callable[[str], CleanImage]
) -> None:
    # Three different sizes: 512x512, 600x800 and 768x1024 (downscaled for detection).
    images = [
        photo(n) for n in ("london_004_neutral.jpg", "selfie_lisa1.jpg", "selfie_zoom_30cm.jpg")
    ]
    batched = detector.detect(images)
    singles = [detector.detect([image])[0] for image in images]
    assert [len(f) for f in batched] == [len(f) for f in singles] == [1, 1, 1]
    for got, want in zip(batched, singles, strict=True):
        np.testing.assert_allclose(got[0].box, want[0].box, atol=1e-2)
        np.testing.assert_allclose(got[0].landmarks, want[0].landmarks, atol=1e-2)
        assert got[0].prob == pytest.approx(want[0].prob, abs=1e-4)


@pytest.mark.parametrize("name", ["london_002_neutral.jpg", "london_001_smiling.jpg"])
@pytest.mark.parametrize("cut", [0.0, 0.1, 0.2])
def test_a_face_at_the_edge_keeps_its_landmarks(
    detector: MtcnnDetector, photo: Callable[[str], CleanImage], name: str, cut: float
) -> None:
    # Crop the photo so the face's box starts at the top-left corner (cut 0) or loses a
    # tenth or a fifth of its width and height; the landmarks must stay where they were.
    # Without the grey margin they moved 15-38 px at cut 0 and up to 85 px at 0.2.
    image = photo(name)
    [[face]] = detector.detect([image])
    x1, y1, x2, y2 = face.box
    left, top = int(x1 + cut * (x2 - x1)), int(y1 + cut * (y2 - y1))
    [found] = detector.detect([_image(image.pixels[top:, left:])])
    edge = max(found, key=lambda f: f.size)
    expected = face.landmarks - np.array([left, top], dtype=np.float32)
    np.testing.assert_allclose(edge.landmarks, expected, atol=0.04 * face.size)


def test_batch_shapes_are_bounded() -> None:
    assert [bucket_size(n) for n in (1, 2, 3, 5, 33, 64, 65, 130, 512)] == [
        1, 2, 4, 8, 64, 64, 128, 192, 512,
    ]  # fmt: skip
    assert {bucket_size(n) for n in range(1, 513)} == {1, 2, 4, 8, 16, 32, *range(64, 513, 64)}
    for n in range(0, 40):
        runs = power_of_two_runs(n)
        assert sum(runs) == n
        assert runs == sorted(set(runs), reverse=True)
        assert all(r & (r - 1) == 0 for r in runs)


def test_padded_batch_returns_the_real_rows_unchanged() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.PReLU(4)).eval()

    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = net(x)
            return y, y.flatten(1).sum(1)

    x = torch.randn(5, 3, 12, 12)
    with torch.inference_mode():
        out, total = PaddedBatch(Two())(x)
        want, want_total = Two()(x)
    assert out.shape == want.shape == (5, 4, 10, 10)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(total, want_total)


def test_the_nets_see_a_handful_of_batch_shapes(
    detector: MtcnnDetector, portraits: dict[str, CleanImage]
) -> None:
    # Batches of every size from 1 to 9 portraits: without bucketing, RNet and ONet see as
    # many shapes as candidate counts, and PNet one per batch size and pyramid level.
    seen: dict[str, set[int]] = {"pnet": set(), "rnet": set(), "onet": set()}
    mtcnn = detector._mtcnn
    # What the networks themselves run on: inside a PaddedBatch wrapper where there is one.
    nets = {name: getattr(getattr(mtcnn, name), "inner", getattr(mtcnn, name)) for name in seen}
    hooks = [
        nets[name].register_forward_pre_hook(
            lambda _m, args, name=name: seen[name].add(args[0].shape[0])
        )
        for name in seen
    ]
    images = list(portraits.values())
    try:
        for n in range(1, len(images) + 1):
            detector.detect(images[:n])
    finally:
        for hook in hooks:
            hook.remove()
    powers = {1 << k for k in range(10)}
    assert seen["pnet"] <= powers
    assert seen["rnet"] | seen["onet"] <= {bucket_size(n) for n in range(1, 513)}
    assert len(seen["rnet"]) <= 8


def test_no_face_on_blank_or_noise(detector: MtcnnDetector) -> None:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    blank = np.full((300, 400, 3), 200, dtype=np.uint8)
    assert detector.detect([_image(noise), _image(blank)]) == [[], []]


def test_empty_batch(detector: MtcnnDetector) -> None:
    assert detector.detect([]) == []


def test_build_detector_follows_settings() -> None:
    detector = build_detector(ModelSettings(detect_max_side=320))
    assert isinstance(detector, MtcnnDetector)
    assert detector.max_side == 320
    assert detector.name == "mtcnn"
    with pytest.raises(ModelWeightsMissing, match="S2A_MODELS__RETINAFACE_WEIGHTS"):
        build_detector(ModelSettings(detector="retinaface"))


@pytest.fixture(scope="module")
def retinaface_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight RetinaFace state dict saved as a file, as the real one would be."""
    from agents.stages.detect import _import_retinaface

    _, module_cls = _import_retinaface()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("retinaface") / "retinaface.pth"
    torch.save(module_cls().state_dict(), path)
    return path


def test_retinaface_loads_weights_file_and_detects(
    retinaface_weights: Path, photo: Callable[[str], CleanImage]
) -> None:
    # Random weights: only the plumbing (loading, backend, output types) can be checked.
    detector = RetinaFaceDetector(retinaface_weights, threshold=0.9, max_side=160)
    assert detector.name == "retinaface"
    result = detector.detect([photo("london_001_neutral.jpg")])
    assert isinstance(result, list)
    assert len(result) == 1
    assert isinstance(result[0], list)
    for face in result[0]:
        assert isinstance(face, Detection)
        assert face.landmarks.shape == (5, 2)


def test_retinaface_missing_file_says_where_and_how(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "retinaface.pth"
    with pytest.raises(ModelWeightsMissing) as caught:
        RetinaFaceDetector(missing)
    message = str(caught.value)
    assert str(missing) in message
    assert "S2A_MODELS__RETINAFACE_WEIGHTS" in message
    assert "deepface_models" in message
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.path == missing


def test_retinaface_wrong_state_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "retinaface.pth"
    torch.save({"not_a_layer": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a retina-face RetinaFace state dict"):
        RetinaFaceDetector(path)


def test_retinaface_landmarks_reordered_by_image_side() -> None:
    # retina-face's own docstring example: its right_eye is the image-left one.
    found = {
        "face_1": {
            "score": np.float32(0.99934),
            "facial_area": [155, 81, 434, 443],
            "landmarks": {
                "right_eye": [257.82974, 209.64787],
                "left_eye": [374.93427, 251.78687],
                "nose": [303.4773, 299.91144],
                "mouth_right": [228.37329, 338.73193],
                "mouth_left": [320.21982, 374.58798],
            },
        }
    }
    [face] = detections_from_retinaface(found, fx=0.5, fy=0.25)
    assert face.box == (310.0, 324.0, 868.0, 1772.0)
    assert face.prob == pytest.approx(0.99934, abs=1e-5)
    np.testing.assert_allclose(
        face.landmarks,
        np.array(
            [
                [257.82974 / 0.5, 209.64787 / 0.25],
                [374.93427 / 0.5, 251.78687 / 0.25],
                [303.4773 / 0.5, 299.91144 / 0.25],
                [228.37329 / 0.5, 338.73193 / 0.25],
                [320.21982 / 0.5, 374.58798 / 0.25],
            ]
        ),
        rtol=1e-6,
    )
    assert face.landmarks[0, 0] < face.landmarks[1, 0]
    assert detections_from_retinaface({}) == []


@pytest.mark.parametrize(
    ("size", "side"),
    [((512, 512), 512), ((4000, 3000), 640), ((300, 200), 384), ((641, 100), 640), ((1, 1), 128)],
)
def test_canvas_side_depends_on_the_image_alone(
    size: tuple[int, int], side: int, detector: MtcnnDetector
) -> None:
    assert detector.max_side == 640
    assert detector.canvas_side(*size) == side
