"""SQLite files are put in WAL mode once; a locked file is retried, then named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from schemas.engine import _use_wal


def test_wal_is_set_once_and_a_locked_file_is_retried_until_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "s2a.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-migration
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _use_wal(other.cursor(), deadline_s=0.05)
        holder.execute("COMMIT")

        _use_wal(other.cursor(), deadline_s=0.05)

        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Once WAL, a connection does not ask for the switch (nor its exclusive lock) again.
        holder.execute("BEGIN EXCLUSIVE")
        _use_wal(other.cursor(), deadline_s=0.05)
        holder.execute("COMMIT")
    finally:
        other.close()
        holder.close()
