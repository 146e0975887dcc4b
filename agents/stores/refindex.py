"""The anime reference index: nearest references to a face embedding, filtered by payload.

Embedded default: one **immutable folder per library version** under
``settings.ref_index_dir`` (``v000007/``), so that the CLI can publish version N+1 while
the worker keeps searching version N in another process::

    v000007/
      manifest.json      written last: the folder is complete (version, backend, count)
      edge/              a qdrant-edge shard, or qdrant-local/ for qdrant-client's store

:func:`publish_version` copies the base version's engine folder into a temporary folder,
applies the upserts and deletes, flushes, writes the manifest and renames the folder into
place, so a crash never leaves a half version under a version's name. A reader opens a
version with :func:`open_ref_index` and keeps it until it switches to a newer one; old
folders go with :func:`prune_versions` (on Linux a reader that still has one open keeps
working: the engine holds its files open or mapped).

With ``settings.qdrant_url`` set (production) every version is the server's ``anime_refs``
collection, updated in place; the version number only labels the reader.

Errors (all under :class:`agents.errors.PipelineError`)::

    StorageError (RuntimeError)                   an engine or the file system failed
     └── RefVersionMissing (FileNotFoundError)    no complete folder for that version
    RefInputError (ValueError)                    a bad vector, point, filter or argument
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from agents.errors import PipelineError, StorageError
from agents.stores.faces import open_client
from schemas.labels import LabelName
from schemas.settings import Settings

log = logging.getLogger(__name__)

REF_COLLECTION = "anime_refs"
REF_DIM = 512
MANIFEST = "manifest.json"
Backend = Literal["edge", "qdrant-local"]

#: Payload fields with a keyword index: the style every search filters on, and each label
#: a compatibility filter may name. Filters on other fields still work, unindexed.
STYLE_FIELD = "style"
LABEL_FIELDS: tuple[str, ...] = tuple(f"labels.{name.value}" for name in LabelName)

# Edge tuning, measured with `bench/matching.py --sweep` (BENCHMARKS.md, "Matching: anime
# reference search"; 100k x 512 references, 2 shared cores):
# - HNSW (m 16, ef_construct 100, the engine's defaults) took 1.5-3.5 minutes to build and
#   found 8-28% of the true top 10 on uniform vectors (58-84% filtered) at hnsw_ef 64-256.
# - Scanning int8 copies and rescoring the best 4x in float32 was 2-3x faster unfiltered,
#   recall 1.0 on clustered and uniform vectors, but ~0.01 on "collapsed" ones: the
#   seeded random-init embedder (the offline default) puts every pair above 0.9997 cosine,
#   below int8 resolution, so the scan cannot tell candidates apart.
# - A float32 scan is exact on every kind (0.985 on collapsed vectors, whose neighbours
#   differ by float32 rounding) and builds in seconds. A filter (one style plus labels: a
#   few thousand of 100k) is answered from the keyword indexes by scoring only the
#   matching points: p50 ~3 ms, p99 4-5 ms (8-13 ms in full runs beside other jobs),
#   and k hits whenever k references match. Unfiltered it reads every vector (~20 ms).
#: HNSW edges per node; 0 builds no graph: every search scans.
EDGE_HNSW_M = 0
#: Graph candidates while building; unused while EDGE_HNSW_M is 0 (the engine wants one).
EDGE_HNSW_EF_CONSTRUCT = 100
#: KB of vectors below which a search skips the graph; only matters with a graph.
EDGE_FULL_SCAN_KB = 32_000
#: No int8 copies (see above: blind on collapsed embeddings).
EDGE_QUANTIZED = False
#: Quantized candidates rescored in float32 per hit wanted, when quantized.
EDGE_OVERSAMPLING = 4.0
#: Mark the style index as the tenant key: optimised segments store each style's points
#: together, which cut the filtered p50 at 100k from ~5 ms to ~3 ms (same sweep).
EDGE_STYLE_TENANT = True

_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_TEMP_DIR = re.compile(r"^\.v\d{6,}\.tmp-(\d+)-[0-9a-f]+$")
_UPSERT_BATCH = 512


class RefInputError(PipelineError, ValueError):
    """A caller handed the index something it cannot take (the message names it)."""


class RefVersionMissing(StorageError, FileNotFoundError):
    """No complete index folder exists for a library version."""

    def __init__(self, version: int, folder: Path) -> None:
        super().__init__(
            f"anime reference index version {version} not found: {folder} is missing or "
            f"incomplete (no {MANIFEST}); publish it with `s2a refs add`, or open "
            "latest_local_version()"
        )
        self.version = version
        self.folder = folder


@dataclass(frozen=True, slots=True)
class RefPoint:
    """One reference as the index stores it.

    Example::

        RefPoint(ref_id=str(uuid.uuid4()), vector=embedding,
                 payload={"style": "ghibli", "labels": {"glasses": "no"}, "tags": [],
                          "license": "CC-BY-4.0", "source": url, "author": "A. Artist",
                          "library_version": 3})
    """

    ref_id: str
    vector: npt.NDArray[np.float32]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RefHit:
    """A search result: the reference, its cosine similarity and its exact payload."""

    ref_id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RefFilter:
    """Which references a search may return; the engine applies it, so ``limit`` hits come
    back whenever that many references match.

    Example::

        RefFilter(style="ghibli", labels={"glasses": "yes", "age_band": ["18-29", "30-44"]},
                  exclude=[already_paired_ref_id])
        RefFilter(style="ghibli", labels_not={"glasses": "yes"})  # no label counts as "not"
    """

    style: str | None = None
    labels: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    labels_not: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    """payload ``labels.<name>`` must not be any of the values (an absent label passes)"""
    exclude: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class EdgeTuning:
    """The qdrant-edge parameters of a new shard and of its searches (defaults: the
    constants above; the benchmark's sweep builds others)."""

    m: int = EDGE_HNSW_M
    ef_construct: int = EDGE_HNSW_EF_CONSTRUCT
    full_scan_kb: int = EDGE_FULL_SCAN_KB
    quantized: bool = EDGE_QUANTIZED
    oversampling: float = EDGE_OVERSAMPLING
    style_tenant: bool = EDGE_STYLE_TENANT
    #: graph candidates per search (None: the engine's default, ef_construct)
    search_ef: int | None = None
    #: extra graph links per payload value of the keyword indexes (0: none)
    payload_m: int = 0


EDGE_TUNING = EdgeTuning()


class RefIndex(Protocol):
    """What the pairs agent searches: one library version, read only."""

    version: int | None

    def search(
        self, vector: npt.ArrayLike, limit: int, where: RefFilter | None = None
    ) -> list[RefHit]: ...

    def search_many(
        self,
        vectors: Sequence[npt.ArrayLike] | npt.NDArray[np.float32],
        limit: int,
        where: RefFilter | None = None,
    ) -> list[list[RefHit]]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


# -- validation at the boundary -----------------------------------------------------------


def _checked_vector(vector: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (REF_DIM,):
        raise RefInputError(f"{what} must have shape ({REF_DIM},), got {array.shape}")
    if not np.all(np.isfinite(array)) or not np.any(array):
        raise RefInputError(f"{what} must be finite and non-zero to have a cosine similarity")
    return array


def _query_vector(vector: npt.ArrayLike, what: str = "vector") -> list[float]:
    return _checked_vector(vector, what).tolist()


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RefInputError(f"limit must be a positive int, got {limit!r}")


def _check_ref_id(ref_id: str, what: str) -> None:
    try:
        canonical = str(uuid.UUID(ref_id))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical != ref_id:
        # The engines hand ids back in canonical form; any other spelling would not match
        # the SQL row it came from.
        raise RefInputError(f"{what} must be a lowercase canonical UUID string, got {ref_id!r}")


def _checked_points(points: Sequence[RefPoint]) -> npt.NDArray[np.float32]:
    """Every point's id, vector and payload checked; their vectors as one (n, 512) array."""
    for point in points:
        _check_ref_id(point.ref_id, "RefPoint.ref_id")
        style = point.payload.get(STYLE_FIELD)
        if not isinstance(style, str) or not style:
            raise RefInputError(
                f"RefPoint {point.ref_id} payload['style'] must be a non-empty str, got {style!r}"
            )
        labels = point.payload.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise RefInputError(
                f"RefPoint {point.ref_id} payload['labels'] must map label names to str "
                f"values, got {labels!r}"
            )
    vectors = [np.asarray(p.vector, dtype=np.float32) for p in points]
    for point, vector in zip(points, vectors, strict=True):
        if vector.shape != (REF_DIM,):
            _checked_vector(vector, f"RefPoint {point.ref_id} vector")
    if not vectors:
        return np.empty((0, REF_DIM), dtype=np.float32)
    matrix = np.stack(vectors)
    # One vectorised pass: per-point checks cost seconds at 100k references.
    usable = np.isfinite(matrix).all(axis=1) & matrix.any(axis=1)
    if not usable.all():
        first = int(np.argmin(usable))
        _checked_vector(matrix[first], f"RefPoint {points[first].ref_id} vector")
    return matrix


def _check_version(version: int, what: str = "version") -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RefInputError(f"{what} must be a positive int, got {version!r}")


@dataclass(frozen=True, slots=True)
class _Conditions:
    """A RefFilter as plain conditions, shared by both engines' filter builders."""

    must: tuple[tuple[str, tuple[str, ...]], ...]  # (payload key, any of these values)
    must_not: tuple[tuple[str, tuple[str, ...]], ...]  # (payload key, none of these values)
    exclude: tuple[str, ...]
    impossible: bool  # an empty any-of list: nothing can match


def _conditions(where: RefFilter | None) -> _Conditions | None:
    if where is None:
        return None
    must: list[tuple[str, tuple[str, ...]]] = []
    if where.style is not None:
        if not isinstance(where.style, str) or not where.style:
            raise RefInputError(f"RefFilter.style must be a non-empty str, got {where.style!r}")
        must.append((STYLE_FIELD, (where.style,)))
    must += _label_conditions(where.labels, "labels")
    must_not = [c for c in _label_conditions(where.labels_not, "labels_not") if c[1]]
    if isinstance(where.exclude, str):
        raise RefInputError("RefFilter.exclude must be a sequence of ref ids, not one str")
    for ref_id in where.exclude:
        _check_ref_id(ref_id, "RefFilter.exclude item")
    return _Conditions(
        must=tuple(must),
        must_not=tuple(must_not),
        exclude=tuple(where.exclude),
        impossible=any(not values for _, values in must),
    )


def _label_conditions(
    labels: Mapping[str, str | Sequence[str]], what: str
) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for name, value in labels.items():
        if not isinstance(name, str) or not _SLUG.match(name):
            raise RefInputError(
                f"RefFilter.{what} key {name!r} is not a label name (lowercase, a-z0-9_)"
            )
        values = (value,) if isinstance(value, str) else tuple(value)
        if not all(isinstance(v, str) for v in values):
            raise RefInputError(f"RefFilter.{what}[{name!r}] must be str values, got {value!r}")
        out.append((f"labels.{name}", values))
    return out


# -- qdrant-edge ----------------------------------------------------------------------------


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


def _edge_config(tuning: EdgeTuning) -> qe.EdgeConfig:
    quantization = (
        qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned)
        if tuning.quantized
        else None
    )
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=REF_DIM, distance=qe.Distance.Cosine),
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


