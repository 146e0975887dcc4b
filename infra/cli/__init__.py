"""``s2a``: one command, a verb per job.

Conventions scripts rely on: ``--json`` prints JSON only on stdout (logs go to stderr);
exit status 0 only on success, otherwise a one-line reason on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from agents.errors import PipelineError
from infra.cli.dataset import dataset
from infra.cli.labels import labels
from infra.cli.pairs import pairs
from infra.cli.refs import refs
from infra.cli.review import review
from infra.errors import InfraError
from infra.output import Progress, emit_json, emit_table
from schemas.errors import SchemaError
from schemas.settings import Settings
from schemas.uploads import Source
from trainer.errors import TrainerError

log = logging.getLogger("s2a")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python and alembic are chatty at INFO about every connection and plugin.
    for chatty in ("kafka", "alembic"):
        logging.getLogger(chatty).setLevel(
            max(logging.ERROR if chatty == "kafka" else logging.WARNING, logging.getLogger().level)
        )


def _stop_on_sigterm() -> None:
    """Treat SIGTERM (systemd, docker stop, kill) like Ctrl-C, so the children we started
    (broker, worker) are stopped on the way out instead of being orphaned."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _repository(settings: Settings) -> Any:
    from agents.stores.db import create_engine_for
    from agents.stores.repository import Repository
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    return Repository(create_engine_for(settings.sql_url))


@click.group()
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default from S2A_LOG_LEVEL)")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """selfie2anime: consented selfies in, a labelled selfie-to-anime training set out."""
    settings = Settings()
    if log_level:
        settings = settings.model_copy(update={"log_level": log_level})
    _setup_logging(settings.log_level)
    ctx.obj = settings


@cli.command()
@click.option("--host", default=None, help="listen address (default S2A_BROKER_HOST)")
@click.option("--port", type=int, default=None, help="listen port (default S2A_BROKER_PORT)")
@click.pass_context
def broker(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground."""
    from infra.broker import EmbeddedBroker

    settings = _settings(ctx)
    embedded = EmbeddedBroker(host or settings.broker_host, port or settings.broker_port)
    _stop_on_sigterm()
    with embedded:
        click.echo(f"broker listening on {embedded.bootstrap}", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            embedded.wait()


@cli.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the Faust ingestion worker against the configured broker."""
    from infra.runtime import run_worker

    run_worker(_settings(ctx))


@cli.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Start the embedded broker (unless S2A_KAFKA_BOOTSTRAP is set) and a worker."""
    from infra.runtime import Stack

    settings = _settings(ctx)
    _stop_on_sigterm()
    with Stack(settings) as stack:
        click.echo(f"up: broker {settings.bootstrap_servers}, data in {settings.home}", err=True)
        try:
            stack.supervise()
        except KeyboardInterrupt:
            click.echo("stopping", err=True)


@cli.command()
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

    settings = _settings(ctx)
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


@cli.command()
@click.option("--state", type=click.Choice(["accepted", "rejected", "erased"]))
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="a JSON array on stdout")
@click.pass_context
def uploads(ctx: click.Context, state: str | None, limit: int | None, as_json: bool) -> None:
    """List every upload with its terminal state, reason and stage."""
    from schemas.reasons import UploadState

    repo = _repository(_settings(ctx))
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="a JSON object on stdout")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts per state and reason, pairs per status, the reference library version, and
    how far the worker is behind the upload topic."""
    from agents.pairing.store import PairStore
    from agents.stores.db import create_engine_for
    from infra.errors import BrokerError
    from infra.kafka import consumer_lag

    settings = _settings(ctx)
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="the outcome of each sample upload as JSON")
@click.pass_context
def demo(ctx: click.Context, as_json: bool) -> None:
    """Run the ingestion end to end on bundled sample selfies and show what became of each."""
    from infra.demo import run_demo

    report = run_demo(_settings(ctx))
    if as_json:
        emit_json(report.as_dict())
        return
    emit_table(report.rows(), ("sample", "upload", "state", "reason", "stage", "detail"))
    click.echo("")
    click.echo(report.summary())


for _verb in (refs, labels, pairs, review, dataset):
    cli.add_command(_verb)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write("s2a: aborted\n")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (InfraError, SchemaError, PipelineError, TrainerError) as exc:
        sys.stderr.write(f"s2a: {exc}\n")
        sys.exit(1)
    except ValidationError as exc:  # settings from the environment that do not validate
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        sys.stderr.write(f"s2a: invalid settings (S2A_* variables): {problems}\n")
        sys.exit(1)
    except Exception as exc:  # the one-line promise holds for bugs too; the log has more
        log.debug("unhandled error", exc_info=True)
        sys.stderr.write(f"s2a: {type(exc).__name__}: {exc}\n")
        sys.exit(1)
