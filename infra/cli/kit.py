"""What every ``s2a`` verb module shares: the process's settings from the click context, and
the Qdrant client of the faces collections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from schemas.settings import Settings


def settings_of(ctx: click.Context) -> Settings:
    """The one :class:`Settings` of this process, built by the ``s2a`` group."""
    settings = ctx.find_object(Settings)
    if settings is None:
        raise click.UsageError("s2a verbs run under the s2a command group")
    return settings


@contextmanager
def face_client(settings: Settings) -> Iterator[Any]:
    """The Qdrant client of the faces collections, closed on the way out; a ClickException
    that says to stop the worker when it holds the embedded store."""
    from agents.stores.faces import open_client

    try:
        client = open_client(settings)
    except RuntimeError as exc:
        # qdrant-client's local store takes a file lock; the worker holds it while it runs.
        if "already accessed" not in str(exc):
            raise
        raise click.ClickException(
            f"the Qdrant local store {settings.qdrant_path} is in use by a running worker; "
            "stop it (s2a up / s2a worker) and retry, or set S2A_QDRANT_URL to a Qdrant server"
        ) from exc
    try:
        yield client
    finally:
        client.close()
