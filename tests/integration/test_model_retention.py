"""Model retention on both backends: old versions' files go, the ones serving, a rollback
and the next retrain need stay, rows stay, and a version without files is never served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from agents.objects import LocalObjects
from infra.cli import cli
from schemas.model_updates import VersionStatus
from schemas.settings import Settings
from trainer.errors import RegistryError
from trainer.registry import CANDIDATE, CHAMPION, Registry
from trainer.retention import kept_versions, prune_model_files

NAME = "converter"


def _version(registry: Registry, base: Path | None) -> int:
    """A registered version with files in its version and run directories, copied to the
    artifact store; a base run when ``base`` is None, else a LoRA run on ``base``."""
    row = registry.register(
        NAME,
        family="pix2pix-lora",
        snapshot_id="ds-0123456789abcdef",
        parent_version=None,
        config={},
        subjects=["p-a"],
        runs_dir=registry.models_dir.parent / "runs",
    )
    folder, run = Path(row.path), Path(row.run_dir)
    (folder / "generator.safetensors").write_bytes(b"w" * 50_000)
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"c" * 50_000)
    base_dir = str(folder if base is None else base)
    registry.update(
        NAME,
        row.version,
        status=VersionStatus.TRAINED,
        config={"mode": "base" if base is None else "lora", "base_dir": base_dir},
        artifacts={"generator.safetensors": "0" * 64},
    )
    return row.version


@pytest.fixture
def registry(engine: Engine, tmp_path: Path) -> Registry:
    """v1 a base; v2..v7 LoRA versions on it. Champions in turn: v1, v3, v5 (the current);
    v7 is the candidate; the rest were refused."""
    registry = Registry(engine, tmp_path / "home" / "models", LocalObjects(tmp_path / "store"))
    base = Path(registry.version_dir(NAME, _version(registry, None)))
    for _ in range(6):
        _version(registry, base)
    for version in (1, 3, 5):
        registry.promote(NAME, version, actor="t", reason="better")
    registry.move_alias(NAME, CANDIDATE, 7, actor="t", reason="trained", action="register")
    return registry


def _files(registry: Registry, version: int) -> bool:
    row = registry.get(NAME, version)
    stored = registry.artifacts is not None and registry.artifacts.list_keys(f"{NAME}/{version}/")
    return Path(row.path).is_dir() or Path(row.run_dir).is_dir() or bool(stored)


def test_old_files_go_and_what_serving_rollback_and_retraining_need_stays(
    registry: Registry,
) -> None:
    assert kept_versions(registry, NAME, keep=2) == {
        5: CHAMPION,
        7: CANDIDATE,
        3: "rollback chain",
        6: "newest",
        1: "base of v5",
    }
    dry = prune_model_files(registry, NAME, keep=2, dry_run=True)
    assert dry.deleted == [2, 4]
    assert dry.freed_bytes >= 4 * 50_000
    assert all(_files(registry, v) for v in range(1, 8))  # a dry run deletes nothing

    report = prune_model_files(registry, NAME, keep=2)

    assert report.deleted == [2, 4]
    assert [v for v in range(1, 8) if _files(registry, v)] == [1, 3, 5, 6, 7]
    rows = {r.version: r for r in registry.versions(NAME)}
    assert sorted(rows) == list(range(1, 8))  # the rows, lineage and subjects stay
    assert [v for v, r in rows.items() if r.files_deleted_at is not None] == [2, 4]
    assert registry.subjects(NAME, 2) == ["p-a"]
    assert prune_model_files(registry, NAME, keep=2).deleted == []
    with pytest.raises(RegistryError, match="v2's files were deleted by the retention"):
        registry.promote(NAME, 2, actor="t", reason="by hand")
    assert registry.aliases(NAME)[CHAMPION] == 5


def test_a_rollback_walks_back_only_through_kept_champions(registry: Registry) -> None:
    assert prune_model_files(registry, NAME, keep=1).deleted == [2, 3, 4, 6]

    with pytest.raises(RegistryError, match="v3's files were deleted"):
        registry.rollback(NAME, actor="t", reason="v5 is worse")
    assert registry.aliases(NAME)[CHAMPION] == 5
    assert _files(registry, 1)  # v5's base, which a retrain starts from


def test_a_version_an_alias_points_at_is_never_marked(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="v5 is the champion: its files stay"):
        registry.mark_files_deleted(NAME, 5)
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.mark_files_deleted(NAME, 9)
    with pytest.raises(RegistryError, match="keep must be an int of at least 1"):
        prune_model_files(registry, NAME, keep=0)


def test_the_cli_prunes_with_the_settings_default(
    registry: Registry, sql_url: str, tmp_path: Path
) -> None:
    env = {
        "S2A_HOME": str(tmp_path / "home"),
        "S2A_DATABASE_URL": sql_url,
        "S2A_TRAIN__KEEP_VERSIONS": "2",
    }
    assert Settings(home=tmp_path / "home").models_dir == registry.models_dir
    runner = CliRunner()

    dry = runner.invoke(cli, ["models", "prune", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["deleted"] == [2, 4]
    done = runner.invoke(cli, ["models", "prune"], env=env)
    assert done.exit_code == 0, done.output
    assert "deleted the files of v2, v4" in done.output
    listed = runner.invoke(cli, ["models", "list", "--json"], env=env)
    versions = json.loads(listed.output)["versions"]
    assert [v["version"] for v in versions if v["files_deleted_at"]] == [2, 4]
