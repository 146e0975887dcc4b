"""The subject's files: the manifests on disk that name it, every export of a snapshot that
holds it, those snapshots' folders, and the sample grids of the training runs of the
versions trained on it (with the artifact store's copies). Every removal is idempotent: a
file already gone is fine (a re-run)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from agents.errors import StorageError
from agents.objects import ObjectStore

#: What the files of an export are recognised by (``trainer.dataset.export`` writes it).
EXPORT_MARKER = "export.json"
MANIFEST_NAME = "manifest.json"
#: The sample grids' folder in a training run (``trainer.runs.SAMPLES``; agents cannot
#: import trainer).
SAMPLES = "samples"


def manifests_naming(dataset_dir: Path, pseudonym: str) -> set[str]:
    """Snapshot folders whose manifest holds the pseudonym's bytes: those recorded
    before ``snapshot_subjects`` existed, and any written but never recorded."""
    needle = pseudonym.encode()
    found: set[str] = set()
    try:
        for path in sorted(dataset_dir.glob(f"*/{MANIFEST_NAME}")):
            if needle in path.read_bytes():
                found.add(path.parent.name)
    except OSError as exc:
        raise StorageError(f"cannot read the manifests under {dataset_dir}: {exc}") from exc
    return found


def remove_exports(export_roots: Sequence[Path], snapshots: set[str]) -> int:
    """Delete every export of ``snapshots`` under the export roots; how many."""
    if not snapshots:
        return 0
    removed = 0
    for root in export_roots:
        if not root.is_dir():
            continue
        try:
            markers = sorted(root.rglob(EXPORT_MARKER))
        except OSError as exc:
            raise StorageError(f"cannot search {root} for exports: {exc}") from exc
        for marker in markers:
            if _snapshot_of_export(marker) not in snapshots:
                continue
            folder = marker.parent
            if folder == root:
                # A root that is itself an export: empty it, keep the folder we were
                # pointed at.
                for child in sorted(root.iterdir()):
                    if child.is_dir():
                        _remove_tree(child)
                    else:
                        _remove_file(child)
            else:
                _remove_tree(folder)
            removed += 1
    return removed


def remove_sample_grids(
    run_dirs: set[str], models_dir: Path | None, artifacts: ObjectStore | None
) -> int:
    """Delete the sample grids of the training runs of versions trained on the
    subject: they show validation selfies (``trainer.runs``: ``<run>/samples/``). The
    rest of a run (weights, losses) holds no image and goes with the retrain.

    A run directory inside a version directory (``<version>/run`` under ``models_dir``)
    was copied to ``artifacts`` with the version: its sample grids go there too."""
    removed = 0
    for run_dir in sorted(run_dirs):
        samples = Path(run_dir) / SAMPLES
        stored = _remove_stored_grids(samples, models_dir, artifacts)
        if samples.is_dir():
            _remove_tree(samples)
            removed += 1
        elif stored:
            removed += 1
    return removed


def _remove_stored_grids(
    samples: Path, models_dir: Path | None, artifacts: ObjectStore | None
) -> bool:
    """Delete the artifact store's copies of ``samples`` (a run inside a version
    directory); whether there were any."""
    if artifacts is None or models_dir is None:
        return False
    if not samples.is_relative_to(models_dir):
        return False
    keys = artifacts.list_keys(samples.relative_to(models_dir).as_posix() + "/")
    for key in keys:
        artifacts.delete(key)
    return bool(keys)


def remove_snapshot_folders(dataset_dir: Path, snapshots: set[str]) -> None:
    for snapshot_id in sorted(snapshots):
        if not snapshot_id or "/" in snapshot_id or snapshot_id.startswith("."):
            continue  # never a path outside the dataset directory
        _remove_tree(dataset_dir / snapshot_id)


def _snapshot_of_export(marker: Path) -> str | None:
    """The snapshot an export's ``export.json`` names; None when it is not one."""
    try:
        data = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    snapshot_id = data.get("snapshot_id") if isinstance(data, dict) else None
    return snapshot_id if isinstance(snapshot_id, str) else None


def _remove_file(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot delete {path}: {exc}") from exc


def _remove_tree(folder: Path) -> None:
    """Delete ``folder`` and everything in it; a folder already gone is fine (a re-run)."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot delete {folder}: {exc}") from exc
