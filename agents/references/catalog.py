"""The catalog: SQL reads and writes of references, their labels and the library versions.

:class:`Catalog` lists and gets references, their labels and the library versions, and
records a new version in one transaction: with its new references and labels
(:meth:`Catalog.record_version`), or with one reference's status set by a person
(:meth:`Catalog.record_status`). It reads no image and builds no index;
:class:`~agents.references.library.RefLibrary` does both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from agents.errors import InvalidRequest, VersionConflict
from agents.references import style as st
from agents.references.admission import MAX_DETAIL, Candidate, truncate
from agents.stores.db import for_writing, sql_errors
from schemas.labels import LabelSource
from schemas.reasons import RefReason, RefStatus
from schemas.tables import AnimeRef, LibraryVersion, RefLabel

__all__ = ["MIN_PREFIX", "ActiveRef", "Catalog"]

#: A reference may be named by a prefix of its id this long or longer (``refs list``
#: shows 8 characters).
MIN_PREFIX = 8
_ID_PREFIX = re.compile(r"^[0-9a-f-]+$")

_VERSIONS: Table = SQLModel.metadata.tables[LibraryVersion.__tablename__]
_REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]
_REF_LABELS: Table = SQLModel.metadata.tables[RefLabel.__tablename__]


@dataclass(frozen=True, slots=True)
class ActiveRef:
    ref_id: str
    stats: dict[str, float]
    original: str
    box: list[float]


class Catalog:
    """The reference library's SQL rows: ``anime_ref``, ``ref_label``, ``library_version``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    # -- reads ----------------------------------------------------------------------------

    def current_version(self) -> int | None:
        """The newest library version, or ``None`` before the first ``add``."""
        with sql_errors("current_version"), self._engine.connect() as connection:
            return _max_version(connection)

    def versions(self) -> list[LibraryVersion]:
        """Every library version, oldest first."""
        with sql_errors("versions"), self._engine.connect() as connection:
            rows = connection.execute(select(_VERSIONS).order_by(_VERSIONS.c.version)).mappings()
            return [LibraryVersion.model_validate(dict(row)) for row in rows]

    def styles(self) -> dict[str, int]:
        """Active references per style, for every style the library holds (0 included)."""
        active = func.sum(case((_REFS.c.status == RefStatus.ACTIVE, 1), else_=0))
        statement = select(_REFS.c.style, active).group_by(_REFS.c.style).order_by(_REFS.c.style)
        with sql_errors("styles"), self._engine.connect() as connection:
            return {style: int(n or 0) for style, n in connection.execute(statement)}

    def get(self, ref_id: str) -> AnimeRef | None:
        with sql_errors("get"), self._engine.connect() as connection:
            row = connection.execute(select(_REFS).where(_REFS.c.ref_id == ref_id)).mappings()
            found = row.first()
        return None if found is None else AnimeRef.model_validate(dict(found))

    def labels_of(self, ref_id: str) -> list[RefLabel]:
        """The labels of one reference, by name then source."""
        statement = (
            select(_REF_LABELS)
            .where(_REF_LABELS.c.ref_id == ref_id)
            .order_by(_REF_LABELS.c.name, _REF_LABELS.c.source)
        )
        with sql_errors("labels_of"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [RefLabel.model_validate(dict(row)) for row in rows]

    def resolve(self, ref: str) -> AnimeRef:
        """The reference ``ref`` names: its id, or a unique prefix of at least
        :data:`MIN_PREFIX` characters of it (as ``s2a refs list`` shows)."""
        key = ref.strip().lower()
        if len(key) < MIN_PREFIX or not _ID_PREFIX.match(key):
            raise InvalidRequest(
                f"{ref!r} is not a reference id: give the id or its first {MIN_PREFIX}+ "
                "characters, as `s2a refs list` shows them"
            )
        statement = select(_REFS).where(_REFS.c.ref_id.startswith(key)).limit(2)
        with sql_errors("resolve"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        if not rows:
            raise InvalidRequest(f"no reference {ref!r} in the library (see `s2a refs list`)")
        if len(rows) > 1:
            raise InvalidRequest(f"{ref!r} names more than one reference; give more of the id")
        return AnimeRef.model_validate(dict(rows[0]))

    def statuses(self, ref_ids: Sequence[str]) -> dict[str, str]:
        """The stored status of each of ``ref_ids`` the library holds (any style)."""
        if not ref_ids:
            return {}
        statement = select(_REFS.c.ref_id, _REFS.c.status).where(_REFS.c.ref_id.in_(ref_ids))
        with sql_errors("existing refs"), self._engine.connect() as connection:
            return {ref_id: status for ref_id, status in connection.execute(statement)}

    def active_refs(self, style: str) -> list[ActiveRef]:
        statement = (
            select(_REFS.c.ref_id, _REFS.c.stats, _REFS.c.original, _REFS.c.box)
            .where(_REFS.c.style == style, _REFS.c.status == RefStatus.ACTIVE)
            .order_by(_REFS.c.ref_id)
        )
        with sql_errors("active refs"), self._engine.connect() as connection:
            return [
                ActiveRef(ref_id, dict(stats), original, list(box))
                for ref_id, stats, original, box in connection.execute(statement)
            ]

    # -- write ----------------------------------------------------------------------------

    def record_version(
        self,
        candidates: Sequence[Candidate],
        *,
        style: str,
        tags: list[str],
        labels: dict[str, str],
        note: str | None,
        embedder: str,
        base: int | None,
        version: int,
        location: str,
    ) -> None:
        """Make ``version`` current with the candidates' rows, if ``base`` still is."""
        now = datetime.now(UTC)
        active = sum(not c.is_outlier for c in candidates)
        version_row = {
            "version": version,
            "created_at": now,
            "added": active,
            "quarantined": len(candidates) - active,
            "note": truncate(note or f"refs add: style {style}, {len(candidates)} file(s)", 512),
            "index_location": location,
        }
        ref_rows = [_ref_row(c, style, tags, embedder, version, now) for c in candidates]
        label_rows = [
            {
                "ref_id": c.ref_id,
                "name": name,
                "value": value,
                "source": LabelSource.HUMAN.value,
                "confidence": 1.0,
                "created_at": now,
            }
            for c in candidates
            for name, value in labels.items()
        ]
        with sql_errors(f"commit of library version {version}"):
            try:
                with self._writer.begin() as connection:
                    _insert_version(connection, base, version_row)
                    connection.execute(_REFS.insert(), ref_rows)
                    if label_rows:
                        connection.execute(_REF_LABELS.insert(), label_rows)
            except IntegrityError as exc:
                raise VersionConflict(
                    f"another refs add committed version {version} or one of these images "
                    f"first; run the command again ({type(exc.orig).__name__})"
                ) from exc

    def record_status(
        self,
        ref: AnimeRef,
        *,
        status: RefStatus,
        reason: RefReason | None,
        detail: str | None,
        by: str,
        at: datetime,
        note: str,
        base: int | None,
        version: int,
        location: str,
    ) -> None:
        """Make ``version`` current with ``ref`` set to ``status`` by ``by`` at ``at``, if
        ``base`` is still the current version and ``ref`` still has the status it was read
        with (another writer got there first otherwise: :class:`VersionConflict`)."""
        version_row = {
            "version": version,
            "created_at": at,
            "added": int(status == RefStatus.ACTIVE),
            "quarantined": int(status == RefStatus.QUARANTINED),
            "note": truncate(note, 512),
            "index_location": location,
        }
        change = (
            _REFS.update()
            .where(_REFS.c.ref_id == ref.ref_id, _REFS.c.status == ref.status)
            .values(
                status=status,
                reason=None if reason is None else reason.value,
                detail=None if detail is None else truncate(detail, MAX_DETAIL),
                status_by=by,
                status_at=at,
            )
        )
        with sql_errors(f"commit of library version {version}"):
            try:
                with self._writer.begin() as connection:
                    _insert_version(connection, base, version_row)
                    if connection.execute(change).rowcount != 1:
                        raise VersionConflict(
                            f"reference {ref.ref_id} changed status meanwhile; list it and "
                            "run the command again"
                        )
            except IntegrityError as exc:
                raise VersionConflict(
                    f"another writer committed library version {version} first; run the "
                    f"command again ({type(exc.orig).__name__})"
                ) from exc

    # Last in the class: a method named ``list`` hides the builtin from the annotations of
    # every method after it.
    def list(self, style: str | None = None, status: str | None = None) -> list[AnimeRef]:
        """References in the order they were added, optionally of one style and status."""
        if status is not None and status not in (RefStatus.ACTIVE, RefStatus.QUARANTINED):
            known = ", ".join(RefStatus)
            raise InvalidRequest(f"status {status!r} is not one of {known}")
        statement = select(_REFS).order_by(
            _REFS.c.library_version, _REFS.c.added_at, _REFS.c.ref_id
        )
        if style is not None:
            statement = statement.where(_REFS.c.style == style)
        if status is not None:
            statement = statement.where(_REFS.c.status == status)
        with sql_errors("list"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [AnimeRef.model_validate(dict(row)) for row in rows]


def _ref_row(
    c: Candidate, style: str, tags: list[str], embedder: str, version: int, now: datetime
) -> dict[str, Any]:
    verdict = c.verdict or st.Verdict(score=None)
    return {
        "ref_id": c.ref_id,
        "style": style,
        "status": RefStatus.QUARANTINED if verdict.is_outlier else RefStatus.ACTIVE,
        "reason": RefReason.STYLE_OUTLIER.value if verdict.is_outlier else None,
        "detail": None if verdict.detail is None else truncate(verdict.detail, MAX_DETAIL),
        "original": c.original,
        "training": c.training,
        "region": c.region_name,
        "box": c.box,
        "width": c.width,
        "height": c.height,
        "license": c.license,
        "source": c.source,
        "author": c.author,
        "tags": list(tags),
        "stats": c.stats,
        "outlier_score": verdict.score,
        "embedder": embedder,
        "library_version": version,
        "added_at": now,
        "landmarks": c.landmarks,
        "landmarks_source": c.landmarks_source,
    }


def _insert_version(connection: Connection, base: int | None, row: dict[str, Any]) -> None:
    """Insert the library version ``row`` if ``base`` is still the current version (inside
    the caller's write transaction), else :class:`VersionConflict`."""
    current = _max_version(connection)
    if current != base:
        raise VersionConflict(
            f"library version {current} appeared while version {row['version']} was "
            "being built; run the command again"
        )
    connection.execute(_VERSIONS.insert(), row)


def _max_version(connection: Connection) -> int | None:
    value = connection.execute(select(func.max(_VERSIONS.c.version))).scalar()
    return None if value is None else int(value)
