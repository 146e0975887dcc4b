"""``s2a review``: serve the human review page until Ctrl-C or SIGTERM.

Each approve, pick or reject writes its ``pairs`` record to the outbox in the decision's
transaction (agents.review.decisions); this process's outbox relay (infra.outbox) sends
it from a background thread, at once after the decision when a broker answers, else as
soon as one does. The page never waits for a broker: it starts at once without one, says
so in one warning line, and reviewers keep deciding meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import TYPE_CHECKING

import click

from infra.cli.kit import settings_of
from infra.output import emit_json

if TYPE_CHECKING:
    from agents.review.server import ReviewServer

log = logging.getLogger(__name__)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--host", default=None, help="listen address (default S2A_REVIEW__HOST, loopback)")
@click.option("--port", type=int, default=None, help="listen port (default S2A_REVIEW__PORT)")
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
    include: tuple[str, ...],
    as_json: bool,
) -> None:
    """Review pending (selfie, anime) pairs in a browser: approve, reject, pick, fix labels.

    Reviewers log in with accounts made by `s2a reviewers add`; each decision records the
    logged-in reviewer. Beyond loopback the page needs S2A_REVIEW__TLS_CERT and _KEY.
    Decisions are announced on the pairs topic when a broker answers (queued until then).
    """
    from agents.review.server import ReviewServer
    from agents.stores.db import create_engine_for
    from infra.outbox import OutboxRelay
    from schemas.migrate import upgrade

    settings = settings_of(ctx)
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        server = ReviewServer(
            settings,
            host=host,
            port=port,
            include_unmatched="unmatched" in include,
            engine=engine,
        )
        # A setup the page refuses (no TLS beyond loopback, no account, a lost secret)
        # fails here, before anything starts.
        server.check()
        relay = OutboxRelay(settings, engine)
        # The decision is in the outbox already (same transaction): only hurry the relay.
        server.on_decision = lambda pair: relay.wake()
        relay.start()
        try:
            _serve(server, as_json)
        finally:
            relay.stop()
    finally:
        engine.dispose()


def _serve(server: ReviewServer, as_json: bool) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    url = server.start()
    try:
        if as_json:
            emit_json({"url": url})
        click.echo(f"review page at {url} (log in as a reviewer); Ctrl-C stops it", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
    finally:
        server.stop()
