"""The qdrant-edge engine (the embedded default): :class:`EdgeRefIndex`, a library
version in an edge shard, with the shard's config, search parameters and filter, and
:class:`_InMemory`, the copy of a shard that its searches read.

Why searches read a copy (BENCHMARKS.md, "Matching: anime reference search"): the engine
hands every query to its own search thread pool and waits. On two shared cores a woken
pool thread waits for a core behind whatever else runs (another process, or OpenBLAS
threads spinning after a numpy matmul in this one), which put the filtered p99 at 100k
references at 13-35 ms while its p50 was ~1 ms. Scoring a float32 matrix in the calling
thread, with no hand-over, keeps the p99 near the p50.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
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


#: Points per scroll page while reading a shard into memory: larger pages cut the engine
#: round trips (512 per page read 100k points ~40% slower), and a page's vectors pass
#: through Python lists, so pages stay small enough for that to be a few MB.
_READ_BATCH = 8192
#: A filter's rows are gathered into a new matrix when they are fewer than this share of
#: the rows they span; otherwise the whole span is scored and the rows picked from the
#: scores. Gathering a row costs ~2.3x scoring it in place (128-d; both ways cost the
#: same at ~40% of the span).
_GATHER_BELOW = 1 / 3
#: Filters whose rows are remembered; past it the memo starts again. The pairs agent uses
#: a handful per style (the style, with or without a required label).
_SELECTIONS_KEPT = 256

Rows = npt.NDArray[np.intp]
_NO_ROWS: Rows = np.empty(0, dtype=np.intp)


@dataclass(frozen=True, slots=True)
class _Selection:
    """The rows a filter admits, as the search scores them.

    ``rows`` is None when every row of ``[lo, hi)`` is admitted (a style alone, or no
    filter); otherwise the admitted rows, ascending, int64 of shape (m,), all in
    ``[lo, hi)``; ``gather`` says whether to score ``rows`` only (sparse) or the span.
    """

    lo: int
    hi: int
    rows: Rows | None
    gather: bool

    @property
    def size(self) -> int:
        return self.hi - self.lo if self.rows is None else len(self.rows)


class _InMemory:
    """A shard's points as numpy arrays, searched exactly in the calling thread.

    ``vectors`` is (n, dim) float32, C-contiguous, unit rows (the engine stores cosine
    vectors normalised), ordered by style so that one style is one block of rows;
    ``ids`` and ``payloads`` follow the same order. Memory: n x dim x 4 bytes of vectors
    (51 MB for 100k 128-d references) plus each payload pickled (~150 bytes here).
    """

    def __init__(
        self,
        ids: list[str],
        vectors: npt.NDArray[np.float32],
        payloads: list[dict[str, Any]],
    ) -> None:
        styles = np.array([_keyword(p.get(STYLE_FIELD)) for p in payloads], dtype=str)
        # Stable, so points keep the engine's order within a style.
        order = np.argsort(styles, kind="stable")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # Normalised once here, never per query (a zero row cannot be stored; guard anyway).
        unit = vectors[order] / np.where(norms[order] > 0, norms[order], 1.0)
        self.vectors: npt.NDArray[np.float32] = np.ascontiguousarray(unit, dtype=np.float32)
        self.ids: list[str] = [ids[i] for i in order]
        ordered = [payloads[i] for i in order]
        # A fresh copy for every hit (callers may change what they get) costs ~1 us from
        # bytes, ~4 us with copy.deepcopy; the bytes are this process's own, never read
        # from outside, and take a fraction of the dicts' memory.
        self._payloads: list[bytes] = [pickle.dumps(p, pickle.HIGHEST_PROTOCOL) for p in ordered]
        self._row_of: dict[str, int] = {ref_id: row for row, ref_id in enumerate(self.ids)}
        self._postings = _postings(ordered)
        self._selections: dict[tuple[Any, ...], _Selection] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, query: npt.NDArray[np.float32], limit: int, conditions: _Conditions | None
    ) -> list[RefHit]:
        """The ``limit`` best rows by cosine to ``query`` ((dim,) float32, non-zero) that
        ``conditions`` admit, best first."""
        selection = self._select(conditions)
        if selection.size == 0:
            return []
        q = query / np.float32(np.linalg.norm(query))
        # One dot per row (vecdot: BLAS sdot over dim floats, always one thread). `@` would
        # be OpenBLAS's gemv, which past ~9k elements wakes its thread pool: a hand-over per
        # query again (p99 1-3 ms over a 12.4k x 128 block, against ~0.2 ms here).
        if selection.rows is None:
            scores = np.vecdot(self.vectors[selection.lo : selection.hi], q)
        elif selection.gather:
            scores = np.vecdot(self.vectors[selection.rows], q)
        else:
            span = np.vecdot(self.vectors[selection.lo : selection.hi], q)
            scores = span[selection.rows - selection.lo]
        if conditions is not None and conditions.exclude:
            # `scores` is this query's own array (vecdot's output or a fancy-indexed copy).
            scores[self._positions(selection, conditions.exclude)] = -np.inf
        best = _best(scores, limit)
        rows = best + selection.lo if selection.rows is None else selection.rows[best]
        return [
            RefHit(self.ids[row], float(scores[pos]), pickle.loads(self._payloads[row]))
            for row, pos in zip(rows.tolist(), best.tolist(), strict=True)
            if scores[pos] > -np.inf
        ]

    def _select(self, conditions: _Conditions | None) -> _Selection:
        key = (conditions.must, conditions.must_not) if conditions is not None else ((), ())
        selection = self._selections.get(key)
        if selection is None:
            selection = self._selection(*key)
            if len(self._selections) >= _SELECTIONS_KEPT:
                self._selections.clear()
            self._selections[key] = selection
        return selection

    def _selection(
        self,
        must: tuple[tuple[str, tuple[str, ...]], ...],
        must_not: tuple[tuple[str, tuple[str, ...]], ...],
    ) -> _Selection:
        n = len(self)
        if not must and not must_not:
            return _Selection(0, n, None, gather=False)
        admitted = np.ones(n, dtype=bool)
        for field, values in must:
            # Any of the values: a keyword match, as the engine's MatchAny.
            matching = np.zeros(n, dtype=bool)
            for value in values:
                matching[self._rows_with(field, value)] = True
            admitted &= matching
        for field, values in must_not:
            # A point without the field passes, as the engine's must_not does.
            for value in values:
                admitted[self._rows_with(field, value)] = False
        rows = np.flatnonzero(admitted)
        if len(rows) == 0:
            return _Selection(0, 0, _NO_ROWS, gather=True)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if len(rows) == hi - lo:
            return _Selection(lo, hi, None, gather=False)
        return _Selection(lo, hi, rows, gather=len(rows) < _GATHER_BELOW * (hi - lo))

    def _rows_with(self, field: str, value: str) -> Rows:
        return self._postings.get(field, {}).get(value, _NO_ROWS)

    def _positions(self, selection: _Selection, ref_ids: Sequence[str]) -> Rows:
        """Where the selected ones of ``ref_ids`` sit in the selection's score vector."""
        rows = np.array(
            [row for row in map(self._row_of.get, ref_ids) if row is not None], dtype=np.intp
        )
        if selection.rows is None:
            return rows[(rows >= selection.lo) & (rows < selection.hi)] - selection.lo
        at = np.searchsorted(selection.rows, rows)
        inside = at < len(selection.rows)
        at, rows = at[inside], rows[inside]
        return at[selection.rows[at] == rows]

    @classmethod
    def read(cls, shard: qe.EdgeShard, dim: int) -> _InMemory:
        """Every point of ``shard`` (``dim``-d vectors) into memory: ~2-3 s for 100k on two
        shared cores, most of it the engine building Python lists of the vectors."""
        ids: list[str] = []
        blocks: list[npt.NDArray[np.float32]] = []
        payloads: list[dict[str, Any]] = []
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset, limit=_READ_BATCH, with_payload=True, with_vector=True
                )
            )
            for r in records:
                ids.append(str(r.id))
                payloads.append(r.payload or {})
            if records:
                # The unnamed vector comes back as a list, or under "" in a dict.
                blocks.append(
                    np.array(
                        [
                            r.vector.get("") if isinstance(r.vector, dict) else r.vector
                            for r in records
                        ],
                        dtype=np.float32,
                    )
                )
            if offset is None:
                break
        vectors = np.concatenate(blocks) if blocks else np.empty((0, dim), dtype=np.float32)
        if vectors.shape != (len(ids), dim):
            raise StorageError(
                f"the edge shard holds vectors of shape {vectors.shape[1:]}, expected ({dim},)"
            )
        return cls(ids, vectors, payloads)


