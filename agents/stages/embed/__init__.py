"""Face embedders: identity vectors, float32 and unit length, one row per face.

``S2A_MODELS__EMBEDDER`` chooses one (:func:`build_embedder`):

- ``dlib-resnet`` (default): dlib's ResNet descriptor, 128-d, from the installed
  ``face_recognition_models`` package (:mod:`.dlib_resnet`);
- ``inception-resnet-v1``: facenet-pytorch's InceptionResnetV1, 512-d, from the local
  weights file ``S2A_MODELS__EMBEDDER_WEIGHTS`` (:mod:`.inception`); a missing file is an
  error, never a silent random fallback;
- ``random-init``: InceptionResnetV1 with seeded random weights, 512-d. It recognizes
  nobody; only tests and benchmarks that ask for it by name use it.

Every embedder reads :class:`~agents.records.EmbedInput` (image, detector box, aligned
crop: each takes what it needs) and says what it is: ``name`` (recorded on every face),
``dim``, ``weights_sha256`` (None for random weights), ``random_init`` and ``space``, the
:class:`~agents.records.EmbeddingSpace` that names the stores its vectors go to.

Example::

    embedder = build_embedder(settings.models, batch_size=32)
    vectors = embedder.embed([EmbedInput(image.pixels, face.box, aligned.crops[160])])
    vectors.shape, vectors.dtype      # (1, 128) float32
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agents.records import EmbeddingSpace, EmbedInput
from agents.stages.embed import dlib_resnet, inception
from agents.stages.embed.dlib_resnet import DlibResnetEmbedder
from agents.stages.embed.inception import INPUT_SIZE, InceptionEmbedder
from schemas.settings import ModelSettings

__all__ = [
    "EMBEDDERS",
    "INPUT_SIZE",
    "DlibResnetEmbedder",
    "EmbedInput",
    "Embedder",
    "EmbeddingSpace",
    "InceptionEmbedder",
    "build_embedder",
    "embedder_space",
]

#: The values of ``S2A_MODELS__EMBEDDER`` and the length of each one's vectors.
EMBEDDERS: dict[str, int] = {
    "dlib-resnet": dlib_resnet.DIM,
    "inception-resnet-v1": inception.DIM,
    "random-init": inception.DIM,
}


class Embedder(Protocol):
    """What the pipeline, the reference library and ``s2a faces reembed`` embed with."""

    name: str
    dim: int
    weights_sha256: str | None
    random_init: bool
    batch_size: int

    @property
    def space(self) -> EmbeddingSpace: ...

    def embed(self, faces: Sequence[EmbedInput]) -> npt.NDArray[np.float32]:
        """``(len(faces), dim)`` float32 rows of unit length, in order."""
        ...


def build_embedder(models: ModelSettings, batch_size: int = 32) -> Embedder:
    """Load the embedder ``models.embedder`` names (nothing is downloaded)."""
    if models.embedder == "dlib-resnet":
        return DlibResnetEmbedder(batch_size)
    if models.embedder == "inception-resnet-v1":
        return InceptionEmbedder.from_file(models.embedder_weights, batch_size)
    return InceptionEmbedder.seeded(models.embedder_seed, batch_size)


def embedder_space(models: ModelSettings) -> EmbeddingSpace:
    """The space :func:`build_embedder` would embed into, without loading a model (the
    weights files are hashed): for opening the right stores from the settings alone."""
    if models.embedder == "dlib-resnet":
        name = dlib_resnet.dlib_name()
    elif models.embedder == "inception-resnet-v1":
        name = inception.weights_name(inception.checked_weights(models.embedder_weights))
    else:
        name = inception.seeded_name(models.embedder_seed)
    return EmbeddingSpace(name, EMBEDDERS[models.embedder])
