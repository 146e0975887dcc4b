"""The SQL of the review page: the queue, one item to review, and a reviewer's decision.

Every :meth:`ReviewStore.decide` is one transaction: the pair's new state, the face's
``human`` labels and an appended :class:`~schemas.tables.ReviewDecision` commit together or
not at all. Two reviewers on one pair are kept apart by an optimistic check: the page sends
back the pair's ``updated_at`` it showed, and a pair changed since then is a
:class:`~agents.review.Conflict` that names who changed it. The row is read ``FOR UPDATE``
(PostgreSQL) or under SQLite's write lock taken at ``BEGIN``, so the check and the write
cannot interleave with another decision.

Datetimes come out timezone-aware, in UTC (:class:`schemas.tables.UTCDateTime`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, Table, exists, func, or_, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from agents.errors import StorageError
from agents.review import Conflict, InvalidDecision, NotFound
from agents.stores.db import for_writing, sql_errors
from schemas.labels import LEARNABLE, VALUES, LabelError, LabelName, LabelSource, check, resolve
from schemas.pairs import Candidate, PairStatus
from schemas.reasons import RefStatus
from schemas.tables import AnimeRef, Face, Label, Pair, RefLabel, ReviewDecision

_PAIRS: Table = SQLModel.metadata.tables[Pair.__tablename__]
_FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
_LABELS: Table = SQLModel.metadata.tables[Label.__tablename__]
_REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]
_REF_LABELS: Table = SQLModel.metadata.tables[RefLabel.__tablename__]
_DECISIONS: Table = SQLModel.metadata.tables[ReviewDecision.__tablename__]

#: ``decided_by`` is ``human:<actor>`` in a 128-character column.
_MAX_ACTOR = 128 - len("human:")

#: The reference status a pair may be approved with (anything else is quarantined).


class Action(StrEnum):
    APPROVE = "approve"
    """approve the suggested reference (or the one given)"""
    REJECT = "reject"
    """no usable reference for this face"""
    PICK = "pick"
    """approve another reference than the suggested one"""
    RELABEL = "relabel"
    """only set labels; the pair's state is kept"""


@dataclass(frozen=True, slots=True)
class ReviewItemSummary:
    """One line of the queue."""

    pair_id: str
    face_id: str
    style: str
    status: str
    score: float | None
    candidates: int
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "pair_id": self.pair_id,
            "face_id": self.face_id,
            "style": self.style,
            "status": self.status,
            "score": self.score,
            "candidates": self.candidates,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class LabelView:
    """A face label as the reviewer sees it: the value that counts (``None`` when no source
    gives one), every source's value, and the vocabulary to pick from."""

    name: str
    value: str | None
    source: str | None
    confidence: float | None
    learnable: bool
    allowed: tuple[str, ...]
    sources: tuple[tuple[str, str, float], ...] = ()
    """``(source, value, confidence)`` of every row, most trusted first"""

    @property
    def missing(self) -> bool:
        return self.value is None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "source": self.source,
            "confidence": self.confidence,
            "learnable": self.learnable,
            "missing": self.missing,
            "allowed": list(self.allowed),
            "sources": [
                {"source": source, "value": value, "confidence": confidence}
                for source, value, confidence in self.sources
            ],
        }


@dataclass(frozen=True, slots=True)
class RefView:
    """An anime reference with its license and attribution, which always travel with it."""

    ref_id: str
    style: str
    status: str
    reason: str | None
    training: str
    license: str
    author: str
    source: str
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ref_id": self.ref_id,
            "style": self.style,
            "status": self.status,
            "reason": self.reason,
            "training": self.training,
            "license": self.license,
            "author": self.author,
            "source": self.source,
            "labels": dict(self.labels),
        }


