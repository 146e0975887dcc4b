"""The reference index's contract: its constants, its types (RefPoint, RefHit, RefFilter),
the :class:`RefIndex` protocol, the input error, and the argument checks and filter
conditions both engines share (:class:`_Searching`, :func:`_engine_errors`).

Vector length is the embedder's (:class:`~agents.records.EmbeddingSpace`): every index
knows its ``dim`` and refuses vectors of another length."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agents.errors import PipelineError, RefInputError, StorageError
from agents.records import EmbeddingSpace
from schemas.labels import LabelName

REF_COLLECTION = "anime_refs"
"""Collection name inside a version folder's qdrant-local store; on a server the collection
is :func:`ref_collection` of the embedder."""

#: Payload fields with a keyword index: the style every search filters on, and each label
#: a compatibility filter may name. Filters on other fields still work, unindexed.
STYLE_FIELD = "style"
LABEL_FIELDS: tuple[str, ...] = tuple(f"labels.{name.value}" for name in LabelName)

_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_UPSERT_BATCH = 512


def ref_collection(space: EmbeddingSpace) -> str:
    """The server collection of one embedder's references: ``anime_refs-<slug>``."""
    return f"{REF_COLLECTION}-{space.slug}"


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


class RefIndex(Protocol):
    """What the pairs agent searches: one library version, read only."""

    version: int | None
    dim: int

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


def _checked_vector(vector: npt.ArrayLike, dim: int, what: str) -> npt.NDArray[np.float32]:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise RefInputError(f"{what} must have shape ({dim},), got {array.shape}")
    if not np.all(np.isfinite(array)) or not np.any(array):
        raise RefInputError(f"{what} must be finite and non-zero to have a cosine similarity")
    return array


def _query_vector(vector: npt.ArrayLike, dim: int, what: str = "vector") -> list[float]:
    return _checked_vector(vector, dim, what).tolist()


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


def _checked_points(points: Sequence[RefPoint], dim: int) -> npt.NDArray[np.float32]:
    """Every point's id, vector and payload checked; their vectors as one (n, dim) array."""
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
        if vector.shape != (dim,):
            _checked_vector(vector, dim, f"RefPoint {point.ref_id} vector")
    if not vectors:
        return np.empty((0, dim), dtype=np.float32)
    matrix = np.stack(vectors)
    # One vectorised pass: per-point checks cost seconds at 100k references.
    usable = np.isfinite(matrix).all(axis=1) & matrix.any(axis=1)
    if not usable.all():
        first = int(np.argmin(usable))
        _checked_vector(matrix[first], dim, f"RefPoint {points[first].ref_id} vector")
    return matrix


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


class _Searching:
    """The argument checks both engines share; each engine answers :meth:`_search`."""

    dim: int

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
        queries = [_query_vector(v, self.dim, f"vectors[{i}]") for i, v in enumerate(vectors)]
        conditions = _conditions(where)
        if not queries or (conditions is not None and conditions.impossible):
            return [[] for _ in queries]
        return self._search(queries, limit, conditions)

    def _search(
        self, queries: list[list[float]], limit: int, conditions: _Conditions | None
    ) -> list[list[RefHit]]:
        raise NotImplementedError


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Turns an engine's exception into a StorageError that names the operation.

    A catch-all on purpose: qdrant-client and qdrant-edge-py raise unrelated types with no
    common base; the project's own errors pass through."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot {what}: {exc}") from exc
