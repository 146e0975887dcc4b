"""The face embedder: shape, normalization, seeding, and loading a real weights file."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from PIL import Image

from agents.errors import ModelWeightsMissing
from agents.records import CleanImage, Detection
from agents.stages.align import align
from agents.stages.detect import MtcnnDetector
from agents.stages.embed import FaceEmbedder


def _crop(image: CleanImage, face: Detection) -> np.ndarray:
    return align(image, face.landmarks, sizes=(160,)).crops[160]


@pytest.fixture(scope="module")
def crops(
    portraits: dict[str, CleanImage], portrait_faces: dict[str, list[Detection]]
) -> list[np.ndarray]:
    """Aligned 160 px crops of the portraits, in a fixed order."""
    return [_crop(portraits[name], portrait_faces[name][0]) for name in sorted(portraits)]


def test_shape_dtype_and_unit_length(embedder: FaceEmbedder, crops: list[np.ndarray]) -> None:
    vectors = embedder.embed(crops)
    assert vectors.shape == (len(crops), 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 512)


def test_random_init_is_labelled(embedder: FaceEmbedder) -> None:
    assert embedder.random_init is True
    assert embedder.name == "inception_resnet_v1/random-init/seed=0"


def test_same_seed_same_vectors_other_seed_other_vectors(
    embedder: FaceEmbedder, crops: list[np.ndarray]
) -> None:
    again = FaceEmbedder(weights=None, seed=0, batch_size=3)  # other batching, same answers
    other = FaceEmbedder(weights=None, seed=1, batch_size=8)
    first = embedder.embed(crops)
    np.testing.assert_allclose(again.embed(crops), first, atol=1e-5)
    assert not np.allclose(other.embed(crops), first, atol=1e-3)
    assert other.name.endswith("seed=1")


def test_seeding_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    FaceEmbedder(weights=None, seed=0, batch_size=4)
    assert torch.equal(torch.rand(3), expected)


def test_reencoded_copy_is_closer_than_another_person(
    embedder: FaceEmbedder,
    detector: MtcnnDetector,
    portraits: dict[str, CleanImage],
    portrait_faces: dict[str, list[Detection]],
) -> None:
    # The property duplicate detection needs, on the whole pipeline (detect, align, embed).
    original = portraits["london_001_neutral.jpg"]
    buffer = io.BytesIO()
    Image.fromarray(original.pixels).save(buffer, "JPEG", quality=70)
    recoded = CleanImage(np.asarray(Image.open(buffer).convert("RGB")), "JPEG")
    [[recoded_face]] = detector.detect([recoded])
    a, a_jpeg, b = embedder.embed(
        [
            _crop(original, portrait_faces["london_001_neutral.jpg"][0]),
            _crop(recoded, recoded_face),
            _crop(portraits["london_004_neutral.jpg"], portrait_faces["london_004_neutral.jpg"][0]),
        ]
    ).astype(np.float64)
    assert float(a @ a_jpeg) > float(a @ b)
    same = embedder.embed([_crop(original, portrait_faces["london_001_neutral.jpg"][0])] * 2)
    assert float(same[0] @ same[1]) == pytest.approx(1.0, abs=1e-6)


def test_other_crop_sizes_are_resized_and_bad_crops_refused(embedder: FaceEmbedder) -> None:
    rng = np.random.default_rng(0)
    assert embedder.embed([rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)]).shape == (1, 512)
    with pytest.raises(ValueError, match="crop 1 must be an H x W x 3 uint8 RGB array"):
        embedder.embed([np.zeros((160, 160, 3), np.uint8), np.zeros((160, 160), np.uint8)])


def test_weights_file_round_trip(tmp_path: Path, crops: list[np.ndarray]) -> None:
    torch.manual_seed(42)
    reference = InceptionResnetV1(classify=False).eval()
    state = reference.state_dict()
    # facenet-pytorch's vggface2/casia files carry the classifier head: it must be dropped.
    state["logits.weight"] = torch.zeros(8631, 512)
    state["logits.bias"] = torch.zeros(8631)
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, path)

    loaded = FaceEmbedder(weights=path, seed=0, batch_size=4)

    assert loaded.random_init is False
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert loaded.name == f"inception_resnet_v1/file={path.name}/sha256={digest}"
    batch = torch.from_numpy(
        np.stack([(c.astype(np.float32) - 127.5) / 128.0 for c in crops]).transpose(0, 3, 1, 2)
    )
    with torch.inference_mode():
        expected = reference(batch).numpy()
    np.testing.assert_allclose(loaded.embed(crops), expected, atol=1e-5)


def test_missing_weights_file_says_where(tmp_path: Path) -> None:
    missing = tmp_path / "vggface2.pt"
    with pytest.raises(ModelWeightsMissing) as caught:
        FaceEmbedder(weights=missing, seed=0, batch_size=4)
    assert str(missing) in str(caught.value)
    assert "S2A_MODELS__EMBEDDER_WEIGHTS" in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


def test_wrong_state_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="not an InceptionResnetV1 state dict"):
        FaceEmbedder(weights=path, seed=0, batch_size=4)
