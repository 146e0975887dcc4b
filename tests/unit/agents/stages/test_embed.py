"""InceptionResnetV1 (a weights file, or seeded random init) and choosing an embedder from
the settings: shape, normalization, seeding, loading a real weights file, and the errors."""

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
from agents.records import CleanImage, Detection, EmbedInput
from agents.stages.align import align
from agents.stages.detect import MtcnnDetector
from agents.stages.embed import (
    EMBEDDERS,
    DlibResnetEmbedder,
    InceptionEmbedder,
    build_embedder,
    embedder_space,
)
from schemas.settings import ModelSettings


def _crop(image: CleanImage, face: Detection) -> np.ndarray:
    return align(image, face.landmarks, sizes=(160,)).crops[160]


def _inputs(crops: list[np.ndarray]) -> list[EmbedInput]:
    """Crops as embedder inputs: InceptionResnetV1 reads only the crop."""
    return [EmbedInput(c, (0.0, 0.0, float(c.shape[1]), float(c.shape[0])), c) for c in crops]


@pytest.fixture(scope="module")
def crops(
    portraits: dict[str, CleanImage], portrait_faces: dict[str, list[Detection]]
) -> list[np.ndarray]:
    """Aligned 160 px crops of the portraits, in a fixed order."""
    return [_crop(portraits[name], portrait_faces[name][0]) for name in sorted(portraits)]


def test_shape_dtype_and_unit_length(embedder: InceptionEmbedder, crops: list[np.ndarray]) -> None:
    vectors = embedder.embed(_inputs(crops))
    assert vectors.shape == (len(crops), 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 512)
    assert embedder.dim == embedder.space.dim == 512


def test_random_init_is_labelled(embedder: InceptionEmbedder) -> None:
    assert embedder.random_init is True
    assert embedder.weights_sha256 is None
    assert embedder.name == "inception-resnet-v1/random-init/seed=0"
    assert embedder.space.slug == "inception-resnet-v1-random-init-seed-0"


def test_same_seed_same_vectors_other_seed_other_vectors(
    embedder: InceptionEmbedder, crops: list[np.ndarray]
) -> None:
    again = InceptionEmbedder.seeded(seed=0, batch_size=3)  # other batching, same answers
    other = InceptionEmbedder.seeded(seed=1, batch_size=8)
    first = embedder.embed(_inputs(crops))
    np.testing.assert_allclose(again.embed(_inputs(crops)), first, atol=1e-5)
    assert not np.allclose(other.embed(_inputs(crops)), first, atol=1e-3)
    assert other.name.endswith("seed=1")


def test_seeding_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    InceptionEmbedder.seeded(seed=0, batch_size=4)
    assert torch.equal(torch.rand(3), expected)


def test_reencoded_copy_is_closer_than_another_person(
    embedder: InceptionEmbedder,
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
        _inputs(
            [
                _crop(original, portrait_faces["london_001_neutral.jpg"][0]),
                _crop(recoded, recoded_face),
                _crop(
                    portraits["london_004_neutral.jpg"],
                    portrait_faces["london_004_neutral.jpg"][0],
                ),
            ]
        )
    ).astype(np.float64)
    assert float(a @ a_jpeg) > float(a @ b)
    same = embedder.embed(
        _inputs([_crop(original, portrait_faces["london_001_neutral.jpg"][0])] * 2)
    )
    assert float(same[0] @ same[1]) == pytest.approx(1.0, abs=1e-6)


def test_other_crop_sizes_are_resized_and_bad_crops_refused(embedder: InceptionEmbedder) -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert embedder.embed(_inputs([big])).shape == (1, 512)
    with pytest.raises(ValueError, match="crop 1 must be an H x W x 3 uint8 RGB array"):
        embedder.embed(_inputs([np.zeros((160, 160, 3), np.uint8), np.zeros((160, 160), np.uint8)]))


def test_weights_file_round_trip(tmp_path: Path, crops: list[np.ndarray]) -> None:
    torch.manual_seed(42)
    reference = InceptionResnetV1(classify=False).eval()
    state = reference.state_dict()
    # facenet-pytorch's vggface2/casia files carry the classifier head: it must be dropped.
    state["logits.weight"] = torch.zeros(8631, 512)
    state["logits.bias"] = torch.zeros(8631)
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, path)

    loaded = InceptionEmbedder.from_file(path, batch_size=4)

    assert loaded.random_init is False
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.weights_sha256 == digest
    assert loaded.name == f"inception-resnet-v1/sha256={digest[:12]}"
    # The settings name the same space without loading the model.
    models = ModelSettings(embedder="inception-resnet-v1", embedder_weights=path)
    assert embedder_space(models) == loaded.space
    batch = torch.from_numpy(
        np.stack([(c.astype(np.float32) - 127.5) / 128.0 for c in crops]).transpose(0, 3, 1, 2)
    )
    with torch.inference_mode():
        expected = reference(batch).numpy()
    np.testing.assert_allclose(loaded.embed(_inputs(crops)), expected, atol=1e-5)


def test_missing_weights_file_says_where(tmp_path: Path) -> None:
    missing = tmp_path / "vggface2.pt"
    models = ModelSettings(embedder="inception-resnet-v1", embedder_weights=missing)
    for attempt in (lambda: build_embedder(models), lambda: embedder_space(models)):
        with pytest.raises(ModelWeightsMissing) as caught:
            attempt()
        assert str(missing) in str(caught.value)
        assert "S2A_MODELS__EMBEDDER_WEIGHTS" in str(caught.value)
        assert isinstance(caught.value, FileNotFoundError)


def test_inception_without_a_weights_file_names_the_setting_never_random() -> None:
    # No silent fallback to random weights: the setting that is missing is named.
    with pytest.raises(ModelWeightsMissing) as caught:
        build_embedder(ModelSettings(embedder="inception-resnet-v1"))
    assert "no path configured" in str(caught.value)
    assert "S2A_MODELS__EMBEDDER_WEIGHTS" in str(caught.value)


def test_wrong_state_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="not an InceptionResnetV1 state dict"):
        InceptionEmbedder.from_file(path, batch_size=4)


def test_the_settings_choose_the_embedder() -> None:
    assert ModelSettings().embedder == "dlib-resnet"
    assert isinstance(build_embedder(ModelSettings(), batch_size=4), DlibResnetEmbedder)
    seeded = build_embedder(ModelSettings(embedder="random-init", embedder_seed=3), batch_size=4)
    assert isinstance(seeded, InceptionEmbedder)
    assert (seeded.name, seeded.random_init, seeded.batch_size) == (
        "inception-resnet-v1/random-init/seed=3",
        True,
        4,
    )
    for kind, dim in EMBEDDERS.items():
        models = ModelSettings(embedder=kind)  # type: ignore[arg-type]
        if kind != "inception-resnet-v1":
            assert embedder_space(models).dim == dim
