"""The command line's promises that need no broker: one-line reasons and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REAL = Path(__file__).parents[2] / "data" / "real"


def _s2a(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"S2A_HOME": str(home), "PATH": "/usr/bin:/bin", "S2A_BROKER_PORT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], env=env, capture_output=True, text=True
    )


def test_selfie_without_subject_fails_with_one_line(tmp_path: Path) -> None:
    result = _s2a("publish", str(REAL / "london_001_neutral.jpg"), home=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        result.stderr.strip().splitlines()[-1]
        == "s2a: selfies need --subject ID (the app's user id)"
    )


def test_public_dataset_needs_a_license(tmp_path: Path) -> None:
    result = _s2a("publish", str(REAL), "--source", "public-dataset", home=tmp_path)
    assert result.returncode == 1
    assert "--license" in result.stderr.strip().splitlines()[-1]


def test_publish_without_a_broker_names_it(tmp_path: Path) -> None:
    result = _s2a("publish", str(REAL / "london_001_neutral.jpg"), "--subject", "x", home=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("s2a: no Kafka broker answers at 127.0.0.1:1")


def test_invalid_settings_are_named_on_one_line(tmp_path: Path) -> None:
    env = {"S2A_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "S2A_BROKER_PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "status"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("s2a: invalid settings (S2A_* variables): broker_port:")
