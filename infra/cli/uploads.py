"""Verbs about uploads: ``s2a publish`` (files to upload events), ``uploads`` (each upload's
terminal state) and ``status`` (counts, pairs, the library version, consumer lag)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from infra.cli.kit import settings_of
from infra.output import Progress, emit_json, emit_table
from schemas.settings import Settings
from schemas.uploads import Source


def _repository(settings: Settings) -> Any:
    from agents.stores.db import create_engine_for
    from agents.stores.repository import Repository
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    return Repository(create_engine_for(settings.sql_url))


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--subject", help="the app's user id (pseudonymized on entry, never stored)")
@click.option("--consent-scope", "scopes", multiple=True, default=("training",), show_default=True)
@click.option("--consent-version", default="cli-1", show_default=True)
@click.option("--expires", type=click.DateTime(), help="consent expiry, ISO 8601")
@click.option(
    "--source",
    type=click.Choice([s.value for s in Source]),
    default=Source.SELFIE.value,
    show_default=True,
)
@click.option("--license", "license_", help="required for --source public-dataset")
@click.option("--attribution", help="credit line kept with every face of a public dataset")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per upload on stdout")
@click.pass_context
def publish(
    ctx: click.Context,
    paths: tuple[Path, ...],
    subject: str | None,
    scopes: tuple[str, ...],
    consent_version: str,
    expires: datetime | None,
    source: str,
    license_: str | None,
    attribution: str | None,
    as_json: bool,
) -> None:
    """Publish image files (or folders of them) as consented upload events."""
    from infra.kafka import UploadPublisher, ensure_topics
    from infra.publish import UploadRequest, build_event, plan, subject_for

    settings = settings_of(ctx)
    request = UploadRequest(
        subject=subject,
        consent_version=consent_version,
        scopes=scopes,
        expires_at=expires.replace(tzinfo=expires.tzinfo or UTC) if expires else None,
        source=Source(source),
        license=license_,
        attribution=attribution,
    )
    request.check()
    files = plan(list(paths))
    ensure_topics(settings)
    progress = Progress("published", len(files))
    with UploadPublisher(settings) as publisher:
        for path, root in files:
            event, how = build_event(
                path, request, settings, subject=subject_for(path, root, request)
            )
            publisher.publish(event)
            if as_json:
                emit_json({"upload_id": event.upload_id, "path": str(path), "image": how})
            else:
                click.echo(f"{event.upload_id}\t{path}")
            progress.advance()
    progress.close()


@click.command()
@click.option("--state", type=click.Choice(["accepted", "rejected", "erased"]))
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="a JSON array on stdout")
@click.pass_context
def uploads(ctx: click.Context, state: str | None, limit: int | None, as_json: bool) -> None:
    """List every upload with its terminal state, reason and stage."""
    from schemas.reasons import UploadState

    repo = _repository(settings_of(ctx))
    rows = repo.list_uploads(UploadState(state) if state else None, limit)
    if as_json:
        emit_json([row.model_dump(mode="json") for row in rows])
        return
    emit_table(
        [
            (
                r.upload_id,
                r.state,
                r.reason,
                r.stage,
                r.finished_at.isoformat(timespec="seconds"),
                r.detail,
            )
            for r in rows
        ],
        ("upload", "state", "reason", "stage", "finished", "detail"),
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="a JSON object on stdout")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts per state and reason, pairs per status, the reference library version, and
    how far the worker is behind the upload topic."""
    from agents.pairing.store import PairStore
    from agents.stores.db import create_engine_for
    from infra.errors import BrokerError
    from infra.kafka import consumer_lag

    settings = settings_of(ctx)
    repo = _repository(settings)
    pair_store = PairStore(create_engine_for(settings.sql_url))
    library = pair_store.library()
    report: dict[str, Any] = {
        "states": repo.counts(),
        "reasons": repo.reason_counts(),
        "pairs": pair_store.status_counts(),
        "library": {"version": library.version, "styles": list(library.styles)},
        "broker": settings.bootstrap_servers,
    }
    try:
        lag = consumer_lag(settings)
        report["lag"] = {"published": lag.end, "committed": lag.committed, "behind": lag.behind}
    except BrokerError as exc:
        report["lag"] = None
        report["broker_error"] = str(exc)
    if as_json:
        emit_json(report)
        return
    states = report["states"]
    click.echo(
        "uploads: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        if states
        else "uploads: none yet"
    )
    for reason, n in sorted(report["reasons"].items(), key=lambda kv: -kv[1]):
        click.echo(f"  rejected {reason}: {n}")
    pair_counts = report["pairs"]
    click.echo(
        "pairs: " + ", ".join(f"{k} {v}" for k, v in sorted(pair_counts.items()))
        if pair_counts
        else "pairs: none yet"
    )
    click.echo(
        f"reference library: version {library.version}, styles {', '.join(library.styles)}"
        if library.version is not None
        else "reference library: empty (s2a refs add)"
    )
    if report["lag"] is not None:
        lag_ = report["lag"]
        click.echo(
            f"broker {settings.bootstrap_servers}: {lag_['published']} published, "
            f"{lag_['behind']} not yet processed"
        )
    else:
        click.echo(f"broker {settings.bootstrap_servers}: unreachable ({report['broker_error']})")
