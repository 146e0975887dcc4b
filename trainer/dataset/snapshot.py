"""Frozen dataset snapshots: approved pairs in, one immutable manifest named by its hash.

A snapshot is made in three steps, each usable alone:

1. :func:`load_state` reads what the dataset is made of from SQL in one read transaction:
   the approved pairs with their face, upload, anime reference and resolved labels, plus
   the counts the report needs (review queue, duplicate uploads).
2. :func:`build_manifest` turns that state into the manifest. It is a pure function of the
   state and the :class:`SnapshotParams`: no clock, no paths, no randomness, so the
   manifest's canonical bytes (:func:`canonical_json`) depend only on the data and the
   settings, and its name ``ds-<sha256[:16]>`` does too.
3. :func:`create_snapshot` writes those bytes write-once to
   ``settings.dataset_dir/<id>/manifest.json`` and records a ``snapshots`` row. The same
   state snapshotted again gives the same id, finds its row and adds nothing.

Manifest layout (format ``s2a-dataset-manifest``, version 1)::

    {"format": "s2a-dataset-manifest", "format_version": 1,
     "library_version": 3,                       # max over the records
     "params": {"seed": 0, "validation_fraction": 0.2, "max_per_subject": 20,
                "min_model_confidence": 0.85, "style": null,
                "target_coverage": {"gender": ["female", "male"], ...}},
     "summary": {"records": 40, "subjects": 9, "dropped_by_cap": 2, ...},
     "records": [{"pair_id": ..., "split": "train", "weight": 1.13, "caption": ...}, ...]}

Example::

    engine = create_engine_for(settings.sql_url)
    result = create_snapshot(engine, settings)
    result.snapshot_id                  # 'ds-3f2a9c...'; same state, same id
    manifest = read_manifest(settings.dataset_dir, result.snapshot_id)
    len(manifest.records)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col
from sqlmodel import select as model_select

from agents.stores.db import for_writing, sql_errors
from schemas.labels import LabelValue, as_values, resolve
from schemas.pairs import PairStatus
from schemas.reasons import ReasonCode, RefStatus, UploadState
from schemas.settings import Settings
from schemas.tables import AnimeRef, Face, Label, Pair, RefLabel, Snapshot, Upload
from trainer.errors import DatasetError

MANIFEST_FORMAT = "s2a-dataset-manifest"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"

TRAIN = "train"
VALIDATION = "validation"
SPLITS: tuple[str, ...] = (TRAIN, VALIDATION)

#: ``ds-`` and the first 16 hex digits of the manifest's SHA-256.
SNAPSHOT_ID = re.compile(r"^ds-[0-9a-f]{16}$")

#: Digits kept of stored floats (scores, confidences, quality, weights): enough for any
#: use, and a value that went through a database's float column compares equal after.
_DIGITS = 6

_PAIRS: Table = SQLModel.metadata.tables[Pair.__tablename__]
_FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
_UPLOADS: Table = SQLModel.metadata.tables[Upload.__tablename__]
_LABELS: Table = SQLModel.metadata.tables[Label.__tablename__]
_REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]
_REF_LABELS: Table = SQLModel.metadata.tables[RefLabel.__tablename__]
_SNAPSHOTS: Table = SQLModel.metadata.tables[Snapshot.__tablename__]

#: Attempts at recording a new snapshot row when another process took the same version.
_INSERT_ATTEMPTS = 3


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


@dataclass(frozen=True, slots=True)
class ApprovedPair:
    """One approved pair with everything a manifest record needs, as read from SQL."""

    pair_id: str
    face_id: str
    upload_id: str
    subject: str
    style: str
    score: float | None
    decided_by: str | None
    library_version: int | None
    crop_256: str
    crop_512: str
    quality: Mapping[str, float]
    face_source: str
    face_license: str | None
    face_attribution: str | None
    ref_id: str
    ref_training: str
    ref_original: str
    ref_license: str
    ref_author: str
    ref_source: str
    ref_tags: tuple[str, ...]
    ref_library_version: int
    labels: Mapping[str, LabelValue]
    ref_labels: Mapping[str, LabelValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DatasetState:
    """What a snapshot is built from: approved pairs and the counts around them."""

    pairs: tuple[ApprovedPair, ...]
    queue: Mapping[str, int] = field(default_factory=dict)
    """pairs per status other than approved: ``pending``, ``unmatched``, ``rejected``"""
    duplicate_uploads: int = 0
    """uploads rejected as ``duplicate`` (near-identical face of the same subject)"""
    quarantined_refs: int = 0
    """approved pairs left out because their reference has been quarantined since"""


# -- the pure parts: split, cap, weights, caption --------------------------------------------


def subject_draw(seed: int, subject: str) -> float:
    """A number in [0, 1) fixed by ``(seed, subject)`` alone: HMAC-SHA256 keyed by the seed.

    Keyed rather than a plain hash so that a new seed gives an independent split, and
    per subject so that adding other subjects never changes it.
    """
    digest = hmac.new(f"s2a-split:{seed}".encode(), subject.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """Which split each subject goes to, and which subjects the fallback moved."""

    splits: Mapping[str, str]
    forced: tuple[str, ...] = ()

    def of(self, subject: str) -> str:
        return self.splits[subject]


def assign_splits(subjects: Iterable[str], seed: int, validation_fraction: float) -> SplitPlan:
    """Send every subject wholly to ``train`` or ``validation``.

    A subject goes to validation when ``subject_draw(seed, subject) < validation_fraction``:
    its split depends on nothing else, so it never moves when other subjects are added.

    Fallback, so that both splits exist once there are two subjects and the fraction is
    above zero: if no subject drew validation, the one with the smallest draw goes there;
    if every subject drew validation, the one with the largest draw goes to train. Only
    that one subject (listed in ``forced``) can move back later, when a newcomer's own
    draw fills the empty split. ``validation_fraction == 0`` means no validation at all.
    """
    draws = {subject: subject_draw(seed, subject) for subject in sorted(set(subjects))}
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
    return SplitPlan(splits=splits, forced=tuple(forced))


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
    return [round(w * len(raw) / total, _DIGITS) for w in raw]


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


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, UTF-8, no NaN, final LF."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode() + b"\n"


def snapshot_id_of(manifest_bytes: bytes) -> str:
    return f"ds-{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"


# -- the manifest ---------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), _DIGITS)


def _labels_json(labels: Mapping[str, LabelValue]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "value": label.value,
            "source": label.source.value,
            "confidence": _round(label.confidence),
        }
        for name, label in sorted(labels.items())
    }


def _decider(decided_by: str | None) -> str:
    """``human``, ``auto``, ``import`` or ``other`` for a ``Pair.decided_by`` value."""
    if decided_by is None:
        return "other"
    if decided_by.startswith("human:"):
        return "human"
    if decided_by.startswith("import:"):
        return "import"
    return "auto" if decided_by == "auto" else "other"


def _record(pair: ApprovedPair, split: str, weight: float) -> dict[str, Any]:
    public = pair.face_source == "public-dataset"
    return {
        "pair_id": pair.pair_id,
        "face_id": pair.face_id,
        "upload_id": pair.upload_id,
        "subject": pair.subject,
        "style": pair.style,
        "split": split,
        "weight": weight,
        "caption": caption(pair.style, as_values(pair.labels)),
        "selfie": {"crop_256": pair.crop_256, "crop_512": pair.crop_512},
        "anime": {"training": pair.ref_training, "original": pair.ref_original},
        "labels": _labels_json(pair.labels),
        "ref_labels": _labels_json(pair.ref_labels),
        "quality": {name: _round(v) for name, v in sorted(pair.quality.items())},
        "lineage": {
            "ref_id": pair.ref_id,
            "library_version": (
                pair.library_version
                if pair.library_version is not None
                else pair.ref_library_version
            ),
            "ref_library_version": pair.ref_library_version,
            "decided_by": pair.decided_by,
            "score": _round(pair.score),
            "ref_license": pair.ref_license,
            "ref_author": pair.ref_author,
            "ref_source": pair.ref_source,
            "ref_tags": list(pair.ref_tags),
            "face_source": pair.face_source,
            "face_license": pair.face_license if public else None,
            "face_attribution": pair.face_attribution if public else None,
        },
    }


def build_manifest(state: DatasetState, params: SnapshotParams) -> dict[str, Any]:
    """The manifest of ``state``: capped, split by subject, weighted and captioned.

    Pure: the same state and params always give an equal dict (and so the same bytes).
    """
    kept, dropped = cap_per_subject(state.pairs, params.max_per_subject)
    plan = assign_splits((p.subject for p in kept), params.seed, params.validation_fraction)
    records: list[dict[str, Any]] = []
    for split in SPLITS:
        members = [p for p in kept if plan.of(p.subject) == split]
        weights = sampling_weights([as_values(p.labels) for p in members], params.target_coverage)
        records.extend(_record(p, split, w) for p, w in zip(members, weights, strict=True))
    records.sort(key=lambda r: (r["split"], r["style"], r["subject"], r["pair_id"]))
    versions = [r["lineage"]["library_version"] for r in records]
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "library_version": max(versions) if versions else None,
        "params": params.as_json(),
        "summary": _summary(state, records, dropped, plan),
        "records": records,
    }


def _summary(
    state: DatasetState, records: Sequence[Mapping[str, Any]], dropped: int, plan: SplitPlan
) -> dict[str, Any]:
    splits = {
        split: {
            "records": sum(1 for r in records if r["split"] == split),
            "subjects": len({r["subject"] for r in records if r["split"] == split}),
        }
        for split in SPLITS
    }
    decided = Counter(_decider(r["lineage"]["decided_by"]) for r in records)
    return {
        "records": len(records),
        "subjects": len({r["subject"] for r in records}),
        "splits": splits,
        "styles": dict(sorted(Counter(r["style"] for r in records).items())),
        "dropped_by_cap": dropped,
        "split_fallback": list(plan.forced),
        "queue": {
            status.value: int(state.queue.get(status.value, 0))
            for status in (PairStatus.PENDING, PairStatus.UNMATCHED, PairStatus.REJECTED)
        },
        "decided_by": {k: decided.get(k, 0) for k in ("auto", "human", "import", "other")},
        "duplicate_uploads": state.duplicate_uploads,
        "quarantined_refs": state.quarantined_refs,
    }


# -- reading the state from SQL -----------------------------------------------------------


def _storage(operation: str) -> AbstractContextManager[None]:
    """A database failure as a DatasetError that says what was being done."""
    return sql_errors(operation, DatasetError)


def _resolved(
    rows: Iterable[Any], owner: str, min_model_confidence: float
) -> dict[str, dict[str, LabelValue]]:
    grouped: dict[str, list[tuple[str, str, str, float]]] = defaultdict(list)
    for key, name, value, source, confidence in rows:
        grouped[key].append((name, value, source, confidence))
    try:
        return {key: resolve(found, min_model_confidence) for key, found in grouped.items()}
    except ValueError as exc:  # a label source outside schemas.labels.LabelSource
        raise DatasetError(f"a {owner} label has an unknown source: {exc}") from exc


def load_state(engine: Engine, params: SnapshotParams) -> DatasetState:
    """Read approved pairs (of ``params.style`` when set) and the counts around them.

    Everything is read in one transaction (REPEATABLE READ on PostgreSQL; SQLite's read
    transaction is a snapshot already), so a worker writing meanwhile cannot make the
    counts and the records disagree. Pairs whose upload is no longer ``accepted`` (erased)
    are left out; so are those whose reference was quarantined, which are counted.
    """
    approved = _PAIRS.c.status == PairStatus.APPROVED.value
    scope = [approved]
    if params.style is not None:
        scope.append(_PAIRS.c.style == params.style)
    pairs_query = (
        select(
            _PAIRS.c.pair_id,
            _PAIRS.c.face_id,
            _PAIRS.c.subject,
            _PAIRS.c.style,
            _PAIRS.c.score,
            _PAIRS.c.decided_by,
            _PAIRS.c.library_version,
            _FACES.c.upload_id,
            _FACES.c.crop_256,
            _FACES.c.crop_512,
            _FACES.c.quality,
            _FACES.c.source.label("face_source"),
            _FACES.c.license.label("face_license"),
            _FACES.c.attribution.label("face_attribution"),
            _UPLOADS.c.license.label("upload_license"),
            _REFS.c.ref_id,
            _REFS.c.status.label("ref_status"),
            _REFS.c.training,
            _REFS.c.original,
            _REFS.c.license.label("ref_license"),
            _REFS.c.author,
            _REFS.c.source.label("ref_source"),
            _REFS.c.tags,
            _REFS.c.library_version.label("ref_library_version"),
        )
        .select_from(
            _PAIRS.join(_FACES, _FACES.c.face_id == _PAIRS.c.face_id)
            .join(_UPLOADS, _UPLOADS.c.upload_id == _FACES.c.upload_id)
            .join(_REFS, _REFS.c.ref_id == _PAIRS.c.ref_id)
        )
        .where(*scope, _UPLOADS.c.state == UploadState.ACCEPTED.value)
        .order_by(_PAIRS.c.pair_id)
    )
    approved_faces = select(_PAIRS.c.face_id).where(*scope)
    approved_refs = select(_PAIRS.c.ref_id).where(*scope)
    labels_query = select(
        _LABELS.c.face_id,
        _LABELS.c.name,
        _LABELS.c.value,
        _LABELS.c.source,
        _LABELS.c.confidence,
    ).where(_LABELS.c.face_id.in_(approved_faces))
    ref_labels_query = select(
        _REF_LABELS.c.ref_id,
        _REF_LABELS.c.name,
        _REF_LABELS.c.value,
        _REF_LABELS.c.source,
        _REF_LABELS.c.confidence,
    ).where(_REF_LABELS.c.ref_id.in_(approved_refs))
    queue_query = select(_PAIRS.c.status, func.count()).group_by(_PAIRS.c.status)
    if params.style is not None:
        queue_query = queue_query.where(_PAIRS.c.style == params.style)
    duplicates_query = (
        select(func.count())
        .select_from(_UPLOADS)
        .where(
            _UPLOADS.c.state == UploadState.REJECTED.value,
            _UPLOADS.c.reason == ReasonCode.DUPLICATE.value,
        )
    )

    with _storage("reading approved pairs"), engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            rows = list(connection.execute(pairs_query).mappings())
            face_labels = _resolved(
                connection.execute(labels_query), "face", params.min_model_confidence
            )
            ref_labels = _resolved(
                connection.execute(ref_labels_query), "reference", params.min_model_confidence
            )
            queue = {str(s): int(n) for s, n in connection.execute(queue_query)}
            duplicates = int(connection.scalar(duplicates_query) or 0)

    pairs: list[ApprovedPair] = []
    quarantined = 0
    for row in rows:
        if row["ref_status"] != RefStatus.ACTIVE:
            quarantined += 1
            continue
        pairs.append(
            ApprovedPair(
                pair_id=row["pair_id"],
                face_id=row["face_id"],
                upload_id=row["upload_id"],
                subject=row["subject"],
                style=row["style"],
                score=row["score"],
                decided_by=row["decided_by"],
                library_version=row["library_version"],
                crop_256=row["crop_256"],
                crop_512=row["crop_512"],
                quality=dict(row["quality"] or {}),
                face_source=row["face_source"],
                face_license=row["face_license"] or row["upload_license"],
                face_attribution=row["face_attribution"],
                ref_id=row["ref_id"],
                ref_training=row["training"],
                ref_original=row["original"],
                ref_license=row["ref_license"],
                ref_author=row["author"],
                ref_source=row["ref_source"],
                ref_tags=tuple(row["tags"] or ()),
                ref_library_version=row["ref_library_version"],
                labels=face_labels.get(row["face_id"], {}),
                ref_labels=ref_labels.get(row["ref_id"], {}),
            )
        )
    return DatasetState(
        pairs=tuple(pairs),
        queue=queue,
        duplicate_uploads=duplicates,
        quarantined_refs=quarantined,
    )


# -- writing: the manifest file and the snapshots row ----------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """What :func:`create_snapshot` made, or found already made (``created`` False)."""

    snapshot_id: str
    version: int
    created: bool
    manifest_path: Path
    manifest_sha256: str
    summary: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "version": self.version,
            "created": self.created,
            "manifest_path": str(self.manifest_path),
            "manifest_sha256": self.manifest_sha256,
            "summary": dict(self.summary),
        }


def manifest_path(dataset_dir: Path, snapshot_id: str) -> Path:
    """Where the manifest of ``snapshot_id`` lives; refuses anything but a snapshot id."""
    if not SNAPSHOT_ID.match(snapshot_id):
        raise DatasetError(
            f"{snapshot_id!r} is not a snapshot id; ids look like 'ds-' and 16 hex digits "
            "(see `s2a dataset list`)"
        )
    return dataset_dir / snapshot_id / MANIFEST_NAME


def write_once(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` unless the same bytes are there; True when written.

    Different bytes already at ``path`` are a :class:`DatasetError`: a snapshot never
    changes once written. The file appears whole (temporary file, then rename) and is
    left read-only.
    """
    try:
        if path.exists():
            if path.read_bytes() == data:
                return False
            raise DatasetError(
                f"{path} already exists with different content; snapshots are immutable, "
                "so it was changed by hand: move it away and snapshot again"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o444)
        # Two processes racing here write the same bytes (the name is their hash), so
        # whichever rename lands last changes nothing.
        tmp.replace(path)
    except OSError as exc:
        raise DatasetError(f"cannot write {path}: {exc}") from exc
    return True


