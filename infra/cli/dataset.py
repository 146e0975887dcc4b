"""``s2a dataset ...``: freeze approved pairs into snapshots, export them, report on them.

    s2a dataset snapshot [--style S] [--json]
    s2a dataset list [--json]
    s2a dataset export SNAPSHOT --format imagefolder|instructpix2pix|webdataset --out PATH
                       [--size 256|512] [--shard-size N] [--json]
    s2a dataset report SNAPSHOT [--out PATH] [--json]

``SNAPSHOT`` is a snapshot id (``ds-...``), a version number or ``latest``. An id is read
straight from ``S2A_HOME/datasets`` (export then needs no database; report reads the
quarantined references from it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from infra.cli.kit import settings_of
from infra.output import emit_json, emit_table
from schemas.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from trainer.dataset import Manifest


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _manifest(settings: Settings, ref: str) -> Manifest:
    from trainer.dataset import find_snapshot, read_manifest
    from trainer.dataset.snapshot import SNAPSHOT_ID

    if SNAPSHOT_ID.match(ref):
        return read_manifest(settings.dataset_dir, ref)
    with _engine(settings) as engine:
        snapshot_id = find_snapshot(engine, ref).snapshot_id
    return read_manifest(settings.dataset_dir, snapshot_id)


@click.group()
def dataset() -> None:
    """Frozen dataset snapshots of approved pairs, their exports and reports."""


@dataset.command()
@click.option("--style", default=None, help="only pairs of this style (default: every style)")
@click.option("--json", "as_json", is_flag=True, help="the snapshot as a JSON object on stdout")
@click.pass_context
def snapshot(ctx: click.Context, style: str | None, as_json: bool) -> None:
    """Freeze the approved pairs into an immutable, content-named manifest.

    Nothing changed since the last snapshot: the same id comes back, marked existing.
    """
    from trainer.dataset import create_snapshot

    settings = settings_of(ctx)
    with _engine(settings) as engine:
        result = create_snapshot(engine, settings, style=style)
    if as_json:
        emit_json(result.as_dict())
        return
    summary = result.summary
    splits = summary.splits
    state = "created" if result.created else "exists"
    click.echo(
        f"{state} {result.snapshot_id} (version {result.version}): {summary.records} pairs, "
        f"train {splits['train'].records} / validation {splits['validation'].records}, "
        f"{summary.subjects} subjects, {summary.dropped_by_cap} dropped by the cap"
    )
    click.echo(f"manifest {result.manifest_path}")


@dataset.command("list")
@click.option("--json", "as_json", is_flag=True, help="a JSON array on stdout")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List the snapshots, oldest first."""
    from trainer.dataset import list_snapshots

    with _engine(settings_of(ctx)) as engine:
        rows = list_snapshots(engine)
    if as_json:
        emit_json([row.model_dump(mode="json") for row in rows])
        return
    emit_table(
        [
            (
                r.version,
                r.snapshot_id,
                r.pairs,
                r.train,
                r.validation,
                r.subjects,
                r.library_version,
                r.created_at.isoformat(timespec="seconds"),
            )
            for r in rows
        ],
        ("version", "id", "pairs", "train", "validation", "subjects", "library", "created"),
    )


@dataset.command()
@click.argument("snapshot_ref", metavar="SNAPSHOT")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["imagefolder", "instructpix2pix", "webdataset"]),
    required=True,
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="a new directory (or an empty one)",
)
@click.option(
    "--size",
    type=click.Choice(["256", "512"]),
    default="512",
    show_default=True,
    help="which selfie crop to export",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="samples per webdataset shard",
)
@click.option("--json", "as_json", is_flag=True, help="what was written, as JSON on stdout")
@click.pass_context
def export(
    ctx: click.Context,
    snapshot_ref: str,
    fmt: str,
    out: Path,
    size: str,
    shard_size: int,
    as_json: bool,
) -> None:
    """Write SNAPSHOT's pairs where training tools read them, with their licenses."""
    from agents.stores.blobs import open_blobs
    from trainer.dataset import export_snapshot

    settings = settings_of(ctx)
    manifest = _manifest(settings, snapshot_ref)
    result = export_snapshot(
        manifest,
        open_blobs(settings),
        out,
        fmt,
        size=int(size),
        shard_size=shard_size,
    )
    if as_json:
        emit_json(result.as_dict())
        return
    rows = ", ".join(f"{split} {n}" for split, n in result.rows.items())
    click.echo(f"exported {result.snapshot_id} as {result.format.value} ({rows}) to {result.out}")


@dataset.command()
@click.argument("snapshot_ref", metavar="SNAPSHOT")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="the HTML file (default: beside the manifest, report.html)",
)
@click.option("--json", "as_json", is_flag=True, help='{"snapshot_id", "path"} on stdout')
@click.pass_context
def report(ctx: click.Context, snapshot_ref: str, out: Path | None, as_json: bool) -> None:
    """Write SNAPSHOT's report as one HTML page: coverage gaps, distributions, review rate,
    the pairs as thumbnails and the library's quarantined references (read from the database).
    """
    from agents.references.catalog import Catalog
    from agents.stores.blobs import open_blobs
    from trainer.dataset import write_report
    from trainer.dataset.report import REPORT_NAME

    settings = settings_of(ctx)
    manifest = _manifest(settings, snapshot_ref)
    with _engine(settings) as engine:
        quarantined = Catalog(engine).list(style=manifest.params.style, status="quarantined")
    path = write_report(
        manifest,
        out or settings.dataset_dir / manifest.snapshot_id / REPORT_NAME,
        blobs=open_blobs(settings),
        quarantined=quarantined,
    )
    if as_json:
        emit_json({"snapshot_id": manifest.snapshot_id, "path": str(path)})
    else:
        click.echo(str(path))
