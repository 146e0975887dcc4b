"""``s2a pairs list | import | rematch``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from infra.cli.kit import settings_of
from infra.output import emit_json, emit_table
from schemas.pairs import PairStatus
from schemas.settings import Settings


def _store(settings: Settings) -> Any:
    from agents.pairing.store import PairStore
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    return PairStore(create_engine_for(settings.sql_url))


@click.group()
def pairs() -> None:
    """(selfie, anime) training pairs: list them, import hand-made ones, re-match faces."""


@pairs.command("list")
@click.option("--status", type=click.Choice([s.value for s in PairStatus]))
@click.option("--style")
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="a JSON array on stdout")
@click.pass_context
def list_pairs(
    ctx: click.Context, status: str | None, style: str | None, limit: int | None, as_json: bool
) -> None:
    """Pairs with their status, score and reference, oldest first."""
    rows = _store(settings_of(ctx)).list_pairs(status=status, style=style, limit=limit)
    if as_json:
        emit_json([row.model_dump(mode="json") for row in rows])
        return
    emit_table(
        [
            (
                p.pair_id[:8],
                p.face_id[:8],
                p.style,
                p.status,
                None if p.score is None else f"{p.score:.3f}",
                (p.ref_id or "")[:8],
                len(p.candidates),
                p.decided_by,
                p.library_version,
            )
            for p in rows
        ],
        ("pair", "face", "style", "status", "score", "ref", "candidates", "decided", "library"),
    )


@pairs.command("import")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="a JSON object on stdout")
@click.pass_context
def import_csv(ctx: click.Context, csv_path: Path, as_json: bool) -> None:
    """Add hand-made pairs from CSV_PATH (face_id or upload_id, ref_id[, status, style])."""
    from agents.pairing.imports import import_pairs

    result = import_pairs(_store(settings_of(ctx)), csv_path)
    if as_json:
        emit_json({"rows": result.rows, "written": result.written, "pairs": len(result.pairs)})
        return
    click.echo(f"{result.rows} rows, {len(result.pairs)} pairs, {result.written} written")


@pairs.command()
@click.option("--json", "as_json", is_flag=True, help="a JSON object on stdout")
@click.pass_context
def rematch(ctx: click.Context, as_json: bool) -> None:
    """Send every face not yet matched against the current reference library back to the
    pairs agent (after `s2a refs add`, for faces that arrived before)."""
    from datetime import UTC, datetime

    from infra.kafka import RecordPublisher, ensure_topics
    from schemas.pairs import FACES_TOPIC, FaceAccepted

    settings = settings_of(ctx)
    store = _store(settings)
    library = store.library()
    faces = store.unpaired_faces(library.version)
    ensure_topics(settings)
    now = datetime.now(UTC)
    with RecordPublisher(settings, FACES_TOPIC, client_id="s2a-rematch") as publisher:
        for face_id, upload_id, subject in faces:
            event = FaceAccepted(
                face_id=face_id, upload_id=upload_id, subject=subject, accepted_at=now
            )
            publisher.publish_raw(subject.encode(), event.to_bytes())
    if as_json:
        emit_json({"sent": len(faces), "library_version": library.version})
        return
    click.echo(f"sent {len(faces)} face(s) to be matched against library v{library.version}")
