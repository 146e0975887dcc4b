"""The write side of the review page: a reviewer's approve, reject, pick or relabel.

Every :meth:`ReviewStore.decide` is one transaction: the pair's new state, the face's
``human`` labels and an appended :class:`~schemas.tables.ReviewDecision` commit together or
not at all. Two reviewers on one pair are kept apart by an optimistic check: the page sends
back the pair's ``updated_at`` it showed, and a pair changed since then is a
:class:`~agents.review.Conflict` that names who changed it. The row is read ``FOR UPDATE``
(PostgreSQL) or under SQLite's write lock taken at ``BEGIN``, so the check and the write
cannot interleave with another decision.

An approve, pick or reject also writes the pair's :class:`~schemas.pairs.PairRecord` to the
outbox (:mod:`agents.stores.outbox`) in that same transaction: exactly one announcement per
decision that changed the pair, sent on ``pairs`` by a relay when a broker answers
(:mod:`infra.outbox`). A relabel leaves the pair as it was and announces nothing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from agents.errors import Conflict, InvalidDecision
from agents.pairing.store import record_of
from agents.review.rows import DECISIONS, LABELS, PAIRS, REFS, face_labels, pair_row
from agents.review.views import listed_candidates, suggested
from agents.stores.db import sql_errors
from agents.stores.outbox import enqueue
from schemas.labels import LabelError, LabelSource, check, resolve
from schemas.pairs import PAIRS_TOPIC, PairStatus
from schemas.reasons import RefStatus
from schemas.tables import Pair

#: ``decided_by`` is ``human:<actor>`` in a 128-character column.
_MAX_ACTOR = 128 - len("human:")


class Action(StrEnum):
    APPROVE = "approve"
    """approve the suggested reference (or the one given)"""
    REJECT = "reject"
    """no usable reference for this face"""
    PICK = "pick"
    """approve another reference than the suggested one"""
    RELABEL = "relabel"
    """only set labels; the pair's state is kept"""


class DecisionWriter:
    """The write side of :class:`~agents.review.store.ReviewStore`, which sets the engine
    that writes and the confidence a ``model`` label needs to count."""

    _writer: Engine
    _min_model_confidence: float

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
            pair = pair_row(connection, pair_id, for_update=True)
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
                chosen = ref_id or suggested(pair, listed_candidates(pair))
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
                    PAIRS.update().where(PAIRS.c.pair_id == pair_id).values(**update)
                )
            label_detail = _set_human_labels(
                connection, pair["face_id"], changes, now, self._min_model_confidence
            )
            connection.execute(
                DECISIONS.insert().values(
                    pair_id=pair_id,
                    face_id=pair["face_id"],
                    actor=who,
                    action=verb.value,
                    ref_id=chosen,
                    detail={"previous": previous, "labels": label_detail},
                    decided_at=now,
                )
            )
            decided = Pair(**{**pair, **update})
            if update:
                record = record_of(decided)
                enqueue(
                    connection, PAIRS_TOPIC, record.subject.encode(), record.to_bytes(), now=now
                )
        return decided


def check_reviewer(actor: str) -> str:
    """The reviewer's name as recorded (``human:<name>``), or InvalidDecision saying why not."""
    name = actor.strip()
    if not name or len(name) > _MAX_ACTOR:
        raise InvalidDecision(f"reviewer name must be 1 to {_MAX_ACTOR} characters, got {actor!r}")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidDecision(f"reviewer name {actor!r} holds control characters")
    return name


# -- helpers ------------------------------------------------------------------------------


def _in_utc(value: datetime) -> datetime:
    """A caller's timestamp in UTC (a naive one is taken as UTC, as the page sends it)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _after(previous: datetime) -> datetime:
    """Now, but strictly later than ``previous``: a coarse clock must not give a decided
    pair the same ``updated_at`` it had, or a stale page would pass the optimistic check."""
    now = datetime.now(UTC)
    return now if now > previous else previous + timedelta(microseconds=1)


def _action(action: Action | str) -> Action:
    try:
        return Action(action)
    except ValueError:
        allowed = ", ".join(a.value for a in Action)
        raise InvalidDecision(f"unknown action {action!r}; actions are: {allowed}") from None


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
        select(REFS.c.style, REFS.c.status, REFS.c.reason).where(REFS.c.ref_id == ref_id)
    ).first()
    listed = {c.ref_id: c for c in listed_candidates(pair)}
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
    before = resolve(face_labels(connection, face_id, changes.keys()), min_model_confidence)
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
    statement = dialect.insert(LABELS).values(rows)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[LABELS.c.face_id, LABELS.c.name, LABELS.c.source],
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
