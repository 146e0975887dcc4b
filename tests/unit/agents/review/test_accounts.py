"""Reviewer accounts on a migrated SQLite file, the session secret in ``home``, what the
server refuses before it binds, and ``s2a reviewers`` reading passwords from stdin."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy import Engine

from agents.errors import Refused, ReviewError
from agents.review.accounts import AccountError, ReviewerAccounts
from agents.review.checks import LoginThrottle
from agents.review.server import ReviewServer
from agents.stores.db import create_engine_for
from infra.cli import cli
from schemas.errors import ConfigError
from schemas.migrate import upgrade
from schemas.settings import ReviewSettings, Settings

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "a long enough passphrase"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 's2a.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()


def test_accounts_store_a_hash_and_check_passwords(engine: Engine) -> None:
    accounts = ReviewerAccounts(engine, FAST)
    accounts.add("alice", PASSWORD)

    assert accounts.verify("alice", PASSWORD)
    assert not accounts.verify("alice", PASSWORD + "!")
    assert not accounts.verify("bob", PASSWORD)
    assert [a.name for a in accounts.accounts()] == ["alice"]
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT password_hash FROM reviewers").scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_a_taken_name_a_short_password_or_a_bad_name_is_refused(engine: Engine) -> None:
    accounts = ReviewerAccounts(engine, FAST)
    accounts.add("alice", PASSWORD)
    with pytest.raises(AccountError, match="exists already"):
        accounts.add("alice", PASSWORD)
    with pytest.raises(AccountError, match="12 to 1024 characters"):
        accounts.add("bob", "short")
    with pytest.raises(AccountError, match="control characters"):
        accounts.add("bo\x07b", PASSWORD)
    assert accounts.count() == 1


def test_a_weak_hash_is_upgraded_at_login(engine: Engine) -> None:
    ReviewerAccounts(engine, FAST).add("alice", PASSWORD)
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)

    assert ReviewerAccounts(engine, stronger).verify("alice", PASSWORD)

    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT password_hash FROM reviewers").scalar_one()
    assert not stronger.check_needs_rehash(stored)


def test_sign_out_and_removal_end_sessions(engine: Engine) -> None:
    accounts = ReviewerAccounts(engine, FAST)
    accounts.add("alice", PASSWORD)
    issued = time.time()
    assert accounts.session_valid("alice", issued)

    accounts.sign_out("alice")

    assert not accounts.session_valid("alice", issued)
    assert accounts.session_valid("alice", time.time() + 1)
    assert accounts.remove("alice")
    assert not accounts.session_valid("alice", time.time() + 1)
    assert not accounts.remove("alice")


def test_the_session_secret_is_made_once_owner_only(tmp_path: Path) -> None:
    review = ReviewSettings()
    first = review.resolve_session_secret(tmp_path, create=True)
    path = ReviewSettings.session_key_path(tmp_path)

    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first) == 32
    assert review.resolve_session_secret(tmp_path, create=True) == first
    assert review.resolve_session_secret(tmp_path, create=False) == first


def test_a_lost_or_exposed_session_secret_is_refused(tmp_path: Path) -> None:
    review = ReviewSettings()
    with pytest.raises(ConfigError, match="is lost"):
        review.resolve_session_secret(tmp_path, create=False)
    assert not ReviewSettings.session_key_path(tmp_path).exists()

    review.resolve_session_secret(tmp_path, create=True)
    ReviewSettings.session_key_path(tmp_path).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        review.resolve_session_secret(tmp_path, create=False)


def test_a_session_secret_from_settings_is_used_as_given(tmp_path: Path) -> None:
    secret = "s" * 32
    given = ReviewSettings(session_secret=SecretStr(secret))
    assert given.resolve_session_secret(tmp_path, create=False) == secret.encode()
    assert not ReviewSettings.session_key_path(tmp_path).exists()
    with pytest.raises(ConfigError, match="at least 32"):
        ReviewSettings(session_secret=SecretStr("short")).resolve_session_secret(
            tmp_path, create=False
        )
    with pytest.raises(ValueError, match="go together"):
        ReviewSettings(tls_cert=tmp_path / "cert.pem")


def test_the_server_refuses_to_start_without_accounts_or_with_a_lost_secret(
    tmp_path: Path, engine: Engine
) -> None:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 's2a.db'}")
    server = ReviewServer(settings, port=0, engine=engine, hasher=FAST)
    with pytest.raises(ReviewError, match="s2a reviewers add NAME"):
        server.start()

    ReviewerAccounts(engine, FAST).add("alice", PASSWORD)
    with pytest.raises(ConfigError, match="is lost"):
        server.start()
    assert server.url is None


def test_reviewers_cli_reads_the_password_from_stdin(tmp_path: Path) -> None:
    env = {"S2A_HOME": str(tmp_path), "S2A_DATABASE_URL": f"sqlite:///{tmp_path / 's2a.db'}"}
    runner = CliRunner()

    added = runner.invoke(cli, ["reviewers", "add", "alice"], input=PASSWORD + "\n", env=env)
    assert added.exit_code == 0, added.output
    assert ReviewSettings.session_key_path(tmp_path).stat().st_mode & 0o777 == 0o600
    again = runner.invoke(cli, ["reviewers", "add", "alice"], input=PASSWORD + "\n", env=env)
    assert again.exit_code != 0
    assert "exists already" in str(again.exception)

    listed = runner.invoke(cli, ["reviewers", "list", "--json"], env=env)
    assert [row["name"] for row in json.loads(listed.stdout)] == ["alice"]
    assert PASSWORD not in listed.stdout

    ReviewSettings.session_key_path(tmp_path).unlink()
    lost = runner.invoke(cli, ["reviewers", "add", "bob"], input=PASSWORD + "\n", env=env)
    assert "is lost" in str(lost.exception)
    renewed = runner.invoke(cli, ["reviewers", "new-secret"], env=env)
    assert renewed.exit_code == 0, renewed.output
    assert ReviewSettings.session_key_path(tmp_path).exists()

    removed = runner.invoke(cli, ["reviewers", "remove", "alice"], env=env)
    assert removed.exit_code == 0, removed.output
    missing = runner.invoke(cli, ["reviewers", "remove", "alice"], env=env)
    assert missing.exit_code != 0
    assert "no reviewer 'alice'" in missing.output


def test_the_login_throttle_refuses_after_repeated_failures_then_forgives() -> None:
    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("10.0.0.1", "alice")
        throttle.failed("10.0.0.1", "alice")

    with pytest.raises(Refused, match="too many wrong passwords for 'alice'") as refused:
        throttle.check("10.0.0.1", "alice")
    assert refused.value.status == 429
    throttle.check("10.0.0.2", "alice")  # another address is not locked out with it
    throttle.check("10.0.0.1", "bob")
    now[0] += 61
    throttle.check("10.0.0.1", "alice")
    throttle.failed("10.0.0.1", "alice")
    throttle.succeeded("10.0.0.1", "alice")
    throttle.check("10.0.0.1", "alice")
