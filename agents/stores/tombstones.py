"""Tombstones: the erased subjects, as keyed digests, so that their late uploads are refused.

An upload published before an erasure and consumed after it would bring the subject back.
So the erasure (:class:`agents.erasure.Eraser`) writes a ``tombstones`` row in its SQL
transaction, and ingestion reads it twice:

* once per batch, where the pseudonym is first made (the pipeline's validate step), so
  an upload of an erased subject whose consent predates the erasure goes no further;
* again inside the SQL transaction that would record the upload
  (:class:`agents.stores.repository.Repository`), for an erasure that committed while the
  batch was between the two.

The second read is only sound if the erasure's transaction and the recording one cannot
overlap for the same subject. Both call :func:`lock_subject` first:

* SQLite: a no-op. Both transactions are opened with ``BEGIN IMMEDIATE``
  (:func:`agents.stores.db.for_writing`), so the database runs them one after the other.
* PostgreSQL: ``pg_advisory_xact_lock`` on the subject's digest. Under READ COMMITTED each
  statement sees what committed before it, so after the lock the recording transaction
  sees a tombstone that committed first, and the erasure sees a face that committed first
  (and plans again, :meth:`agents.erasure.Eraser.erase`). A row lock cannot do this: before
  its first erasure the subject has no tombstone row to lock, and a new subject no
  ``subjects`` row. Each transaction takes one such lock, before any row lock, so the lock
  cannot close a deadlock.

The digest is HMAC-SHA256 under the pseudonym key of a domain label and the pseudonym: the
table holds no pseudonym, and without the key a digest leads to none.

Example::

    digest = tombstone_digest(pseudonym, key)
    with for_writing(engine).begin() as connection:
        lock_subject(connection, digest)
        erased = erased_at(connection, [digest]).get(digest)   # None: never erased
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, Table, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from schemas.tables import Tombstone

_TOMBSTONES: Table = SQLModel.metadata.tables[Tombstone.__tablename__]

#: Domain separation: a digest made for tombstones is never equal to a pseudonym (an HMAC
#: of a raw id under the same key), nor to a digest made for another purpose.
_DOMAIN: Final = b"s2a-erased\x00"

#: First key of the two-key advisory lock (``int.from_bytes(b"s2at")``): keeps the subject
#: locks apart from every other advisory lock (two-key locks never meet one-key ones, such
#: as the migration lock of :mod:`schemas.migrate`).
_LOCK_CLASS: Final = 0x73326174

#: Digests per ``IN (...)`` query: far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500


def tombstone_digest(pseudonym: str, key: bytes) -> str:
    """The ``tombstones`` key of the subject ``pseudonym``: hex HMAC-SHA256 under ``key``
    (the pseudonym key) of a domain label and the pseudonym, 64 characters.

    Raises ``ValueError`` when ``key`` is empty.
    """
    if not key:
        raise ValueError("key is empty; pass the pseudonym key the pseudonym was made with")
    return hmac.new(key, _DOMAIN + pseudonym.encode("utf-8"), hashlib.sha256).hexdigest()


def lock_subject(connection: Connection, digest: str) -> None:
    """Serialise this transaction with every other one that locks the same subject (see
    the module docstring); held until it ends. Call it first in the transaction.

    ``connection`` must be in a transaction opened with
    :func:`agents.stores.db.for_writing` (on SQLite that is the whole lock).
    """
    if connection.dialect.name != "postgresql":
        return
    # 32 bits of the digest: two subjects sharing them only wait for each other.
    subject = int.from_bytes(bytes.fromhex(digest[:8]), "big", signed=True)
    connection.execute(
        text("SELECT pg_advisory_xact_lock(:kind, :subject)"),
        {"kind": _LOCK_CLASS, "subject": subject},
    )


def erased_at(connection: Connection, digests: Iterable[str]) -> dict[str, datetime]:
    """``{digest: latest erasure (UTC)}`` of the given digests that have a tombstone."""
    wanted = list(dict.fromkeys(digests))
    found: dict[str, datetime] = {}
    for start in range(0, len(wanted), _CHUNK):
        query = select(_TOMBSTONES.c.subject_digest, _TOMBSTONES.c.erased_at).where(
            _TOMBSTONES.c.subject_digest.in_(wanted[start : start + _CHUNK])
        )
        found.update({str(digest): at for digest, at in connection.execute(query)})
    return found


def record_tombstone(connection: Connection, digest: str, at: datetime) -> None:
    """Insert the subject's tombstone, or move its ``erased_at`` forward to ``at`` (never
    back): erasing a subject again keeps one row.

    ``at`` must be timezone-aware (``ValueError`` otherwise).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at is a naive datetime ({at.isoformat()}); use datetime.now(UTC)")
    values = {"subject_digest": digest, "erased_at": at.astimezone(UTC)}
    insert = (
        postgresql.insert(_TOMBSTONES)
        if connection.dialect.name == "postgresql"
        else sqlite.insert(_TOMBSTONES)
    ).values(values)
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=[_TOMBSTONES.c.subject_digest],
            set_={"erased_at": insert.excluded.erased_at},
            where=_TOMBSTONES.c.erased_at < insert.excluded.erased_at,
        )
    )
