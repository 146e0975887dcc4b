"""The generated pseudonym key file (:meth:`Settings.resolve_pseudonym_key`): owner-only
from its first byte, refused when others may read it, never made up when it was lost."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from schemas.settings import Settings


def test_the_key_file_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    old = os.umask(0)  # a umask that would leave a plainly written file world-readable
    try:
        key = settings.resolve_pseudonym_key()
    finally:
        os.umask(old)
    path = settings.pseudonym_key_path
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(key) == 32
    # Only the key: the temporary name it was written under is gone.
    assert os.listdir(path.parent) == [path.name]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    settings = Settings(home=tmp_path)
    settings.resolve_pseudonym_key()
    path = settings.pseudonym_key_path
    path.chmod(mode)
    with pytest.raises(ConfigError, match="may be read by other users") as error:
        settings.resolve_pseudonym_key()
    assert f"`chmod 600 {path}`" in str(error.value)
    assert f"mode {mode:o}" in str(error.value)
    path.chmod(0o600)
    assert settings.resolve_pseudonym_key()


def test_a_missing_key_file_is_made_only_when_asked(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(ConfigError, match="is missing") as error:
        settings.resolve_pseudonym_key(create=False)
    assert str(settings.pseudonym_key_path) in str(error.value)
    assert not settings.pseudonym_key_path.exists()
    key = settings.resolve_pseudonym_key()
    assert settings.resolve_pseudonym_key(create=False) == key


@pytest.mark.parametrize("content", ["", "not base64 at all!", "c2hvcnQ=", "\xff"])
def test_a_damaged_key_file_is_refused(tmp_path: Path, content: str) -> None:
    settings = Settings(home=tmp_path)
    path = settings.pseudonym_key_path
    path.write_text(content, encoding="latin-1")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is not a base64 key of at least 16 bytes"):
        settings.resolve_pseudonym_key()


def test_racing_first_uses_share_one_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: settings.resolve_pseudonym_key(), range(16)))
    assert len(keys) == 1
    assert os.listdir(settings.pseudonym_key_path.parent) == ["pseudonym.key"]