class _Searching:
    """The argument checks both engines share; each engine answers :meth:`_search`."""

    def search(
        self, vector: npt.ArrayLike, limit: int, where: RefFilter | None = None
    ) -> list[RefHit]:
        return self.search_many([vector], limit, where)[0]

    def search_many(
        self,
        vectors: Sequence[npt.ArrayLike] | npt.NDArray[np.float32],
        limit: int,
        where: RefFilter | None = None,
    ) -> list[list[RefHit]]:
        _check_limit(limit)
        queries = [_query_vector(v, f"vectors[{i}]") for i, v in enumerate(vectors)]
        conditions = _conditions(where)
        if not queries or (conditions is not None and conditions.impossible):
            return [[] for _ in queries]
        return self._search(queries, limit, conditions)

    def _search(
        self, queries: list[list[float]], limit: int, conditions: _Conditions | None
    ) -> list[list[RefHit]]:
        raise NotImplementedError


class EdgeRefIndex(_Searching):
    """A library version in a qdrant-edge shard (the embedded default).

    Example::

        index = EdgeRefIndex.load(Path("~/.selfie2anime/anime_refs/v000003/edge"), version=3)
        hits = index.search(face_vector, 10, RefFilter(style="ghibli"))
        index.close()
    """

    def __init__(
        self, shard: qe.EdgeShard, *, version: int | None, tuning: EdgeTuning = EDGE_TUNING
    ) -> None:
        self.version = version
        self.tuning = tuning
        self._shard: qe.EdgeShard | None = shard
        self._params = _edge_search_params(tuning)

    @classmethod
    def create(
        cls, path: Path, *, version: int | None = None, tuning: EdgeTuning = EDGE_TUNING
    ) -> EdgeRefIndex:
        """A new empty shard at ``path`` with the keyword payload indexes."""
        with _engine_errors(f"create edge shard {path}"):
            shard = qe.EdgeShard.create(str(path), _edge_config(tuning))
            for key in (STYLE_FIELD, *LABEL_FIELDS):
                # The planner picks a filter's points from these indexes and scores only
                # them; per-value graphs (payload_m) would only cost build time.
                params = qe.KeywordIndexParams(
                    is_tenant=tuning.style_tenant and key == STYLE_FIELD,
                    enable_hnsw=tuning.payload_m > 0,
                )
                shard.update(qe.UpdateOperation.create_field_index(key, params))
        return cls(shard, version=version, tuning=tuning)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        version: int | None = None,
        tuning: EdgeTuning = EDGE_TUNING,
        writable: bool = False,
    ) -> EdgeRefIndex:
        """Open a shard; only a writer passes its config (which the engine then persists)."""
        with _engine_errors(f"load edge shard {path}"):
            shard = qe.EdgeShard.load(str(path), _edge_config(tuning) if writable else None)
        return cls(shard, version=version, tuning=tuning)

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
        matrix = _checked_points(points)
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


