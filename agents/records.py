"""Values passed between stages. Plain frozen dataclasses over numpy arrays.

Coordinates are always in the pixels of the decoded, EXIF-oriented image
(:attr:`CleanImage.pixels`), x to the right and y down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from schemas.uploads import DeclaredAttributes, Source

RGBImage = npt.NDArray[np.uint8]
"""H x W x 3, uint8, RGB."""

# Model geometry, defined once: the embedder's input side, its vector size, and the aligned
# crop sizes stored for training. InceptionResnetV1 (facenet-pytorch) was trained on 160 px
# crops and returns 512-d vectors; the training crops are the converters' two resolutions.
EMBED_SIZE = 160
"""Side of the aligned crop the embedder reads, pixels."""
EMBED_DIM = 512
"""Length of an identity embedding (float32, unit length)."""
TRAINING_SIZES = (256, 512)
"""Sides of the aligned crops stored for training, pixels."""
ALIGN_SIZES = (EMBED_SIZE, *TRAINING_SIZES)
"""Every crop the ingest pipeline aligns."""

#: Landmark order everywhere: image-left eye, image-right eye, nose tip, image-left mouth
#: corner, image-right mouth corner (the order MTCNN returns).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, slots=True)
class ValidUpload:
    """An upload event that passed validation, its subject already pseudonymized."""

    upload_id: str
    subject: str
    """keyed-HMAC pseudonym (64 hex chars); the raw id is gone at this point"""
    consent_version: str
    consent_scopes: tuple[str, ...]
    consent_granted_at: datetime
    consent_expires_at: datetime | None
    source: Source
    license: str | None
    attribution: str | None
    attributes: DeclaredAttributes
    submitted_at: datetime
    image_data: bytes | None
    image_uri: str | None


@dataclass(frozen=True, slots=True)
class CleanImage:
    """Decoded pixels with orientation applied and every metadata block gone."""

    pixels: RGBImage
    format: str
    """the decoder's format name, e.g. 'JPEG'"""

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, slots=True)
class Detection:
    """One face found by a detector."""

    box: tuple[float, float, float, float]
    """x1, y1, x2, y2"""
    prob: float
    landmarks: npt.NDArray[np.float32]
    """5 x 2, in :data:`LANDMARK_NAMES` order"""

    @property
    def size(self) -> float:
        """Shorter side of the box, in pixels."""
        x1, y1, x2, y2 = self.box
        return float(min(x2 - x1, y2 - y1))


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Every measured score (stored whether it passed or not) and the face kept."""

    face: Detection
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlignedFace:
    """Crops aligned to the canonical template, and how to map each back.

    ``transforms[size]`` is the 2 x 3 affine matrix taking original-image coordinates to
    crop coordinates; its inverse pastes a crop (or a converted one) back.
    """

    crops: dict[int, RGBImage]
    transforms: dict[int, list[list[float]]]
