"""SQLAlchemy engines for the two supported databases.

SQLite (the embedded default) is set up so that a CLI can read while a worker writes:
WAL journal, a busy timeout instead of an immediate "database is locked", foreign keys
enforced, and real transactions (``BEGIN`` is ours, not pysqlite's). Writers that read
before they write take the write lock up front with :func:`for_writing`, because a
read transaction that later tries to write fails at once, busy timeout or not, when
another process wrote in between. PostgreSQL gets ``pool_pre_ping``, so a connection
the server dropped is replaced rather than failing the next query.

Example::

    engine = create_engine_for(settings.sql_url)
    repository = Repository(engine)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from agents.errors import StorageError
from schemas.migrate import resolve_url

#: How long a SQLite statement waits for another process's write lock before it fails.
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: Execution option read by the SQLite ``begin`` hook: open with ``BEGIN IMMEDIATE``.
_WRITE_OPTION = "s2a_begin_immediate"


def create_engine_for(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql://...``), ready to use.

    The SQLite file's directory is created when missing. Raises
    :class:`~schemas.errors.ConfigError` for any other backend.
    """
    parsed = resolve_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    if not in_memory and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # isolation_level=None stops pysqlite from issuing its own BEGIN (and committing
        # around DDL); _on_begin below starts every transaction instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            # Readers see the last commit while a writer works, instead of waiting for it.
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def for_writing(engine: Engine) -> Engine:
    """The same engine (same pool), whose transactions take SQLite's write lock at BEGIN.

    Use it for read-then-write transactions: two of them then queue on the busy timeout
    instead of one failing. PostgreSQL ignores the option.
    """
    return engine.execution_options(**{_WRITE_OPTION: True})


@contextmanager
def sql_errors(operation: str, error: Callable[[str], Exception] = StorageError) -> Iterator[None]:
    """Turn a database failure into ``error`` (a :class:`StorageError` unless another
    package's tree wants its own) that says what was being done, on one line.

    Example::

        with sql_errors("record_accepted of upload 'u-1'"), engine.begin() as connection:
            ...
    """
    try:
        yield
    except (DBAPIError, PoolTimeoutError) as exc:
        cause = getattr(exc, "orig", None) or exc
        text = str(cause).strip()
        first_line = text.splitlines()[0] if text else ""
        raise error(f"{operation} failed: {type(cause).__name__}: {first_line}") from exc
