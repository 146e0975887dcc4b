"""Settings: a mistyped keyword is an error; an unknown S2A_* variable is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import ConfigError
from schemas.settings import Settings


def test_a_keyword_that_is_no_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such setting sql_url"):
        Settings(home=tmp_path, sql_url="postgresql://db/s2a")  # type: ignore[call-arg]


def test_an_unknown_variable_in_the_environment_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A variable of another version must not stop a process; a known one still applies.
    monkeypatch.setenv("S2A_SOMETHING_REMOVED", "1")
    monkeypatch.setenv("S2A_DATABASE_URL", "postgresql://db/s2a")
    settings = Settings(home=tmp_path)
    assert settings.sql_url == "postgresql://db/s2a"