@dataclass(frozen=True, slots=True)
class CandidateView:
    """One candidate of a pair, ranked from 1, with its reference (``None`` when the
    reference is no longer in the library). ``similarity`` and ``label_agreement`` are
    ``None`` for a chosen reference that the matcher did not list."""

    rank: int
    ref_id: str
    score: float | None
    similarity: float | None
    label_agreement: float | None
    ref: RefView | None

    def approvable(self, style: str) -> bool:
        return (
            self.ref is not None and self.ref.status == RefStatus.ACTIVE and self.ref.style == style
        )

    def to_json(self, style: str) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "ref_id": self.ref_id,
            "score": self.score,
            "similarity": self.similarity,
            "label_agreement": self.label_agreement,
            "approvable": self.approvable(style),
            "ref": None if self.ref is None else self.ref.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """Everything the page shows for one pair.

    ``crop`` is the sha256 of the face's 256 px aligned crop; ``suggested_ref_id`` is what
    ``approve`` without a reference approves (the pair's reference, else the top candidate).
    """

    pair_id: str
    face_id: str
    style: str
    status: str
    ref_id: str | None
    score: float | None
    suggested_ref_id: str | None
    decided_by: str | None
    decided_at: datetime | None
    created_at: datetime
    updated_at: datetime
    library_version: int | None
    crop: str
    face_source: str
    face_license: str | None
    face_attribution: str | None
    labels: tuple[LabelView, ...]
    candidates: tuple[CandidateView, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "pair_id": self.pair_id,
            "face_id": self.face_id,
            "style": self.style,
            "status": self.status,
            "ref_id": self.ref_id,
            "score": self.score,
            "suggested_ref_id": self.suggested_ref_id,
            "decided_by": self.decided_by,
            "decided_at": None if self.decided_at is None else self.decided_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "library_version": self.library_version,
            "crop": self.crop,
            "face": {
                "source": self.face_source,
                "license": self.face_license,
                "attribution": self.face_attribution,
            },
            "labels": [label.to_json() for label in self.labels],
            "candidates": [c.to_json(self.style) for c in self.candidates],
        }


