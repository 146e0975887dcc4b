"""The Qdrant ``faces`` collection: one point per accepted face.

Embedded default: qdrant-client's local store under the data directory (one process may
open it at a time, the worker). Production: a Qdrant server URL. The payload holds the
subject pseudonym, never a raw id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models

from agents.errors import StorageError
from agents.records import EMBED_DIM
from schemas.settings import Settings

FACES = "faces"
#: Named vectors of a face point: the embedder's identity vector, and a small appearance
#: signature of the aligned crop that the duplicate check compares.
FACE_VECTOR = "face"
FACE_DIM = EMBED_DIM
APPEARANCE_VECTOR = "appearance"
APPEARANCE_DIM = 256


def open_client(settings: Settings) -> QdrantClient:
    """A client for the configured Qdrant: server when ``qdrant_url`` is set, else local."""
    if settings.qdrant_url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClient(url=settings.qdrant_url, api_key=key)
    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(settings.qdrant_path))


class FaceIndex:
    """Face embeddings and appearance signatures, one point per accepted face.

    Example::

        index = FaceIndex(QdrantClient(":memory:"))
        index.upsert(face_id, {"face": vector, "appearance": signature}, {"subject": pseudonym})
        index.vectors([face_id], "appearance")
    """

    def __init__(
        self, client: QdrantClient, collection: str = FACES, *, payload_index: bool = False
    ) -> None:
        self.client = client
        self.collection = collection
        self._ensure_collection(payload_index)

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceIndex:
        # Payload indexes exist only on a server; the local store scans (and warns).
        return cls(open_client(settings), payload_index=bool(settings.qdrant_url))

    def _ensure_collection(self, payload_index: bool) -> None:
        try:
            if self.client.collection_exists(self.collection):
                return
            self.client.create_collection(
                self.collection,
                vectors_config={
                    FACE_VECTOR: models.VectorParams(
                        size=FACE_DIM, distance=models.Distance.COSINE
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
        except Exception as exc:
            raise StorageError(
                f"cannot prepare Qdrant collection {self.collection!r}: {exc}"
            ) from exc

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
        try:
            self.client.upsert(self.collection, points=[point], wait=True)
        except Exception as exc:
            raise StorageError(f"cannot upsert face {face_id} into Qdrant: {exc}") from exc

    def vectors(self, ids: Sequence[str], name: str) -> dict[str, npt.NDArray[np.float32]]:
        """The named vector of each of ``ids`` that exists (a lookup by id, no scan)."""
        if not ids:
            return {}
        try:
            points = self.client.retrieve(self.collection, ids=list(ids), with_vectors=[name])
        except Exception as exc:
            raise StorageError(f"cannot read vectors from Qdrant: {exc}") from exc
        out: dict[str, npt.NDArray[np.float32]] = {}
        for point in points:
            vector = point.vector.get(name) if isinstance(point.vector, dict) else None
            if vector is not None:
                out[str(point.id)] = np.asarray(vector, dtype=np.float32)
        return out

    def payloads(self, ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every point's payload (or those of ``ids``), for audits and tests."""
        if ids is not None:
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
