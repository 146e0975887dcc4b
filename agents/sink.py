"""The sink of the ingest pipeline: crops into the blob store, the embedding into Qdrant,
the face into SQL.

Order matters for crash safety: the Qdrant point (keyed by the face id, itself derived from
the upload id, and naming its crops' digests), then the crops (content-addressed), both
idempotent, and the SQL transaction that marks the upload ``accepted`` last. A crash
anywhere before it leaves the upload unfinished, so the re-delivered record redoes the same
writes; and whatever was written is reachable from the point, so a face that never reaches
SQL (its subject erased meanwhile) is taken back whole (:meth:`FaceStore.discard`).

The SQL transaction also reads the subject's tombstone under the subject's lock
(:mod:`agents.stores.tombstones`): when the subject was erased after the upload's consent
was granted (the erasure committed while the batch was on its way), it writes nothing and
the point and the crops written just before are taken back, so the upload ends
``subject_erased`` with nothing of it stored.

Before writing, a new face is compared with the subject's earlier faces, on two vectors:
the identity embedding (who) and the appearance signature (how the crop looks). Together
they decide near-duplicates (:class:`DuplicateRule`) and flag a face that is clearly not
the person of the earlier ones (:class:`~schemas.reasons.FaceFlag`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from agents.errors import EmbedderMismatch, Rejected, StorageError
from agents.records import TRAINING_SIZES, AlignedFace, CleanImage, QualityReport, ValidUpload
from agents.stages.imageio import decode_crop
from agents.stages.label import Measurement
from agents.stages.prepare import PreparedFace, declared_labels, face_id_for
from agents.stages.registration import registered_similarity
from agents.stores.blobs import BlobStore, blob_digest
from agents.stores.faces import APPEARANCE_VECTOR, CROPS_PAYLOAD, FACE_VECTOR, FaceIndex
from agents.stores.repository import Repository
from schemas.reasons import FaceFlag, ReasonCode, Stage
from schemas.rejections import Origin
from schemas.settings import WorkerSettings
from schemas.tables import Face, IdentityLink


@dataclass(frozen=True, slots=True)
class DuplicateRule:
    """When a new face of a subject is a copy of one of their earlier faces.

    A copy is the same photo re-encoded, cropped or rescaled: after registering one aligned
    crop onto the other, every part of the face matches
    (:func:`agents.stages.registration.registered_similarity` reaches ``similarity``).
    Only earlier faces the embedder puts within ``identity_gate`` of the new one are
    registered (the closest :data:`MAX_COMPARED`), so the cost stays at a few comparisons
    an upload; with a random-init embedder (``identity_gate`` None) the gate is the
    closest appearance signatures instead. Thresholds from ``bench/duplicates.py`` on the
    London set (BENCHMARKS.md, "Near-duplicates"): copies lie 0.007-0.109 apart on identity
    and at 0.990 or more registered; one session's neutral and smiling photos at 0.975 or
    less.

    Distances are Euclidean between unit vectors (0..2); similarities -1..1.
    """

    similarity: float
    identity_gate: float | None

    @classmethod
    def from_settings(
        cls, worker: WorkerSettings, *, identity_informative: bool = True
    ) -> DuplicateRule:
        return cls(
            similarity=worker.duplicate_similarity,
            identity_gate=worker.duplicate_identity_distance if identity_informative else None,
        )


#: Earlier faces registered against a new one, at most (the closest by the gate's measure).
MAX_COMPARED = 3


@dataclass(frozen=True, slots=True)
class SubjectCheck:
    """What the subject's earlier faces say about a new one (no earlier face: all None)."""

    nearest_face: str | None = None
    nearest_distance: float | None = None
    """identity distance to the nearest earlier face (unit vectors, 0..2)"""
    flag: FaceFlag | None = None
    flag_detail: str | None = None


