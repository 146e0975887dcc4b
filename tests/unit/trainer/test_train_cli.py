"""``s2a train`` on a fixture snapshot: the verb resolves the snapshot, takes its defaults
from the ``train`` settings and runs the family's script in process."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from snapshot_fixture import FixtureSnapshot

from infra.cli import cli
from trainer.errors import TrainingConfigError


def _env(snapshot: FixtureSnapshot) -> dict[str, str]:
    return {
        "S2A_HOME": str(snapshot.home),
        "S2A_TRAIN__RESOLUTION": "32",
        "S2A_TRAIN__BATCH_SIZE": "2",
        "S2A_TRAIN__CHECKPOINT_EVERY": "1",
    }


def test_train_base_on_a_snapshot(snapshot: FixtureSnapshot, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "base", snapshot.snapshot_id, "--steps", "2", "--out", str(out), "--json"]
    result = CliRunner().invoke(cli, args, env=_env(snapshot), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # JSON only on stdout
    assert summary["status"] == "complete"
    assert (summary["mode"], summary["steps"], summary["snapshot"]) == (
        "base",
        2,
        snapshot.snapshot_id,
    )
    assert (out / "generator.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["args"]["resolution"] == 32  # from S2A_TRAIN__RESOLUTION
    assert run["args"]["blob_dir"] == str(snapshot.home / "blobs")

    # Resuming the finished run is a no-op that reports the same summary.
    again = CliRunner().invoke(cli, [*args, "--resume"], env=_env(snapshot))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == summary


def test_lora_without_a_base_is_refused(snapshot: FixtureSnapshot, tmp_path: Path) -> None:
    args = ["train", "lora", snapshot.snapshot_id, "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args, env=_env(snapshot))
    # `s2a`'s main() turns this into one line on stderr and exit status 1.
    assert isinstance(result.exception, TrainingConfigError)
    assert "lora runs need --base" in str(result.exception)