class ReviewStore:
    """The review queue and decisions over one SQL database.

    Example::

        store = ReviewStore(create_engine_for(settings.sql_url))
        first = store.queue(limit=1)[0]
        item = store.item(first.pair_id)
        pair = store.decide(
            item.pair_id, "alice", "pick", ref_id=item.candidates[1].ref_id,
            labels={"glasses": "yes"}, seen_updated_at=item.updated_at,
        )
        pair.status, pair.decided_by     # ('approved', 'human:alice')
    """

    def __init__(self, engine: Engine, min_model_confidence: float = 0.0) -> None:
        self._engine = engine
        self._writer = for_writing(engine)
        self._min_model_confidence = min_model_confidence

    # -- reads ----------------------------------------------------------------------------

    def queue(self, limit: int = 50, include_unmatched: bool = False) -> list[ReviewItemSummary]:
        """Pairs waiting for a reviewer, oldest first: ``pending`` ones, and ``unmatched``
        ones too with ``include_unmatched``."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        statement = (
            select(_PAIRS)
            .where(_PAIRS.c.status.in_(_waiting(include_unmatched)))
            .order_by(_PAIRS.c.created_at, _PAIRS.c.pair_id)
            .limit(limit)
        )
        with sql_errors("review queue"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [
            ReviewItemSummary(
                pair_id=row["pair_id"],
                face_id=row["face_id"],
                style=row["style"],
                status=row["status"],
                score=row["score"],
                candidates=len(row["candidates"] or ()),
                created_at=row["created_at"],
                updated_at=row["updated_at"],
            )
            for row in rows
        ]

    def waiting(self, include_unmatched: bool = False) -> int:
        """How many pairs the queue holds in all (``queue`` returns at most ``limit``)."""
        statement = (
            select(func.count())
            .select_from(_PAIRS)
            .where(_PAIRS.c.status.in_(_waiting(include_unmatched)))
        )
        with sql_errors("review queue size"), self._engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def item(self, pair_id: str) -> ReviewItem:
        """The pair with its face crop, resolved labels and candidates with their references."""
        with sql_errors(f"review item {pair_id!r}"), self._engine.connect() as connection:
            pair = _pair_row(connection, pair_id)
            face = (
                connection.execute(select(_FACES).where(_FACES.c.face_id == pair["face_id"]))
                .mappings()
                .one()
            )
            label_rows = connection.execute(
                select(
                    _LABELS.c.name, _LABELS.c.value, _LABELS.c.source, _LABELS.c.confidence
                ).where(_LABELS.c.face_id == pair["face_id"])
            ).all()
            listed = _candidates(pair)
            ref_ids = [c.ref_id for c in listed]
            if pair["ref_id"] is not None and pair["ref_id"] not in ref_ids:
                ref_ids.append(pair["ref_id"])
            refs = _refs(connection, ref_ids)
        candidates = [
            CandidateView(
                rank=i,
                ref_id=c.ref_id,
                score=c.score,
                similarity=c.similarity,
                label_agreement=c.label_agreement,
                ref=refs.get(c.ref_id),
            )
            for i, c in enumerate(listed, start=1)
        ]
        if len(ref_ids) > len(listed):  # the pair's reference was chosen outside the list
            candidates.append(
                CandidateView(
                    rank=len(listed) + 1,
                    ref_id=pair["ref_id"],
                    score=pair["score"],
                    similarity=None,
                    label_agreement=None,
                    ref=refs.get(pair["ref_id"]),
                )
            )
        return ReviewItem(
            pair_id=pair["pair_id"],
            face_id=pair["face_id"],
            style=pair["style"],
            status=pair["status"],
            ref_id=pair["ref_id"],
            score=pair["score"],
            suggested_ref_id=_suggested(pair, listed),
            decided_by=pair["decided_by"],
            decided_at=pair["decided_at"],
            created_at=pair["created_at"],
            updated_at=pair["updated_at"],
            library_version=pair["library_version"],
            crop=face["crop_256"],
            face_source=face["source"],
            face_license=face["license"],
            face_attribution=face["attribution"],
            labels=_label_views(label_rows, self._min_model_confidence),
            candidates=tuple(candidates),
        )

    def blob_known(self, digest: str) -> bool:
        """Whether ``digest`` is a face crop or a reference image that SQL knows of: the
        only blobs the page may serve."""
        owners = union_all(
            select(_FACES.c.face_id).where(
                or_(_FACES.c.crop_256 == digest, _FACES.c.crop_512 == digest)
            ),
            select(_REFS.c.ref_id).where(
                or_(_REFS.c.training == digest, _REFS.c.original == digest)
            ),
        ).subquery()
        with sql_errors("blob lookup"), self._engine.connect() as connection:
            return bool(connection.execute(select(exists(select(owners)))).scalar())

    # -- decisions ------------------------------------------------------------------------

    def decide(
        self,
        pair_id: str,
        actor: str,
        action: Action | str,
        ref_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        seen_updated_at: datetime | None = None,
    ) -> Pair:
        """Apply one reviewer decision in one transaction and return the pair as committed.

        ``approve`` approves ``ref_id`` or, without one, the suggested reference; ``pick``
        approves ``ref_id`` (required); ``reject`` marks the pair as having no usable
        reference; ``relabel`` only sets ``labels``. Every action may carry ``labels``
        (``{name: value}``), stored as ``human`` labels with confidence 1.0.

        ``seen_updated_at`` is the pair's ``updated_at`` the reviewer saw; when given and
        the pair changed since, :class:`Conflict` is raised and nothing is written.
        """
        verb = _action(action)
        who = check_reviewer(actor)
        changes = _checked_labels(labels)
        if verb is Action.RELABEL and not changes:
            raise InvalidDecision("relabel needs labels, e.g. {'glasses': 'yes'}")
        if verb in (Action.REJECT, Action.RELABEL) and ref_id is not None:
            raise InvalidDecision(f"{verb.value} takes no ref_id (got {ref_id!r}); leave it out")
        if verb is Action.PICK and not ref_id:
            raise InvalidDecision("pick needs the ref_id of the reference to approve")
        seen = None if seen_updated_at is None else _in_utc(seen_updated_at)

        with sql_errors(f"{verb.value} of pair {pair_id!r}"), self._writer.begin() as connection:
            pair = _pair_row(connection, pair_id, for_update=True)
            if seen is not None and seen != pair["updated_at"]:
                raise Conflict(_conflict_message(pair))
            now = _after(pair["updated_at"])
            previous = {
                "status": pair["status"],
                "ref_id": pair["ref_id"],
                "score": pair["score"],
                "decided_by": pair["decided_by"],
            }
            update: dict[str, Any] = {}
            chosen: str | None = None
            if verb in (Action.APPROVE, Action.PICK):
                chosen = ref_id or _suggested(pair, _candidates(pair))
                if chosen is None:
                    raise InvalidDecision(
                        f"pair {pair_id!r} has no candidate to approve; "
                        "give a ref_id of an active reference of its style, or reject it"
                    )
                update = {
                    "status": PairStatus.APPROVED.value,
                    "ref_id": chosen,
                    "score": _approvable_score(connection, pair, chosen),
                }
            elif verb is Action.REJECT:
                update = {"status": PairStatus.REJECTED.value, "ref_id": None, "score": None}
            if update:
                update.update(decided_by=f"human:{who}", decided_at=now, updated_at=now)
                connection.execute(
                    _PAIRS.update().where(_PAIRS.c.pair_id == pair_id).values(**update)
                )
            label_detail = _set_human_labels(
                connection, pair["face_id"], changes, now, self._min_model_confidence
            )
            connection.execute(
                _DECISIONS.insert().values(
                    pair_id=pair_id,
                    face_id=pair["face_id"],
                    actor=who,
                    action=verb.value,
                    ref_id=chosen,
                    detail={"previous": previous, "labels": label_detail},
                    decided_at=now,
                )
            )
        return Pair(**{**pair, **update})

    def decisions(self, pair_id: str) -> list[ReviewDecision]:
        """The decisions on one pair, oldest first."""
        statement = (
            select(_DECISIONS)
            .where(_DECISIONS.c.pair_id == pair_id)
            .order_by(_DECISIONS.c.decided_at, _DECISIONS.c.id)
        )
        with sql_errors(f"decisions of pair {pair_id!r}"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [ReviewDecision(**row) for row in rows]


# -- helpers ------------------------------------------------------------------------------


def _waiting(include_unmatched: bool) -> list[str]:
    statuses = [PairStatus.PENDING.value]
    if include_unmatched:
        statuses.append(PairStatus.UNMATCHED.value)
    return statuses


def _in_utc(value: datetime) -> datetime:
    """A caller's timestamp in UTC (a naive one is taken as UTC, as the page sends it)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _after(previous: datetime) -> datetime:
    """Now, but strictly later than ``previous``: a coarse clock must not give a decided
    pair the same ``updated_at`` it had, or a stale page would pass the optimistic check."""
    now = datetime.now(UTC)
    return now if now > previous else previous + timedelta(microseconds=1)


