"""What goes into a snapshot and how: split by person, per-subject cap, sampling weights.

Pure functions of their arguments (no clock, no paths, no randomness), so a manifest built
with them depends only on the data and the :class:`SnapshotParams`:

- :func:`identity_groups` joins the subjects the embedder linked as one person;
- :func:`assign_splits` sends every such group (a subject alone is one) wholly to
  ``train`` or ``validation`` by a keyed hash of ``(seed, group)``, so a person never
  sits on both sides and never moves when others are added;
- :func:`cap_per_subject` keeps the best-scoring ``max_per_subject`` pairs per subject and
  style;
- :func:`sampling_weights` gives inverse-frequency weights that even out the
  ``target_coverage`` attributes within a split;
- :func:`caption` is the text a training tool pairs with the anime target.

Example::

    plan = assign_splits(["subject-a", "subject-b"], seed=0, validation_fraction=0.2)
    plan.of("subject-a")                # 'train' or 'validation', fixed by (seed, subject)
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from schemas.settings import Settings
from trainer.errors import DatasetError

TRAIN = "train"
VALIDATION = "validation"
SPLITS: tuple[str, ...] = (TRAIN, VALIDATION)

#: Digits kept of stored floats (scores, confidences, quality, weights): enough for any
#: use, and a value that went through a database's float column compares equal after.
FLOAT_DIGITS = 6


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotParams:
    """The settings a snapshot is built with; stored in the manifest and the SQL row.

    Example::

        params = SnapshotParams.from_settings(settings, style="ghibli")
        params.as_json()["max_per_subject"]   # 20
    """

    seed: int = 0
    validation_fraction: float = 0.2
    max_per_subject: int = 20
    target_coverage: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    min_model_confidence: float = 0.85
    style: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise DatasetError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}; "
                "set S2A_DATASET__VALIDATION_FRACTION"
            )
        if self.max_per_subject < 1:
            raise DatasetError(
                f"max_per_subject must be at least 1, got {self.max_per_subject}; "
                "set S2A_DATASET__MAX_PER_SUBJECT"
            )

    @classmethod
    def from_settings(cls, settings: Settings, style: str | None = None) -> SnapshotParams:
        group = settings.dataset
        return cls(
            seed=group.seed,
            validation_fraction=group.validation_fraction,
            max_per_subject=group.max_per_subject,
            target_coverage={name: tuple(values) for name, values in group.target_coverage.items()},
            min_model_confidence=settings.pairing.min_model_confidence,
            style=style,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "max_per_subject": self.max_per_subject,
            "target_coverage": {
                name: list(values) for name, values in sorted(self.target_coverage.items())
            },
            "min_model_confidence": self.min_model_confidence,
            "style": self.style,
        }


# -- the pure parts: split, cap, weights, caption --------------------------------------------


def subject_draw(seed: int, subject: str) -> float:
    """A number in [0, 1) fixed by ``(seed, subject)`` alone: HMAC-SHA256 keyed by the seed.

    Keyed rather than a plain hash so that a new seed gives an independent split, and
    per subject so that adding other subjects never changes it.
    """
    digest = hmac.new(f"s2a-split:{seed}".encode(), subject.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def identity_groups(subjects: Iterable[str], links: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{subject: group}``: subjects the embedder linked as one person share a group.

    ``links`` are ``(subject, subject)`` pairs (from ``identity_links``: faces of two
    subjects within ``settings.worker.identity_link_distance``); groups are their connected
    components, so links chain (a selfie id, a public-dataset id and a second app account
    of one person become one group). A group is named by its smallest subject pseudonym:
    the same for the same links in any order, and a subject alone is its own group, so its
    split is what it was before any link existed. Links to subjects outside ``subjects``
    still connect (they may join two subjects through a third not in this snapshot).
    """
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            # The smaller name becomes the root, so a group's name is its smallest member.
            parent[max(ra, rb)] = min(ra, rb)
    return {subject: root(subject) for subject in subjects}


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """Which split each identity group goes to, which groups the fallback moved, and each
    subject's group (a subject absent from ``groups`` is its own group)."""

    splits: Mapping[str, str]
    forced: tuple[str, ...] = ()
    groups: Mapping[str, str] = field(default_factory=dict)

    def group(self, subject: str) -> str:
        return self.groups.get(subject, subject)

    def of(self, subject: str) -> str:
        return self.splits[self.group(subject)]


def assign_splits(
    subjects: Iterable[str],
    seed: int,
    validation_fraction: float,
    groups: Mapping[str, str] | None = None,
) -> SplitPlan:
    """Send every identity group (every subject, when ``groups`` links none) wholly to
    ``train`` or ``validation``, so no person is on both sides.

    A group goes to validation when ``subject_draw(seed, group) < validation_fraction``:
    its split depends on nothing else, so it never moves when other subjects are added
    (only when a new link merges it into another group).

    Fallback, so that both splits exist once there are two groups and the fraction is
    above zero: if no group drew validation, the one with the smallest draw goes there;
    if every group drew validation, the one with the largest draw goes to train. Only
    that one group (listed in ``forced``) can move back later, when a newcomer's own
    draw fills the empty split. ``validation_fraction == 0`` means no validation at all.
    """
    groups = dict(groups or {})
    units = sorted({groups.get(subject, subject) for subject in subjects})
    draws = {unit: subject_draw(seed, unit) for unit in units}
    splits = {s: VALIDATION if u < validation_fraction else TRAIN for s, u in draws.items()}
    forced: list[str] = []
    if len(draws) >= 2 and validation_fraction > 0:
        if VALIDATION not in splits.values():
            chosen = min(draws, key=lambda s: (draws[s], s))
            splits[chosen] = VALIDATION
            forced.append(chosen)
        elif TRAIN not in splits.values():
            chosen = max(draws, key=lambda s: (draws[s], s))
            splits[chosen] = TRAIN
            forced.append(chosen)
    return SplitPlan(splits=splits, forced=tuple(forced), groups=groups)


