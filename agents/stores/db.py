"""SQL helpers of every store: the engine, write transactions, one error wrapper.

Engines come from :func:`schemas.engine.create_engine_for` (one factory for the
application and migrations). Writers that read before they write take the write lock up
front with :func:`for_writing`, because a SQLite read transaction that later tries to
write fails at once, busy timeout or not, when another process wrote in between.

Example::

    engine = create_engine_for(settings.sql_url)
    repository = Repository(for_writing(engine))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from agents.errors import StorageError
from schemas.engine import WRITE_OPTION, create_engine_for

__all__ = ["create_engine_for", "for_writing", "sql_errors"]


def for_writing(engine: Engine) -> Engine:
    """The same engine (same pool), whose transactions take SQLite's write lock at BEGIN.

    Use it for read-then-write transactions: two of them then queue on the busy timeout
    instead of one failing. PostgreSQL ignores the option.
    """
    return engine.execution_options(**{WRITE_OPTION: True})


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
