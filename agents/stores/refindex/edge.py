"""The qdrant-edge engine (the embedded default): :class:`EdgeRefIndex`, a library
version in an edge shard, with the shard's config, search parameters and filter."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from agents.errors import StorageError
from agents.stores.refindex.contract import (
    _UPSERT_BATCH,
    LABEL_FIELDS,
    STYLE_FIELD,
    RefHit,
    RefPoint,
    _checked_points,
    _Conditions,
    _engine_errors,
    _Searching,
)
from agents.stores.refindex.tuning import EDGE_TUNING, EdgeTuning


def _edge_filter(conditions: _Conditions | None) -> qe.Filter | None:
    if conditions is None or not (conditions.must or conditions.must_not or conditions.exclude):
        return None

    def match(key: str, values: tuple[str, ...]) -> Any:
        return qe.FieldCondition(
            key,
            match=qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(list(values)),
        )

    must = [match(key, values) for key, values in conditions.must]
    must_not = [match(key, values) for key, values in conditions.must_not]
    if conditions.exclude:
        must_not.append(qe.HasIdCondition(set(conditions.exclude)))
    return qe.Filter(must=must or None, must_not=must_not or None)


def _edge_config(tuning: EdgeTuning, dim: int) -> qe.EdgeConfig:
    quantization = (
        qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned)
        if tuning.quantized
        else None
    )
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(
            m=tuning.m,
            ef_construct=tuning.ef_construct,
            full_scan_threshold=tuning.full_scan_kb,
            payload_m=tuning.payload_m,
        ),
        quantization_config=quantization,
        # Without a WAL a shard takes no lock, so the worker, the CLI and tests can each
        # open a published (never again written) version; publish flushes before renaming.
        wal_enabled=False,
    )


def _edge_search_params(tuning: EdgeTuning) -> qe.SearchParams:
    quantization = (
        qe.QuantizationSearchParams(rescore=True, oversampling=tuning.oversampling)
        if tuning.quantized
        else None
    )
    return qe.SearchParams(hnsw_ef=tuning.search_ef, quantization=quantization)


class EdgeRefIndex(_Searching):
    """A library version in a qdrant-edge shard (the embedded default), of ``dim``-d vectors.

    Example::

        index = EdgeRefIndex.load(Path("~/.selfie2anime/anime_refs/v000003/edge"), dim=128,
                                  version=3)
        hits = index.search(face_vector, 10, RefFilter(style="ghibli"))
        index.close()
    """

    def __init__(
        self,
        shard: qe.EdgeShard,
        *,
        version: int | None,
        dim: int,
        tuning: EdgeTuning = EDGE_TUNING,
    ) -> None:
        self.version = version
        self.dim = dim
        self.tuning = tuning
        self._shard: qe.EdgeShard | None = shard
        self._params = _edge_search_params(tuning)

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        dim: int,
        version: int | None = None,
        tuning: EdgeTuning = EDGE_TUNING,
    ) -> EdgeRefIndex:
        """A new empty shard of ``dim``-d vectors at ``path`` with the keyword payload
        indexes."""
        with _engine_errors(f"create edge shard {path}"):
            shard = qe.EdgeShard.create(str(path), _edge_config(tuning, dim))
            for key in (STYLE_FIELD, *LABEL_FIELDS):
                # The planner picks a filter's points from these indexes and scores only
                # them; per-value graphs (payload_m) would only cost build time.
                params = qe.KeywordIndexParams(
                    is_tenant=tuning.style_tenant and key == STYLE_FIELD,
                    enable_hnsw=tuning.payload_m > 0,
                )
                shard.update(qe.UpdateOperation.create_field_index(key, params))
        return cls(shard, version=version, dim=dim, tuning=tuning)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dim: int,
        version: int | None = None,
        tuning: EdgeTuning = EDGE_TUNING,
        writable: bool = False,
    ) -> EdgeRefIndex:
        """Open a shard of ``dim``-d vectors; only a writer passes its config (which the
        engine then persists)."""
        with _engine_errors(f"load edge shard {path}"):
            config = _edge_config(tuning, dim) if writable else None
            shard = qe.EdgeShard.load(str(path), config)
        return cls(shard, version=version, dim=dim, tuning=tuning)

    @property
    def _open(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StorageError(f"edge reference index (version {self.version}) is closed")
        return self._shard

    def _search(
        self, queries: list[list[float]], limit: int, conditions: _Conditions | None
    ) -> list[list[RefHit]]:
        flt = _edge_filter(conditions)
        requests = [
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(q),
                filter=flt,
                with_payload=True,
                params=self._params,
            )
            for q in queries
        ]
        with _engine_errors("search the edge reference index"):
            if len(requests) == 1:
                results = [self._open.query(requests[0])]
            else:
                results = self._open.query_batch(qe.QueryBatchRequest(requests))
        return [
            [RefHit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]
            for points in results
        ]

    def count(self) -> int:
        with _engine_errors("count the edge reference index"):
            return int(self._open.count(qe.CountRequest(exact=True)))

    def upsert(self, points: Sequence[RefPoint]) -> None:
        matrix = _checked_points(points, self.dim)
        for start in range(0, len(points), _UPSERT_BATCH):
            end = start + _UPSERT_BATCH
            batch = [
                qe.Point(p.ref_id, row, p.payload)
                for p, row in zip(points[start:end], matrix[start:end].tolist(), strict=True)
            ]
            with _engine_errors("upsert into the edge reference index"):
                self._open.update(qe.UpdateOperation.upsert_points(batch))

    def delete(self, ref_ids: Sequence[str]) -> None:
        if ref_ids:
            with _engine_errors("delete from the edge reference index"):
                self._open.update(qe.UpdateOperation.delete_points(list(ref_ids)))

    def points(self) -> Iterator[RefPoint]:
        """Every stored point with its vector (to rebuild it in another engine)."""
        offset: Any = None
        while True:
            with _engine_errors("read the edge reference index"):
                records, offset = self._open.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=_UPSERT_BATCH, with_payload=True, with_vector=True
                    )
                )
            for r in records:
                # The unnamed vector comes back as a list, or under "" in a dict.
                vector: Any = r.vector.get("") if isinstance(r.vector, dict) else r.vector
                yield RefPoint(
                    str(r.id), np.asarray(vector, dtype=np.float32), dict(r.payload or {})
                )
            if offset is None:
                return

    def finish(self) -> None:
        """Build what the optimizer plans (HNSW for large segments) and flush to disk."""
        with _engine_errors("optimize the edge reference index"):
            self._open.optimize()
            self._open.flush()

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            with _engine_errors("close the edge reference index"):
                shard.close()
