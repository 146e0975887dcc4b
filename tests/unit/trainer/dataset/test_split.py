"""The pure parts of a dataset snapshot: split by subject, cap, weights, captions, and the
manifest built from an in-memory state (no database)."""

from __future__ import annotations

import dataclasses
import re
from statistics import fmean

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.labels import LabelSource, LabelValue
from trainer.dataset import (
    TRAIN,
    VALIDATION,
    ApprovedPair,
    DatasetState,
    SnapshotParams,
    assign_splits,
    build_manifest,
    canonical_json,
    cap_per_subject,
    caption,
    identity_groups,
    sampling_weights,
    snapshot_id_of,
    subject_draw,
)
from trainer.errors import DatasetError

subject_names = st.text(alphabet="0123456789abcdef", min_size=4, max_size=12)
subject_sets = st.sets(subject_names, min_size=0, max_size=30)
fractions = st.floats(min_value=0.05, max_value=0.95)


@given(subjects=subject_sets, extra=subject_sets, fraction=fractions, seed=st.integers(0, 5))
def test_existing_subjects_keep_their_split_when_subjects_are_added(
    subjects: set[str], extra: set[str], fraction: float, seed: int
) -> None:
    before = assign_splits(subjects, seed, fraction)
    after = assign_splits(subjects | extra, seed, fraction)
    moved = {s for s in subjects if before.of(s) != after.of(s)}
    # Only a subject the fallback placed (in either plan) may move, and there is one at most.
    assert moved <= set(before.forced) | set(after.forced)
    assert len(before.forced) <= 1
    assert len(after.forced) <= 1


@given(subjects=subject_sets, fraction=fractions, seed=st.integers(0, 5))
def test_every_subject_gets_one_split_and_both_splits_exist(
    subjects: set[str], fraction: float, seed: int
) -> None:
    plan = assign_splits(subjects, seed, fraction)
    assert set(plan.splits) == subjects
    assert set(plan.splits.values()) <= {TRAIN, VALIDATION}
    if len(subjects) >= 2:
        assert set(plan.splits.values()) == {TRAIN, VALIDATION}


def test_split_follows_the_keyed_draw_and_the_fraction() -> None:
    subjects = [f"subject-{i}" for i in range(4000)]
    plan = assign_splits(subjects, seed=7, validation_fraction=0.2)
    share = sum(plan.of(s) == VALIDATION for s in subjects) / len(subjects)
    assert 0.18 < share < 0.22
    assert not plan.forced
    for s in subjects[:50]:
        assert plan.of(s) == (VALIDATION if subject_draw(7, s) < 0.2 else TRAIN)
    other_seed = assign_splits(subjects, seed=8, validation_fraction=0.2)
    assert sum(plan.of(s) != other_seed.of(s) for s in subjects) > 500


def test_fallback_puts_the_lowest_draw_in_validation() -> None:
    # A fraction so small that no subject draws validation by itself.
    subjects = ["a1", "b2", "c3"]
    plan = assign_splits(subjects, seed=0, validation_fraction=1e-12)
    lowest = min(subjects, key=lambda s: subject_draw(0, s))
    assert plan.forced == (lowest,)
    assert [s for s in subjects if plan.of(s) == VALIDATION] == [lowest]


def test_zero_fraction_means_no_validation_and_one_subject_stays_in_train() -> None:
    assert set(assign_splits(["a", "b", "c"], 0, 0.0).splits.values()) == {TRAIN}
    assert assign_splits(["only"], 0, 0.99).forced == ()


@dataclasses.dataclass(frozen=True)
class _P:
    pair_id: str
    subject: str
    style: str
    score: float | None


def test_cap_keeps_the_best_scores_per_subject_and_style() -> None:
    pairs = [
        _P("p1", "s1", "ghibli", 0.7),
        _P("p2", "s1", "ghibli", 0.9),
        _P("p3", "s1", "ghibli", 0.9),
        _P("p4", "s1", "ghibli", None),
        _P("p5", "s1", "cel", 0.1),
        _P("p6", "s2", "ghibli", 0.2),
    ]
    kept, dropped = cap_per_subject(reversed(pairs), 2)
    assert [p.pair_id for p in kept] == ["p2", "p3", "p5", "p6"]
    assert dropped == 2
    kept, dropped = cap_per_subject(pairs, 1)
    assert [p.pair_id for p in kept] == ["p2", "p5", "p6"]
    assert dropped == 3


