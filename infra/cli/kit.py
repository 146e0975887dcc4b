"""What every ``s2a`` verb module shares: the process's settings from the click context."""

from __future__ import annotations

import click

from schemas.settings import Settings


def settings_of(ctx: click.Context) -> Settings:
    """The one :class:`Settings` of this process, built by the ``s2a`` group."""
    settings = ctx.find_object(Settings)
    if settings is None:
        raise click.UsageError("s2a verbs run under the s2a command group")
    return settings