def _keyword(value: Any) -> str:
    """A style as a sort key (a point always has one; '' sorts a missing one first)."""
    return value if isinstance(value, str) else ""


def _postings(payloads: Sequence[dict[str, Any]]) -> dict[str, dict[str, Rows]]:
    """For each field a filter may name (the style and ``labels.<name>``), the rows of each
    value: ascending int64 arrays. A list value counts for each of its strings, as in the
    engine's keyword index; other values match no keyword."""
    found: dict[str, dict[str, list[int]]] = {}

    def add(field: str, value: Any, row: int) -> None:
        for v in value if isinstance(value, list) else (value,):
            if isinstance(v, str):
                found.setdefault(field, {}).setdefault(v, []).append(row)

    for row, payload in enumerate(payloads):
        if STYLE_FIELD in payload:
            add(STYLE_FIELD, payload[STYLE_FIELD], row)
        labels = payload.get("labels")
        if isinstance(labels, dict):
            for name, value in labels.items():
                add(f"labels.{name}", value, row)
    return {
        field: {value: np.unique(np.array(rows, dtype=np.intp)) for value, rows in values.items()}
        for field, values in found.items()
    }


def _best(scores: npt.NDArray[np.float32], limit: int) -> Rows:
    """Positions of the ``limit`` highest ``scores`` ((m,) float32), highest first."""
    if limit < len(scores):
        # argpartition is linear in m; only the `limit` winners are sorted.
        top = np.argpartition(scores, len(scores) - limit)[len(scores) - limit :]
    else:
        top = np.arange(len(scores), dtype=np.intp)
    return top[np.argsort(-scores[top], kind="stable")]


