"""Alembic environment of selfie2anime, run by :mod:`schemas.migrate`.

``schemas.migrate`` hands over a connection (``config.attributes["connection"]``) that
already holds the migration lock and an open transaction; the migrations run inside it.
Without one (the alembic CLI), the URL comes from ``-x url=...`` or ``sqlalchemy.url``.
SQLite gets ``render_as_batch``: it cannot ALTER most things, so alembic copies tables.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import schemas.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from schemas.engine import create_engine_for

target_metadata = SQLModel.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render SQLModel's ``AutoString`` as plain ``sa.String`` in new revisions, so that
    migrations never import sqlmodel and keep working whatever its internals become."""
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length is not None else "sa.String()"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=render_item,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or set sqlalchemy.url")
    return url


def run_offline() -> None:
    """Write the SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    url = _url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    # Inside schemas.migrate's transaction this is a no-op and that transaction commits.
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    engine = create_engine_for(_url(), migrating=True)
    try:
        with engine.connect() as own:
            run_on(own)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
