"""The pairs agent's work, without Kafka: accepted faces in, (selfie, anime) pairs out.

For each accepted face and each target style: label the face with the label heads (when
trained), search the current reference-library version for compatible references, score
them, approve the best automatically above the threshold or queue it for review, and store
the pair with its candidates and the library version it was matched against.

Re-delivery is a no-op: a face already matched against the current library version keeps
its pair (its record is sent again, so a crash between the SQL commit and the send loses
nothing), and a pair a person decided is never touched. A newer library version re-matches
machine-decided pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agents.labelheads import HEADS_FILE, LabelHeads, model_labels
from agents.pairing.match import compatibility_filter, decide, score_candidates
from agents.pairing.store import (
    AUTO,
    USING,
    FaceFacts,
    Library,
    PairStore,
    machine_decided,
    pair_id_for,
    record_of,
)
from agents.records import EmbeddingSpace
from agents.stores.faces import FACE_VECTOR, FaceIndex
from agents.stores.refindex import RefIndex, open_ref_index
from schemas.labels import as_values, resolve
from schemas.pairs import Candidate, FaceAccepted, PairRecord, PairStatus
from schemas.settings import Settings
from schemas.tables import Label, Pair

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PairPlan:
    """What one batch will write, and the records to send once it is written."""

    pairs: list[Pair] = field(default_factory=list)
    model_labels: list[Label] = field(default_factory=list)
    unchanged: list[Pair] = field(default_factory=list)
    """pairs already matched against this library version: only their records go out"""


class Pairer:
    """Pairs accepted faces with anime references.

    Example::

        pairer = Pairer(settings, PairStore(engine), face_index)
        records = pairer.run([FaceAccepted.from_bytes(raw_faces_record)])
        records[0].status   # PairStatus.APPROVED or PENDING
    """

    def __init__(
        self,
        settings: Settings,
        store: PairStore,
        faces: FaceIndex,
        *,
        open_index: Callable[[Settings, int, EmbeddingSpace], RefIndex] = open_ref_index,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.faces = faces
        self._open_index = open_index
        self._clock = clock
        self._index: RefIndex | None = None
        self._heads: LabelHeads | None = None
        self._heads_stamp: float | None = None

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def run(self, events: Sequence[FaceAccepted]) -> list[PairRecord]:
        """:meth:`plan` then :meth:`commit`; the records to publish, written pairs first."""
        return self.commit(self.plan(events))

    def plan(self, events: Sequence[FaceAccepted]) -> PairPlan:
        plan = PairPlan()
        face_ids = list(dict.fromkeys(event.face_id for event in events))
        facts = self.store.faces(face_ids)
        missing = [face_id for face_id in face_ids if face_id not in facts]
        if missing:
            # An erased face, or an event from another deployment: nothing to pair.
            log.warning(
                "no stored face for %d event(s), e.g. %s; skipped", len(missing), missing[0]
            )
        face_ids = [face_id for face_id in face_ids if face_id in facts]
        if not face_ids:
            return plan
        library = self.store.library()
        styles = self.settings.pairing.styles or library.styles
        vectors = self.faces.vectors(face_ids, FACE_VECTOR)
        now = self._clock()
        plan.model_labels = self._model_labels(facts, vectors, now)
        guessed: dict[str, list[tuple[str, str, str, float]]] = {}
        for label in plan.model_labels:
            guessed.setdefault(label.face_id, []).append(
                (label.name, label.value, label.source, label.confidence)
            )
        existing = self.store.pairs_of(face_ids)
        index = self._index_for(library)
        # Kept up to date within the batch, so two faces of one batch spread as well.
        uses = self.store.usage(styles)
        for face_id in face_ids:
            fact = facts[face_id]
            rows = [row for row in fact.labels if row[2] != "model"] + guessed.get(face_id, [])
            labels = as_values(resolve(rows, self.settings.pairing.min_model_confidence))
            vector = vectors.get(face_id)
            for style in styles:
                held = existing.get((face_id, style))
                if held is not None and (
                    not machine_decided(held.decided_by) or held.library_version == library.version
                ):
                    plan.unchanged.append(held)
                    continue
                # The face's own pair is about to be replaced: its reference is not
                # "already used" by someone else, so re-matching keeps it when still best.
                _count(uses, style, held, -1)
                candidates = (
                    self._candidates(index, vector, style, labels, fact, uses)
                    if index is not None and vector is not None
                    else []
                )
                pair = self._pair(fact, style, candidates, library, held, now)
                _count(uses, style, pair, +1)
                plan.pairs.append(pair)
        return plan

    def commit(self, plan: PairPlan) -> list[PairRecord]:
        written = set(self.store.save(plan.pairs, plan.model_labels))
        out = [p for p in plan.pairs if p.pair_id in written] + plan.unchanged
        return [record_of(pair) for pair in out]

    # -- steps ---------------------------------------------------------------------------

    def _candidates(
        self,
        index: RefIndex,
        vector: np.ndarray,
        style: str,
        labels: dict[str, str],
        fact: FaceFacts,
        uses: dict[tuple[str, str], int],
    ) -> list[Candidate]:
        where = compatibility_filter(style, labels)
        hits = index.search(vector, self.settings.pairing.candidates, where=where)
        return score_candidates(
            hits,
            labels,
            similarity_informative=not fact.random_init,
            uses={ref: n for (s, ref), n in uses.items() if s == style},
            usage_penalty=self.settings.pairing.usage_penalty,
        )

    def _pair(
        self,
        fact: FaceFacts,
        style: str,
        candidates: list[Candidate],
        library: Library,
        held: Pair | None,
        now: datetime,
    ) -> Pair:
        decision = decide(
            candidates, self.settings.pairing.auto_approve, needs_review=fact.flag is not None
        )
        approved = decision.status is PairStatus.APPROVED
        return Pair(
            pair_id=pair_id_for(fact.face_id, style),
            face_id=fact.face_id,
            subject=fact.subject,
            style=style,
            ref_id=decision.ref_id,
            score=decision.score,
            status=decision.status,
            decided_by=AUTO if approved else None,
            decided_at=now if approved else None,
            candidates=[candidate.model_dump() for candidate in candidates],
            library_version=library.version,
            created_at=held.created_at if held is not None else now,
            updated_at=now,
        )

    def _index_for(self, library: Library) -> RefIndex | None:
        """The index of the current library version, reopened when a newer one appears.

        Opened for the faces' embedding space: a version another embedder built is refused
        (:class:`~agents.errors.EmbedderMismatch`), never searched with vectors it cannot
        compare.
        """
        if library.version is None:
            return None
        if self._index is None or self._index.version != library.version:
            self.close()
            self._index = self._open_index(self.settings, library.version, self.faces.space)
            log.info("matching against reference library version %d", library.version)
        return self._index

    def _model_labels(
        self, facts: dict[str, FaceFacts], vectors: dict[str, np.ndarray], now: datetime
    ) -> list[Label]:
        heads = self._load_heads()
        if heads is None:
            return []
        # Heads learned one embedder's space; another embedder's vectors would get
        # confident nonsense, so those faces wait for review instead.
        with_vectors = [
            face_id
            for face_id, fact in facts.items()
            if face_id in vectors and heads.embedder in (None, fact.embedder)
        ]
        if not with_vectors:
            return []
        stacked = np.stack([vectors[face_id] for face_id in with_vectors]).astype(np.float32)
        return model_labels(heads, stacked, with_vectors, now)

    def _load_heads(self) -> LabelHeads | None:
        """The trained label heads, reloaded when ``s2a labels train`` writes new ones."""
        path: Path = self.settings.label_model_dir / HEADS_FILE
        try:
            stamp = path.stat().st_mtime
        except FileNotFoundError:
            self._heads, self._heads_stamp = None, None
            return None
        if stamp != self._heads_stamp:
            self._heads = LabelHeads.load(path)
            self._heads_stamp = stamp
            log.info("label heads loaded from %s", path)
        return self._heads


def _count(uses: dict[tuple[str, str], int], style: str, pair: Pair | None, step: int) -> None:
    """Add ``step`` to the uses of ``pair``'s reference when the pair uses one."""
    if pair is None or pair.ref_id is None or PairStatus(pair.status) not in USING:
        return
    key = (style, pair.ref_id)
    uses[key] = max(0, uses.get(key, 0) + step)
