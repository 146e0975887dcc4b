"""Store stage: crops into the blob store, the embedding into Qdrant, the face into SQL.

Order matters for crash safety: blobs (content-addressed) and the Qdrant point (keyed by
the face id, itself derived from the upload id) are idempotent, and the SQL transaction
that marks the upload ``accepted`` comes last. A crash anywhere before it leaves the
upload unfinished, so the re-delivered record redoes the same writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import cv2
import numpy as np
import numpy.typing as npt

from agents.blobs import BlobStore
from agents.errors import Rejected
from agents.records import AlignedFace, CleanImage, QualityReport, RGBImage, ValidUpload
from agents.repository import Repository
from agents.stages.anonymize import encode_png
from agents.stages.label import Measurement, declared_values
from agents.vectors import APPEARANCE_VECTOR, FACE_VECTOR, FaceIndex
from schemas.labels import LabelSource
from schemas.reasons import ReasonCode, Stage
from schemas.rejections import Origin
from schemas.tables import Face, Label

#: Namespace for face ids: uuid5(namespace, upload_id) gives one stable id per upload.
FACE_NAMESPACE = uuid.UUID("6f1d8f6e-5c1b-4b55-9a43-2f1f0b7c2a10")
TRAINING_SIZES = (256, 512)
EMBED_SIZE = 160


def face_id_for(upload_id: str) -> str:
    return str(uuid.uuid5(FACE_NAMESPACE, upload_id))


def appearance_signature(crop: RGBImage) -> npt.NDArray[np.float32]:
    """A 256-d signature of how an aligned face crop looks: 16 x 16 grey, mean-centred and
    unit-length, so the cosine of two signatures is their normalised cross-correlation.

    Duplicates are a question of *the same photo*, not the same person: an identity
    embedding scores two different selfies of one person as alike by design (and a
    random-init embedder scores everyone alike). Measured on the London set's aligned
    crops: re-encoded copies (JPEG q70, a 40 px crop) score 0.98-0.999, the same person's
    neutral and smiling photos from one session 0.82-0.975.
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


class FaceStore:
    """Writes an accepted face everywhere it belongs, refusing near-duplicates.

    Example::

        store = FaceStore(BlobStore(settings.blob_dir), FaceIndex(client), Repository(engine),
                          duplicate_similarity=0.985)
        prepared = store.prepare(aligned)
        face = store.store(upload, image, report, aligned, vector, prepared, detector="mtcnn",
                           embedder="inception_resnet_v1/random-init/seed=0", random_init=True,
                           measured=measured_labels(report))
    """

    def __init__(
        self,
        blobs: BlobStore,
        index: FaceIndex,
        repository: Repository,
        *,
        duplicate_similarity: float,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.repository = repository
        self.duplicate_similarity = duplicate_similarity

    @staticmethod
    def prepare(aligned: AlignedFace) -> PreparedFace:
        """Signature and PNG bytes of a face: CPU work with no I/O, safe in any thread."""
        return PreparedFace(
            signature=appearance_signature(aligned.crops[EMBED_SIZE]),
            pngs={size: encode_png(aligned.crops[size]) for size in TRAINING_SIZES},
        )

    def check_duplicate(self, upload: ValidUpload, signature: npt.NDArray[np.float32]) -> None:
        """Refuse a face that looks like one already stored for the same subject.

        Compares against that subject's faces only, found by id through SQL's subject
        index: the cost grows with one person's uploads, never with the whole collection
        (the Qdrant local store would scan every point to apply a filter).
        """
        face_id = face_id_for(upload.upload_id)
        # Excluding our own id matters after a crash: the point may already be in Qdrant
        # from the first attempt, and must not make the retry a duplicate of itself.
        ids = [i for i in self.repository.face_ids_of_subject(upload.subject) if i != face_id]
        stored = self.index.vectors(ids, APPEARANCE_VECTOR)
        if not stored:
            return
        other, vectors = zip(*stored.items(), strict=True)
        scores = np.stack(vectors) @ signature
        best = int(np.argmax(scores))
        if scores[best] >= self.duplicate_similarity:
            raise Rejected(
                ReasonCode.DUPLICATE,
                Stage.STORE,
                f"appearance similarity {scores[best]:.3f} to face {other[best]} of the same "
                f"subject reaches {self.duplicate_similarity} (S2A_WORKER__DUPLICATE_SIMILARITY)",
            )

    def store(
        self,
        upload: ValidUpload,
        image: CleanImage,
        report: QualityReport,
        aligned: AlignedFace,
        vector: npt.NDArray[np.float32],
        prepared: PreparedFace,
        *,
        detector: str,
        embedder: str,
        random_init: bool,
        measured: Sequence[Measurement],
        origin: Origin | None = None,
    ) -> Face:
        """Write the face, its declared and ``measured`` labels; ``Rejected(duplicate)``
        when it looks like a face of the same subject already stored."""
        self.check_duplicate(upload, prepared.signature)
        face_id = face_id_for(upload.upload_id)
        now = datetime.now(UTC)
        crops = {size: self.blobs.put(png) for size, png in prepared.pngs.items()}
        face = Face(
            face_id=face_id,
            upload_id=upload.upload_id,
            subject=upload.subject,
            source=upload.source.value,
            license=upload.license,
            attribution=upload.attribution,
            detector=detector,
            detection_prob=round(report.face.prob, 6),
            box=[round(v, 2) for v in report.face.box],
            landmarks=[[round(float(v), 2) for v in point] for point in report.face.landmarks],
            quality={k: round(float(v), 4) for k, v in report.scores.items()},
            crop_256=crops[256],
            crop_512=crops[512],
            align={
                "template": "s2a-5pt-v1",
                "transforms": {str(size): aligned.transforms[size] for size in TRAINING_SIZES},
            },
            embedder=embedder,
            embedder_random_init=random_init,
            image_width=image.width,
            image_height=image.height,
            created_at=now,
        )
        self.index.upsert(
            face_id,
            {FACE_VECTOR: vector, APPEARANCE_VECTOR: prepared.signature},
            {
                "face_id": face_id,
                "subject": upload.subject,
                "source": upload.source.value,
                "license": upload.license,
                "embedder": embedder,
                "embedder_random_init": random_init,
            },
        )
        labels = declared_labels(upload, face_id, now) + [m.row(face_id, now) for m in measured]
        self.repository.record_accepted(upload, face, labels, origin)
        return face
