"""Match stage: which anime references may pair with a face, and how good each pair is.

Pure functions over labels and search hits; the pairer does the I/O. A candidate's score is
in 0..1 and mixes two things:

- **similarity**: the cosine of the face's and the reference's embeddings, as ``(cos+1)/2``;
- **label agreement**: the share of labels both sides carry (gender, age band, expression,
  hair colour, glasses) that agree. When neither side has a comparable label it is 0.5:
  nothing known, neither for nor against.

Today the score rests on label agreement alone (:data:`SIMILARITY_WEIGHT` is 0): a photo
and a drawing are two domains, and no embedder here has shown that its similarity across
them means anything (see the constant). Every candidate still records its similarity. A
random-initialised embedder gives every pair of images nearly the same cosine, so its
similarity never counts, whatever the weight. Compatibility that must hold (glasses: a face
with glasses pairs only with references drawn with glasses) is a search filter, not a score,
so an incompatible reference is never considered at all.

**Usage penalty.** Left alone, every face with the same labels would take the same
reference (the first of the equally good ones), and a training set of one drawing teaches
nothing. A reference already used by ``u`` pairs of the style (approved or pending, the
face's own pair not counted) loses ``usage_penalty * u / (u + 1)`` of its score
(``pairing.usage_penalty``, 0.04 by default): 0.02 for the first use, 0.027 for the second,
never more than 0.04. Label agreements are shares of at most five labels, so two different
agreements differ by at least 1/20 (4/5 against 3/4); a penalty below that only reorders
references that are equally good on labels, never puts a worse-labelled one first. Among
equals it sends the next face to the least used reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agents.stores.refindex import RefFilter, RefHit
from schemas.labels import VALUES, LabelName
from schemas.pairs import Candidate, PairStatus

#: Labels compared between a face and a reference for the agreement part of the score.
COMPARED: tuple[str, ...] = (
    LabelName.GENDER,
    LabelName.AGE_BAND,
    LabelName.EXPRESSION,
    LabelName.HAIR_COLOUR,
    LabelName.GLASSES,
)
#: Labels that must agree, enforced by the index filter when the face's value is known.
REQUIRED: tuple[str, ...] = (LabelName.GLASSES,)
#: Weight of the embedding similarity when the embedder is trained (the rest is labels).
#: 0, measured (bench/identity.py, BENCHMARKS.md "Identity"): with dlib's descriptor, photos
#: lie 0.35-0.70 from the anime references (median 0.53, unit vectors), inside the band of
#: two different people (0.33-0.78, median 0.57), and whether a reference shows the photo's
#: expression (smiling or neutral) is no better than a coin toss from it: AUC 0.48 over 114
#: London photos x the 16 references labelled smiling or neutral. A weight above 0 would
#: only add noise to the ranking and to auto-approval; raise it when an embedder shows
#: cross-domain signal.
SIMILARITY_WEIGHT = 0.0
#: Agreement when no label is comparable: no evidence either way.
NO_EVIDENCE = 0.5


def compatibility_filter(
    style: str, face_labels: Mapping[str, str], exclude: Sequence[str] = ()
) -> RefFilter:
    """The search filter for one face and style: the style, and every required label the
    face has a value for.

    A face *with* the attribute (``glasses=yes``) needs references known to have it. A face
    without it only shuts out references drawn with it: most references carry no glasses
    label at all, and an unlabelled drawing is taken to show none.
    """
    present: dict[str, str] = {}
    absent: dict[str, list[str]] = {}
    for name in REQUIRED:
        value = face_labels.get(name)
        if value == "yes":
            present[name] = value
        elif value is not None:
            absent[name] = [other for other in VALUES[LabelName(name)] if other != value]
    return RefFilter(style=style, labels=present, labels_not=absent, exclude=tuple(exclude))


def label_agreement(face_labels: Mapping[str, str], ref_labels: Mapping[str, str]) -> float:
    """Share of the compared labels present on both sides that agree (0.5 if none is)."""
    both = [name for name in COMPARED if name in face_labels and name in ref_labels]
    if not both:
        return NO_EVIDENCE
    return sum(face_labels[name] == ref_labels[name] for name in both) / len(both)


def usage_cost(uses: int, usage_penalty: float) -> float:
    """What ``uses`` earlier pairs take off a reference's score: ``penalty * u / (u + 1)``,
    0 for an unused reference and below ``usage_penalty`` however often it is used."""
    u = max(0, uses)
    return usage_penalty * u / (u + 1)


def score_candidates(
    hits: Sequence[RefHit],
    face_labels: Mapping[str, str],
    *,
    similarity_informative: bool,
    similarity_weight: float = SIMILARITY_WEIGHT,
    uses: Mapping[str, int] | None = None,
    usage_penalty: float = 0.0,
) -> list[Candidate]:
    """Every hit as a scored candidate, best first (ties broken by ref id, so the order is
    the same on every run). ``similarity_weight`` counts only when the embedder is
    ``similarity_informative`` (trained, not random-init). ``uses`` is how many pairs
    already use each reference (by ref id); each loses :func:`usage_cost` of its score.
    Scores are 0..1: one the penalty takes below 0 is recorded as 0, but still ranks by
    its use, so faces that agree with no reference spread over them too."""
    weight = similarity_weight if similarity_informative else 0.0
    used = uses or {}
    ranked: list[tuple[float, Candidate]] = []
    for hit in hits:
        similarity = max(0.0, min(1.0, (hit.score + 1.0) / 2.0))
        ref_labels = hit.payload.get("labels") or {}
        agreement = label_agreement(face_labels, ref_labels)
        quality = weight * similarity + (1.0 - weight) * agreement
        rank = round(quality - usage_cost(used.get(hit.ref_id, 0), usage_penalty), 6)
        candidate = Candidate(
            ref_id=hit.ref_id,
            score=max(0.0, rank),
            similarity=round(similarity, 6),
            label_agreement=round(agreement, 6),
        )
        ranked.append((rank, candidate))
    ranked.sort(key=lambda item: (-item[0], item[1].ref_id))
    return [candidate for _, candidate in ranked]


@dataclass(frozen=True, slots=True)
class Decision:
    status: PairStatus
    ref_id: str | None
    score: float | None


def decide(
    candidates: Sequence[Candidate], auto_approve: float, *, needs_review: bool = False
) -> Decision:
    """Approve the best candidate at or above ``auto_approve``; otherwise queue the face
    for review with its best guess; with no candidate at all, it is unmatched. A face that
    ``needs_review`` (flagged at ingestion, e.g. ``identity_mismatch``) is never approved
    automatically: a person looks at it first."""
    if not candidates:
        return Decision(PairStatus.UNMATCHED, None, None)
    best = candidates[0]
    approvable = best.score >= auto_approve and not needs_review
    status = PairStatus.APPROVED if approvable else PairStatus.PENDING
    return Decision(status, best.ref_id, best.score)
