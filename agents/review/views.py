"""What the review page renders: the queue's lines, one item with its labels and candidates.

Read-only dataclasses, each with the ``to_json`` the page receives, and the pure functions
that build them from SQL rows (:mod:`agents.review.store` runs the queries).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from agents.errors import StorageError
from schemas.labels import LEARNABLE, VALUES, LabelName, LabelSource, resolve
from schemas.pairs import Candidate
from schemas.reasons import RefStatus

#: A label row as :func:`schemas.labels.resolve` takes it: ``(name, value, source,
#: confidence)``.
LabelRow = tuple[str, str, str, float]
#: A SQL row by column name (a ``pairs``, ``faces`` or ``anime_refs`` row).
Row = Mapping[Any, Any]


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
    face_flag: str | None
    """why the face needs a look (:class:`schemas.reasons.FaceFlag`), with ``face_flag_detail``"""
    face_flag_detail: str | None
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
                "flag": self.face_flag,
                "flag_detail": self.face_flag_detail,
            },
            "labels": [label.to_json() for label in self.labels],
            "candidates": [c.to_json(self.style) for c in self.candidates],
        }


# -- builders -----------------------------------------------------------------------------


def queue_line(row: Row) -> ReviewItemSummary:
    """The queue's line for one ``pairs`` row."""
    return ReviewItemSummary(
        pair_id=row["pair_id"],
        face_id=row["face_id"],
        style=row["style"],
        status=row["status"],
        score=row["score"],
        candidates=len(row["candidates"] or ()),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def listed_candidates(pair: Row) -> list[Candidate]:
    """The candidates the matcher listed for a ``pairs`` row, best first."""
    try:
        return [Candidate.model_validate(c) for c in pair["candidates"] or ()]
    except ValidationError as exc:
        raise StorageError(
            f"pair {pair['pair_id']!r} holds a malformed candidate list: {exc.errors()[0]['msg']}"
        ) from exc


def suggested(pair: Row, listed: Sequence[Candidate]) -> str | None:
    """What ``approve`` without a reference approves: the pair's reference, else the top
    candidate."""
    if pair["ref_id"] is not None:
        return str(pair["ref_id"])
    return listed[0].ref_id if listed else None


def shown_ref_ids(pair: Row, listed: Sequence[Candidate]) -> list[str]:
    """The references an item shows: the listed candidates', then the pair's own where it
    was chosen outside the list."""
    ref_ids = [c.ref_id for c in listed]
    if pair["ref_id"] is not None and pair["ref_id"] not in ref_ids:
        ref_ids.append(pair["ref_id"])
    return ref_ids


def ref_views(rows: Iterable[Row], label_rows: Iterable[Sequence[Any]]) -> dict[str, RefView]:
    """``{ref_id: view}`` for ``anime_refs`` rows, with their resolved labels from
    ``(ref_id, name, value, source, confidence)`` rows."""
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


def label_views(
    label_rows: Sequence[LabelRow], min_model_confidence: float
) -> tuple[LabelView, ...]:
    """One view per vocabulary label, in vocabulary order, whether or not a value exists."""
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


def review_item(
    pair: Row,
    face: Row,
    labels: tuple[LabelView, ...],
    listed: Sequence[Candidate],
    refs: Mapping[str, RefView],
) -> ReviewItem:
    """The item for a ``pairs`` row and its ``faces`` row, with the face's label views, the
    pair's listed candidates and the references :func:`shown_ref_ids` names."""
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
    # the pair's reference was chosen outside the list
    if len(shown_ref_ids(pair, listed)) > len(listed):
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
        suggested_ref_id=suggested(pair, listed),
        decided_by=pair["decided_by"],
        decided_at=pair["decided_at"],
        created_at=pair["created_at"],
        updated_at=pair["updated_at"],
        library_version=pair["library_version"],
        crop=face["crop_256"],
        face_source=face["source"],
        face_license=face["license"],
        face_attribution=face["attribution"],
        face_flag=face["flag"],
        face_flag_detail=face["flag_detail"],
        labels=labels,
        candidates=tuple(candidates),
    )
