"""Model retention: deleting the files of versions nobody needs any more.

Every retrain cycle registers a version with its own directory (merged weights, adapter,
ONNX FP32 and INT8) and run directory (checkpoints, samples); a scheduler that retrains
daily would fill the disk. After each cycle (and on ``s2a models prune``) the files of old
versions are deleted; their registry rows stay, so lineage, metrics and the subjects a
version was trained on (for erasure) are never lost.

Kept, per model name:

- the ``champion`` and the ``candidate``;
- the last ``keep`` champions of the rollback chain (:meth:`Registry.champion_stack`), so
  ``s2a models rollback`` keeps working ``keep - 1`` times in a row;
- the newest ``keep`` versions by number (a run in progress, and recent refusals whose
  sample grids someone may want to look at);
- the base version every kept version is built on (``config["base_dir"]``): a LoRA
  version's merged weights were made from it, and the next retrain starts from it.

Each other version with files is marked in SQL first (:meth:`Registry.mark_files_deleted`,
which refuses a version an alias points at and makes later moves to it fail), then its
version directory, its run directory and its artifact-store copy are deleted. A crash in
between leaves files of a marked version, which the next pass deletes.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.errors import StorageError as AgentsStorageError
from schemas.tables import ModelVersion
from trainer.errors import RegistryError, StorageError
from trainer.registry import CANDIDATE, CHAMPION, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one pass kept (version -> why) and deleted, and the disk it freed, in bytes."""

    name: str
    kept: dict[int, str]
    deleted: list[int]
    freed_bytes: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kept": {str(v): why for v, why in sorted(self.kept.items())},
            "deleted": self.deleted,
            "freed_bytes": self.freed_bytes,
            "dry_run": self.dry_run,
        }


def kept_versions(registry: Registry, name: str, keep: int) -> dict[int, str]:
    """The versions of ``name`` whose files stay, each with why (see the module docstring).

    Raises:
        RegistryError: ``keep`` is below 1.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise RegistryError(f"keep must be an int of at least 1, got {keep!r}")
    rows = registry.versions(name)
    kept: dict[int, str] = {}
    aliases = registry.aliases(name)
    for alias in (CHAMPION, CANDIDATE):
        if alias in aliases:
            kept.setdefault(aliases[alias], alias)
    for version in registry.champion_stack(name)[-keep:]:
        kept.setdefault(version, "rollback chain")
    for row in sorted(rows, key=lambda r: r.version)[-keep:]:
        kept.setdefault(row.version, "newest")
    by_path = {str(Path(r.path)): r.version for r in rows}
    config = {r.version: r.config for r in rows}
    for version in list(kept):
        base_dir = config.get(version, {}).get("base_dir")
        base = None if base_dir is None else by_path.get(str(Path(base_dir)))
        if base is not None and base != version:
            kept.setdefault(base, f"base of v{version}")
    return kept


def prune_model_files(
    registry: Registry, name: str, *, keep: int, dry_run: bool = False
) -> PruneReport:
    """Delete the files of ``name``'s versions that :func:`kept_versions` does not keep.

    ``dry_run``: report what would go, delete and mark nothing. A version an alias moved
    to meanwhile is skipped (logged), not deleted.

    Raises:
        RegistryError: ``keep`` is below 1.
        trainer.errors.StorageError: SQL, a file or the artifact store failed; what was
            deleted before stays deleted and marked.
    """
    kept = kept_versions(registry, name, keep)
    deleted: list[int] = []
    freed = 0
    for row in registry.versions(name):
        if row.version in kept or not _has_files(row):
            continue
        size = _disk_bytes(_folders(row))
        if not dry_run:
            try:
                registry.mark_files_deleted(name, row.version)
            except RegistryError as exc:  # an alias moved to it since kept_versions
                log.warning("%s v%d kept: %s", name, row.version, exc)
                continue
            _delete_files(registry, row)
        deleted.append(row.version)
        freed += size
    if deleted and not dry_run:
        log.info(
            "model retention: deleted the files of %s versions %s (%.1f MiB); kept %s",
            name,
            deleted,
            freed / 2**20,
            sorted(kept),
        )
    return PruneReport(name, kept, deleted, freed, dry_run)


def _folders(row: ModelVersion) -> list[Path]:
    return [Path(row.path), Path(row.run_dir)]


def _has_files(row: ModelVersion) -> bool:
    """Files left on disk, or a version not yet marked (its store copy may exist)."""
    return row.files_deleted_at is None or any(p.exists() for p in _folders(row))


def _disk_bytes(folders: list[Path]) -> int:
    return sum(
        f.stat().st_blocks * 512
        for folder in folders
        if folder.is_dir()
        for f in folder.rglob("*")
        if f.is_file()
    )


def _delete_files(registry: Registry, row: ModelVersion) -> None:
    try:
        for folder in _folders(row):
            if folder.is_dir():
                shutil.rmtree(folder)
        if registry.artifacts is not None:
            for key in registry.artifacts.list_keys(f"{row.name}/{row.version}/"):
                registry.artifacts.delete(key)
    except (OSError, AgentsStorageError) as exc:
        raise StorageError(f"cannot delete the files of {row.name} v{row.version}: {exc}") from exc
