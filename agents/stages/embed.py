"""Face embeddings: 512-d, L2-normalized vectors from facenet-pytorch's InceptionResnetV1.

With a weights file (facenet-pytorch's VGGFace2 or CASIA-WebFace ``.pt`` state dicts, or
any InceptionResnetV1 state dict) the embeddings recognize people. Without one, a seeded
random initialisation still gives deterministic vectors that find near-identical images,
and every output says so: ``random_init`` is True and ``name`` contains ``random-init``.

Example::

    embedder = FaceEmbedder(settings.models.embedder_weights, seed=0, batch_size=32)
    vectors = embedder.embed([aligned.crops[160]])     # (1, 512) float32, unit length
    embedder.name    # 'inception_resnet_v1/random-init/seed=0'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch

from agents.errors import ModelWeightsMissing
from agents.records import EMBED_DIM, EMBED_SIZE, RGBImage

__all__ = ["EMBEDDING_DIM", "INPUT_SIZE", "FaceEmbedder"]

EMBEDDING_DIM = EMBED_DIM
INPUT_SIZE = EMBED_SIZE
"""The side InceptionResnetV1 was trained on; other crops are resized to it."""

EMBEDDER_SETTING = "S2A_MODELS__EMBEDDER_WEIGHTS"
EMBEDDER_HOW = (
    "Get facenet-pytorch's VGGFace2 state dict (20180402-114759-vggface2.pt from "
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
    "20180402-114759-vggface2.pt) on a machine with internet access and copy it there, "
    "or unset the setting to use a seeded random initialisation."
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FaceEmbedder:
    """InceptionResnetV1 (``classify=False``, eval mode) over aligned 160 px RGB crops.

    ``weights`` is a local state dict file; the classifier head (``logits.*``) that
    facenet-pytorch's files carry is dropped. ``None`` means a random initialisation from
    ``seed``, drawn without disturbing the process's global torch RNG.
    """

    def __init__(self, weights: Path | None, seed: int = 0, batch_size: int = 32) -> None:
        from facenet_pytorch import InceptionResnetV1

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.batch_size = batch_size
        if weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._model = InceptionResnetV1(classify=False)
            self.random_init = True
            self.name = f"inception_resnet_v1/random-init/seed={seed}"
        else:
            path = Path(weights)
            if not path.is_file():
                raise ModelWeightsMissing("InceptionResnetV1", path, EMBEDDER_SETTING, EMBEDDER_HOW)
            self._model = InceptionResnetV1(classify=False)
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            try:
                self._model.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(
                    f"{path} is not an InceptionResnetV1 state dict ({EMBEDDER_SETTING}): {err}"
                ) from err
            self.random_init = False
            self.name = f"inception_resnet_v1/file={path.name}/sha256={_sha256(path)[:12]}"
        # channels_last lets oneDNN pick its fastest convolution kernels: 38 -> 30 ms a
        # crop at batch 32 on this machine's 2 cores, same outputs to float tolerance.
        self._model.eval().to(memory_format=torch.channels_last)

    def embed(self, crops: Sequence[RGBImage]) -> npt.NDArray[np.float32]:
        """``(len(crops), 512)`` unit-length float32 rows, one per crop, in order."""
        out = np.empty((len(crops), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            batch = torch.from_numpy(
                np.stack([self._prepare(c, start + i) for i, c in enumerate(chunk)])
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
