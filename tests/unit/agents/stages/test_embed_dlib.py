"""dlib's ResNet descriptor, the default embedder, on the real model files the installed
``face_recognition_models`` package ships and on real photos."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from agents.errors import ModelWeightsMissing, PackageModelMissing
from agents.records import CleanImage, Detection, EmbedInput
from agents.stages.align import align
from agents.stages.embed import DlibResnetEmbedder, embedder_space
from agents.stages.embed.dlib_net import DlibResnet, read_dlib_resnet
from agents.stages.embed.dlib_resnet import model_files
from agents.stages.embed.files import package_file
from schemas.settings import ModelSettings

LONDON = [
    "london_001_neutral.jpg",
    "london_001_smiling.jpg",
    "london_004_neutral.jpg",
    "london_004_smiling.jpg",
    "london_007_neutral.jpg",
    "london_013_neutral.jpg",
]


def _input(image: CleanImage, face: Detection) -> EmbedInput:
    return EmbedInput(image.pixels, face.box, align(image, face.landmarks, sizes=(160,)).crops[160])


@pytest.fixture(scope="module")
def london(
    dlib_embedder: DlibResnetEmbedder,
    portraits: dict[str, CleanImage],
    portrait_faces: dict[str, list[Detection]],
) -> dict[str, np.ndarray]:
    """The London portraits' vectors, by file name."""
    inputs = [_input(portraits[name], portrait_faces[name][0]) for name in LONDON]
    return dict(zip(LONDON, dlib_embedder.embed(inputs), strict=True))


def test_the_models_load_from_the_installed_package(dlib_embedder: DlibResnetEmbedder) -> None:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None
    assert spec.submodule_search_locations
    models = Path(spec.submodule_search_locations[0]) / "models"
    predictor, descriptor = model_files()
    assert (predictor, descriptor) == (
        models / "shape_predictor_5_face_landmarks.dat",
        models / "dlib_face_recognition_resnet_model_v1.dat",
    )
    # The hash covers both files (both decide the vectors), as `cat a b | sha256sum`.
    digest = hashlib.sha256(predictor.read_bytes() + descriptor.read_bytes()).hexdigest()
    assert dlib_embedder.weights_sha256 == digest
    assert dlib_embedder.name == f"dlib-resnet/sha256={digest[:12]}"
    assert (dlib_embedder.dim, dlib_embedder.random_init) == (128, False)
    # The settings name the same space without loading anything.
    assert embedder_space(ModelSettings()) == dlib_embedder.space


def test_vectors_are_128_unit_float32_rows_whatever_the_batch(
    dlib_embedder: DlibResnetEmbedder,
    portraits: dict[str, CleanImage],
    portrait_faces: dict[str, list[Detection]],
    london: dict[str, np.ndarray],
) -> None:
    vectors = np.stack([london[name] for name in LONDON])
    assert vectors.shape == (len(LONDON), 128)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert dlib_embedder.embed([]).shape == (0, 128)
    one = dlib_embedder.embed([_input(portraits[LONDON[3]], portrait_faces[LONDON[3]][0])])
    np.testing.assert_allclose(one[0], london[LONDON[3]], atol=1e-5)


def test_pytorch_runs_dlibs_own_network_to_float_tolerance(
    dlib_embedder: DlibResnetEmbedder,
    portraits: dict[str, CleanImage],
    portrait_faces: dict[str, list[Detection]],
) -> None:
    import dlib

    chips = [dlib_embedder.chip(_input(portraits[n], portrait_faces[n][0])) for n in LONDON]
    assert {chip.shape for chip in chips} == {(150, 150, 3)}
    reference = dlib.face_recognition_model_v1(str(model_files()[1]))
    expected = np.asarray([np.asarray(v) for v in reference.compute_face_descriptor(chips)])
    found = DlibResnet(read_dlib_resnet(model_files()[1])).describe(chips)
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_a_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    data = model_files()[1].read_bytes()
    for name, bad in (("cut", data[: len(data) // 2]), ("other", data[:400] + b"\x05junk_")):
        path = tmp_path / f"{name}.dat"
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=f"{path} is not dlib's face recognition ResNet"):
            read_dlib_resnet(path)


def test_the_same_person_is_closer_than_anyone_else_by_a_margin(
    london: dict[str, np.ndarray],
) -> None:
    same, other = [], []
    for a, b in itertools.combinations(LONDON, 2):
        distance = float(np.linalg.norm(london[a] - london[b]))
        (same if a.split("_")[1] == b.split("_")[1] else other).append(distance)
    assert len(same) == 2
    neutral_smiling = float(
        np.linalg.norm(london["london_001_neutral.jpg"] - london["london_001_smiling.jpg"])
    )
    # Measured: same person 0.08-0.29, different people 0.33 and above (BENCHMARKS.md).
    assert neutral_smiling < 0.3
    assert max(same) + 0.1 < min(other)


def test_bad_boxes_and_images_are_named(dlib_embedder: DlibResnetEmbedder) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    good = EmbedInput(image, (0.0, 0.0, 64.0, 64.0), image)
    with pytest.raises(ValueError, match=r"face 1: box must be finite x1 < x2"):
        dlib_embedder.embed([good, EmbedInput(image, (10.0, 0.0, 5.0, 64.0), image)])
    with pytest.raises(ValueError, match=r"face 0: image must be an H x W x 3 uint8"):
        dlib_embedder.embed([EmbedInput(image[..., 0], (0.0, 0.0, 64.0, 64.0), image)])


def test_a_missing_package_file_names_it_and_how_to_install() -> None:
    with pytest.raises(PackageModelMissing) as caught:
        package_file("face_recognition_models", "models/no_such_model.dat", "dlib ResNet")
    message = str(caught.value)
    assert "models/no_such_model.dat" in message
    assert "pip install face_recognition_models" in message
    assert isinstance(caught.value, ModelWeightsMissing)
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(PackageModelMissing, match="package no_such_package_s2a is not installed"):
        package_file("no_such_package_s2a", "models/x.dat", "dlib ResNet")
