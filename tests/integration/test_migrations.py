"""The migrations build exactly the tables ``schemas/tables.py`` declares, on both backends.

A change to the tables without a migration (or the reverse) fails
``test_migrations_match_the_tables``.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import schemas.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from schemas.engine import resolve_url
from schemas.errors import ConfigError
from schemas.migrate import current, downgrade, head, upgrade

TABLES = {
    "subjects",
    "uploads",
    "faces",
    "labels",
    "identity_links",
    "library_versions",
    "anime_refs",
    "ref_labels",
    "pairs",
    "review_decisions",
    "snapshots",
    "model_versions",
    "model_aliases",
    "model_alias_moves",
    "version_subjects",
    "leases",
    "snapshot_subjects",
    "version_erasures",
    "erasure_audit",
    "reviewers",
    "outbox",
    "pseudonym_keys",
    "tombstones",
}


def _diff(url: str, metadata: sa.MetaData) -> list[Any]:
    engine = sa.create_engine(resolve_url(url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(resolve_url(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _scalar(url: str, query: str) -> Any:
    engine = sa.create_engine(resolve_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


def test_upgrade_from_empty_reaches_head(sql_url: str) -> None:
    assert current(sql_url) is None

    upgrade(sql_url)

    assert current(sql_url) == head() == "0011"
    assert _tables(sql_url) == TABLES | {"alembic_version"}


def test_migrations_match_the_tables(sql_url: str) -> None:
    upgrade(sql_url)

    assert _diff(sql_url, SQLModel.metadata) == []


def test_comparison_sees_a_drift(sql_url: str) -> None:
    """Guards the test above: the comparison must notice a column the migrations lack."""
    upgrade(sql_url)
    drifted = sa.MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["faces"].append_column(sa.Column("extra", sa.Integer(), nullable=True))

    differences = _diff(sql_url, drifted)

    assert [(d[0], d[2], d[3].name) for d in differences] == [("add_column", "faces", "extra")]


def test_downgrade_to_base_then_upgrade_again(sql_url: str) -> None:
    upgrade(sql_url)

    downgrade(sql_url, "base")

    assert current(sql_url) is None
    assert _tables(sql_url) & TABLES == set()
    if sql_url.startswith("postgresql"):
        # A leftover enum type would make the next upgrade fail with "already exists".
        assert _scalar(sql_url, "SELECT count(*) FROM pg_type WHERE typname = 'uploadstate'") == 0

    upgrade(sql_url)

    assert current(sql_url) == head()
    assert _diff(sql_url, SQLModel.metadata) == []


def test_upgrade_twice_is_a_no_op(sql_url: str) -> None:
    upgrade(sql_url)
    engine = sa.create_engine(resolve_url(sql_url))
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO subjects (pseudonym, first_seen_at, consent_version, "
                    "consent_scopes, consent_granted_at) "
                    "VALUES ('p', '2026-01-01 00:00:00', 'v1', '[\"training\"]', "
                    "'2026-01-01 00:00:00')"
                )
            )
    finally:
        engine.dispose()

    upgrade(sql_url)

    assert current(sql_url) == head()
    assert _scalar(sql_url, "SELECT count(*) FROM alembic_version") == 1
    assert _scalar(sql_url, "SELECT count(*) FROM subjects") == 1


def test_concurrent_upgrades_from_several_processes(sql_url: str) -> None:
    """Workers starting together all call upgrade: one migrates, the others wait and find
    the schema at head instead of failing on "table already exists"."""
    processes = 4
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(processes)
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            futures = [pool.submit(_upgrade_together, barrier, sql_url) for _ in range(processes)]
            revisions = [future.result(timeout=120) for future in futures]

    assert revisions == [head()] * processes
    assert _scalar(sql_url, "SELECT count(*) FROM alembic_version") == 1
    assert _diff(sql_url, SQLModel.metadata) == []


def _upgrade_together(barrier: Any, url: str) -> str | None:
    barrier.wait(timeout=60)
    upgrade(url)
    return current(url)


@pytest.mark.parametrize(
    "url", ["mysql://user@host/db", "not a url", "postgresql://host:notaport/db"]
)
def test_unsupported_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="database url"):
        resolve_url(url)


def test_bare_postgresql_url_gets_the_psycopg_driver() -> None:
    assert resolve_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert resolve_url("sqlite:///x.db").drivername == "sqlite"
