"""The command line's promises that need no broker: one-line reasons and exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_runner import run_s2a

REAL = Path(__file__).parents[2] / "data" / "real"


def _s2a(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # Port 1: nothing listens there, so a command that needs no broker is shown to need none.
    return run_s2a(*args, home=home, env={"S2A_BROKER_PORT": "1"})


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
    result = run_s2a("status", home=tmp_path, env={"S2A_BROKER_PORT": "not-a-port"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("s2a: invalid settings (S2A_* variables): broker_port:")


def _unpublishable_folder(tmp_path: Path) -> Path:
    """A sub-folder named like an image, a broken link named like one, and a note."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "x.jpg").mkdir()
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_publish_names_every_skip_and_fails_when_nothing_is_published(tmp_path: Path) -> None:
    folder = _unpublishable_folder(tmp_path)
    attributes = tmp_path / "list_attr_celeba.txt"
    attributes.write_text("1\nArched_Eyebrows Male Smiling\n000001.jpg -1 1 1\n")
    args = ("publish", str(folder), "--source", "public-dataset", "--license", "CC-BY-4.0")
    result = _s2a(*args, "--attributes", str(attributes), home=tmp_path)
    assert result.returncode == 1
    err = result.stderr.strip().splitlines()
    assert f"skipped {folder / 'gone.jpg'}: broken symbolic link" in result.stderr
    assert f"skipped {folder / 'x.jpg'}: a folder, not an image file" in err
    assert "notes.txt" not in result.stderr  # not named like an image: not considered
    # Unknown columns named once; no broker was needed to find nothing to publish.
    assert err.count("--attributes: ignoring unknown columns: Arched_Eyebrows") == 1
    assert result.stdout == "published 0 of 2\n"
    assert err[-1] == "s2a: nothing was published: 2 file(s) skipped, see above"
    # With --json, stdout stays JSON only: the count goes to stderr.
    as_json = _s2a(*args, "--json", home=tmp_path)
    assert as_json.returncode == 1
    assert as_json.stdout == ""
    assert "published 0 of 2" in as_json.stderr.splitlines()


@pytest.mark.parametrize("expires", ["2030-01-01T00:00:00Z", "2030-01-01T02:00:00+02:00"])
def test_expires_with_z_or_offset_is_accepted(tmp_path: Path, expires: str) -> None:
    # A folder with nothing to publish: the run gets past option parsing and the request's
    # checks, and stops there without needing a broker.
    folder = _unpublishable_folder(tmp_path)
    result = _s2a("publish", str(folder), "--subject", "x", "--expires", expires, home=tmp_path)
    assert result.returncode == 1
    assert result.stdout == "published 0 of 2\n"
    assert result.stderr.strip().splitlines()[-1].startswith("s2a: nothing was published")


def test_malformed_expires_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    photo = str(REAL / "london_001_neutral.jpg")
    result = _s2a(
        "publish", photo, "--subject", "x", "--expires", "2030-01-01T25:00Z", home=tmp_path
    )
    assert result.returncode == 2  # click's status for a usage error
    last = result.stderr.strip().splitlines()[-1]
    assert "'--expires'" in last
    assert "not an ISO 8601 time" in last


def test_over_long_subject_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    photo = str(REAL / "london_001_neutral.jpg")
    result = _s2a("publish", photo, "--subject", "s" * 300, home=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("s2a: --subject: string should have at most 256 characters, given 300")
    assert "settings" not in result.stderr
