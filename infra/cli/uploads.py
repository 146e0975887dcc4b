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
from schemas.uploads import DeclaredAttributes, Source


def _repository(settings: Settings) -> Any:
    from agents.stores.db import create_engine_for
    from agents.stores.repository import Repository
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    return Repository(create_engine_for(settings.sql_url))


class IsoTime(click.ParamType):
    """An ISO 8601 time: a date, a local time (taken as UTC), or one with ``Z`` or an
    offset (``2030-01-01T00:00:00+02:00``), which is kept.

    click's own DateTime knows neither ``Z`` nor offsets; a malformed value here is a
    usage error naming the option.
    """

    name = "ISO-8601"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        text = str(value).strip()
        try:
            # Python 3.11 reads 'Z', offsets, a bare date, and ' ' for 'T'.
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is not an ISO 8601 time; e.g. 2030-01-01, 2030-01-01T00:00:00Z "
                "or 2030-01-01T02:00:00+02:00",
                param,
                ctx,
            )
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--subject", help="the app's user id (pseudonymized on entry, never stored)")
@click.option("--consent-scope", "scopes", multiple=True, default=("training",), show_default=True)
@click.option("--consent-version", default="cli-1", show_default=True)
@click.option(
    "--expires",
    type=IsoTime(),
    help="consent expiry, ISO 8601 (2030-01-01, ...T00:00:00Z, ...+02:00; no zone: UTC)",
)
@click.option(
    "--source",
    type=click.Choice([s.value for s in Source]),
    default=Source.SELFIE.value,
    show_default=True,
)
@click.option("--license", "license_", help="required for --source public-dataset")
@click.option("--attribution", help="credit line kept with every face of a public dataset")
@click.option(
    "--attributes",
    "attributes_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="declared attributes per file: a CSV keyed by file name, or CelebA's list_attr_celeba.txt",
)
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
    attributes_file: Path | None,
    as_json: bool,
) -> None:
    """Publish image files (or folders of them) as consented upload events.

    Every entry skipped under a folder (a folder or broken link named like an image) and
    every file that cannot be read is named on stderr with the reason; the run ends with
    "published N of M" on stdout (stderr with --json). Exit status 1 when nothing was
    published.
    """
    from agents.stages.imageio import IMAGE_SUFFIXES
    from infra.attributes import read_attributes
    from infra.errors import UsageError
    from infra.kafka import UploadPublisher, ensure_topics
    from infra.publish import Published, UploadRequest, plan, publish_each

    settings = settings_of(ctx)
    request = UploadRequest(
        subject=subject,
        consent_version=consent_version,
        scopes=scopes,
        expires_at=expires,
        source=Source(source),
        license=license_,
        attribution=attribution,
    )
    request.check()
    table = read_attributes(attributes_file) if attributes_file else None
    if table is not None:
        if table.ignored:
            click.echo(
                f"--attributes: ignoring unknown columns: {', '.join(table.ignored)}", err=True
            )
        if table.not_carried:
            # Only CelebA's Young today: an impression of youth, not an age in years.
            click.echo(
                f"--attributes: ignoring {', '.join(table.not_carried)}: no age in years "
                "behind it, and no age band follows from it (the upload contract declares "
                f"{', '.join(DeclaredAttributes.model_fields)})",
                err=True,
            )
    batch = plan(list(paths))
    for skipped in batch.skipped:
        click.echo(f"skipped {skipped.path}: {skipped.reason}", err=True)
    published = 0
    progress = Progress("published", len(batch.files))
    try:
        if batch.files:
            ensure_topics(settings)
            with UploadPublisher(settings) as publisher:
                for result in publish_each(batch.files, request, settings, publisher, table):
                    progress.advance()
                    if not isinstance(result, Published):
                        click.echo(f"skipped {result.path}: {result.reason}", err=True)
                        continue
                    published += 1
                    if as_json:
                        emit_json(
                            {
                                "upload_id": result.event.upload_id,
                                "path": str(result.path),
                                "image": result.how,
                            }
                        )
                    else:
                        click.echo(f"{result.event.upload_id}\t{result.path}")
    finally:
        # Also when the broker fails half-way: what went out is said before the reason.
        progress.close()
        click.echo(f"published {published} of {batch.total}", err=as_json)
    if published == 0:
        raise UsageError(
            f"nothing was published: {batch.total} file(s) skipped, see above"
            if batch.total
            else "nothing to publish: no file named like an image "
            f"({' '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(str(p) for p in paths)}"
        )


@click.command()
@click.option("--state", type=click.Choice(["accepted", "rejected", "erased"]))
@click.option("--flagged", is_flag=True, help="only accepted faces flagged for a look")
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="a JSON array on stdout")
@click.pass_context
def uploads(
    ctx: click.Context, state: str | None, flagged: bool, limit: int | None, as_json: bool
) -> None:
    """List every upload with its terminal state, reason and stage, and the flag of an
    accepted face that needs a look (identity_mismatch: not the person of the subject's
    earlier faces)."""
    from schemas.reasons import UploadState

    repo = _repository(settings_of(ctx))
    rows = repo.list_uploads(UploadState(state) if state else None, limit)
    flags = repo.face_flags([r.upload_id for r in rows if r.state == UploadState.ACCEPTED])
    if flagged:
        rows = [r for r in rows if r.upload_id in flags]
    if as_json:
        emit_json(
            [
                row.model_dump(mode="json")
                | dict(
                    zip(
                        ("flag", "flag_detail"), flags.get(row.upload_id, (None, None)), strict=True
                    )
                )
                for row in rows
            ]
        )
        return
    emit_table(
        [
            (
                r.upload_id,
                r.state,
                r.reason,
                r.stage,
                flags[r.upload_id][0] if r.upload_id in flags else None,
                r.finished_at.isoformat(timespec="seconds"),
                flags[r.upload_id][1] if r.upload_id in flags else r.detail,
            )
            for r in rows
        ],
        ("upload", "state", "reason", "stage", "flag", "finished", "detail"),
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