def create_snapshot(engine: Engine, settings: Settings, style: str | None = None) -> SnapshotResult:
    """Freeze the approved pairs (of ``style``, or every style) into a snapshot.

    Raises :class:`DatasetError` when there is no approved pair to freeze.
    """
    params = SnapshotParams.from_settings(settings, style=style)
    state = load_state(engine, params)
    if not state.pairs:
        scope = f" of style {style!r}" if style else ""
        raise DatasetError(
            f"no approved pairs{scope} to snapshot; pairs are approved automatically above "
            "S2A_PAIRING__AUTO_APPROVE or on the review page (`s2a review`)"
        )
    manifest = build_manifest(state, params)
    data = canonical_json(manifest)
    snapshot_id = snapshot_id_of(data)
    sha256 = hashlib.sha256(data).hexdigest()
    path = manifest_path(settings.dataset_dir, snapshot_id)
    write_once(path, data)
    version, created = _record_snapshot(engine, snapshot_id, sha256, path, manifest)
    return SnapshotResult(
        snapshot_id=snapshot_id,
        version=version,
        created=created,
        manifest_path=path,
        manifest_sha256=sha256,
        summary=manifest["summary"],
    )


def _record_snapshot(
    engine: Engine, snapshot_id: str, sha256: str, path: Path, manifest: Mapping[str, Any]
) -> tuple[int, bool]:
    """Insert the snapshot's row with the next version; ``(version, False)`` if present."""
    summary = manifest["summary"]
    by_id = select(_SNAPSHOTS.c.version).where(_SNAPSHOTS.c.snapshot_id == snapshot_id)
    for attempt in range(_INSERT_ATTEMPTS):
        try:
            with _storage("recording the snapshot"), for_writing(engine).begin() as connection:
                found = connection.scalar(by_id)
                if found is not None:
                    return int(found), False
                version = int(connection.scalar(select(func.max(_SNAPSHOTS.c.version))) or 0) + 1
                connection.execute(
                    _SNAPSHOTS.insert(),
                    {
                        "snapshot_id": snapshot_id,
                        "version": version,
                        "manifest_sha256": sha256,
                        "manifest_path": str(path),
                        "pairs": summary["records"],
                        "train": summary["splits"][TRAIN]["records"],
                        "validation": summary["splits"][VALIDATION]["records"],
                        "subjects": summary["subjects"],
                        "library_version": manifest["library_version"],
                        "params": manifest["params"],
                        "created_at": datetime.now(UTC),
                    },
                )
                return version, True
        except IntegrityError:
            # Another process recorded a snapshot between our read and our insert (same
            # id, or it took our version number): look again.
            if attempt == _INSERT_ATTEMPTS - 1:
                raise DatasetError(
                    f"could not record snapshot {snapshot_id}: other snapshots kept taking "
                    "the next version; run it again"
                ) from None
    raise DatasetError(f"could not record snapshot {snapshot_id}")  # pragma: no cover