class _Rankable(Protocol):
    @property
    def pair_id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def style(self) -> str: ...
    @property
    def score(self) -> float | None: ...


_P = TypeVar("_P", bound=_Rankable)


def cap_per_subject(pairs: Iterable[_P], max_per_subject: int) -> tuple[list[_P], int]:
    """At most ``max_per_subject`` pairs per (subject, style), and how many were dropped.

    The kept ones are the highest-scoring, ties (and pairs without a score, which rank
    last) broken by ``pair_id``, so the choice does not depend on read order. The result
    is sorted by ``pair_id``.
    """
    groups: dict[tuple[str, str], list[_P]] = defaultdict(list)
    for pair in pairs:
        groups[(pair.subject, pair.style)].append(pair)
    kept: list[_P] = []
    dropped = 0
    for group in groups.values():
        group.sort(key=lambda p: (p.score is None, -(p.score or 0.0), p.pair_id))
        kept.extend(group[:max_per_subject])
        dropped += max(0, len(group) - max_per_subject)
    kept.sort(key=lambda p: p.pair_id)
    return kept, dropped


def sampling_weights(
    labels: Sequence[Mapping[str, str]], target_coverage: Mapping[str, Sequence[str]]
) -> list[float]:
    """Per-record sampling weights that even out the target attributes within one split.

    For each attribute ``a`` of ``target_coverage`` with target values ``T_a``:
    ``L_a`` is the set of records whose ``a`` label is one of ``T_a``, ``n_a(v)`` the
    number of them with value ``v`` and ``k_a`` the number of values present. A record
    ``r`` in ``L_a`` gets the component ``c_a(r) = |L_a| / (k_a * n_a(v_r))`` (inverse
    frequency: every present value then carries the same total mass ``|L_a| / k_a``, and
    ``c_a`` averages 1 over ``L_a``); a record outside ``L_a`` (label absent or not a
    target value) gets the neutral 1. The raw weight is the mean of the components over
    the attributes, and the weights are scaled to average exactly 1 over the split::

        weight(r) = raw(r) * N / sum(raw)     raw(r) = mean_a c_a(r)

    With 3 ``female`` and 1 ``male`` records and ``{"gender": ("female", "male")}`` the
    weights are 2/3 each for ``female`` and 2 for ``male``: both halves weigh 2.
    """
    if not labels:
        return []
    attributes = sorted(target_coverage)
    if not attributes:
        return [1.0] * len(labels)
    raw = [0.0] * len(labels)
    for attribute in attributes:
        targets = set(target_coverage[attribute])
        values = [row.get(attribute) for row in labels]
        counts = Counter(v for v in values if v in targets)
        labelled = sum(counts.values())
        for i, value in enumerate(values):
            if value is not None and value in counts:
                raw[i] += labelled / (len(counts) * counts[value])
            else:
                raw[i] += 1.0
    total = sum(raw)
    return [round(w * len(raw) / total, FLOAT_DIGITS) for w in raw]


#: Adjective of an adult age band; children and teenagers get their own nouns instead.
_AGE_WORDS = {"18-29": "young", "30-44": "adult", "45-59": "middle-aged", "60+": "elderly"}
_YOUNG_NOUNS = {
    "child": {"female": "girl", "male": "boy", "": "child"},
    "teen": {"female": "teenage girl", "male": "teenage boy", "": "teenager"},
}
_ADULT_NOUNS = {"female": "woman", "male": "man", "": "person"}
_POSE_WORDS = {"frontal": "frontal", "slight": "slightly turned", "turned": "turned head"}


def caption(style: str, labels: Mapping[str, str]) -> str:
    """The text a training tool pairs with the anime target, built only from present labels.

    Uses the face's labels, not the reference's: at conversion time only the selfie's
    labels are known, so the model must learn to follow them. Photo-quality labels
    (lighting, blur) are left out; they describe the selfie, not the anime image::

        caption("ghibli", {"expression": "smiling", "age_band": "18-29",
                           "gender": "female", "glasses": "yes", "pose_band": "frontal"})
        # 'anime portrait, ghibli style, smiling young woman with glasses, frontal'
    """
    age = labels.get("age_band", "")
    gender = labels.get("gender", "")
    gender = gender if gender in ("female", "male") else ""
    words: list[str] = []
    if labels.get("expression") == "smiling":
        words.append("smiling")
    if age in _YOUNG_NOUNS:
        words.append(_YOUNG_NOUNS[age][gender])
    else:
        if age in _AGE_WORDS:
            words.append(_AGE_WORDS[age])
        words.append(_ADULT_NOUNS[gender])
    extras: list[str] = []
    hair = labels.get("hair_colour")
    if hair and hair != "other":
        extras.append(f"{hair} hair")
    if labels.get("glasses") == "yes":
        extras.append("glasses")
    phrase = " ".join(words)
    if extras:
        phrase += " with " + " and ".join(extras)
    parts = ["anime portrait", f"{style} style", phrase]
    if labels.get("expression") == "neutral":
        parts.append("neutral expression")
    if labels.get("occlusion") == "yes":
        parts.append("partly covered face")
    pose = labels.get("pose_band")
    if pose in _POSE_WORDS:
        parts.append(_POSE_WORDS[pose])
    return ", ".join(parts)
