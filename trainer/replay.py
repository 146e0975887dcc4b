"""What a retrain cycle replays: the champion's older pairs that a LoRA run mixes in.

A LoRA run on a new snapshot replays a sample of the train pairs of the snapshot its
champion was trained on (``--replay-fraction`` of the draws), so that the adapter keeps
what the champion knew. :func:`plan_replay` chooses that sample the way the training
script does (:func:`trainer.runs.replay_sample`: the pairs the new snapshot does not
hold, at most ``--replay-max`` of them, drawn with ``--seed``), but only among the pairs
that may still be trained on:

- their subject is still recorded on the champion (``version_subjects``): an erasure
  deletes the erased subject's rows there, so a record whose subject is missing belongs
  to a subject erased since the champion was trained (whether or not the snapshot's
  manifest is still on disk);
- every blob the pair is read from (both selfie crops and the anime image) is still in the
  blob store: an erasure deletes the subject's crops, and a pair with a blob gone would
  fail the run.

:func:`write_replay` writes what was drawn as a manifest of its own, content-named like
any snapshot (``dataset_dir/<ds-id>/manifest.json``, with no ``snapshots`` row): the
script's ``--replay-manifest``. Drawing again from it gives it back whole
(:func:`trainer.runs.draw_replay`), so a version trained with it was trained on exactly
the subjects of its snapshot and of that manifest. It is kept among the snapshots so that
an erasure's search of the manifests under the dataset directory removes it like any
other that names the subject.

Example::

    plan = plan_replay(older, manifest.split("train"), known=registry.subjects(name, 3),
                       limit=256, seed=0, has_blob=blobs.exists)
    plan.records, plan.counts       # what to replay; how many were left out, and why
    replay_id = write_replay(settings.dataset_dir, older, plan.records)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.manifest import ManifestRecord
from trainer.dataset.snapshot import (
    Manifest,
    canonical_json,
    manifest_path,
    snapshot_id_of,
    subset_manifest,
    write_once,
)
from trainer.errors import DatasetError, TrainingConfigError
from trainer.runs import draw_replay, replay_pool


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """The pairs of snapshot ``source`` to replay, and how many were left out.

    ``counts``: ``source_train`` (train pairs of the source), ``held`` (of those, held by
    the new snapshot), ``erased`` (of subjects no longer recorded on the champion),
    ``eligible`` (the rest), ``drawn`` (at most the limit of them), ``missing_blobs``
    (drawn, but a blob is gone), ``replayed`` (what is left: ``records``).
    """

    source: str
    records: tuple[ManifestRecord, ...]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def subjects(self) -> set[str]:
        """The subjects of the replayed pairs."""
        return {r.subject for r in self.records}

    def describe(self) -> str:
        """One line for a run's log."""
        c = self.counts
        return (
            f"{c['replayed']} of the {c['source_train']} train pairs of {self.source} "
            f"({len(self.subjects)} subjects): {c['held']} held by the new snapshot, "
            f"{c['erased']} of subjects erased since, {c['drawn']} drawn of {c['eligible']} "
            f"eligible, {c['missing_blobs']} left out for a missing blob"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pairs": len(self.records),
            "subjects": len(self.subjects),
            "counts": dict(self.counts),
        }


def record_blobs(record: ManifestRecord) -> tuple[str, str, str]:
    """The digests a training run may read for ``record``: both selfie crops (which one
    depends on the resolution, and a progressive run uses two) and the anime image."""
    return record.selfie.crop_256, record.selfie.crop_512, record.anime.training


def plan_replay(
    older: Manifest,
    current: Sequence[ManifestRecord],
    *,
    known: Collection[str],
    limit: int,
    seed: int,
    has_blob: Callable[[str], bool],
) -> ReplayPlan:
    """The pairs of ``older`` to replay beside ``current`` (the new snapshot's train
    pairs): those ``current`` does not hold, of a subject in ``known`` (the subjects still
    recorded on the champion), at most ``limit`` drawn with ``seed`` as the training
    script draws, then those whose blobs ``has_blob`` finds. With nothing left out it is
    the sample the script would draw from ``older`` itself.

    Raises :class:`TrainingConfigError` for a negative ``limit`` (``--replay-max``).
    """
    if limit < 0:
        raise TrainingConfigError(f"--replay-max must be at least 0, got {limit}")
    pool = replay_pool(older, current)
    subjects = set(known)
    eligible = [r for r in pool if r.subject in subjects]
    drawn = draw_replay(eligible, limit, seed)
    kept = tuple(r for r in drawn if all(has_blob(d) for d in record_blobs(r)))
    counts = {
        "source_train": len(older.split("train")),
        "held": len(older.split("train")) - len(pool),
        "erased": len(pool) - len(eligible),
        "eligible": len(eligible),
        "drawn": len(drawn),
        "missing_blobs": len(drawn) - len(kept),
        "replayed": len(kept),
    }
    return ReplayPlan(older.snapshot_id, kept, counts)


def write_replay(dataset_dir: Path, older: Manifest, records: Sequence[ManifestRecord]) -> str:
    """Write ``records`` (some of ``older``'s) as a manifest of their own under
    ``dataset_dir`` (:func:`trainer.dataset.snapshot.subset_manifest`), write-once and
    content-named; its snapshot id.

    Raises :class:`DatasetError` when ``records`` is empty (nothing to replay: pass no
    ``--replay-manifest``) or when the file cannot be written.
    """
    if not records:
        raise DatasetError(f"no pair of {older.snapshot_id} to replay: write no replay manifest")
    data = canonical_json(subset_manifest(older.data, records).as_json())
    snapshot_id = snapshot_id_of(data)
    write_once(manifest_path(dataset_dir, snapshot_id), data)
    return snapshot_id
