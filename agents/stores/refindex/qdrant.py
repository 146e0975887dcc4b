"""The qdrant-client engine: :class:`QdrantRefIndex` on a local store folder
(``qdrant-local`` versions) or on the Qdrant server's collection, and the helpers that
open either client."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from agents.errors import StorageError
from agents.stores.faces import open_client
from agents.stores.refindex.contract import (
    _UPSERT_BATCH,
    LABEL_FIELDS,
    REF_COLLECTION,
    STYLE_FIELD,
    RefHit,
    RefPoint,
    _checked_points,
    _Conditions,
    _engine_errors,
    _Searching,
)
from agents.stores.refindex.tuning import (
    EDGE_FULL_SCAN_KB,
    EDGE_HNSW_EF_CONSTRUCT,
    EDGE_HNSW_M,
    EDGE_OVERSAMPLING,
    EDGE_QUANTIZED,
    EDGE_STYLE_TENANT,
)
from schemas.settings import Settings


def _client_filter(conditions: _Conditions | None) -> models.Filter | None:
    if conditions is None or not (conditions.must or conditions.must_not or conditions.exclude):
        return None

    def match(key: str, values: tuple[str, ...]) -> models.Condition:
        return models.FieldCondition(
            key=key,
            match=models.MatchValue(value=values[0])
            if len(values) == 1
            else models.MatchAny(any=list(values)),
        )

    must = [match(key, values) for key, values in conditions.must]
    must_not = [match(key, values) for key, values in conditions.must_not]
    if conditions.exclude:
        must_not.append(models.HasIdCondition(has_id=list(conditions.exclude)))
    return models.Filter(must=must or None, must_not=must_not or None)


class QdrantRefIndex(_Searching):
    """A library version in a qdrant-client collection of ``dim``-d vectors: a local store
    folder (one process at a time may open it) or the server's collection of one embedder
    (:func:`~agents.stores.refindex.contract.ref_collection`).

    Example::

        index = QdrantRefIndex(QdrantClient(path=str(folder)), version=3, dim=128)
        index.search_many(face_vectors, 10, RefFilter(style="ghibli"))
    """

    def __init__(
        self,
        client: QdrantClient,
        *,
        version: int | None,
        dim: int,
        collection: str = REF_COLLECTION,
        server: bool = False,
    ) -> None:
        self.version = version
        self.dim = dim
        self.client: QdrantClient | None = client
        self.collection = collection
        self._params = (
            models.SearchParams(
                quantization=models.QuantizationSearchParams(
                    rescore=True, oversampling=EDGE_OVERSAMPLING
                )
            )
            if server and EDGE_QUANTIZED
            else None
        )
        self._ensure_collection(server)

    def _ensure_collection(self, server: bool) -> None:
        client = self._open
        with _engine_errors(f"prepare Qdrant collection {self.collection!r}"):
            if client.collection_exists(self.collection):
                vectors = client.get_collection(self.collection).config.params.vectors
                found = vectors.size if isinstance(vectors, models.VectorParams) else None
                if found != self.dim:
                    raise StorageError(
                        f"Qdrant collection {self.collection!r} holds {found}-d vectors, "
                        f"not the {self.dim}-d ones asked for"
                    )
                return
            client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
                # The server runs the engine qdrant-edge embeds: the same tuning applies.
                hnsw_config=models.HnswConfigDiff(
                    m=EDGE_HNSW_M,
                    ef_construct=EDGE_HNSW_EF_CONSTRUCT,
                    full_scan_threshold=EDGE_FULL_SCAN_KB,
                ),
                quantization_config=models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                    )
                )
                if EDGE_QUANTIZED
                else None,
            )
            if server:
                # The local store scans in Python and ignores payload indexes.
                for key in (STYLE_FIELD, *LABEL_FIELDS):
                    schema = models.KeywordIndexParams(
                        type=models.KeywordIndexType.KEYWORD,
                        is_tenant=EDGE_STYLE_TENANT and key == STYLE_FIELD,
                    )
                    client.create_payload_index(self.collection, key, field_schema=schema)

    @property
    def _open(self) -> QdrantClient:
        if self.client is None:
            raise StorageError(f"Qdrant reference index (version {self.version}) is closed")
        return self.client

    def _search(
        self, queries: list[list[float]], limit: int, conditions: _Conditions | None
    ) -> list[list[RefHit]]:
        flt = _client_filter(conditions)
        with _engine_errors(f"search Qdrant collection {self.collection!r}"):
            if len(queries) == 1:
                responses = [
                    self._open.query_points(
                        self.collection,
                        query=queries[0],
                        query_filter=flt,
                        search_params=self._params,
                        limit=limit,
                        with_payload=True,
                    )
                ]
            else:
                responses = self._open.query_batch_points(
                    self.collection,
                    requests=[
                        models.QueryRequest(
                            query=q,
                            filter=flt,
                            params=self._params,
                            limit=limit,
                            with_payload=True,
                        )
                        for q in queries
                    ],
                )
        return [
            [RefHit(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points]
            for r in responses
        ]

    def count(self) -> int:
        with _engine_errors(f"count Qdrant collection {self.collection!r}"):
            return int(self._open.count(self.collection, exact=True).count)

    def upsert(self, points: Sequence[RefPoint]) -> None:
        matrix = _checked_points(points, self.dim)
        for start in range(0, len(points), _UPSERT_BATCH):
            end = start + _UPSERT_BATCH
            batch = [
                models.PointStruct(id=p.ref_id, vector=row, payload=p.payload)
                for p, row in zip(points[start:end], matrix[start:end].tolist(), strict=True)
            ]
            with _engine_errors(f"upsert into Qdrant collection {self.collection!r}"):
                self._open.upsert(self.collection, points=batch, wait=True)

    def delete(self, ref_ids: Sequence[str]) -> None:
        if ref_ids:
            with _engine_errors(f"delete from Qdrant collection {self.collection!r}"):
                self._open.delete(
                    self.collection,
                    points_selector=models.PointIdsList(points=list(ref_ids)),
                    wait=True,
                )

    def points(self) -> Iterator[RefPoint]:
        """Every stored point with its vector (to rebuild it in another engine)."""
        offset: Any = None
        while True:
            with _engine_errors(f"read Qdrant collection {self.collection!r}"):
                records, offset = self._open.scroll(
                    self.collection,
                    offset=offset,
                    limit=_UPSERT_BATCH,
                    with_payload=True,
                    with_vectors=True,
                )
            for r in records:
                yield RefPoint(
                    str(r.id), np.asarray(r.vector, dtype=np.float32), dict(r.payload or {})
                )
            if offset is None:
                return

    def finish(self) -> None:
        """Nothing to build: the local store persists each write, a server indexes alone."""

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            with _engine_errors(f"close Qdrant collection {self.collection!r}"):
                client.close()


def _local_client_index(path: Path, version: int | None, dim: int) -> QdrantRefIndex:
    try:
        client = QdrantClient(path=str(path))
    except Exception as exc:
        raise StorageError(
            f"cannot open the Qdrant local store {path}: {exc} (a qdrant-local folder opens "
            "in one process at a time; the edge backend allows a reader beside a writer)"
        ) from exc
    return QdrantRefIndex(client, version=version, dim=dim)


def _server_client(settings: Settings) -> QdrantClient:
    with _engine_errors(f"connect to Qdrant at {settings.qdrant_url}"):
        return open_client(settings)
