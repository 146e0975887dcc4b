"""Frozen dataset snapshots: approved pairs in, one immutable manifest named by its hash.

A snapshot is made in three steps, each usable alone:

1. :func:`load_state` (:mod:`trainer.dataset.state`) reads what the dataset is made of
   from SQL in one read transaction: the approved pairs with their face, upload, anime
   reference and resolved labels, plus the counts the report needs (review queue,
   duplicate uploads).
2. :func:`build_manifest` turns that state into the manifest, a
   :class:`schemas.manifest.DatasetManifest`, with the split, cap and weights of
   :mod:`trainer.dataset.policy`. It is a pure function of the state and the
   :class:`SnapshotParams`: no clock, no paths, no randomness, so the manifest's canonical
   bytes (:func:`canonical_json`) depend only on the data and the settings, and its name
   ``ds-<sha256[:16]>`` does too.
3. :func:`create_snapshot` writes those bytes write-once to
   ``settings.dataset_dir/<id>/manifest.json`` and records a ``snapshots`` row. The same
   state snapshotted again gives the same id, finds its row and adds nothing.

Manifest layout (format ``s2a-dataset-manifest``, version 1; the model and its JSON Schema
are in :mod:`schemas.manifest`)::

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
import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine

from schemas.labels import LabelValue, as_values
from schemas.manifest import (
    FORMAT_VERSION,
    MANIFEST_FORMAT,
    AnimeImages,
    DatasetManifest,
    Lineage,
    ManifestParams,
    ManifestRecord,
    ManifestSummary,
    RecordLabel,
    SelfieCrops,
    SplitCounts,
)
from schemas.pairs import PairStatus
from schemas.settings import Settings
from trainer.dataset.policy import (
    FLOAT_DIGITS,
    SPLITS,
    SnapshotParams,
    SplitPlan,
    assign_splits,
    cap_per_subject,
    caption,
    identity_groups,
    sampling_weights,
)
from trainer.dataset.state import ApprovedPair, DatasetState, load_state, record_snapshot
from trainer.errors import DatasetError

MANIFEST_VERSION = FORMAT_VERSION
MANIFEST_NAME = "manifest.json"

#: ``ds-`` and the first 16 hex digits of the manifest's SHA-256.
SNAPSHOT_ID = re.compile(r"^ds-[0-9a-f]{16}$")


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, UTF-8, no NaN, final LF.

    A pydantic model in ``value`` is written as its JSON dump, every field (``null``
    included): a :class:`DatasetManifest` gives the bytes its snapshot is named by.
    """
    text = json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_model_json,
    )
    return text.encode() + b"\n"


