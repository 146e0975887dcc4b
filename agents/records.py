"""Values passed between stages. Plain frozen dataclasses over numpy arrays.

Coordinates are always in the pixels of the decoded, EXIF-oriented image
(:attr:`CleanImage.pixels`), x to the right and y down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from schemas.uploads import DeclaredAttributes, Source

RGBImage = npt.NDArray[np.uint8]
"""H x W x 3, uint8, RGB."""

# Model geometry, defined once: the aligned crop InceptionResnetV1 reads, and the aligned
# crop sizes stored for training. InceptionResnetV1 (facenet-pytorch) was trained on 160 px
# crops; the training crops are the converters' two resolutions. The length of an identity
# vector is the embedder's own (:attr:`EmbeddingSpace.dim`): 128 for dlib, 512 for
# InceptionResnetV1.
EMBED_SIZE = 160
"""Side of the tight aligned crop made for the embedder, pixels."""
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


@dataclass(frozen=True, slots=True)
class EmbedInput:
    """One face as every embedder may need it; each reads its own part.

    dlib's descriptor runs its 5-point predictor inside ``box`` on ``image`` and cuts its own
    chip; InceptionResnetV1 reads the tight aligned ``crop``.
    """

    image: RGBImage
    """the pixels ``box`` refers to (the decoded upload, or a stored aligned crop)"""
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 of the face in ``image``, pixels (the detector's box)"""
    crop: RGBImage
    """the face aligned with the tight template, :data:`EMBED_SIZE` px square"""


_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class EmbeddingSpace:
    """Which vectors may be compared: those of one embedder with one set of weights.

    Vectors of two spaces never share a collection or an index: every store is named by
    :attr:`slug` and checks ``dim``.

    Example::

        space = EmbeddingSpace("dlib-resnet/sha256=1d9f3a5c2b7e", 128)
        space.slug                  # 'dlib-resnet-sha256-1d9f3a5c2b7e'
    """

    name: str
    """the embedder's name, as ``faces.embedder`` records it"""
    dim: int
    """length of its vectors (float32, unit length)"""

    @property
    def slug(self) -> str:
        """``name`` in lowercase letters, digits and dashes: safe in collection names."""
        return slug_of(self.name)


def slug_of(embedder: str) -> str:
    """An embedder name in lowercase letters, digits and dashes (``EmbeddingSpace.slug``)."""
    return _NOT_SLUG.sub("-", embedder.lower()).strip("-")