# -- reading snapshots back -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """A snapshot's manifest as read back, its bytes checked against its name.

    Example::

        manifest = read_manifest(settings.dataset_dir, "ds-3f2a9c0d1e2b4a5f")
        [r["caption"] for r in manifest.records if r["split"] == "train"]
    """

    snapshot_id: str
    sha256: str
    data: Mapping[str, Any]

    @property
    def records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.data["records"]
        return records

    @property
    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = self.data["summary"]
        return summary

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.data["params"]
        return params

    def split(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["split"] == name]


def read_manifest(dataset_dir: Path, snapshot_id: str) -> Manifest:
    """Load and verify ``dataset_dir/<snapshot_id>/manifest.json``.

    Raises :class:`DatasetError` when it is missing, when its bytes no longer hash to its
    name, or when it is not a manifest this code can read.
    """
    path = manifest_path(dataset_dir, snapshot_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(
            f"snapshot {snapshot_id} has no manifest at {path}; "
            "`s2a dataset list` shows the snapshots there are"
        ) from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if snapshot_id_of(data) != snapshot_id:
        raise DatasetError(
            f"{path} does not hash to {snapshot_id} (it hashes to {snapshot_id_of(data)}): "
            "the manifest was changed after it was written"
        )
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise DatasetError(f"{path} is not JSON: {exc}") from exc
    if (
        not isinstance(parsed, dict)
        or parsed.get("format") != MANIFEST_FORMAT
        or parsed.get("format_version") != MANIFEST_VERSION
    ):
        raise DatasetError(f"{path} is not a {MANIFEST_FORMAT} version {MANIFEST_VERSION} manifest")
    return Manifest(snapshot_id, hashlib.sha256(data).hexdigest(), parsed)


def list_snapshots(engine: Engine) -> list[Snapshot]:
    """Every recorded snapshot, oldest version first."""
    statement = model_select(Snapshot).order_by(col(Snapshot.version))
    with _storage("listing snapshots"), Session(engine) as session:
        rows = list(session.exec(statement).all())
    return rows


def find_snapshot(engine: Engine, ref: str) -> Snapshot:
    """The snapshot named by its id, its version number, or ``latest``."""
    rows = list_snapshots(engine)
    if ref == "latest" and rows:
        return rows[-1]
    for row in rows:
        if row.snapshot_id == ref or (ref.isdigit() and row.version == int(ref)):
            return row
    known = ", ".join(f"{r.version}={r.snapshot_id}" for r in rows[-5:]) or "none yet"
    raise DatasetError(
        f"no snapshot {ref!r}; give a snapshot id, a version number or 'latest' (recent: {known})"
    )
