"""The Qdrant faces collections: one point per accepted face, one collection per embedder.

Vectors of two embedders are never compared, so each :class:`~agents.records.EmbeddingSpace`
has its own collection, ``faces-<space slug>`` (``s2a faces reembed`` moves faces between
them). Embedded default: qdrant-client's local store under the data directory (one process
may open it at a time, the worker). Production: a Qdrant server URL. The payload holds the
subject pseudonym, never a raw id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models

from agents.errors import PipelineError, StorageError
from agents.records import EmbeddingSpace, slug_of
from schemas.settings import Settings

FACES = "faces"
"""Prefix of every faces collection; alone, the one collection stores had before
embedders were told apart (512-d InceptionResnetV1 vectors)."""
#: Named vectors of a face point: the embedder's identity vector (its space's ``dim``), and
#: a small appearance signature of the aligned crop that the duplicate check compares.
FACE_VECTOR = "face"
APPEARANCE_VECTOR = "appearance"
APPEARANCE_DIM = 256


#: The payload key of a point's crop digests: written with the point, before the crops, so
#: a face that never reached SQL (a worker killed in between) can still be taken back whole.
CROPS_PAYLOAD = "crops"


@contextmanager
def qdrant_errors(what: str) -> Iterator[None]:
    """Turn whatever qdrant-client raises into a :class:`StorageError` naming ``what``.

    The catch-all is deliberate: qdrant-client raises unrelated types with no common base
    (``UnexpectedResponse``, ``ResponseHandlingException``, ``grpc.RpcError``, httpx errors,
    and ``ValueError``/``RuntimeError`` from the local store). The project's own errors
    pass through unchanged.
    """
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot {what}: {exc}") from exc


def faces_collection(space: EmbeddingSpace | str) -> str:
    """The collection of one embedding space (or embedder name): ``faces-<slug>``."""
    name = space if isinstance(space, str) else space.name
    return f"{FACES}-{slug_of(name)}"


def open_client(settings: Settings) -> QdrantClient:
    """A client for the configured Qdrant: server when ``qdrant_url`` is set, else local."""
    if settings.qdrant_url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClient(url=settings.qdrant_url, api_key=key)
    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(settings.qdrant_path))


class FaceIndex:
    """Face embeddings of one embedding space and appearance signatures, one point per face.

    Example::

        index = FaceIndex(QdrantClient(":memory:"), embedder.space)
        index.collection    # 'faces-dlib-resnet-sha256-...'
        index.upsert(face_id, {"face": vector, "appearance": signature}, {"subject": pseudonym})
        index.vectors([face_id], "appearance")
    """

    def __init__(
        self, client: QdrantClient, space: EmbeddingSpace, *, payload_index: bool = False
    ) -> None:
        self.client = client
        self.space = space
        self.collection = faces_collection(space)
        self._ensure_collection(payload_index)

    @classmethod
    def from_settings(cls, settings: Settings, space: EmbeddingSpace) -> FaceIndex:
        # Payload indexes exist only on a server; the local store scans (and warns).
        return cls(open_client(settings), space, payload_index=bool(settings.qdrant_url))

    @classmethod
    def of_embedder(cls, client: QdrantClient, embedder: str) -> FaceIndex | None:
        """The existing collection of the embedder named ``embedder`` (as ``faces.embedder``
        records it), its dim read from the collection; None when it has none."""
        collection = faces_collection(embedder)
        with qdrant_errors(f"read Qdrant collection {collection!r}"):
            if not client.collection_exists(collection):
                return None
            dim = _stored_dim(client, collection)
        if dim is None:
            raise StorageError(f"Qdrant collection {collection!r} has no {FACE_VECTOR!r} vector")
        return cls(client, EmbeddingSpace(embedder, dim))

    def _ensure_collection(self, payload_index: bool) -> None:
        with qdrant_errors(f"prepare Qdrant collection {self.collection!r}"):
            if self.client.collection_exists(self.collection):
                found = _stored_dim(self.client, self.collection)
                if found == self.space.dim:
                    return
                raise StorageError(
                    f"Qdrant collection {self.collection!r} holds {found}-d face vectors, "
                    f"but {self.space.name} makes {self.space.dim}-d ones; it was not made "
                    "by this code: move it aside"
                )
            self.client.create_collection(
                self.collection,
                vectors_config={
                    FACE_VECTOR: models.VectorParams(
                        size=self.space.dim, distance=models.Distance.COSINE
                    ),
                    APPEARANCE_VECTOR: models.VectorParams(
                        size=APPEARANCE_DIM, distance=models.Distance.COSINE
                    ),
                },
            )
            if payload_index:
                # Keeps the subject-filtered duplicate lookup fast on a Qdrant server.
                self.client.create_payload_index(
                    self.collection, "subject", field_schema=models.PayloadSchemaType.KEYWORD
                )

    def upsert(
        self,
        face_id: str,
        vectors: dict[str, npt.NDArray[np.float32]],
        payload: dict[str, Any],
    ) -> None:
        point = models.PointStruct(
            id=face_id,
            vector={name: v.astype(np.float32).tolist() for name, v in vectors.items()},
            payload=payload,
        )
        with qdrant_errors(f"upsert face {face_id} into Qdrant"):
            self.client.upsert(self.collection, points=[point], wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove the points of ``ids`` (an id with no point is no error). Raises
        :class:`StorageError` when Qdrant cannot be written."""
        if not ids:
            return
        with qdrant_errors(f"delete {len(ids)} faces from Qdrant"):
            self.client.delete(
                self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True
            )

    def vectors(self, ids: Sequence[str], name: str) -> dict[str, npt.NDArray[np.float32]]:
        """The named vector of each of ``ids`` that exists (a lookup by id, no scan)."""
        return {
            face_id: named[name]
            for face_id, named in self.named_vectors(ids, (name,)).items()
            if name in named
        }

    def near(
        self, vector: npt.NDArray[np.float32], within: float, limit: int = 10
    ) -> list[tuple[str, str, float]]:
        """Faces whose identity vector lies within ``within`` of ``vector`` (a unit float32
        vector of the space's size), nearest first, at most ``limit``: ``(face_id,
        subject, distance)``, the distance Euclidean between unit vectors (0..2).

        The collection's cosine similarity is turned into that distance with
        ``d = sqrt(2 - 2 cos)``. Raises :class:`StorageError` when Qdrant cannot be read.
        """
        threshold = 1.0 - within * within / 2.0
        with qdrant_errors("search Qdrant for near faces"):
            hits = self.client.query_points(
                self.collection,
                query=vector.astype(np.float32).tolist(),
                using=FACE_VECTOR,
                limit=limit,
                score_threshold=threshold,
                with_payload=["subject"],
            ).points
        return [
            (
                str(hit.id),
                str((hit.payload or {}).get("subject", "")),
                float(np.sqrt(max(0.0, 2.0 - 2.0 * hit.score))),
            )
            for hit in hits
        ]

    def named_vectors(
        self, ids: Sequence[str], names: Sequence[str]
    ) -> dict[str, dict[str, npt.NDArray[np.float32]]]:
        """Several named vectors of each of ``ids`` in one lookup by id (no scan):
        ``{face_id: {name: float32 vector}}``; a point missing a name lacks that key.

        Raises :class:`StorageError` when Qdrant cannot be read.
        """
        if not ids:
            return {}
        with qdrant_errors("read vectors from Qdrant"):
            points = self.client.retrieve(self.collection, ids=list(ids), with_vectors=list(names))
        out: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
        for point in points:
            stored = point.vector if isinstance(point.vector, dict) else {}
            out[str(point.id)] = {
                name: np.asarray(stored[name], dtype=np.float32)
                for name in names
                if stored.get(name) is not None
            }
        return out

    def payloads(self, ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every point's payload (or those of ``ids``; an id without a point is left out).
        Raises :class:`StorageError` when Qdrant fails."""
        if ids is not None:
            with qdrant_errors("read face payloads from Qdrant"):
                points = self.client.retrieve(self.collection, ids=list(ids), with_payload=True)
            return {str(p.id): dict(p.payload or {}) for p in points}
        out: dict[str, dict[str, Any]] = {}
        offset = None
        while True:
            batch, offset = self.client.scroll(
                self.collection, limit=256, offset=offset, with_payload=True
            )
            out.update({str(p.id): dict(p.payload or {}) for p in batch})
            if offset is None:
                return out

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        self.client.close()


def _stored_dim(client: QdrantClient, collection: str) -> int | None:
    """Length of the face vectors an existing collection holds (None: it has none)."""
    vectors = client.get_collection(collection).config.params.vectors
    params = vectors.get(FACE_VECTOR) if isinstance(vectors, dict) else None
    return int(params.size) if params is not None else None