class FaceStore:
    """Writes an accepted face everywhere it belongs, refusing near-duplicates.

    Example::

        store = FaceStore(open_blobs(settings), FaceIndex(client, embedder.space),
                          Repository(engine), duplicates=DuplicateRule.from_settings(worker),
                          mismatch_distance=worker.identity_mismatch_distance)
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
        duplicates: DuplicateRule,
        mismatch_distance: float | None,
        link_distance: float | None = None,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.repository = repository
        self.duplicates = duplicates
        self.mismatch_distance = mismatch_distance
        """None: never flag (the embedder's identity distances mean nothing)"""
        self.link_distance = link_distance
        """None: never link faces of two subjects as one person"""

    def check_subject(
        self,
        upload: ValidUpload,
        aligned: AlignedFace,
        vector: npt.NDArray[np.float32],
        signature: npt.NDArray[np.float32],
    ) -> SubjectCheck:
        """Compare a new face with the subject's earlier faces: ``Rejected(duplicate)`` when
        it is a copy of one (:class:`DuplicateRule`), else the nearest identity distance and
        an ``identity_mismatch`` flag when even the nearest is further than
        ``mismatch_distance``.

        ``vector`` is the unit identity embedding (float32, the space's size), ``signature``
        the 256-d unit appearance signature. Only the subject's own faces are read, by id
        through SQL's subject index: the cost grows with one person's uploads, never with the
        whole collection (the Qdrant local store would scan every point to apply a filter).
        """
        face_id = face_id_for(upload.upload_id)
        # Excluding our own id matters after a crash: the point may already be in Qdrant
        # from the first attempt, and must not make the retry a duplicate of itself.
        crops = self.repository.crops_of_subject(upload.subject)
        crops.pop(face_id, None)
        named = self.index.named_vectors(list(crops), (FACE_VECTOR, APPEARANCE_VECTOR))
        others = [i for i in crops if len(named.get(i, {})) == 2]
        if not others:
            return SubjectCheck()
        distances = np.linalg.norm(
            np.stack([named[i][FACE_VECTOR] for i in others]) - vector, axis=1
        )
        gate = self.duplicates.identity_gate
        compared: list[int]
        if gate is None:
            appearance = np.stack([named[i][APPEARANCE_VECTOR] for i in others]) @ signature
            compared = [int(i) for i in np.argsort(-appearance)[:MAX_COMPARED]]
        else:
            compared = [
                int(i) for i in np.argsort(distances)[:MAX_COMPARED] if distances[i] <= gate
            ]
        for index in compared:
            other = others[index]
            similarity = registered_similarity(
                aligned.crops[256], decode_crop(self.blobs.read(crops[other]))
            )
            if similarity >= self.duplicates.similarity:
                raise Rejected(
                    ReasonCode.DUPLICATE,
                    Stage.STORE,
                    f"a copy of face {other} of the same subject: identity distance "
                    f"{distances[index]:.3f}, registered similarity {similarity:.4f} reaches "
                    f"{self.duplicates.similarity} (S2A_WORKER__DUPLICATE_SIMILARITY)",
                )
        nearest = int(np.argmin(distances))
        distance = float(distances[nearest])
        if self.mismatch_distance is None or distance <= self.mismatch_distance:
            return SubjectCheck(nearest_face=others[nearest], nearest_distance=distance)
        return SubjectCheck(
            nearest_face=others[nearest],
            nearest_distance=distance,
            flag=FaceFlag.IDENTITY_MISMATCH,
            flag_detail=(
                f"identity distance {distance:.3f} to the nearest of the subject's "
                f"{len(others)} earlier faces ({others[nearest]}) exceeds "
                f"{self.mismatch_distance} (S2A_WORKER__IDENTITY_MISMATCH_DISTANCE): "
                "another person, or a wrong subject id"
            ),
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
        when it is a copy of a face of the same subject already stored, and the
        ``identity_mismatch`` flag on it when it is clearly someone else
        (:meth:`check_subject`).

        ``embedder`` must be the one whose collection the index holds: a vector of another
        space is refused (:class:`EmbedderMismatch`) before anything is written. A subject
        erased after the upload's consent was granted is ``Rejected(subject_erased)`` at
        ``store``, with the point and crops written for it taken back (:meth:`discard`).
        """
        if embedder != self.index.space.name:
            raise EmbedderMismatch(
                f"faces collection {self.index.collection!r}",
                self.index.space.name,
                embedder,
                "open the FaceIndex of the embedder that made the vector",
            )
        check = self.check_subject(upload, aligned, vector, prepared.signature)
        face_id = face_id_for(upload.upload_id)
        now = datetime.now(UTC)
        crops = {size: blob_digest(png) for size, png in prepared.pngs.items()}
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
            flag=check.flag.value if check.flag else None,
            flag_detail=check.flag_detail,
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
                CROPS_PAYLOAD: sorted(set(crops.values())),
            },
        )
        for size, png in prepared.pngs.items():
            self.blobs.put(png, digest=crops[size])
        labels = declared_labels(upload, face_id, now) + [m.row(face_id, now) for m in measured]
        links = self.identity_links(upload, face_id, vector, embedder, now)
        try:
            self.repository.record_accepted(upload, face, labels, origin, links=links)
        except Rejected as rejected:
            if rejected.reason is ReasonCode.SUBJECT_ERASED:
                # The erasure ran while this face was on its way and before the point
                # above was written; the point and crops go here.
                self.discard(face_id)
            raise
        return face

    def discard(self, face_id: str) -> None:
        """Take back what :meth:`store` wrote for a face that SQL refused or never recorded:
        the crops its point names that no stored face or reference uses, then the point
        (last: it is what names the crops, should this be cut short).

        Idempotent; a face id without a point costs one lookup. Raises
        :class:`~agents.errors.StorageError` when a store fails (the record is then
        re-delivered, and refused again before anything is written).
        """
        payload = self.index.payloads([face_id]).get(face_id, {})
        digests = set(payload.get(CROPS_PAYLOAD, ()))
        unused = digests - self.repository.crops_in_use(digests) if digests else set()
        try:
            for digest in sorted(unused):
                self.blobs.delete(digest)
        except OSError as exc:
            raise StorageError(f"cannot delete a crop under {self.blobs.where}: {exc}") from exc
        self.index.delete([face_id])

    def identity_links(
        self,
        upload: ValidUpload,
        face_id: str,
        vector: npt.NDArray[np.float32],
        embedder: str,
        now: datetime,
    ) -> list[IdentityLink]:
        """Links to faces of *other* subjects within ``link_distance``: one person under
        several subject ids. Run after the point is upserted, so a face stored concurrently
        by another worker is found by whichever of the two comes second."""
        if self.link_distance is None:
            return []
        return [
            IdentityLink(
                face_id=face_id,
                other_face_id=other,
                distance=round(distance, 6),
                embedder=embedder,
                created_at=now,
            )
            for other, subject, distance in self.index.near(vector, self.link_distance)
            if subject != upload.subject
        ]