# -- qdrant-client (local store or server) -------------------------------------------------


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
    """A library version in a qdrant-client collection: a local store folder (one process
    at a time may open it) or the server's ``anime_refs`` collection.

    Example::

        index = QdrantRefIndex(QdrantClient(path=str(folder)), version=3)
        index.search_many(face_vectors, 10, RefFilter(style="ghibli"))
    """

    def __init__(
        self,
        client: QdrantClient,
        *,
        version: int | None,
        collection: str = REF_COLLECTION,
        server: bool = False,
    ) -> None:
        self.version = version
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
                return
            client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=REF_DIM, distance=models.Distance.COSINE),
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
        matrix = _checked_points(points)
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


# -- versions -------------------------------------------------------------------------------


def version_dir(settings: Settings, version: int) -> Path:
    """Where version ``version`` of the embedded index lives (complete or not)."""
    return settings.ref_index_dir / f"v{version:06d}"


def server_location(url: str) -> str:
    """How a version on a Qdrant server is named in ``library_versions.index_location``."""
    host = url.split("://", 1)[-1].rstrip("/")
    return f"qdrant://{host}/{REF_COLLECTION}"


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {folder / MANIFEST}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _open_folder(
    folder: Path, manifest: dict[str, Any], version: int
) -> EdgeRefIndex | QdrantRefIndex:
    # A folder is read by the engine that wrote it, whatever the settings say now.
    backend = manifest.get("backend")
    if backend == "edge":
        return EdgeRefIndex.load(folder / "edge", version=version)
    if backend == "qdrant-local":
        return _local_client_index(folder / "qdrant-local", version)
    raise StorageError(f"{folder / MANIFEST} names an unknown backend {backend!r}")


