"""Prepare stage: everything the store writes for a face, computed without I/O.

The face id (stable per upload), the appearance signature stored with the face,
the PNG bytes of the training crops and the declared labels. Pure CPU work, safe in any
thread; :class:`agents.sink.FaceStore` does the writes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import cv2
import numpy as np
import numpy.typing as npt

from agents.records import EMBED_SIZE, TRAINING_SIZES, AlignedFace, RGBImage, ValidUpload
from agents.stages.imageio import encode_png
from agents.stages.label import declared_values
from schemas.labels import LabelSource
from schemas.tables import Label

#: Namespace for face ids: uuid5(namespace, upload_id) gives one stable id per upload.
FACE_NAMESPACE = uuid.UUID("6f1d8f6e-5c1b-4b55-9a43-2f1f0b7c2a10")


def face_id_for(upload_id: str) -> str:
    """The face id of an upload: ``uuid5(FACE_NAMESPACE, upload_id)`` as text, stable across
    re-deliveries so every sink write is idempotent."""
    return str(uuid.uuid5(FACE_NAMESPACE, upload_id))


def appearance_signature(crop: RGBImage) -> npt.NDArray[np.float32]:
    """A 256-d signature of how an aligned face crop looks: 16 x 16 grey, mean-centred and
    unit-length (float32), so the cosine of two signatures is their normalised
    cross-correlation.

    Stored with every face. The duplicate check decides on the registered similarity of the
    crops (:mod:`agents.stages.registration`); with a random-init embedder, whose identity
    distances mean nothing, this signature chooses which earlier faces to register.
    """
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return (small / norm if norm > 0 else small).reshape(-1)


def declared_labels(upload: ValidUpload, face_id: str, now: datetime) -> list[Label]:
    """The upload's self-declared attributes as vocabulary labels with source ``declared``
    (see :func:`agents.stages.label.declared_values`)."""
    return [
        Label(
            face_id=face_id,
            name=name.value,
            value=value,
            source=LabelSource.DECLARED.value,
            confidence=1.0,
            created_at=now,
        )
        for name, value in sorted(declared_values(upload.attributes).items())
    ]


@dataclass(frozen=True, slots=True)
class PreparedFace:
    """What the store writes for a face, computed ahead (and in parallel) of the writes."""

    signature: npt.NDArray[np.float32]
    pngs: dict[int, bytes]
    """PNG bytes of each training crop, by side in pixels (:data:`TRAINING_SIZES`)"""


def prepare_face(aligned: AlignedFace) -> PreparedFace:
    """Signature and PNG bytes of an aligned face: CPU work with no I/O, safe in any thread."""
    return PreparedFace(
        signature=appearance_signature(aligned.crops[EMBED_SIZE]),
        pngs={size: encode_png(aligned.crops[size]) for size in TRAINING_SIZES},
    )
