"""``s2a faces ...``: verbs about the stored faces.

``reembed`` moves every face to another embedder (``--embedder``, default the configured
``S2A_MODELS__EMBEDDER``), resumably, from the stored 512 px aligned crops: raw uploads are
never stored (see :mod:`agents.reembed`). The embedded Qdrant store may be opened by one
process at a time: stop the worker first.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import get_args

import click

from infra.cli.kit import face_client, settings_of
from infra.output import Progress, emit_json
from schemas.settings import ModelSettings

#: The values ``S2A_MODELS__EMBEDDER`` takes.
EMBEDDER_NAMES: tuple[str, ...] = get_args(ModelSettings.model_fields["embedder"].annotation)


@click.group()
def faces() -> None:
    """Stored faces."""


@faces.command()
@click.option(
    "--embedder",
    "kind",
    type=click.Choice(EMBEDDER_NAMES),
    default=None,
    help="the embedder to move to (default: S2A_MODELS__EMBEDDER)",
)
@click.option("--json", "as_json", is_flag=True, help="the report as JSON on stdout")
@click.pass_context
def reembed(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """Embed every stored face again with another embedder, from its stored 512 px crop.

    Resumable: faces already on the target embedder are skipped, so a run stopped halfway
    finishes with the next one. Progress shows on a terminal, nothing when piped.
    """
    from agents.reembed import Reembedder
    from agents.stages.embed import build_embedder
    from agents.stores.blobs import open_blobs
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade

    settings = settings_of(ctx)
    models = settings.models.model_copy(update={"embedder": kind}) if kind else settings.models
    upgrade(settings.sql_url)
    embedder = build_embedder(models, settings.worker.embed_batch_size)
    with face_client(settings) as client:
        mover = Reembedder(
            create_engine_for(settings.sql_url),
            open_blobs(settings),
            client,
            embedder,
            payload_index=bool(settings.qdrant_url),
            link_distance=settings.worker.identity_link_distance,
        )
        progress = Progress(f"re-embedding with {embedder.name}:", len(mover.pending()))
        try:
            report = mover.run(progress=progress.advance)
        finally:
            progress.close()
    if as_json:
        emit_json(asdict(report))
        return
    click.echo(
        f"{report.moved} faces re-embedded with {report.target}; {report.already} already "
        f"were, of {report.total}"
    )
    if report.unreadable:
        click.echo(
            f"{len(report.unreadable)} faces kept their embedder: their crop is missing "
            f"from the blob store (e.g. {report.unreadable[0]})"
        )
