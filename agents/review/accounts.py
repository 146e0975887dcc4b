"""Reviewer accounts: names with Argon2id password hashes in the ``reviewers`` table.

Hashing is argon2-cffi's :class:`~argon2.PasswordHasher` (Argon2id, RFC 9106's low-memory
parameters), used directly: it is the reference binding, and the one algorithm this page
needs, so a multi-algorithm wrapper (pwdlib, passlib) would add a layer and nothing else.
A hash made with older parameters is upgraded at the next successful login.

Example::

    accounts = ReviewerAccounts(create_engine_for(settings.sql_url))
    accounts.add("alice", "correct horse battery staple")
    accounts.verify("alice", "correct horse battery staple")     # True
    accounts.session_valid("alice", issued_at=time.time())         # True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from agents.errors import AccountError, InvalidDecision
from agents.review.decisions import check_reviewer
from agents.stores.db import for_writing, sql_errors
from schemas.tables import Reviewer

log = logging.getLogger(__name__)

REVIEWERS: Table = SQLModel.metadata.tables[Reviewer.__tablename__]
#: Long enough that guessing through the login form (one Argon2 hash per try) is hopeless.
MIN_PASSWORD = 12
MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class ReviewerInfo:
    """An account as ``s2a reviewers list`` shows it (never the hash)."""

    name: str
    created_at: datetime
    sessions_after: datetime | None


class ReviewerAccounts:
    """The ``reviewers`` table: add, list, remove, check a password, honour a session.

    ``hasher`` is a seam for tests, which pass cheap parameters; production uses the
    library's defaults.
    """

    def __init__(self, engine: Engine, hasher: PasswordHasher | None = None) -> None:
        self._engine = engine
        self._writer = for_writing(engine)
        self._hasher = hasher or PasswordHasher()
        # Verified when the name is unknown, so a wrong name takes as long as a wrong
        # password and the form does not tell which names exist.
        self._dummy = self._hasher.hash("no such reviewer, still one hash")

    def add(self, name: str, password: str) -> ReviewerInfo:
        """Make an account; AccountError when the name is taken or the password too short."""
        name = _account_name(name)
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise AccountError(
                f"a reviewer password is {MIN_PASSWORD} to {MAX_PASSWORD} characters, "
                f"got {len(password)}; choose a longer one"
            )
        now = datetime.now(UTC)
        row = {"name": name, "password_hash": self._hasher.hash(password), "created_at": now}
        with sql_errors(f"add reviewer {name!r}"):
            try:
                with self._writer.begin() as connection:
                    connection.execute(insert(REVIEWERS).values(**row))
            except IntegrityError:
                raise AccountError(
                    f"reviewer {name!r} exists already; `s2a reviewers remove {name}` first "
                    "to give it a new password"
                ) from None
        return ReviewerInfo(name, now, None)

    def accounts(self) -> list[ReviewerInfo]:
        """Every account, by name."""
        statement = select(
            REVIEWERS.c.name, REVIEWERS.c.created_at, REVIEWERS.c.sessions_after
        ).order_by(REVIEWERS.c.name)
        with sql_errors("list reviewers"), self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [ReviewerInfo(name, created, after) for name, created, after in rows]

    def count(self) -> int:
        with sql_errors("count reviewers"), self._engine.connect() as connection:
            counted = connection.execute(select(func.count()).select_from(REVIEWERS))
            return int(counted.scalar_one())

    def remove(self, name: str) -> bool:
        """Delete the account (its sessions end with it); False when there was none.
        Decisions it made keep its name."""
        with sql_errors(f"remove reviewer {name!r}"), self._writer.begin() as connection:
            gone = connection.execute(delete(REVIEWERS).where(REVIEWERS.c.name == name))
        return bool(gone.rowcount)

    def verify(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s; a stale hash is upgraded on success."""
        statement = select(REVIEWERS.c.password_hash).where(REVIEWERS.c.name == name)
        with sql_errors("reviewer login"), self._engine.connect() as connection:
            stored = connection.execute(statement).scalar()
        try:
            self._hasher.verify(stored or self._dummy, password[:MAX_PASSWORD])
        except (VerificationError, InvalidHashError):
            return False
        if stored is None:
            return False
        if self._hasher.check_needs_rehash(stored):
            self._set(name, password_hash=self._hasher.hash(password))
        return True

    def session_valid(self, name: str, issued_at: float) -> bool:
        """Whether a session of ``name`` issued at ``issued_at`` (epoch seconds) still
        counts: the account exists and has not logged out since."""
        statement = select(REVIEWERS.c.sessions_after).where(REVIEWERS.c.name == name)
        with sql_errors("reviewer session"), self._engine.connect() as connection:
            row = connection.execute(statement).first()
        if row is None:
            return False
        after: datetime | None = row[0]
        return after is None or issued_at > after.timestamp()

    def sign_out(self, name: str) -> None:
        """End every session of ``name`` issued until now."""
        self._set(name, sessions_after=datetime.now(UTC))

    def _set(self, name: str, **values: object) -> None:
        with sql_errors(f"update reviewer {name!r}"), self._writer.begin() as connection:
            connection.execute(update(REVIEWERS).where(REVIEWERS.c.name == name).values(**values))


def _account_name(name: str) -> str:
    try:
        return check_reviewer(name)
    except InvalidDecision as exc:
        raise AccountError(str(exc)) from None