def _model_json(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def snapshot_id_of(manifest_bytes: bytes) -> str:
    return f"ds-{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"


# -- the manifest ---------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), FLOAT_DIGITS)


def _labels_json(labels: Mapping[str, LabelValue]) -> dict[str, RecordLabel]:
    return {
        name: RecordLabel(
            value=label.value,
            source=label.source,
            confidence=_round(label.confidence),
        )
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


def _record(pair: ApprovedPair, split: str, weight: float, identity: str) -> ManifestRecord:
    public = pair.face_source == "public-dataset"
    return ManifestRecord(
        pair_id=pair.pair_id,
        face_id=pair.face_id,
        upload_id=pair.upload_id,
        subject=pair.subject,
        identity=identity,
        style=pair.style,
        split=split,
        weight=weight,
        caption=caption(pair.style, as_values(pair.labels)),
        selfie=SelfieCrops(crop_256=pair.crop_256, crop_512=pair.crop_512),
        anime=AnimeImages(training=pair.ref_training, original=pair.ref_original),
        labels=_labels_json(pair.labels),
        ref_labels=_labels_json(pair.ref_labels),
        quality={name: _round(v) for name, v in sorted(pair.quality.items())},
        lineage=Lineage(
            ref_id=pair.ref_id,
            library_version=(
                pair.library_version
                if pair.library_version is not None
                else pair.ref_library_version
            ),
            ref_library_version=pair.ref_library_version,
            decided_by=pair.decided_by,
            score=_round(pair.score),
            ref_license=pair.ref_license,
            ref_author=pair.ref_author,
            ref_source=pair.ref_source,
            ref_tags=list(pair.ref_tags),
            face_source=pair.face_source,
            face_license=pair.face_license if public else None,
            face_attribution=pair.face_attribution if public else None,
        ),
    )


def build_manifest(state: DatasetState, params: SnapshotParams) -> DatasetManifest:
    """The manifest of ``state``: capped, split by person (identity group), weighted and
    captioned.

    Pure: the same state and params always give an equal manifest (and so the same bytes).
    """
    kept, dropped = cap_per_subject(state.pairs, params.max_per_subject)
    subjects = {p.subject for p in kept}
    groups = identity_groups(subjects, state.subject_links)
    plan = assign_splits(subjects, params.seed, params.validation_fraction, groups)
    records: list[ManifestRecord] = []
    for split in SPLITS:
        members = [p for p in kept if plan.of(p.subject) == split]
        weights = sampling_weights([as_values(p.labels) for p in members], params.target_coverage)
        records.extend(
            _record(p, split, w, plan.group(p.subject))
            for p, w in zip(members, weights, strict=True)
        )
    records.sort(key=lambda r: (r.split, r.style, r.subject, r.pair_id))
    versions = [r.lineage.library_version for r in records]
    return DatasetManifest(
        format=MANIFEST_FORMAT,
        format_version=MANIFEST_VERSION,
        library_version=max(versions) if versions else None,
        params=ManifestParams.model_validate(params.as_json()),
        summary=_summary(state, records, dropped, plan),
        records=records,
    )


def _summary(
    state: DatasetState, records: Sequence[ManifestRecord], dropped: int, plan: SplitPlan
) -> ManifestSummary:
    splits = {
        split: SplitCounts(
            records=sum(1 for r in records if r.split == split),
            subjects=len({r.subject for r in records if r.split == split}),
        )
        for split in SPLITS
    }
    decided = Counter(_decider(r.lineage.decided_by) for r in records)
    per_person = Counter(identity for identity, _ in {(r.identity, r.subject) for r in records})
    return ManifestSummary(
        records=len(records),
        subjects=len({r.subject for r in records}),
        splits=splits,
        styles=dict(sorted(Counter(r.style for r in records).items())),
        dropped_by_cap=dropped,
        split_fallback=list(plan.forced),
        queue={
            status.value: int(state.queue.get(status.value, 0))
            for status in (PairStatus.PENDING, PairStatus.UNMATCHED, PairStatus.REJECTED)
        },
        decided_by={k: decided.get(k, 0) for k in ("auto", "human", "import", "other")},
        duplicate_uploads=state.duplicate_uploads,
        quarantined_refs=state.quarantined_refs,
        identity_groups=len(per_person),
        merged_subjects=sum(n for n in per_person.values() if n > 1),
    )


def subset_manifest(
    manifest: DatasetManifest, records: Sequence[ManifestRecord]
) -> DatasetManifest:
    """``manifest`` holding only ``records`` (some of its own: a retrain's replay), with
    the counts over records recomputed; the counts about the state it was frozen from
    (review queue, cap, duplicates, quarantine) and its params stay.

    Records keep their split and weight but lose their identity group, and the summary its
    split fallback: a group is named by a member's pseudonym, who may have no record in
    the subset (or may have been erased since), and the subset is never split again.
    """
    kept = [r.model_copy(update={"identity": None}) for r in records]
    splits = {
        split: SplitCounts(
            records=sum(1 for r in kept if r.split == split),
            subjects=len({r.subject for r in kept if r.split == split}),
        )
        for split in SPLITS
    }
    decided = Counter(_decider(r.lineage.decided_by) for r in kept)
    summary = manifest.summary.model_copy(
        update={
            "records": len(kept),
            "subjects": len({r.subject for r in kept}),
            "splits": splits,
            "styles": dict(sorted(Counter(r.style for r in kept).items())),
            "split_fallback": [],
            "decided_by": {k: decided.get(k, 0) for k in ("auto", "human", "import", "other")},
            "identity_groups": 0,
            "merged_subjects": 0,
        }
    )
    versions = [r.lineage.library_version for r in kept]
    return manifest.model_copy(
        update={
            "library_version": max(versions) if versions else None,
            "summary": summary,
            "records": kept,
        }
    )


# -- writing: the manifest file (the snapshots row is :func:`record_snapshot`) ---------------


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """What :func:`create_snapshot` made, or found already made (``created`` False)."""

    snapshot_id: str
    version: int
    created: bool
    manifest_path: Path
    manifest_sha256: str
    summary: ManifestSummary

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "version": self.version,
            "created": self.created,
            "manifest_path": str(self.manifest_path),
            "manifest_sha256": self.manifest_sha256,
            "summary": self.summary.model_dump(mode="json"),
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
    data = canonical_json(manifest.as_json())
    snapshot_id = snapshot_id_of(data)
    sha256 = hashlib.sha256(data).hexdigest()
    path = manifest_path(settings.dataset_dir, snapshot_id)
    write_once(path, data)
    version, created = record_snapshot(engine, snapshot_id, sha256, path, manifest)
    return SnapshotResult(
        snapshot_id=snapshot_id,
        version=version,
        created=created,
        manifest_path=path,
        manifest_sha256=sha256,
        summary=manifest.summary,
    )


# -- reading snapshots back -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """A snapshot's manifest as read back, its bytes checked against its name.

    Example::

        manifest = read_manifest(settings.dataset_dir, "ds-3f2a9c0d1e2b4a5f")
        [r.caption for r in manifest.records if r.split == "train"]
    """

    snapshot_id: str
    sha256: str
    data: DatasetManifest

    @property
    def records(self) -> list[ManifestRecord]:
        return self.data.records

    @property
    def summary(self) -> ManifestSummary:
        return self.data.summary

    @property
    def params(self) -> ManifestParams:
        return self.data.params

    @property
    def library_version(self) -> int | None:
        return self.data.library_version

    def split(self, name: str) -> list[ManifestRecord]:
        return self.data.split(name)


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
    try:
        manifest = DatasetManifest.model_validate(parsed)
    except ValidationError as exc:
        raise DatasetError(
            f"{path} is not a valid {MANIFEST_FORMAT} version {MANIFEST_VERSION} manifest: {exc}"
        ) from exc
    return Manifest(snapshot_id, hashlib.sha256(data).hexdigest(), manifest)
