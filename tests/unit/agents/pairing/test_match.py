"""Match stage: compatibility filters, candidate scores and the approval decision."""

from __future__ import annotations

import itertools

import pytest

from agents.pairing.match import (
    NO_EVIDENCE,
    SIMILARITY_WEIGHT,
    compatibility_filter,
    decide,
    label_agreement,
    score_candidates,
    usage_cost,
)
from agents.stores.refindex import RefHit
from schemas.pairs import Candidate, PairStatus
from schemas.settings import PairingSettings


def hit(ref_id: str, cosine: float, **labels: str) -> RefHit:
    return RefHit(ref_id=ref_id, score=cosine, payload={"style": "pc", "labels": labels})


def test_filter_requires_the_faces_glasses_value_only_when_known() -> None:
    wearing = compatibility_filter("pc", {"glasses": "yes", "gender": "female"})
    assert wearing.labels == {"glasses": "yes"}
    assert dict(wearing.labels_not) == {}
    bare = compatibility_filter("pc", {"glasses": "no"})
    assert dict(bare.labels) == {}
    assert bare.labels_not == {"glasses": ["yes"]}
    unknown = compatibility_filter("pc", {"gender": "female"})
    assert dict(unknown.labels_not) == {}
    assert unknown.style == "pc"
    assert dict(unknown.labels) == {}


def test_agreement_counts_only_labels_both_sides_have() -> None:
    face = {"gender": "female", "expression": "smiling", "age_band": "18-29"}
    assert label_agreement(face, {"gender": "female", "expression": "neutral"}) == 0.5
    assert label_agreement(face, {"gender": "female"}) == 1.0
    assert label_agreement(face, {"hair_colour": "red"}) == NO_EVIDENCE


def test_random_init_similarity_does_not_move_the_score() -> None:
    hits = [hit("a", 0.99, gender="male"), hit("b", 0.10, gender="female")]
    face = {"gender": "female"}

    blind = score_candidates(hits, face, similarity_informative=False, similarity_weight=0.5)
    seeing = score_candidates(hits, face, similarity_informative=True, similarity_weight=0.5)

    assert [c.ref_id for c in blind] == ["b", "a"]
    assert blind[0].score == 1.0
    assert blind[1].score == 0.0
    # With a trained embedder the close-but-wrong-gender reference gains on the other.
    assert seeing[1].score > blind[1].score
    assert all(0.0 <= c.score <= 1.0 for c in seeing)


def test_candidates_are_ordered_by_score_then_id() -> None:
    hits = [hit("b", 0.5), hit("a", 0.5), hit("c", 0.9)]
    ranked = score_candidates(hits, {}, similarity_informative=True, similarity_weight=0.5)
    assert [c.ref_id for c in ranked] == ["c", "a", "b"]


def test_similarity_does_not_count_by_default_it_is_cross_domain() -> None:
    # SIMILARITY_WEIGHT is 0: photo-to-drawing similarity showed no signal (BENCHMARKS.md).
    hits = [hit("a", 0.99, gender="male"), hit("b", 0.10, gender="female")]
    ranked = score_candidates(hits, {"gender": "female"}, similarity_informative=True)
    assert SIMILARITY_WEIGHT == 0.0
    assert [(c.ref_id, c.score) for c in ranked] == [("b", 1.0), ("a", 0.0)]
    assert ranked[1].similarity == pytest.approx(0.995)


@pytest.mark.parametrize(
    ("best", "status"),
    [(0.95, PairStatus.APPROVED), (0.8, PairStatus.APPROVED), (0.79, PairStatus.PENDING)],
)
def test_decision_threshold(best: float, status: PairStatus) -> None:
    candidates = [
        Candidate(ref_id="x", score=best, similarity=0.5, label_agreement=best),
        Candidate(ref_id="y", score=best / 2, similarity=0.5, label_agreement=0.0),
    ]
    decision = decide(candidates, auto_approve=0.8)
    assert decision.status is status
    assert decision.ref_id == "x"
    assert decision.score == best


def test_a_flagged_face_waits_for_review_however_good_its_best_candidate() -> None:
    candidates = [Candidate(ref_id="x", score=1.0, similarity=0.5, label_agreement=1.0)]
    decision = decide(candidates, auto_approve=0.8, needs_review=True)
    assert (decision.status, decision.ref_id, decision.score) == (PairStatus.PENDING, "x", 1.0)


def test_no_candidate_is_unmatched() -> None:
    decision = decide([], auto_approve=0.8)
    assert decision.status is PairStatus.UNMATCHED
    assert decision.ref_id is None


# -- usage penalty --------------------------------------------------------------------------


def test_usage_cost_grows_with_use_and_stays_under_the_penalty() -> None:
    penalty = PairingSettings().usage_penalty
    costs = [usage_cost(u, penalty) for u in range(50)]
    assert costs[0] == 0.0
    assert costs[1] == pytest.approx(penalty / 2)
    assert all(a < b for a, b in itertools.pairwise(costs))
    assert max(costs) < penalty
    # Under the least gap between two label agreements (4/5 against 3/4): the penalty never
    # puts a reference that agrees on fewer labels first.
    assert penalty < 4 / 5 - 3 / 4


def test_two_equal_faces_go_to_two_equally_good_references() -> None:
    hits = [hit("a", 0.5, gender="female"), hit("b", 0.5, gender="female")]
    face = {"gender": "female"}
    penalty = PairingSettings().usage_penalty
    uses: dict[str, int] = {}
    chosen = []
    for _ in range(4):
        best = score_candidates(
            hits, face, similarity_informative=False, uses=uses, usage_penalty=penalty
        )[0]
        chosen.append(best.ref_id)
        uses[best.ref_id] = uses.get(best.ref_id, 0) + 1
    assert chosen == ["a", "b", "a", "b"]
    # Faces that agree with no reference spread too, though their scores stay at 0.
    male = score_candidates(
        hits, {"gender": "male"}, similarity_informative=False, uses={"a": 1}, usage_penalty=penalty
    )
    assert [(c.ref_id, c.score) for c in male] == [("b", 0.0), ("a", 0.0)]


def test_a_used_reference_still_beats_a_worse_labelled_one() -> None:
    hits = [hit("good", 0.5, gender="female", age_band="18-29"), hit("worse", 0.5, gender="male")]
    ranked = score_candidates(
        hits,
        {"gender": "female", "age_band": "18-29"},
        similarity_informative=False,
        uses={"good": 1000},
        usage_penalty=PairingSettings().usage_penalty,
    )
    assert [c.ref_id for c in ranked] == ["good", "worse"]
    assert ranked[0].label_agreement == 1.0
    assert ranked[0].score == pytest.approx(1.0 - usage_cost(1000, 0.04))
