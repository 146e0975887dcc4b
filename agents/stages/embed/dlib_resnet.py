"""dlib's ResNet face descriptor: 128-d vectors, ~99.4 % on LFW, public-domain weights.

Both model files ship in the ``face_recognition_models`` package: ``dlib-bin`` (a prebuilt
dlib) runs the 5-point shape predictor inside the detector's box and cuts dlib's own aligned
chip (150 px, padding 0.25: the alignment the network was trained on); the ResNet turns each
chip into a descriptor, run by PyTorch from dlib's own weights file (:mod:`.dlib_net`: the
same descriptors as dlib's ``compute_face_descriptor``, at a fraction of the cost of that
BLAS-less build). The 68-point predictor that the package also ships is never used: its
training data forbids commercial use.

dlib's descriptors are not unit-length (about 1.5 on the London set); they are L2-normalized
here, as every embedder's output is. Distances and thresholds in this project are on the
normalized vectors (``bench/identity.py``, BENCHMARKS.md "Identity").

Example::

    embedder = DlibResnetEmbedder(batch_size=32)
    embedder.embed([EmbedInput(image.pixels, face.box, aligned.crops[160])])  # (1, 128)
    embedder.name       # 'dlib-resnet/sha256=...' (both files' hash, first 12 hex digits)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agents.records import EmbeddingSpace, EmbedInput, RGBImage
from agents.stages.embed.dlib_net import DlibResnet, read_dlib_resnet
from agents.stages.embed.files import package_file, sha256_of

__all__ = ["CHIP_PADDING", "CHIP_SIZE", "DIM", "DlibResnetEmbedder", "model_files"]

DIM = 128
"""Length of a dlib face descriptor."""
KIND = "dlib-resnet"
PACKAGE = "face_recognition_models"
PREDICTOR = "models/shape_predictor_5_face_landmarks.dat"
DESCRIPTOR = "models/dlib_face_recognition_resnet_model_v1.dat"
#: dlib's defaults for ``get_face_chip``: the framing its ResNet was trained on.
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def model_files() -> tuple[Path, Path]:
    """The 5-point predictor and the ResNet files, from the installed package."""
    return (
        package_file(PACKAGE, PREDICTOR, "dlib 5-point shape predictor"),
        package_file(PACKAGE, DESCRIPTOR, "dlib ResNet face descriptor"),
    )


def weights_sha256() -> str:
    """SHA-256 of the predictor's then the ResNet's bytes: both decide the vectors."""
    return sha256_of(model_files())


def dlib_name() -> str:
    """The embedder name (``faces.embedder``), without loading the models."""
    return f"{KIND}/sha256={weights_sha256()[:12]}"


class DlibResnetEmbedder:
    """dlib's 5-point predictor, aligned chip and ResNet descriptor over detected faces.

    Each :class:`EmbedInput` gives the image and the detector's box; the aligned crop is not
    used (dlib aligns with its own predictor and template).
    """

    dim = DIM
    random_init = False

    def __init__(self, batch_size: int = 32) -> None:
        import dlib

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        predictor, descriptor = model_files()
        self.batch_size = batch_size
        digest = sha256_of((predictor, descriptor))
        self.weights_sha256: str | None = digest
        self.name = f"{KIND}/sha256={digest[:12]}"
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(predictor))
        self._net = DlibResnet(read_dlib_resnet(descriptor))

    @property
    def space(self) -> EmbeddingSpace:
        return EmbeddingSpace(self.name, self.dim)

    def chip(self, face: EmbedInput, index: int = 0) -> RGBImage:
        """dlib's aligned ``CHIP_SIZE`` px chip of one face: its 5 points found inside the box."""
        image = _checked_image(face.image, index)
        shape = self._predictor(image, self._rectangle(face.box, index))
        chip = self._dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        return np.asarray(chip, dtype=np.uint8)

    def embed(self, faces: Sequence[EmbedInput]) -> npt.NDArray[np.float32]:
        """``(len(faces), 128)`` unit-length float32 rows, one per face, in order."""
        out = np.empty((len(faces), DIM), dtype=np.float32)
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start : start + self.batch_size]
            raw = self._net.describe([self.chip(face, start + i) for i, face in enumerate(chunk)])
            out[start : start + len(chunk)] = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        return out

    def _rectangle(self, box: tuple[float, float, float, float], index: int) -> object:
        x1, y1, x2, y2 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            raise ValueError(f"face {index}: box must be finite x1 < x2, y1 < y2, got {box}")
        return self._dlib.rectangle(round(x1), round(y1), round(x2), round(y2))


def _checked_image(image: RGBImage, index: int) -> RGBImage:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"face {index}: image must be an H x W x 3 uint8 RGB array, "
            f"got shape {image.shape} dtype {image.dtype}"
        )
    # dlib reads the buffer as packed rows; a view (a crop, a flipped array) is copied.
    return np.ascontiguousarray(image)
