"""The SQL of pairing: what the pairer reads about faces and the library, and the pairs it
writes. One transaction per write; database failures become
:class:`~agents.errors.StorageError` (the worker then restarts and the batch is re-read).

A pair decided by a person (``human:<name>``) or imported (``import:<file>``) is never
overwritten by the matcher: the write re-checks ``decided_by`` inside the transaction, so a
review that lands between the pairer's read and its write still wins.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, and_, delete, func, or_, select, update
from sqlmodel import SQLModel

from agents.stores.db import for_writing, sql_errors
from schemas.pairs import Candidate, PairRecord, PairStatus
from schemas.reasons import RefStatus
from schemas.tables import AnimeRef, Face, Label, LibraryVersion, Pair

_PAIRS: Table = SQLModel.metadata.tables[Pair.__tablename__]
_FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
_LABELS: Table = SQLModel.metadata.tables[Label.__tablename__]
_REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]
_VERSIONS: Table = SQLModel.metadata.tables[LibraryVersion.__tablename__]

#: Namespace of pair ids: uuid5(namespace, "<face_id>:<style>"), one pair per face and style.
PAIR_NAMESPACE = uuid.UUID("0b8f3a52-1d9e-4c55-8a77-5d0b6c1e2f31")
AUTO = "auto"
#: Pair statuses that count as using their reference (for the usage penalty).
USING = (PairStatus.APPROVED, PairStatus.PENDING)


def pair_id_for(face_id: str, style: str) -> str:
    return str(uuid.uuid5(PAIR_NAMESPACE, f"{face_id}:{style}"))


def machine_decided(decided_by: str | None) -> bool:
    """Whether the matcher may still change a pair (nobody has decided it by hand)."""
    return decided_by is None or decided_by == AUTO


@dataclass(frozen=True, slots=True)
class Library:
    """The current reference library: its version and the styles with active references."""

    version: int | None
    styles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FaceFacts:
    face_id: str
    subject: str
    embedder: str
    random_init: bool
    labels: tuple[tuple[str, str, str, float], ...]
    """(name, value, source, confidence) rows"""
    flag: str | None = None
    """why the face needs a look (:class:`schemas.reasons.FaceFlag`): never auto-approved"""


class PairStore:
    """Reads and writes of the pairs agent and ``s2a pairs``.

    Example::

        store = PairStore(create_engine_for(settings.sql_url))
        store.library()                 # Library(version=3, styles=('pc', 'renpy'))
        store.pairs_of(["<face id>"])   # {('<face id>', 'pc'): Pair(...)}
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    # -- reads ----------------------------------------------------------------------------

    def library(self) -> Library:
        with sql_errors("library"), self._engine.connect() as connection:
            version = connection.execute(select(func.max(_VERSIONS.c.version))).scalar()
            styles = connection.execute(
                select(_REFS.c.style).where(_REFS.c.status == RefStatus.ACTIVE).distinct()
            ).scalars()
            return Library(None if version is None else int(version), tuple(sorted(styles)))

    def faces(self, face_ids: Sequence[str]) -> dict[str, FaceFacts]:
        """Subject, embedder kind and label rows of each face that exists."""
        if not face_ids:
            return {}
        ids = list(dict.fromkeys(face_ids))
        with sql_errors("faces"), self._engine.connect() as connection:
            rows = connection.execute(
                select(
                    _FACES.c.face_id,
                    _FACES.c.subject,
                    _FACES.c.embedder,
                    _FACES.c.embedder_random_init,
                    _FACES.c.flag,
                ).where(_FACES.c.face_id.in_(ids))
            ).all()
            labels: dict[str, list[tuple[str, str, str, float]]] = defaultdict(list)
            for face_id, name, value, source, confidence in connection.execute(
                select(
                    _LABELS.c.face_id,
                    _LABELS.c.name,
                    _LABELS.c.value,
                    _LABELS.c.source,
                    _LABELS.c.confidence,
                )
                .where(_LABELS.c.face_id.in_(ids))
                .order_by(_LABELS.c.id)
            ):
                labels[face_id].append((name, value, source, float(confidence)))
        return {
            face_id: FaceFacts(
                face_id, subject, embedder, bool(random_init), tuple(labels[face_id]), flag
            )
            for face_id, subject, embedder, random_init, flag in rows
        }

    def pairs_of(self, face_ids: Sequence[str]) -> dict[tuple[str, str], Pair]:
        if not face_ids:
            return {}
        with sql_errors("pairs_of"), self._engine.connect() as connection:
            rows = connection.execute(
                select(_PAIRS).where(_PAIRS.c.face_id.in_(list(dict.fromkeys(face_ids))))
            ).mappings()
            pairs = [Pair.model_validate(dict(row)) for row in rows]
        return {(pair.face_id, pair.style): pair for pair in pairs}

    def usage(self, styles: Sequence[str]) -> dict[tuple[str, str], int]:
        """How many approved or pending pairs use each reference: ``{(style, ref_id): n}``.

        What the usage penalty counts (:func:`agents.pairing.match.usage_cost`); rejected
        and unmatched pairs use no reference.
        """
        if not styles:
            return {}
        statement = (
            select(_PAIRS.c.style, _PAIRS.c.ref_id, func.count())
            .where(
                _PAIRS.c.style.in_(list(dict.fromkeys(styles))),
                _PAIRS.c.ref_id.is_not(None),
                _PAIRS.c.status.in_([s.value for s in USING]),
            )
            .group_by(_PAIRS.c.style, _PAIRS.c.ref_id)
        )
        with sql_errors("usage"), self._engine.connect() as connection:
            return {(style, ref): int(n) for style, ref, n in connection.execute(statement)}

    def list_pairs(
        self, status: str | None = None, style: str | None = None, limit: int | None = None
    ) -> list[Pair]:
        statement = select(_PAIRS).order_by(_PAIRS.c.created_at, _PAIRS.c.pair_id)
        if status is not None:
            statement = statement.where(_PAIRS.c.status == status)
        if style is not None:
            statement = statement.where(_PAIRS.c.style == style)
        if limit is not None:
            statement = statement.limit(limit)
        with sql_errors("list_pairs"), self._engine.connect() as connection:
            return [
                Pair.model_validate(dict(row)) for row in connection.execute(statement).mappings()
            ]

    def status_counts(self) -> dict[str, int]:
        statement = select(_PAIRS.c.status, func.count()).group_by(_PAIRS.c.status)
        with sql_errors("status_counts"), self._engine.connect() as connection:
            return {str(status): int(n) for status, n in connection.execute(statement)}

    def refs(self, ref_ids: Sequence[str]) -> dict[str, AnimeRef]:
        if not ref_ids:
            return {}
        with sql_errors("refs"), self._engine.connect() as connection:
            rows = connection.execute(
                select(_REFS).where(_REFS.c.ref_id.in_(list(dict.fromkeys(ref_ids))))
            ).mappings()
            return {row["ref_id"]: AnimeRef.model_validate(dict(row)) for row in rows}

    def face_ids_of_uploads(self, upload_ids: Sequence[str]) -> dict[str, str]:
        if not upload_ids:
            return {}
        with sql_errors("face_ids_of_uploads"), self._engine.connect() as connection:
            rows = connection.execute(
                select(_FACES.c.upload_id, _FACES.c.face_id).where(
                    _FACES.c.upload_id.in_(list(dict.fromkeys(upload_ids)))
                )
            )
            return {upload_id: face_id for upload_id, face_id in rows}

    def unpaired_faces(self, version: int | None) -> list[tuple[str, str, str]]:
        """(face_id, upload_id, subject) of faces with no pair matched against ``version``
        that nobody decided by hand: what ``s2a pairs rematch`` sends back to the matcher."""
        current = and_(
            _PAIRS.c.face_id == _FACES.c.face_id,
            or_(
                _PAIRS.c.library_version == version,
                and_(_PAIRS.c.decided_by.is_not(None), _PAIRS.c.decided_by != AUTO),
            ),
        )
        statement = (
            select(_FACES.c.face_id, _FACES.c.upload_id, _FACES.c.subject)
            .where(~select(_PAIRS.c.pair_id).where(current).exists())
            .order_by(_FACES.c.created_at, _FACES.c.face_id)
        )
        with sql_errors("unpaired_faces"), self._engine.connect() as connection:
            return [(f, u, s) for f, u, s in connection.execute(statement)]

    # -- writes ---------------------------------------------------------------------------

    def save(self, pairs: Sequence[Pair], model_labels: Sequence[Label] = ()) -> list[str]:
        """Insert or re-match ``pairs`` and replace the faces' ``model`` labels, in one
        transaction. Returns the ids of the pairs written; a pair decided by hand in the
        meantime is left alone and not returned."""
        written: list[str] = []
        with sql_errors("save pairs"), self._writer.begin() as connection:
            faces = sorted({label.face_id for label in model_labels})
            if faces:
                connection.execute(
                    delete(_LABELS).where(_LABELS.c.face_id.in_(faces), _LABELS.c.source == "model")
                )
                connection.execute(
                    _LABELS.insert(),
                    [_row(label, drop=("id",)) for label in model_labels],
                )
            for pair in pairs:
                row = _row(pair)
                existing = connection.execute(
                    select(_PAIRS.c.decided_by).where(_PAIRS.c.pair_id == pair.pair_id)
                ).first()
                if existing is None:
                    connection.execute(_PAIRS.insert(), row)
                    written.append(pair.pair_id)
                    continue
                changeable = or_(_PAIRS.c.decided_by.is_(None), _PAIRS.c.decided_by == AUTO)
                values = {k: v for k, v in row.items() if k not in ("pair_id", "created_at")}
                result = connection.execute(
                    update(_PAIRS).where(_PAIRS.c.pair_id == pair.pair_id, changeable),
                    values,
                )
                if result.rowcount:
                    written.append(pair.pair_id)
        return written

    def import_pairs(self, pairs: Sequence[Pair]) -> int:
        """Hand-made pairs (``s2a pairs import``): they replace whatever the matcher put
        there, but not a decision a reviewer made. Returns how many were written."""
        count = 0
        with sql_errors("import pairs"), self._writer.begin() as connection:
            for pair in pairs:
                row = _row(pair)
                existing = connection.execute(
                    select(_PAIRS.c.decided_by, _PAIRS.c.ref_id, _PAIRS.c.status).where(
                        _PAIRS.c.pair_id == pair.pair_id
                    )
                ).first()
                if existing is None:
                    connection.execute(_PAIRS.insert(), row)
                    count += 1
                elif existing.decided_by is None or not existing.decided_by.startswith("human:"):
                    if (existing.decided_by, existing.ref_id, existing.status) == (
                        pair.decided_by,
                        pair.ref_id,
                        pair.status,
                    ):
                        continue  # the same import again changes nothing
                    values = {k: v for k, v in row.items() if k not in ("pair_id", "created_at")}
                    connection.execute(
                        update(_PAIRS).where(_PAIRS.c.pair_id == pair.pair_id), values
                    )
                    count += 1
        return count


def _row(model: SQLModel, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    values = model.model_dump()
    for key in drop:
        values.pop(key, None)
    return values


def record_of(pair: Pair) -> PairRecord:
    """The ``pairs`` topic record of a stored pair (what the pairer sends, and what a
    review decision queues in the outbox)."""
    return PairRecord(
        pair_id=pair.pair_id,
        face_id=pair.face_id,
        subject=pair.subject,
        style=pair.style,
        ref_id=pair.ref_id,
        score=pair.score,
        status=PairStatus(pair.status),
        decided_by=pair.decided_by,
        candidates=[Candidate.model_validate(c) for c in pair.candidates],
        library_version=pair.library_version,
        at=pair.updated_at,
    )