def test_weights_balance_a_target_attribute() -> None:
    labels = [{"gender": "female"}] * 3 + [{"gender": "male"}]
    weights = sampling_weights(labels, {"gender": ("female", "male")})
    assert weights == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2])
    assert fmean(weights) == pytest.approx(1.0)
    # Each value then carries the same total weight.
    assert sum(weights[:3]) == pytest.approx(weights[3])


def test_weights_average_attributes_and_leave_unlabelled_records_neutral() -> None:
    labels = [
        {"gender": "female", "glasses": "yes"},
        {"gender": "female", "glasses": "no"},
        {"gender": "male", "glasses": "no"},
        {"age_band": "60+"},  # no target label: neutral 1 before normalisation
    ]
    coverage = {"gender": ("female", "male"), "glasses": ("no", "yes")}
    weights = sampling_weights(labels, coverage)
    # raw: female&yes (3/4 + 3/2)/2, female&no (3/4 + 3/4)/2, male&no (3/2 + 3/4)/2, 1
    raw = [1.125, 0.75, 1.125, 1.0]
    assert weights == pytest.approx([w * 4 / sum(raw) for w in raw], abs=1e-6)
    assert fmean(weights) == pytest.approx(1.0, abs=1e-6)
    assert sampling_weights(labels, {}) == [1.0] * 4
    assert sampling_weights([], coverage) == []


def test_caption_uses_only_the_labels_present() -> None:
    labels = {
        "expression": "smiling",
        "age_band": "18-29",
        "gender": "female",
        "glasses": "yes",
        "pose_band": "frontal",
        "lighting_band": "dark",
    }
    assert caption("ghibli", labels) == (
        "anime portrait, ghibli style, smiling young woman with glasses, frontal"
    )
    assert caption("cel", {}) == "anime portrait, cel style, person"
    assert caption("cel", {"age_band": "teen", "gender": "male", "hair_colour": "red"}) == (
        "anime portrait, cel style, teenage boy with red hair"
    )
    assert caption("cel", {"gender": "other", "expression": "neutral", "pose_band": "turned"}) == (
        "anime portrait, cel style, person, neutral expression, turned head"
    )


def _pair(n: int, subject: str, labels: dict[str, str], score: float = 0.9) -> ApprovedPair:
    return ApprovedPair(
        pair_id=f"pair-{n:04d}",
        face_id=f"face-{n:04d}",
        upload_id=f"upload-{n:04d}",
        subject=subject,
        style="ghibli",
        score=score,
        decided_by="auto" if n % 2 else "human:alice",
        library_version=1,
        crop_256=f"{n:064x}",
        crop_512=f"{n + 1:064x}",
        quality={"sharpness": 100.0 + n},
        face_source="selfie",
        face_license=None,
        face_attribution=None,
        ref_id=f"ref-{n % 3}",
        ref_training=f"{n + 2:064x}",
        ref_original=f"{n + 3:064x}",
        ref_license="CC-BY-4.0",
        ref_author="someone",
        ref_source="https://example.org/ref",
        ref_tags=("face",),
        ref_library_version=1,
        labels={k: LabelValue(v, LabelSource.DECLARED, 1.0) for k, v in labels.items()},
    )


PARAMS = SnapshotParams(
    seed=0,
    validation_fraction=0.3,
    max_per_subject=2,
    target_coverage={"gender": ("female", "male")},
)


@settings(max_examples=40, deadline=None)
@given(subjects=st.lists(subject_names, min_size=1, max_size=12, unique=True), data=st.data())
def test_no_subject_is_in_both_splits_and_order_does_not_matter(
    subjects: list[str], data: st.DataObject
) -> None:
    counts = data.draw(st.lists(st.integers(1, 4), min_size=len(subjects), max_size=len(subjects)))
    pairs: list[ApprovedPair] = []
    for subject, count in zip(subjects, counts, strict=True):
        for _ in range(count):
            gender = "female" if len(pairs) % 3 else "male"
            pairs.append(_pair(len(pairs), subject, {"gender": gender}))
    state = DatasetState(pairs=tuple(pairs))
    manifest = build_manifest(state, PARAMS)
    by_split = {
        split: {r.subject for r in manifest.records if r.split == split}
        for split in (TRAIN, VALIDATION)
    }
    assert not by_split[TRAIN] & by_split[VALIDATION]
    assert by_split[TRAIN] | by_split[VALIDATION] == set(subjects)
    assert manifest.summary.dropped_by_cap == sum(max(0, c - 2) for c in counts)
    for split in (TRAIN, VALIDATION):
        weights = [r.weight for r in manifest.records if r.split == split]
        if weights:
            assert fmean(weights) == pytest.approx(1.0, abs=1e-5)
    shuffled = DatasetState(pairs=tuple(data.draw(st.permutations(pairs))))
    assert canonical_json(build_manifest(shuffled, PARAMS)) == canonical_json(manifest)


