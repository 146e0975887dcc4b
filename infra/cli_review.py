"""``s2a review``: serve the human review page until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import getpass
import signal

import click

from infra.clikit import settings_of
from infra.output import emit_json


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError) as exc:  # no LOGNAME/USER and no passwd entry (containers)
        raise click.ClickException(
            f"cannot tell who is reviewing ({exc}); pass --reviewer NAME"
        ) from exc


@click.command()
@click.option("--host", default=None, help="listen address (default S2A_REVIEW__HOST, loopback)")
@click.option("--port", type=int, default=None, help="listen port (default S2A_REVIEW__PORT)")
@click.option("--reviewer", default=None, help="recorded with every decision (default: login)")
@click.option(
    "--include",
    "include",
    type=click.Choice(["unmatched"]),
    multiple=True,
    help="also queue pairs that no reference matched",
)
@click.option("--json", "as_json", is_flag=True, help="print the page's URL as JSON on stdout")
@click.pass_context
def review(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    reviewer: str | None,
    include: tuple[str, ...],
    as_json: bool,
) -> None:
    """Review pending (selfie, anime) pairs in a browser: approve, reject, pick, fix labels."""
    from agents.review.server import ReviewServer
    from schemas.migrate import upgrade

    settings = settings_of(ctx)
    name = reviewer if reviewer is not None else _login_name()
    upgrade(settings.sql_url)
    server = ReviewServer(
        settings, name, host=host, port=port, include_unmatched="unmatched" in include
    )
    signal.signal(signal.SIGTERM, _interrupt)
    url = server.start()
    try:
        if as_json:
            emit_json({"url": url, "reviewer": server.reviewer})
        click.echo(f"review page at {url} (reviewer {server.reviewer}); Ctrl-C stops it", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
    finally:
        server.stop()
