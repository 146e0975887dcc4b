"""``s2a review``: serve the human review page until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import getpass
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from infra.cli.kit import settings_of
from infra.output import emit_json
from schemas.settings import Settings
from schemas.tables import Pair

if TYPE_CHECKING:
    from agents.review.server import ReviewServer

log = logging.getLogger(__name__)


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
    with contextlib.ExitStack() as stack:
        announce = _announcer(settings, stack)
        server = ReviewServer(
            settings,
            name,
            on_decision=announce,
            host=host,
            port=port,
            include_unmatched="unmatched" in include,
        )
        _serve(server, as_json)


def _announcer(settings: Settings, stack: contextlib.ExitStack) -> Callable[[Pair], None] | None:
    """Publish each decided pair on the ``pairs`` topic, when a broker answers.

    SQL holds the decision either way; the topic only tells downstream consumers. Reviewing
    needs no running stack, so without a broker the page works and says so once, here.
    """
    from agents.pairing.pairer import record_of
    from infra.errors import BrokerError
    from infra.kafka import RecordPublisher, ensure_topics
    from schemas.pairs import PAIRS_TOPIC

    try:
        ensure_topics(settings, [PAIRS_TOPIC])
        publisher = stack.enter_context(
            RecordPublisher(settings, PAIRS_TOPIC, client_id="s2a-review")
        )
    except BrokerError as exc:
        log.warning("decisions will not be announced on the pairs topic: %s", exc)
        return None

    def announce(pair: Pair) -> None:
        publisher.publish_raw(pair.subject.encode(), record_of(pair).to_bytes())

    return announce


def _serve(server: ReviewServer, as_json: bool) -> None:
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