def _pair_row(connection: Connection, pair_id: str, for_update: bool = False) -> dict[str, Any]:
    statement = select(_PAIRS).where(_PAIRS.c.pair_id == pair_id)
    if for_update:
        statement = statement.with_for_update()
    row = connection.execute(statement).mappings().first()
    if row is None:
        raise NotFound(f"no pair {pair_id!r}; it may have been erased, reload the queue")
    return dict(row)


def _candidates(pair: Mapping[str, Any]) -> list[Candidate]:
    try:
        return [Candidate.model_validate(c) for c in pair["candidates"] or ()]
    except ValidationError as exc:
        raise StorageError(
            f"pair {pair['pair_id']!r} holds a malformed candidate list: {exc.errors()[0]['msg']}"
        ) from exc


def _suggested(pair: Mapping[str, Any], listed: Sequence[Candidate]) -> str | None:
    if pair["ref_id"] is not None:
        return str(pair["ref_id"])
    return listed[0].ref_id if listed else None


def _refs(connection: Connection, ref_ids: Sequence[str]) -> dict[str, RefView]:
    if not ref_ids:
        return {}
    rows = connection.execute(select(_REFS).where(_REFS.c.ref_id.in_(ref_ids))).mappings().all()
    label_rows = connection.execute(
        select(
            _REF_LABELS.c.ref_id,
            _REF_LABELS.c.name,
            _REF_LABELS.c.value,
            _REF_LABELS.c.source,
            _REF_LABELS.c.confidence,
        ).where(_REF_LABELS.c.ref_id.in_(ref_ids))
    ).all()
    per_ref: dict[str, list[tuple[str, str, str, float]]] = {}
    for ref_id, name, value, source, confidence in label_rows:
        per_ref.setdefault(ref_id, []).append((name, value, source, confidence))
    return {
        row["ref_id"]: RefView(
            ref_id=row["ref_id"],
            style=row["style"],
            status=row["status"],
            reason=row["reason"],
            training=row["training"],
            license=row["license"],
            author=row["author"],
            source=row["source"],
            labels={
                name: held.value for name, held in resolve(per_ref.get(row["ref_id"], ())).items()
            },
        )
        for row in rows
    }


def _label_views(
    rows: Iterable[Sequence[Any]], min_model_confidence: float
) -> tuple[LabelView, ...]:
    """One view per vocabulary label, in vocabulary order, whether or not a value exists."""
    label_rows = [(str(n), str(v), str(s), float(c)) for n, v, s, c in rows]
    resolved = resolve(label_rows, min_model_confidence)
    rank = {source.value: i for i, source in enumerate(LabelSource)}
    views = []
    for name in LabelName:
        held = resolved.get(name.value)
        sources = sorted(
            ((s, v, c) for n, v, s, c in label_rows if n == name.value),
            key=lambda row: rank.get(row[0], len(rank)),
        )
        views.append(
            LabelView(
                name=name.value,
                value=None if held is None else held.value,
                source=None if held is None else held.source.value,
                confidence=None if held is None else held.confidence,
                learnable=name in LEARNABLE,
                allowed=VALUES[name],
                sources=tuple(sources),
            )
        )
    return tuple(views)