def _local_client_index(path: Path, version: int | None) -> QdrantRefIndex:
    try:
        client = QdrantClient(path=str(path))
    except Exception as exc:
        raise StorageError(
            f"cannot open the Qdrant local store {path}: {exc} (a qdrant-local folder opens "
            "in one process at a time; the edge backend allows a reader beside a writer)"
        ) from exc
    return QdrantRefIndex(client, version=version)


def open_ref_index(settings: Settings, version: int) -> RefIndex:
    """A reader for library version ``version``: the server collection when
    ``settings.qdrant_url`` is set, else that version's folder.

    Raises :class:`RefVersionMissing` (naming the folder) when the version was never
    published here or has been pruned.
    """
    _check_version(version)
    if settings.qdrant_url:
        return QdrantRefIndex(_server_client(settings), version=version, server=True)
    folder = version_dir(settings, version)
    manifest = _manifest(folder)
    if manifest is None:
        raise RefVersionMissing(version, folder)
    return _open_folder(folder, manifest, version)


def _server_client(settings: Settings) -> QdrantClient:
    with _engine_errors(f"connect to Qdrant at {settings.qdrant_url}"):
        return open_client(settings)


def latest_local_version(settings: Settings) -> int | None:
    """The newest complete version folder, or None when there is none."""
    versions = _local_versions(settings)
    return versions[-1] if versions else None


