"""The SQL of the review page: the queue, one item to review, and a reviewer's decision.

:class:`ReviewStore` runs the reads here and builds what the page renders with
:mod:`agents.review.views`; its :meth:`~ReviewStore.decide` comes from
:class:`agents.review.decisions.DecisionWriter`, one transaction with an optimistic check
against a stale page.

Datetimes come out timezone-aware, in UTC (:class:`schemas.tables.UTCDateTime`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine, exists, func, or_, select, union_all

from agents.review.decisions import DecisionWriter
from agents.review.rows import DECISIONS, FACES, PAIRS, REF_LABELS, REFS, face_labels, pair_row
from agents.review.views import (
    RefView,
    ReviewItem,
    ReviewItemSummary,
    label_views,
    listed_candidates,
    queue_line,
    ref_views,
    review_item,
    shown_ref_ids,
)
from agents.stores.db import for_writing, sql_errors
from schemas.pairs import PairStatus
from schemas.tables import ReviewDecision


class ReviewStore(DecisionWriter):
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
            select(PAIRS)
            .where(PAIRS.c.status.in_(_waiting(include_unmatched)))
            .order_by(PAIRS.c.created_at, PAIRS.c.pair_id)
            .limit(limit)
        )
        with sql_errors("review queue"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [queue_line(row) for row in rows]

    def waiting(self, include_unmatched: bool = False) -> int:
        """How many pairs the queue holds in all (``queue`` returns at most ``limit``)."""
        statement = (
            select(func.count())
            .select_from(PAIRS)
            .where(PAIRS.c.status.in_(_waiting(include_unmatched)))
        )
        with sql_errors("review queue size"), self._engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def item(self, pair_id: str) -> ReviewItem:
        """The pair with its face crop, resolved labels and candidates with their references."""
        with sql_errors(f"review item {pair_id!r}"), self._engine.connect() as connection:
            pair = pair_row(connection, pair_id)
            face = (
                connection.execute(select(FACES).where(FACES.c.face_id == pair["face_id"]))
                .mappings()
                .one()
            )
            label_rows = face_labels(connection, pair["face_id"])
            listed = listed_candidates(pair)
            refs = _refs(connection, shown_ref_ids(pair, listed))
        labels = label_views(label_rows, self._min_model_confidence)
        return review_item(pair, face, labels, listed, refs)

    def blob_known(self, digest: str) -> bool:
        """Whether ``digest`` is a face crop or a reference image that SQL knows of: the
        only blobs the page may serve."""
        owners = union_all(
            select(FACES.c.face_id).where(
                or_(FACES.c.crop_256 == digest, FACES.c.crop_512 == digest)
            ),
            select(REFS.c.ref_id).where(or_(REFS.c.training == digest, REFS.c.original == digest)),
        ).subquery()
        with sql_errors("blob lookup"), self._engine.connect() as connection:
            return bool(connection.execute(select(exists(select(owners)))).scalar())

    def decisions(self, pair_id: str) -> list[ReviewDecision]:
        """The decisions on one pair, oldest first."""
        statement = (
            select(DECISIONS)
            .where(DECISIONS.c.pair_id == pair_id)
            .order_by(DECISIONS.c.decided_at, DECISIONS.c.id)
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


def _refs(connection: Connection, ref_ids: Sequence[str]) -> dict[str, RefView]:
    if not ref_ids:
        return {}
    rows = connection.execute(select(REFS).where(REFS.c.ref_id.in_(ref_ids))).mappings().all()
    label_rows = connection.execute(
        select(
            REF_LABELS.c.ref_id,
            REF_LABELS.c.name,
            REF_LABELS.c.value,
            REF_LABELS.c.source,
            REF_LABELS.c.confidence,
        ).where(REF_LABELS.c.ref_id.in_(ref_ids))
    ).all()
    return ref_views(rows, label_rows)
