"""``s2a erase SUBJECT``: remove a person everywhere and print the audit row's answer.

SUBJECT is the app's user id (``-`` reads it from stdin, keeping it out of shell history
and the process list); it becomes the pseudonym at once and is never stored or logged.

Where it runs:

* ``--direct``: in this process. Needs the stores to itself: the Qdrant local store admits
  one process, so this fails while a worker holds it.
* ``--publish``: an :class:`~schemas.erasure.ErasureRequest` on ``erasure-requests``; the
  worker's ``erase`` agent carries it out, and this command waits (``--timeout``) for the
  request's row in ``erasure_audit``.
* neither (the default): in this process when the stores are free, through the worker when
  it holds them. "Holds" is what the Qdrant local store says: opening it fails while a
  worker has it open. With a Qdrant server (``S2A_QDRANT_URL``) nothing is held, and the
  erasure runs here.

Exit status 0 when the subject is gone (``nothing_found`` included: erased before, or
never seen); 1 with a one-line reason otherwise.
"""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime
from typing import Any

import click

from infra.cli.kit import settings_of
from infra.output import emit_json
from schemas.erasure import TOPIC, ErasureRequest
from schemas.settings import Settings


@click.command()
@click.argument("subject")
@click.option("--by", "requested_by", default=None, help="who asks (default: your user name)")
@click.option(
    "--direct",
    "mode",
    flag_value="direct",
    help="erase in this process (fails while a worker holds the Qdrant local store)",
)
@click.option(
    "--publish",
    "mode",
    flag_value="publish",
    help="send an ErasureRequest to the worker and wait for its audit row",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="seconds to wait for the worker (with --publish)",
)
@click.option("--json", "as_json", is_flag=True, help="the audit row as a JSON object on stdout")
@click.pass_context
def erase(
    ctx: click.Context,
    subject: str,
    requested_by: str | None,
    mode: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Erase SUBJECT (the app's user id; - reads it from stdin) from every store."""
    settings = settings_of(ctx)
    if subject == "-":
        subject = sys.stdin.readline().strip()
    if not subject:
        raise click.BadParameter("SUBJECT is empty; give the app's user id", param_hint="SUBJECT")
    request = ErasureRequest(
        subject_id=subject,
        requested_by=requested_by or _user(),
        requested_at=datetime.now(UTC),
    )
    client = None if mode == "publish" else _free_store(settings, required=mode == "direct")
    if client is None:
        result = _through_worker(settings, request, timeout)
    else:
        result = _here(settings, request, client)
    if as_json:
        emit_json(result)
        return
    if result["outcome"] == "nothing_found":
        click.echo(
            f"nothing found: the subject was erased before or never seen "
            f"(request {result['request_id']}, via {result['via']})"
        )
        return
    removed = ", ".join(f"{n} {what}" for what, n in result["counts"].items() if n)
    again = " (carried out before)" if result["already"] else ""
    click.echo(f"erased{again}: {removed} (request {result['request_id']}, via {result['via']})")


def _user() -> str:
    try:
        return getpass.getuser()[:128] or "cli"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


def _free_store(settings: Settings, *, required: bool) -> Any:
    """The faces' Qdrant client when this process can open it; None when a worker holds
    the local store (a ClickException instead when ``required``)."""
    from agents.stores.faces import open_client

    try:
        return open_client(settings)
    except RuntimeError as exc:
        # qdrant-client's local store takes a file lock; the worker holds it while it runs.
        if "already accessed" not in str(exc):
            raise
        if required:
            raise click.ClickException(
                f"the Qdrant local store {settings.qdrant_path} is in use by a running "
                "worker; leave out --direct to send the request to it"
            ) from exc
        return None


def _here(settings: Settings, request: ErasureRequest, client: Any) -> dict[str, Any]:
    from agents.erasure import Eraser
    from agents.stores.db import create_engine_for
    from agents.stores.keys import checked_pseudonym_key
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        # Another key would turn SUBJECT into a pseudonym nothing is stored under, and the
        # erasure would answer 'nothing_found' for a person whose data stays.
        key = checked_pseudonym_key(settings, engine)
        eraser = Eraser.from_settings(settings, engine, client, via="direct")
        return eraser.erase_request(request, key).as_dict()
    finally:
        client.close()
        engine.dispose()


def _through_worker(settings: Settings, request: ErasureRequest, timeout: float) -> dict[str, Any]:
    from infra.erasing import erase_through_worker
    from infra.errors import WaitTimeout

    try:
        return erase_through_worker(settings, request, timeout).as_dict()
    except WaitTimeout:
        raise click.ClickException(
            f"erasure request {request.request_id} was sent to {settings.topic(TOPIC)}, but "
            f"no worker recorded it within {timeout:.0f}s; it stays on the topic and runs "
            "when a worker reads it (start one: s2a up), or stop the worker and use --direct"
        ) from None
