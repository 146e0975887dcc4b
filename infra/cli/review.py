"""``s2a review``: serve the human review page until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
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
    """
    from agents.review.server import ReviewServer
    from schemas.migrate import upgrade

    settings = settings_of(ctx)
    upgrade(settings.sql_url)
    with contextlib.ExitStack() as stack:
        server = ReviewServer(
            settings, host=host, port=port, include_unmatched="unmatched" in include
        )
        # A setup the page refuses (no TLS beyond loopback, no account, a lost secret)
        # fails here, before the broker is asked.
        server.check()
        server.on_decision = _announcer(settings, stack)
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
            emit_json({"url": url})
        click.echo(f"review page at {url} (log in as a reviewer); Ctrl-C stops it", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
    finally:
        server.stop()
