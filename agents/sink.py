"""The sink of the ingest pipeline: crops into the blob store, the embedding into Qdrant,
the face into SQL.

Order matters for crash safety: blobs (content-addressed) and the Qdrant point (keyed by
the face id, itself derived from the upload id) are idempotent, and the SQL transaction
that marks the upload ``accepted`` comes last. A crash anywhere before it leaves the
upload unfinished, so the re-delivered record redoes the same writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from agents.errors import EmbedderMismatch, Rejected
from agents.records import TRAINING_SIZES, AlignedFace, CleanImage, QualityReport, ValidUpload
from agents.stages.label import Measurement
from agents.stages.prepare import PreparedFace, declared_labels, face_id_for
from agents.stores.blobs import BlobStore
from agents.stores.faces import APPEARANCE_VECTOR, FACE_VECTOR, FaceIndex
from agents.stores.repository import Repository
from schemas.reasons import ReasonCode, Stage
from schemas.rejections import Origin
from schemas.tables import Face


class FaceStore:
    """Writes an accepted face everywhere it belongs, refusing near-duplicates.

    Example::

        store = FaceStore(BlobStore(settings.blob_dir), FaceIndex(client, embedder.space),
                          Repository(engine), duplicate_similarity=0.985)
        prepared = prepare_face(aligned)
        face = store.store(upload, image, report, aligned, vector, prepared, detector="mtcnn",
                           embedder=embedder.name, embedder_sha256=embedder.weights_sha256,
                           random_init=embedder.random_init, measured=measured_labels(report))
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
        embedder_sha256: str | None,
        random_init: bool,
        measured: Sequence[Measurement],
        origin: Origin | None = None,
    ) -> Face:
        """Write the face, its declared and ``measured`` labels; ``Rejected(duplicate)``
        when it looks like a face of the same subject already stored.

        ``embedder`` must be the one whose collection the index holds: a vector of another
        space is refused (:class:`EmbedderMismatch`) before anything is written.
        """
        self.check_duplicate(upload, prepared.signature)
        if embedder != self.index.space.name:
            raise EmbedderMismatch(
                f"faces collection {self.index.collection!r}",
                self.index.space.name,
                embedder,
                "open the FaceIndex of the embedder that made the vector",
            )
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
            embedder_sha256=embedder_sha256,
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
