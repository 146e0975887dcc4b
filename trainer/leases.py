"""Leases: named locks in SQL that expire, so that one retrain runs at a time across
processes and machines sharing the database (a file lock covers one machine only).

A lease is a row ``(name, holder, expires_at)`` of the ``leases`` table. :func:`acquire`
takes it with one guarded statement: an ``UPDATE`` that matches only when the row is
free (expired) or already ours; when no row exists yet, an ``INSERT`` whose primary key
lets exactly one of several racing inserts in. The database decides, so two holders
never both get ``True``. A holder that dies simply stops renewing: the lease is free again
``ttl_s`` after the last renewal. The holder should :func:`renew` well within ``ttl_s``
(a third of it, say) and :func:`release` when done.

Times are the caller's UTC clock: the machines sharing a lease need clocks in step to well
under ``ttl_s`` (NTP gives milliseconds; ttl is minutes).

Example::

    if acquire(engine, "retrain", holder="host-1:4242", ttl_s=600):
        try:
            run_cycle(settings, trigger="schedule")     # renew(...) from a timer meanwhile
        finally:
            release(engine, "retrain", "host-1:4242")
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, Table
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from agents.stores.db import sql_errors
from schemas.tables import Lease
from trainer.errors import StorageError

_LEASES: Table = SQLModel.metadata.tables[Lease.__tablename__]

#: The lease a retrain cycle runs under (the scheduler's jobs and ``s2a models retrain``).
RETRAIN_LEASE = "retrain"


def _check(name: str, holder: str, ttl_s: float | None = None) -> None:
    if not name or len(name) > 64:
        raise ValueError(f"name must be 1-64 characters, got {name!r}")
    if not holder or len(holder) > 128:
        raise ValueError(f"holder must be 1-128 characters, got {holder!r}")
    if ttl_s is not None and not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive seconds, got {ttl_s}")


def acquire(engine: Engine, name: str, holder: str, ttl_s: float) -> bool:
    """Take lease ``name`` for ``holder`` for ``ttl_s`` seconds; True when it is ours.

    True also when ``holder`` already holds it (the expiry is pushed out, as a renewal).
    False while another holder's lease has not expired.
    """
    _check(name, holder, ttl_s)
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s)
    free = (_LEASES.c.holder == holder) | (_LEASES.c.expires_at <= now)
    take = (
        _LEASES.update()
        .where(_LEASES.c.name == name, free)
        .values(holder=holder, expires_at=expires)
    )
    with sql_errors(f"acquiring lease {name!r}", StorageError), engine.begin() as connection:
        if connection.execute(take).rowcount == 1:
            return True
    with sql_errors(f"acquiring lease {name!r}", StorageError):
        try:
            # No row matched: none exists yet, or another holder's is live. Of several
            # processes inserting the first row at once, the primary key admits one.
            with engine.begin() as connection:
                connection.execute(
                    _LEASES.insert().values(name=name, holder=holder, expires_at=expires)
                )
        except IntegrityError:
            # Caught here, inside sql_errors: a taken lease is an answer, not a failure.
            return False
    return True


def renew(engine: Engine, name: str, holder: str, ttl_s: float) -> bool:
    """Push the expiry of ``holder``'s lease to ``ttl_s`` from now; False when ``holder``
    no longer holds it (it expired and someone else took it): stop the work then."""
    _check(name, holder, ttl_s)
    expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
    ours = _LEASES.update().where(_LEASES.c.name == name, _LEASES.c.holder == holder)
    with sql_errors(f"renewing lease {name!r}", StorageError), engine.begin() as connection:
        return bool(connection.execute(ours.values(expires_at=expires)).rowcount == 1)


def release(engine: Engine, name: str, holder: str) -> bool:
    """Give lease ``name`` up; False when ``holder`` did not hold it (nothing changes)."""
    _check(name, holder)
    ours = _LEASES.delete().where(_LEASES.c.name == name, _LEASES.c.holder == holder)
    with sql_errors(f"releasing lease {name!r}", StorageError), engine.begin() as connection:
        return bool(connection.execute(ours).rowcount == 1)


def holder_of(engine: Engine, name: str) -> tuple[str, datetime] | None:
    """``(holder, expires_at)`` of a live lease ``name``, or None when it is free."""
    query = _LEASES.select().where(_LEASES.c.name == name, _LEASES.c.expires_at > datetime.now(UTC))
    with sql_errors(f"reading lease {name!r}", StorageError), engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return None if row is None else (str(row["holder"]), row["expires_at"])
