"""The one SQLAlchemy engine factory, for the application and for migrations alike.

SQLite (the embedded default) is set up so that a CLI can read while a worker writes:
WAL journal, a busy timeout instead of an immediate "database is locked", foreign keys
enforced, and real transactions (``BEGIN`` is ours, not pysqlite's). A transaction opened
with the execution option :data:`WRITE_OPTION` starts with ``BEGIN IMMEDIATE`` and so takes
the write lock up front (see ``agents.stores.db.for_writing``). PostgreSQL gets
``pool_pre_ping``, so a connection the server dropped is replaced rather than failing the
next query.

Migrations differ in three ways: every transaction takes the write lock at once (so a
second migrating process waits, then finds the schema at head), SQLite's foreign keys stay
off (alembic's batch mode copies tables), and the engine has no pool (it is used once).

Example::

    engine = create_engine_for(settings.sql_url)
    engine = create_engine_for(url, migrating=True)
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from schemas.errors import ConfigError

SUPPORTED_BACKENDS = ("sqlite", "postgresql")

#: How long a SQLite statement waits for another process's write lock before it fails,
#: in milliseconds; a migration waits longer (another migration, a busy worker).
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_MIGRATION_BUSY_TIMEOUT_MS = 120_000

#: Execution option read by the SQLite ``begin`` hook: open with ``BEGIN IMMEDIATE``.
WRITE_OPTION = "s2a_begin_immediate"


def resolve_url(url: str | URL) -> URL:
    """Parse a database URL, choosing the psycopg 3 driver for a bare ``postgresql://``.

    Raises :class:`~schemas.errors.ConfigError` for a backend other than SQLite or
    PostgreSQL, or for a string that is not a URL.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a non-numeric port
        raise ConfigError(
            f"database url {safe_url(url)!r} is not a SQLAlchemy URL: {exc}; "
            "expected e.g. 'sqlite:///path/s2a.db' or 'postgresql://user@host/db'"
        ) from exc
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigError(
            f"database url {safe_url(parsed)!r} uses {backend!r}; "
            f"supported backends are {', '.join(SUPPORTED_BACKENDS)}"
        )
    if parsed.drivername == "postgresql":
        # SQLAlchemy's default PostgreSQL driver is psycopg2, which is not installed.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    """The URL without its password, for messages."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL: no recognisable password in it either
        return "<unparseable url>"


def create_engine_for(url: str | URL, *, migrating: bool = False) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql://...``), ready to use.

    The SQLite file's directory is created when missing. ``migrating`` gives the
    single-use engine :mod:`schemas.migrate` needs (see the module docstring). Raises
    :class:`~schemas.errors.ConfigError` for any other backend.
    """
    parsed = resolve_url(url)
    if parsed.get_backend_name() == "postgresql":
        # A migration's engine is used once (no pool); the application's replaces
        # connections the server dropped instead of failing the next query.
        if migrating:
            return create_engine(parsed, poolclass=NullPool)
        return create_engine(parsed, pool_pre_ping=True)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    if not in_memory and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, poolclass=NullPool) if migrating else create_engine(parsed)
    busy_ms = SQLITE_MIGRATION_BUSY_TIMEOUT_MS if migrating else SQLITE_BUSY_TIMEOUT_MS

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # isolation_level=None stops pysqlite from issuing its own BEGIN (and committing
        # around DDL); _on_begin below starts every transaction instead, so a migration
        # is atomic too.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        if not migrating:
            cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            # Readers see the last commit while a writer works, instead of waiting for it.
            _use_wal(cursor, busy_ms / 1000)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = migrating or connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _use_wal(cursor: Any, deadline_s: float) -> None:
    """Put the SQLite file in WAL mode (it stays so: the first connection sets it).

    Switching needs an exclusive lock, and while other connections open the same new file
    at once (workers migrating together) SQLite may answer "database is locked" at once,
    without calling its busy handler. So the mode is read first (no switch once any
    connection has made it) and a locked answer is retried for up to ``deadline_s``.
    """
    end = time.monotonic() + deadline_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > end:
                raise
            time.sleep(0.01)  # a backoff between tries: SQLite's busy handler did not wait
