"""The pseudonym key, checked against the one the database's subjects were made under.

A subject's pseudonym is an HMAC of the raw id under one key (``S2A_PSEUDONYM_KEY``, or
``home/pseudonym.key``). Another key, from a lost and regenerated key file or a changed
variable, gives every returning subject a second pseudonym and leaves ``s2a erase``
unable to find the first: nothing fails, the data just stops adding up. So the places
that turn raw ids into pseudonyms (the worker's start, ``IngestPipeline.build`` and
``s2a erase``) take the key from :func:`checked_pseudonym_key`, which keeps the key's
fingerprint in ``pseudonym_keys`` and refuses a different key while subjects made under
the recorded one exist, or tombstones of erased ones (keyed digests that match only under
the key they were made with: with another key, an erased subject's upload still queued
would be ingested).

Example::

    upgrade(settings.sql_url)
    key = checked_pseudonym_key(settings, create_engine_for(settings.sql_url))
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Engine, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from agents.stores.db import for_writing, sql_errors
from schemas.errors import ConfigError
from schemas.settings import Settings
from schemas.tables import PseudonymKey, Subject, Tombstone

log = logging.getLogger(__name__)

_KEYS: Table = SQLModel.metadata.tables[PseudonymKey.__tablename__]
_SUBJECTS: Table = SQLModel.metadata.tables[Subject.__tablename__]
_TOMBSTONES: Table = SQLModel.metadata.tables[Tombstone.__tablename__]
PURPOSE: Final = "subjects"
_LABEL: Final = b"s2a-key-fingerprint"


def key_fingerprint(key: bytes) -> str:
    """HMAC-SHA256 of a fixed label under ``key``, in hex: tells keys apart, reveals none."""
    return hmac.new(key, _LABEL, hashlib.sha256).hexdigest()


def key_source(settings: Settings) -> str:
    """Where this process's pseudonym key comes from, for messages (never the key)."""
    if settings.pseudonym_key is not None:
        return "S2A_PSEUDONYM_KEY"
    return str(settings.pseudonym_key_path)


def checked_pseudonym_key(settings: Settings, engine: Engine) -> bytes:
    """The pseudonym key, once it is known to be the one the database's subjects were
    pseudonymized under; the database must be migrated (``schemas.migrate.upgrade``).

    The first call records the key's fingerprint; later calls compare with it. While the
    database holds subjects, a different key is a :class:`~schemas.errors.ConfigError`
    naming where each key came from and what to do, and a missing key file is not
    regenerated (also a ``ConfigError``); the same while it holds the tombstones of erased
    subjects. Without either (a fresh database) nothing can be orphaned: a new key is
    generated where needed and recorded. A database migrated with subjects already in it
    trusts the first key it sees.
    Database failures are :class:`~agents.errors.StorageError`.
    """
    with sql_errors("checking the pseudonym key"):
        try:
            return _check(settings, engine)
        except IntegrityError:
            # PostgreSQL: another process recorded the first fingerprint at the same
            # moment (SQLite's write lock serialises the two). Compare with its row.
            return _check(settings, engine)


def _check(settings: Settings, engine: Engine) -> bytes:
    source = key_source(settings)
    with for_writing(engine).begin() as connection:
        recorded = connection.execute(select(_KEYS).where(_KEYS.c.purpose == PURPOSE)).first()
        # Made under the recorded key: subjects' pseudonyms and erased subjects' tombstones.
        bound = connection.execute(select(_SUBJECTS.c.pseudonym).limit(1)).first()
        if bound is None:
            bound = connection.execute(select(_TOMBSTONES.c.subject_digest).limit(1)).first()
        key = settings.resolve_pseudonym_key(create=bound is None)
        fingerprint = key_fingerprint(key)
        if recorded is not None and hmac.compare_digest(recorded.fingerprint, fingerprint):
            return key
        if recorded is not None and bound is not None:
            raise ConfigError(_mismatch(source, recorded.source, recorded.recorded_at))
        row = {
            "fingerprint": fingerprint,
            "source": source[:1024],
            "recorded_at": datetime.now(UTC),
        }
        if recorded is None:
            connection.execute(insert(_KEYS).values(purpose=PURPOSE, **row))
            if bound is not None:
                log.warning(
                    "recorded the fingerprint of the pseudonym key from %s; the subjects "
                    "already in the database could not be checked against it",
                    source,
                )
        else:
            connection.execute(update(_KEYS).where(_KEYS.c.purpose == PURPOSE).values(**row))
            log.info(
                "no subjects or tombstones yet: the pseudonym key from %s replaces the "
                "recorded one",
                source,
            )
    return key


def _mismatch(source: str, recorded_source: str, recorded_at: datetime) -> str:
    return (
        f"the pseudonym key from {source} is not the key this database's subjects were "
        f"pseudonymized under (recorded {recorded_at:%Y-%m-%d %H:%M} UTC, from "
        f"{recorded_source}): with it, returning subjects would get new pseudonyms and "
        "`s2a erase` would not find their data. Restore the original key (the key file "
        "from a backup, or S2A_PSEUDONYM_KEY's former value); the key cannot change while "
        "the database holds subjects or the tombstones of erased ones"
    )
