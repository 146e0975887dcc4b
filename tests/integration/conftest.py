"""Database fixtures: every SQL test runs on SQLite (a temporary file) and PostgreSQL.

PostgreSQL is the server on 127.0.0.1:5432 (or ``S2A_TEST_POSTGRES_URL``, an admin URL to
its ``postgres`` database). One database, uniquely named, is created per test session and
dropped at its end; each test starts from an empty ``public`` schema. When the server is
not reachable the PostgreSQL cases are skipped, unless ``S2A_REQUIRE_POSTGRES=1`` (CI),
where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from agents.stores.db import create_engine_for
from schemas.migrate import upgrade

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin_conninfo() -> str:
    url = make_url(os.environ.get("S2A_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL))
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The SQLAlchemy URL of a fresh PostgreSQL database, dropped after the session."""
    conninfo = _admin_conninfo()
    try:
        admin = psycopg.connect(conninfo, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        detail = " ".join(str(exc).split())  # libpq messages span several lines
        reason = f"PostgreSQL not reachable at {make_url(conninfo)!r}: {detail}"
        if os.environ.get("S2A_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"S2A_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    name = f"s2a_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = make_url(conninfo).set(drivername="postgresql+psycopg", database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            # FORCE: a connection a failed test leaked must not keep the database alive.
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _empty_schema(url: str) -> None:
    """Drop every table, type and the alembic version row left by the previous test."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: a new SQLite file, or the session's PostgreSQL one
    with its schema emptied."""
    if request.param == "sqlite":
        # A subdirectory that does not exist yet: opening the database must create it.
        return f"sqlite:///{tmp_path / 'data' / 's2a.db'}"
    url: str = request.getfixturevalue("postgres_database")
    _empty_schema(url)
    return url


@pytest.fixture
def engine(sql_url: str) -> Iterator[Engine]:
    """An engine on :func:`sql_url`'s database, migrated to the head revision."""
    upgrade(sql_url)
    engine = create_engine_for(sql_url)
    yield engine
    engine.dispose()