def _local_versions(settings: Settings) -> list[int]:
    root = settings.ref_index_dir
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _VERSION_DIR.match(entry.name)
        if match and _manifest(entry) is not None:
            found.append(int(match.group(1)))
    return sorted(found)


def prune_versions(settings: Settings, keep: int = 3) -> list[int]:
    """Delete all but the newest ``keep`` complete versions (and temporary folders left by
    publishers that died); returns the versions deleted, oldest first.

    A process that still has a deleted version open keeps reading it (its files stay
    open or mapped until it closes), but can no longer open it again.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise RefInputError(f"keep must be an int of at least 1, got {keep!r}")
    _remove_dead_temps(settings.ref_index_dir)
    doomed = _local_versions(settings)[:-keep]
    for version in doomed:
        folder = version_dir(settings, version)
        try:
            # The manifest goes first: a half-deleted folder is then never taken as complete.
            (folder / MANIFEST).unlink()
            shutil.rmtree(folder)
        except OSError as exc:
            raise StorageError(f"cannot delete old reference index {folder}: {exc}") from exc
    if doomed:
        log.info("pruned reference index versions %s", doomed)
    return doomed


def publish_version(
    settings: Settings,
    version: int,
    base: int | None,
    upserts: Sequence[RefPoint],
    deletes: Sequence[str] = (),
) -> str:
    """Build library version ``version`` as ``base`` plus ``upserts`` minus ``deletes`` and
    return where it lives (a folder, or ``qdrant://host:port/anime_refs`` on a server).

    Embedded: nothing happens when the version's folder already exists complete (a retry
    after a crash or a lost race); otherwise the version is built in a temporary folder
    and renamed into place. A point both upserted and deleted ends deleted.

    Example::

        location = publish_version(settings, 4, 3, [RefPoint(ref_id, vector, payload)])
    """
    _check_version(version)
    if base is not None:
        _check_version(base, "base")
        if base >= version:
            raise RefInputError(f"base ({base}) must be older than version ({version})")
    _checked_points(upserts)
    if isinstance(deletes, str):
        raise RefInputError("deletes must be a sequence of ref ids, not one str")
    for ref_id in deletes:
        _check_ref_id(ref_id, "deletes item")

    if settings.qdrant_url:
        # One collection, updated in place: upserts and deletes are idempotent by id.
        index = QdrantRefIndex(_server_client(settings), version=version, server=True)
        try:
            index.upsert(upserts)
            index.delete(deletes)
        finally:
            index.close()
        return server_location(settings.qdrant_url)

    target = version_dir(settings, version)
    if _manifest(target) is not None:
        return str(target)
    return str(_publish_folder(settings, version, base, upserts, deletes, target))


def _publish_folder(
    settings: Settings,
    version: int,
    base: int | None,
    upserts: Sequence[RefPoint],
    deletes: Sequence[str],
    target: Path,
) -> Path:
    backend: Backend = settings.refs.index_backend
    root = settings.ref_index_dir
    base_folder = base_manifest = None
    if base is not None:
        base_folder = version_dir(settings, base)
        base_manifest = _manifest(base_folder)
        if base_manifest is None:
            raise RefVersionMissing(base, base_folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(root)
    except OSError as exc:
        raise StorageError(f"cannot prepare the reference index folder {root}: {exc}") from exc
    temp = root / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        index = _start(temp, backend, base, base_folder, base_manifest, version)
        try:
            index.upsert(upserts)
            index.delete(deletes)
            index.finish()
            count = index.count()
        finally:
            index.close()
        if backend == "edge":
            # The first load of a closed shard rewrites its config file; doing it here
            # leaves the published files unchanged by every later reader, so a later
            # publish may copy them while the worker has them open.
            EdgeRefIndex.load(temp / backend).close()
        _write_manifest(temp, version, base, backend, count)
        try:
            temp.rename(target)
        except OSError:
            if _manifest(target) is None:
                raise
            # Another publisher finished this version first: its folder is the version.
            shutil.rmtree(temp, ignore_errors=True)
            return target
        _fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, PipelineError) or not isinstance(exc, Exception):
            raise
        raise StorageError(f"cannot publish reference index version {version}: {exc}") from exc
    log.info("published reference index version %d (%d points) at %s", version, count, target)
    return target


def _start(
    temp: Path,
    backend: Backend,
    base: int | None,
    base_folder: Path | None,
    base_manifest: dict[str, Any] | None,
    version: int,
) -> EdgeRefIndex | QdrantRefIndex:
    """The writable index of a new version: a copy of the base, or empty."""
    engine = temp / backend
    temp.mkdir()
    if base is None or base_folder is None or base_manifest is None:
        return _empty(engine, backend, version)
    if base_manifest.get("backend") != backend:
        # The settings changed backend since the base was built: carry its points over.
        index = _empty(engine, backend, version)
        old = _open_folder(base_folder, base_manifest, base)
        try:
            batch: list[RefPoint] = []
            for point in old.points():
                batch.append(point)
                if len(batch) == _UPSERT_BATCH:
                    index.upsert(batch)
                    batch = []
            index.upsert(batch)
        finally:
            old.close()
        return index
    # A published folder is never written again (readers included, see _publish_folder),
    # so copying it while the worker searches it yields a consistent shard.
    shutil.copytree(base_folder / backend, engine)
    copy: EdgeRefIndex | QdrantRefIndex = (
        EdgeRefIndex.load(engine, version=version, writable=True)
        if backend == "edge"
        else _local_client_index(engine, version)
    )
    found, expected = copy.count(), base_manifest.get("count")
    if found != expected:
        copy.close()
        raise StorageError(
            f"the copy of {base_folder} holds {found} points where its manifest says {expected}"
        )
    return copy


def _empty(engine: Path, backend: Backend, version: int) -> EdgeRefIndex | QdrantRefIndex:
    if backend == "edge":
        return EdgeRefIndex.create(engine, version=version)
    return _local_client_index(engine, version)


def _write_manifest(
    temp: Path, version: int, base: int | None, backend: Backend, count: int
) -> None:
    package = "qdrant-edge-py" if backend == "edge" else "qdrant-client"
    manifest = {
        "version": version,
        "base": base,
        "backend": backend,
        "engine": f"{package} {metadata.version(package)}",
        "count": count,
        "dim": REF_DIM,
        "created_at": datetime.now(UTC).isoformat(),
        "tuning": asdict(EDGE_TUNING) if backend == "edge" else None,
    }
    path = temp / MANIFEST
    with path.open("w") as out:
        json.dump(manifest, out, indent=2, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_dead_temps(root: Path) -> None:
    """Temporary folders of publishers that died mid-way (a live one is left alone)."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        match = _TEMP_DIR.match(entry.name)
        if match and not _alive(int(match.group(1))):
            log.warning("removing %s, left by a publisher that stopped", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Turns an engine's exception into a StorageError that names the operation."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot {what}: {exc}") from exc