class EdgeRefIndex(_Searching):
    """A library version in a qdrant-edge shard (the embedded default), of ``dim``-d vectors.

    The engine stores the points; searches read a copy of them in memory
    (``tuning.in_memory``, :class:`_InMemory`), made by the first search (~2.5-4 s for
    100k references) and again by the first search after a write.

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
        # Read on the first search (publishing opens shards it never searches), dropped
        # by every write.
        self._memory: _InMemory | None = None
        self._reading = threading.Lock()

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
        if not self.tuning.in_memory:
            return self._engine_search(queries, limit, conditions)
        memory = self._in_memory()
        return [memory.search(np.asarray(q, dtype=np.float32), limit, conditions) for q in queries]

    def _in_memory(self) -> _InMemory:
        memory = self._memory
        if memory is None:
            with self._reading:
                # Another thread may have read it while this one waited.
                memory = self._memory
                if memory is None:
                    with _engine_errors("read the edge reference index into memory"):
                        memory = _InMemory.read(self._open, self.dim)
                    self._memory = memory
        return memory

    def _engine_search(
        self, queries: list[list[float]], limit: int, conditions: _Conditions | None
    ) -> list[list[RefHit]]:
        """The engine's own search (``EdgeTuning.in_memory=False``): the benchmark's
        baseline."""
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
        try:
            for start in range(0, len(points), _UPSERT_BATCH):
                end = start + _UPSERT_BATCH
                batch = [
                    qe.Point(p.ref_id, row, p.payload)
                    for p, row in zip(points[start:end], matrix[start:end].tolist(), strict=True)
                ]
                with _engine_errors("upsert into the edge reference index"):
                    self._open.update(qe.UpdateOperation.upsert_points(batch))
        finally:
            # After the write (a search meanwhile could read the old points again), and
            # after a failed one too: some batches may be in.
            self._memory = None

    def delete(self, ref_ids: Sequence[str]) -> None:
        if ref_ids:
            try:
                with _engine_errors("delete from the edge reference index"):
                    self._open.update(qe.UpdateOperation.delete_points(list(ref_ids)))
            finally:
                self._memory = None

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
        self._memory = None
        if self._shard is not None:
            shard, self._shard = self._shard, None
            with _engine_errors("close the edge reference index"):
                shard.close()
