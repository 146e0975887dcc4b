"""facenet-pytorch's InceptionResnetV1: 512-d vectors from the tight aligned 160 px crop.

With a weights file (facenet-pytorch's VGGFace2 or CASIA-WebFace ``.pt`` state dicts, or any
InceptionResnetV1 state dict) the vectors recognize people. :meth:`InceptionEmbedder.seeded`
builds a seeded random initialisation instead: deterministic vectors that only find
near-identical images, for tests and benchmarks that ask for it by name (``random-init``);
every output then says so (``random_init`` is True, ``name`` contains ``random-init``).

Example::

    embedder = InceptionEmbedder.from_file(Path("vggface2.pt"), batch_size=32)
    embedder.embed([EmbedInput(image, box, aligned.crops[160])])   # (1, 512) float32, unit
    InceptionEmbedder.seeded(0).name    # 'inception-resnet-v1/random-init/seed=0'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch

from agents.errors import ModelWeightsMissing
from agents.records import EMBED_SIZE, EmbeddingSpace, EmbedInput, RGBImage
from agents.stages.embed.files import sha256_of

__all__ = ["DIM", "INPUT_SIZE", "InceptionEmbedder"]

DIM = 512
"""Length of an InceptionResnetV1 embedding."""
INPUT_SIZE = EMBED_SIZE
"""The side InceptionResnetV1 was trained on; other crops are resized to it."""
KIND = "inception-resnet-v1"

WEIGHTS_SETTING = "S2A_MODELS__EMBEDDER_WEIGHTS"
WEIGHTS_HOW = (
    "Get facenet-pytorch's VGGFace2 state dict (20180402-114759-vggface2.pt from "
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
    "20180402-114759-vggface2.pt) on a machine with internet access and copy it there, "
    "or set S2A_MODELS__EMBEDDER=dlib-resnet (installed with the package)."
)


def weights_name(path: Path) -> str:
    """The embedder name of a weights file, from its hash (without loading it)."""
    return f"{KIND}/sha256={sha256_of([path])[:12]}"


def seeded_name(seed: int) -> str:
    return f"{KIND}/random-init/seed={seed}"


def checked_weights(weights: Path | None) -> Path:
    """``weights`` if it is a file; else :class:`ModelWeightsMissing` naming the setting
    and the absolute path looked at."""
    if weights is None:
        raise ModelWeightsMissing("InceptionResnetV1", None, WEIGHTS_SETTING, WEIGHTS_HOW)
    path = Path(weights).expanduser().absolute()
    if not path.is_file():
        raise ModelWeightsMissing("InceptionResnetV1", path, WEIGHTS_SETTING, WEIGHTS_HOW)
    return path


class InceptionEmbedder:
    """InceptionResnetV1 (``classify=False``, eval mode) over aligned 160 px RGB crops.

    Built by :meth:`from_file` (a local state dict; the classifier head ``logits.*`` that
    facenet-pytorch's files carry is dropped) or :meth:`seeded` (random weights from a seed,
    drawn without disturbing the process's global torch RNG).
    """

    dim = DIM

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        weights_sha256: str | None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.name = name
        self.weights_sha256 = weights_sha256
        self.random_init = weights_sha256 is None
        self.batch_size = batch_size
        # channels_last lets oneDNN pick its fastest convolution kernels: 38 -> 30 ms a
        # crop at batch 32 on this machine's 2 cores, same outputs to float tolerance.
        self._model = model.eval().to(memory_format=torch.channels_last)

    @classmethod
    def from_file(cls, weights: Path | None, batch_size: int = 32) -> InceptionEmbedder:
        """Load a state dict; :class:`ModelWeightsMissing` when there is no such file."""
        from facenet_pytorch import InceptionResnetV1

        path = checked_weights(weights)
        model = InceptionResnetV1(classify=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"{path} is not an InceptionResnetV1 state dict ({WEIGHTS_SETTING}): {err}"
            ) from err
        digest = sha256_of([path])
        return cls(model, name=weights_name(path), weights_sha256=digest, batch_size=batch_size)

    @classmethod
    def seeded(cls, seed: int = 0, batch_size: int = 32) -> InceptionEmbedder:
        """Random weights from ``seed``: recognizes nobody; for tests and benchmarks."""
        from facenet_pytorch import InceptionResnetV1

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = InceptionResnetV1(classify=False)
        return cls(model, name=seeded_name(seed), weights_sha256=None, batch_size=batch_size)

    @property
    def space(self) -> EmbeddingSpace:
        return EmbeddingSpace(self.name, self.dim)

    def embed(self, faces: Sequence[EmbedInput]) -> npt.NDArray[np.float32]:
        """``(len(faces), 512)`` unit-length float32 rows, one per face's crop, in order."""
        out = np.empty((len(faces), DIM), dtype=np.float32)
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start : start + self.batch_size]
            batch = torch.from_numpy(
                np.stack([self._prepare(f.crop, start + i) for i, f in enumerate(chunk)])
            ).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                vectors = self._model(batch)
                # facenet's forward already L2-normalizes; doing it here too keeps the
                # unit-length contract from resting on that detail of the library.
                vectors = torch.nn.functional.normalize(vectors.float(), p=2.0, dim=1)
            out[start : start + len(chunk)] = vectors.numpy()
        return out

    @staticmethod
    def _prepare(crop: RGBImage, index: int) -> npt.NDArray[np.float32]:
        """HWC uint8 RGB -> CHW float32 standardized as facenet expects: (x - 127.5) / 128."""
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise ValueError(
                f"crop {index} must be an H x W x 3 uint8 RGB array, "
                f"got shape {crop.shape} dtype {crop.dtype}"
            )
        if crop.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            interpolation = cv2.INTER_AREA if crop.shape[0] > INPUT_SIZE else cv2.INTER_LINEAR
            crop = np.asarray(
                cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation),
                dtype=np.uint8,
            )
        x = (crop.astype(np.float32) - 127.5) / 128.0
        return np.ascontiguousarray(x.transpose(2, 0, 1))