def _action(action: Action | str) -> Action:
    try:
        return Action(action)
    except ValueError:
        allowed = ", ".join(a.value for a in Action)
        raise InvalidDecision(f"unknown action {action!r}; actions are: {allowed}") from None


def check_reviewer(actor: str) -> str:
    """The reviewer's name as recorded (``human:<name>``), or InvalidDecision saying why not."""
    name = actor.strip()
    if not name or len(name) > _MAX_ACTOR:
        raise InvalidDecision(
            f"reviewer name must be 1 to {_MAX_ACTOR} characters, got {actor!r}; "
            "pass --reviewer NAME"
        )
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidDecision(f"reviewer name {actor!r} holds control characters")
    return name


def _checked_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """``{name: value}`` in the vocabulary's spelling, or InvalidDecision naming what is
    allowed."""
    if labels is None:
        return {}
    checked: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidDecision(
                f"labels map names to string values, got {name!r}: {value!r}; "
                "e.g. {'glasses': 'yes'}"
            )
        try:
            label, normalised = check(name, value)
        except LabelError as exc:
            raise InvalidDecision(str(exc)) from None
        checked[label.value] = normalised
    return checked


def _conflict_message(pair: Mapping[str, Any]) -> str:
    when = pair["updated_at"].isoformat(timespec="seconds")
    if pair["decided_by"] is not None and pair["decided_at"] == pair["updated_at"]:
        who = f"{pair['status']} by {pair['decided_by']} at {when}"
    else:  # re-matched by the pairs agent, or changed by an import
        who = f"updated at {when} (now {pair['status']})"
    return f"pair {pair['pair_id']} changed since you loaded it: {who}; reload it to decide"


def _approvable_score(connection: Connection, pair: Mapping[str, Any], ref_id: str) -> float | None:
    """The score a pair approved with ``ref_id`` keeps: the candidate's score, or ``None``
    for an active reference of the pair's style that the matcher did not list."""
    ref = connection.execute(
        select(_REFS.c.style, _REFS.c.status, _REFS.c.reason).where(_REFS.c.ref_id == ref_id)
    ).first()
    listed = {c.ref_id: c for c in _candidates(pair)}
    if ref is None:
        raise InvalidDecision(f"reference {ref_id!r} does not exist; pick one of the candidates")
    style, status, reason = ref
    if style != pair["style"]:
        raise InvalidDecision(
            f"reference {ref_id!r} is of style {style!r}, but pair {pair['pair_id']!r} is "
            f"for style {pair['style']!r}; pick one of the candidates"
        )
    if status != RefStatus.ACTIVE:
        # A quarantined reference never reaches a dataset, so approving it would only
        # produce a pair that silently drops out.
        raise InvalidDecision(
            f"reference {ref_id!r} is {status} ({reason or 'no reason given'}); "
            "pick another candidate or reject the pair"
        )
    chosen = listed.get(ref_id)
    return None if chosen is None else chosen.score


def _set_human_labels(
    connection: Connection,
    face_id: str,
    changes: Mapping[str, str],
    now: datetime,
    min_model_confidence: float,
) -> dict[str, dict[str, Any]]:
    """Upsert the ``human`` label rows; return ``{name: {from, from_source, to}}`` with the
    value that counted before, for the decision's audit detail."""
    if not changes:
        return {}
    held = connection.execute(
        select(_LABELS.c.name, _LABELS.c.value, _LABELS.c.source, _LABELS.c.confidence).where(
            _LABELS.c.face_id == face_id, _LABELS.c.name.in_(list(changes))
        )
    ).all()
    before = resolve(
        [(str(n), str(v), str(s), float(c)) for n, v, s, c in held], min_model_confidence
    )
    rows = [
        {
            "face_id": face_id,
            "name": name,
            "value": value,
            "source": LabelSource.HUMAN.value,
            "confidence": 1.0,
            "created_at": now,
        }
        for name, value in changes.items()
    ]
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(_LABELS).values(rows)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[_LABELS.c.face_id, _LABELS.c.name, _LABELS.c.source],
            set_={"value": statement.excluded.value, "confidence": statement.excluded.confidence},
        )
    )
    return {
        name: {
            "from": before[name].value if name in before else None,
            "from_source": before[name].source.value if name in before else None,
            "to": value,
        }
        for name, value in changes.items()
    }
