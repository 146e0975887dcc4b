"""Moving a store's faces to another embedder (``s2a faces reembed``).

Raw uploads are never stored, so a face is embedded again from what the store keeps: its
512 px aligned crop (blob store), the detector's box and landmarks, and the transform that
took the photo into that crop (``faces.align``). The box and landmarks are mapped into the
crop with that transform, so no detector runs again: dlib runs its 5-point predictor inside
the mapped box on the crop, and InceptionResnetV1's tight 160 px crop is re-aligned from it.
The crop is a resampled copy of the photo, so the vectors are close to, not equal to, what
ingesting the photo gives: dlib's lie 0.03-0.07 from them on the London set (Euclidean,
unit vectors; ``bench/identity.py``), under the distance between two photos of one person
(0.08-0.29).

Resumable by construction: faces whose ``faces.embedder`` already is the target are
skipped. Each batch is written to the target's collection first (an idempotent upsert by
face id), then its SQL rows are switched to the target embedder in one transaction; a crash
in between redoes that batch only. The old collection is left as it was (going back is
another reembed), and the appearance signature that the duplicate check compares moves
with each face: copied from its old collection, or computed from the re-aligned crop when
the old point is gone. Identity links (one person under two subject ids) are made again in
the new space, as ingestion makes them; links of the old space stay.

Example::

    mover = Reembedder(engine, open_blobs(settings), open_client(settings), embedder)
    report = mover.run()
    report.moved, report.already        # (120, 0); a second run: (0, 120)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient
from sqlalchemy import Engine, Table, func, select, update
from sqlmodel import SQLModel

from agents.errors import StorageError
from agents.records import EMBED_SIZE, CleanImage, EmbedInput, RGBImage
from agents.stages.align import align
from agents.stages.embed import Embedder
from agents.stages.imageio import decode_crop
from agents.stages.prepare import appearance_signature
from agents.stores.blobs import BlobStore
from agents.stores.db import sql_errors
from agents.stores.faces import (
    APPEARANCE_VECTOR,
    FACE_VECTOR,
    FACES,
    FaceIndex,
    faces_collection,
    qdrant_errors,
)
from schemas.tables import Face, IdentityLink

log = logging.getLogger(__name__)

_FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
_LINKS: Table = SQLModel.metadata.tables[IdentityLink.__tablename__]
#: The aligned crop faces are embedded again from (the largest one stored).
SOURCE_SIZE = 512


@dataclass(frozen=True, slots=True)
class StoredFace:
    """What the store keeps of one face that re-embedding needs."""

    face_id: str
    subject: str
    source: str
    license: str | None
    embedder: str
    box: tuple[float, float, float, float]
    landmarks: npt.NDArray[np.float64]
    """5 x 2, original-photo pixels"""
    transform: npt.NDArray[np.float64]
    """2 x 3, original photo -> the 512 px crop"""
    crop: str
    """blob digest of the 512 px crop"""


@dataclass(slots=True)
class ReembedReport:
    """How a run went; ``unreadable`` faces (crop blob missing) stay on their embedder."""

    target: str
    total: int = 0
    already: int = 0
    moved: int = 0
    unreadable: list[str] = field(default_factory=list)


def embed_input(crop: RGBImage, face: StoredFace) -> EmbedInput:
    """The face as an embedder reads it, from its stored 512 px crop.

    The box keeps its centre and size through the transform (a similarity: rotation,
    uniform scale); its sides stay axis-aligned in the crop, where the face is upright.
    """
    matrix, offset = face.transform[:, :2], face.transform[:, 2]
    points = face.landmarks @ matrix.T + offset
    scale = float(np.sqrt(abs(np.linalg.det(matrix))))
    x1, y1, x2, y2 = face.box
    cx, cy = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) @ matrix.T + offset
    half_w, half_h = scale * (x2 - x1) / 2, scale * (y2 - y1) / 2
    box = (float(cx - half_w), float(cy - half_h), float(cx + half_w), float(cy + half_h))
    tight = align(CleanImage(crop, "PNG"), points, sizes=(EMBED_SIZE,)).crops[EMBED_SIZE]
    return EmbedInput(crop, box, tight)


class Reembedder:
    """Moves every face not yet on ``embedder`` to it (see the module docstring).

    ``progress`` of :meth:`run` is called with the number of faces each finished batch
    held, after that batch is committed: the command line draws its progress with it, and a
    test stops a run there to play a crash.
    """

    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        client: QdrantClient,
        embedder: Embedder,
        *,
        payload_index: bool = False,
        link_distance: float | None = None,
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.client = client
        self.embedder = embedder
        self.target = FaceIndex(client, embedder.space, payload_index=payload_index)
        # A random-init embedder's distances mean nothing: it links no one.
        self.link_distance = None if embedder.random_init else link_distance

    def pending(self) -> list[StoredFace]:
        """Faces not on the target embedder, oldest first."""
        statement = (
            select(
                _FACES.c.face_id,
                _FACES.c.subject,
                _FACES.c.source,
                _FACES.c.license,
                _FACES.c.embedder,
                _FACES.c.box,
                _FACES.c.landmarks,
                _FACES.c.align,
                _FACES.c.crop_512,
            )
            .where(_FACES.c.embedder != self.embedder.name)
            .order_by(_FACES.c.created_at, _FACES.c.face_id)
        )
        with sql_errors("reading faces to re-embed"), self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [_stored(row) for row in rows]

    def count(self) -> int:
        with sql_errors("counting faces"), self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(_FACES)).scalar_one())

    def run(self, progress: Callable[[int], None] | None = None) -> ReembedReport:
        """Re-embed every pending face, one embedder batch at a time."""
        report = ReembedReport(self.embedder.name, total=self.count())
        pending = self.pending()
        report.already = report.total - len(pending)
        step = self.embedder.batch_size
        for start in range(0, len(pending), step):
            chunk = pending[start : start + step]
            faces, inputs = self._inputs(chunk, report)
            if faces:
                self._move(faces, inputs)
                report.moved += len(faces)
            if progress is not None:
                progress(len(chunk))
        log.info(
            "re-embedded %d faces with %s (%d already were, %d unreadable)",
            report.moved,
            report.target,
            report.already,
            len(report.unreadable),
        )
        return report

    def _inputs(
        self, chunk: Sequence[StoredFace], report: ReembedReport
    ) -> tuple[list[StoredFace], list[EmbedInput]]:
        faces, inputs = [], []
        for face in chunk:
            try:
                data = self.blobs.read(face.crop)
            except FileNotFoundError:
                log.warning("face %s: crop blob %s is missing; left as is", face.face_id, face.crop)
                report.unreadable.append(face.face_id)
                continue
            except OSError as exc:
                raise StorageError(f"cannot read crop blob {face.crop}: {exc}") from exc
            faces.append(face)
            inputs.append(embed_input(decode_crop(data), face))
        return faces, inputs

    def _move(self, faces: list[StoredFace], inputs: list[EmbedInput]) -> None:
        vectors = self.embedder.embed(inputs)
        signatures = self._old_signatures(faces)
        for face, face_input, vector in zip(faces, inputs, vectors, strict=True):
            signature = signatures.get(face.face_id)
            if signature is None:
                signature = appearance_signature(face_input.crop)
            self.target.upsert(
                face.face_id,
                {FACE_VECTOR: vector, APPEARANCE_VECTOR: signature},
                {
                    "face_id": face.face_id,
                    "subject": face.subject,
                    "source": face.source,
                    "license": face.license,
                    "embedder": self.embedder.name,
                    "embedder_random_init": self.embedder.random_init,
                },
            )
        statement = (
            update(_FACES)
            .where(_FACES.c.face_id.in_([face.face_id for face in faces]))
            .values(
                embedder=self.embedder.name,
                embedder_sha256=self.embedder.weights_sha256,
                embedder_random_init=self.embedder.random_init,
            )
        )
        links = self._links(faces, vectors)
        with sql_errors("switching faces to the new embedder"), self.engine.begin() as connection:
            connection.execute(statement)
            known = {
                (row.face_id, row.other_face_id)
                for row in connection.execute(
                    select(_LINKS.c.face_id, _LINKS.c.other_face_id).where(
                        _LINKS.c.face_id.in_([face.face_id for face in faces])
                    )
                )
            }
            fresh = [
                link for link in links if (link["face_id"], link["other_face_id"]) not in known
            ]
            if fresh:
                connection.execute(_LINKS.insert(), fresh)

    def _links(
        self, faces: list[StoredFace], vectors: npt.NDArray[np.float32]
    ) -> list[dict[str, Any]]:
        """Identity links of the moved faces to faces of other subjects already in the
        target collection, as ingestion makes them (:meth:`agents.sink.FaceStore.
        identity_links`): every pair of linked faces is found when the later of the two
        moves, so a finished reembed links the whole store in the new space."""
        if self.link_distance is None:
            return []
        now = datetime.now(UTC)
        return [
            {
                "face_id": face.face_id,
                "other_face_id": other,
                "distance": round(distance, 6),
                "embedder": self.embedder.name,
                "created_at": now,
            }
            for face, vector in zip(faces, vectors, strict=True)
            for other, subject, distance in self.target.near(vector, self.link_distance)
            if subject != face.subject
        ]

    def _old_signatures(self, faces: list[StoredFace]) -> dict[str, npt.NDArray[np.float32]]:
        """Each face's appearance signature from its previous collection (or the single
        ``faces`` collection of stores from before embedders were told apart)."""
        found: dict[str, npt.NDArray[np.float32]] = {}
        by_embedder: dict[str, list[str]] = {}
        for face in faces:
            by_embedder.setdefault(face.embedder, []).append(face.face_id)
        for embedder, ids in by_embedder.items():
            for collection in (faces_collection(embedder), FACES):
                missing = [i for i in ids if i not in found]
                if missing:
                    found.update(_appearance(self.client, collection, missing))
        return found


def _appearance(
    client: QdrantClient, collection: str, ids: list[str]
) -> dict[str, npt.NDArray[np.float32]]:
    with qdrant_errors(f"read Qdrant collection {collection!r}"):
        if not client.collection_exists(collection):
            return {}
        points = client.retrieve(collection, ids=ids, with_vectors=[APPEARANCE_VECTOR])
    out = {}
    for point in points:
        vector = point.vector.get(APPEARANCE_VECTOR) if isinstance(point.vector, dict) else None
        if vector is not None:
            out[str(point.id)] = np.asarray(vector, dtype=np.float32)
    return out


def _stored(row: Any) -> StoredFace:
    transforms = (row.align or {}).get("transforms", {})
    if str(SOURCE_SIZE) not in transforms:
        raise StorageError(f"face {row.face_id} has no {SOURCE_SIZE} px transform in faces.align")
    return StoredFace(
        face_id=row.face_id,
        subject=row.subject,
        source=row.source,
        license=row.license,
        embedder=row.embedder,
        box=(float(row.box[0]), float(row.box[1]), float(row.box[2]), float(row.box[3])),
        landmarks=np.asarray(row.landmarks, dtype=np.float64).reshape(5, 2),
        transform=np.asarray(transforms[str(SOURCE_SIZE)], dtype=np.float64).reshape(2, 3),
        crop=row.crop_512,
    )