def test_identity_groups_are_the_components_of_the_links_named_by_their_smallest() -> None:
    links = [("s-c", "s-b"), ("s-b", "s-e"), ("s-x", "s-y")]
    groups = identity_groups(["s-a", "s-b", "s-c", "s-e", "s-y"], links)
    assert groups == {"s-a": "s-a", "s-b": "s-b", "s-c": "s-b", "s-e": "s-b", "s-y": "s-x"}
    assert identity_groups(groups, reversed(links)) == groups  # order does not matter


@settings(max_examples=40, deadline=None)
@given(
    subjects=st.lists(subject_names, min_size=2, max_size=12, unique=True),
    data=st.data(),
    seed=st.integers(0, 5),
)
def test_one_person_under_several_subject_ids_lands_in_one_split(
    subjects: list[str], data: st.DataObject, seed: int
) -> None:
    # Any links at all: every linked subject shares its person's split, every record says
    # which person, and the summary counts the merged subjects.
    index = st.integers(0, len(subjects) - 1)
    links = data.draw(st.lists(st.tuples(index, index), max_size=6))
    subject_links = tuple((subjects[a], subjects[b]) for a, b in links if a != b)
    pairs = tuple(_pair(i, subject, {"gender": "female"}) for i, subject in enumerate(subjects))
    params = dataclasses.replace(PARAMS, seed=seed)
    manifest = build_manifest(DatasetState(pairs=pairs, subject_links=subject_links), params)

    split_of = {r.subject: r.split for r in manifest.records}
    identity_of = {r.subject: r.identity for r in manifest.records}
    for a, b in subject_links:
        assert split_of[a] == split_of[b]
        assert identity_of[a] == identity_of[b]
    people = set(identity_of.values())
    assert manifest.summary.identity_groups == len(people)
    sizes = [sum(1 for i in identity_of.values() if i == p) for p in people]
    assert manifest.summary.merged_subjects == sum(n for n in sizes if n > 1)
    # With no link, a subject is its own person and keeps the split it had before links.
    alone = build_manifest(DatasetState(pairs=pairs), params)
    assert all(r.identity == r.subject for r in alone.records)
    assert alone.summary.merged_subjects == 0


def test_manifest_bytes_change_with_a_label_and_hold_no_paths_or_times() -> None:
    pairs = [_pair(i, f"subject-{i % 4}", {"gender": "female"}) for i in range(8)]
    manifest = build_manifest(DatasetState(pairs=tuple(pairs), queue={"pending": 3}), PARAMS)
    data = canonical_json(manifest)
    relabelled = [*pairs[:-1], _pair(7, "subject-3", {"gender": "male"})]
    other = canonical_json(build_manifest(DatasetState(pairs=tuple(relabelled)), PARAMS))
    assert snapshot_id_of(data) != snapshot_id_of(other)
    assert re.fullmatch(r"ds-[0-9a-f]{16}", snapshot_id_of(data))
    for absent in (b"/tmp", b"created_at", b"decided_at"):
        assert absent not in data
    assert manifest.summary.queue == {"pending": 3, "unmatched": 0, "rejected": 0}
    assert manifest.summary.decided_by == {"auto": 4, "human": 4, "import": 0, "other": 0}
    record = manifest.records[0]
    assert record.labels["gender"].model_dump(mode="json") == {
        "value": "female",
        "source": "declared",
        "confidence": 1,
    }
    assert record.caption == "anime portrait, ghibli style, woman"


def test_params_are_checked() -> None:
    with pytest.raises(DatasetError, match="validation_fraction"):
        SnapshotParams(validation_fraction=1.0)
    with pytest.raises(DatasetError, match="max_per_subject"):
        SnapshotParams(max_per_subject=0)
