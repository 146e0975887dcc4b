"""``s2a reviewers add | list | remove | new-secret``: the review page's accounts.

A password is read from a prompt (typed twice) or, when stdin is not a terminal, from its
first line; never from an argument, which would land in shell history and the process list.
The first account also makes the page's session secret (``home/review-session.key``) unless
``S2A_REVIEW__SESSION_SECRET`` is set; later ones check that it is still there.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from infra.cli.kit import settings_of
from infra.output import emit_json, emit_table
from schemas.settings import Settings


def _accounts(settings: Settings) -> Any:
    from agents.review.accounts import ReviewerAccounts
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    return ReviewerAccounts(create_engine_for(settings.sql_url))


def _password() -> str:
    if sys.stdin.isatty():
        password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        return password
    line = sys.stdin.readline()
    if not line:
        raise click.UsageError("no password on stdin; pipe one line, or run in a terminal")
    return line.rstrip("\r\n")


@click.group()
def reviewers() -> None:
    """Reviewer accounts of the review page (`s2a review`)."""


@reviewers.command("add")
@click.argument("name")
@click.pass_context
def add(ctx: click.Context, name: str) -> None:
    """Make an account NAME; the password comes from a prompt or stdin."""
    settings = settings_of(ctx)
    accounts = _accounts(settings)
    # With no account yet no session secret can have been made; after that a missing one
    # was lost, and resolve_session_secret says so instead of making another.
    settings.review.resolve_session_secret(settings.home, create=accounts.count() == 0)
    info = accounts.add(name, _password())
    click.echo(f"reviewer {info.name} added; they log in at the page of `s2a review`", err=True)


@reviewers.command("list")
@click.option("--json", "as_json", is_flag=True, help="a JSON array on stdout")
@click.pass_context
def list_reviewers(ctx: click.Context, as_json: bool) -> None:
    """Every account, by name (never a password or its hash)."""
    rows = _accounts(settings_of(ctx)).accounts()
    if as_json:
        emit_json(
            [
                {"name": r.name, "created_at": r.created_at, "signed_out_at": r.sessions_after}
                for r in rows
            ]
        )
        return
    emit_table(
        [
            (
                r.name,
                r.created_at.isoformat(timespec="seconds"),
                r.sessions_after and r.sessions_after.isoformat(timespec="seconds"),
            )
            for r in rows
        ],
        ("name", "created", "signed out"),
    )


@reviewers.command("remove")
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Delete account NAME; its sessions end at once, its decisions keep its name."""
    if not _accounts(settings_of(ctx)).remove(name):
        raise click.ClickException(f"no reviewer {name!r}; `s2a reviewers list` shows them")
    click.echo(f"reviewer {name} removed", err=True)


@reviewers.command("new-secret")
@click.pass_context
def new_secret(ctx: click.Context) -> None:
    """Replace home/review-session.key (lost, or leaked): every reviewer is signed out."""
    settings = settings_of(ctx)
    if settings.review.session_secret is not None:
        raise click.ClickException(
            "S2A_REVIEW__SESSION_SECRET is set, so the key file is not used; change that "
            "setting instead"
        )
    path = settings.review.session_key_path(settings.home)
    path.unlink(missing_ok=True)
    settings.review.resolve_session_secret(settings.home, create=True)
    click.echo(f"new session secret in {path}; every reviewer logs in again", err=True)
