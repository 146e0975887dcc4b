"""The pseudonym key is checked against the database on both backends
(:mod:`agents.stores.keys`): recorded the first time, refused when lost or changed while
subjects exist, and the worker and ``s2a erase`` refuse to start with it."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import run_s2a
from pydantic import SecretStr
from sqlalchemy import Engine

from agents.stores.db import for_writing
from agents.stores.keys import PURPOSE, checked_pseudonym_key, key_fingerprint
from agents.stores.tombstones import record_tombstone, tombstone_digest
from infra.runtime import settings_env
from schemas.errors import ConfigError
from schemas.settings import Settings

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _settings(home: Path, sql_url: str, key: str | None = None) -> Settings:
    return Settings(
        home=home, database_url=sql_url, pseudonym_key=None if key is None else SecretStr(key)
    )


def _add_subject(engine: Engine, pseudonym: str = "a" * 64) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO subjects (pseudonym, first_seen_at, consent_version, "
                "consent_scopes, consent_granted_at) VALUES (:p, :t, '1', '[\"training\"]', :t)"
            ),
            {"p": pseudonym, "t": NOW},
        )


def _recorded(engine: Engine) -> dict[str, object]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM pseudonym_keys")).mappings().all()
    assert len(rows) == 1
    return dict(rows[0])


def test_a_fresh_home_gets_an_owner_only_key_and_records_its_fingerprint(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    settings = _settings(tmp_path / "home", sql_url)

    key = checked_pseudonym_key(settings, engine)

    path = settings.pseudonym_key_path
    assert path.stat().st_mode & 0o777 == 0o600
    assert key == settings.resolve_pseudonym_key()
    row = _recorded(engine)
    assert row["purpose"] == PURPOSE
    assert row["fingerprint"] == key_fingerprint(key)
    assert row["source"] == str(path)
    # The fingerprint is not the key, in any spelling of it.
    assert key.hex() not in str(row)
    assert path.read_text().strip() not in str(row)
    # Again, with data: the same key, nothing changes.
    _add_subject(engine)
    assert checked_pseudonym_key(settings, engine) == key
    assert _recorded(engine) == row


def test_a_key_file_lost_after_data_exists_is_not_regenerated(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    settings = _settings(tmp_path / "home", sql_url)
    checked_pseudonym_key(settings, engine)
    _add_subject(engine)
    path = settings.pseudonym_key_path
    path.unlink()

    with pytest.raises(ConfigError, match="restore the file from a backup") as error:
        checked_pseudonym_key(settings, engine)

    assert str(path) in str(error.value)
    assert "is missing" in str(error.value)
    assert not path.exists()
    assert os.listdir(path.parent) == []


def test_a_regenerated_key_file_is_refused_while_subjects_exist(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    settings = _settings(tmp_path / "home", sql_url)
    checked_pseudonym_key(settings, engine)
    _add_subject(engine)
    # The file lost and made again by some other process (or copied from another home).
    other = Settings(home=tmp_path / "other")
    other.resolve_pseudonym_key()
    shutil.copy2(other.pseudonym_key_path, settings.pseudonym_key_path)  # mode 0600 too

    with pytest.raises(ConfigError, match="is not the key this database's subjects") as error:
        checked_pseudonym_key(settings, engine)

    message = str(error.value)
    assert f"from {settings.pseudonym_key_path} is not" in message
    assert "Restore the original key" in message


def test_a_changed_pseudonym_key_variable_is_refused_while_subjects_exist(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    home = tmp_path / "home"
    first = checked_pseudonym_key(_settings(home, sql_url, "the first key, 32 characters"), engine)
    _add_subject(engine)

    with pytest.raises(ConfigError, match="S2A_PSEUDONYM_KEY") as error:
        checked_pseudonym_key(_settings(home, sql_url, "a second key, 32 characters!"), engine)
    assert "recorded" in str(error.value)
    # Neither the variable nor the generated file may stand in for the recorded key.
    with pytest.raises(ConfigError, match="is missing"):
        checked_pseudonym_key(_settings(home, sql_url), engine)
    assert checked_pseudonym_key(_settings(home, sql_url, "the first key, 32 characters"), engine)
    assert first == b"the first key, 32 characters"


def test_without_subjects_a_new_key_replaces_the_recorded_one(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    home = tmp_path / "home"
    checked_pseudonym_key(_settings(home, sql_url), engine)
    # Nothing was pseudonymized yet: production now sets its key from a secret store.
    key = checked_pseudonym_key(_settings(home, sql_url, "from the secret store, 32 chars"), engine)
    assert _recorded(engine)["fingerprint"] == key_fingerprint(key)
    assert _recorded(engine)["source"] == "S2A_PSEUDONYM_KEY"


def test_tombstones_keep_the_key_after_every_subject_is_erased(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    home = tmp_path / "home"
    key = checked_pseudonym_key(_settings(home, sql_url), engine)
    # The only subject erased: no subject row left, only its tombstone.
    with for_writing(engine).begin() as connection:
        record_tombstone(connection, tombstone_digest("a" * 64, key), NOW)

    with pytest.raises(ConfigError, match="tombstones of erased ones"):
        checked_pseudonym_key(_settings(home, sql_url, "from the secret store, 32 chars"), engine)
    _settings(home, sql_url).pseudonym_key_path.unlink()
    with pytest.raises(ConfigError, match="is missing"):
        checked_pseudonym_key(_settings(home, sql_url), engine)


def test_a_database_with_subjects_but_no_fingerprint_trusts_the_key_it_finds(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    """A database from before the fingerprint: its key file must still be there."""
    settings = _settings(tmp_path / "home", sql_url)
    key = settings.resolve_pseudonym_key()
    _add_subject(engine)
    assert checked_pseudonym_key(settings, engine) == key
    assert _recorded(engine)["fingerprint"] == key_fingerprint(key)
    # Without the file, nothing can be trusted: no key is made up.
    lost = _settings(tmp_path / "lost", sql_url)
    with pytest.raises(ConfigError, match="is missing"):
        checked_pseudonym_key(lost, engine)


def test_the_worker_and_erase_refuse_to_start_with_a_lost_key(
    tmp_path: Path, sql_url: str, engine: Engine
) -> None:
    settings = _settings(tmp_path / "home", sql_url)
    checked_pseudonym_key(settings, engine)
    _add_subject(engine)
    settings.pseudonym_key_path.unlink()
    env = settings_env(settings)

    worker = run_s2a("worker", env=env)
    erase = run_s2a("erase", "someone@example.com", "--direct", env=env)

    for result in (worker, erase):
        assert result.returncode == 1, result.stderr
        assert f"the pseudonym key {settings.pseudonym_key_path} is missing" in result.stderr
        assert "restore the file from a backup" in result.stderr
    assert not settings.pseudonym_key_path.exists()
