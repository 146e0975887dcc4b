"""``s2a refs add | list | quarantine | reinstate``: the anime reference library."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from infra.cli.kit import settings_of
from infra.output import emit_json, emit_table
from schemas.settings import Settings


def _library(settings: Settings) -> Any:
    from agents.references.library import RefLibrary
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    return RefLibrary(settings)


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise click.BadParameter(
                f"{item!r} is not name=value (e.g. gender=female)", param_hint="--label"
            )
        labels[name.strip()] = value.strip()
    return labels


def _user() -> str:
    """Who runs the command, for --by's default (the login name; 'unknown' without one)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _when(at: datetime | None) -> str | None:
    """When a person set the status (UTC, to the minute); None when the check set it."""
    return None if at is None else at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


@click.group()
def refs() -> None:
    """The anime reference library: add licensed reference images per style, list them,
    and overrule the style check by hand (quarantine, reinstate)."""


@refs.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--style", required=True, help="the art style these references show, e.g. pc")
@click.option("--license", "license_", help="SPDX-style id (overrides --sources), e.g. CC-BY-4.0")
@click.option("--source", help="where the images come from (overrides --sources)")
@click.option("--author", help="who to credit (overrides --sources)")
@click.option("--box", help="face region x1,y1,x2,y2 in pixels (default: the whole image)")
@click.option(
    "--landmarks",
    help="the face's five points x1,y1,...,x5,y5 in pixels of the image (left eye, right eye, "
    "nose tip, left and right mouth corner, as seen), for every file; default: the face "
    "detector's, where it finds the face",
)
@click.option("--tags", default="", help="comma-separated tags for every file")
@click.option("--label", "label_items", multiple=True, help="name=value, human label (repeatable)")
@click.option(
    "--sources",
    "sources_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns file,license,author,source giving each file's attribution, and "
    "optionally landmarks (x1,y1,...,x5,y5 in one cell) giving its face's five points",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per file on stdout")
@click.pass_context
def add(
    ctx: click.Context,
    paths: tuple[Path, ...],
    style: str,
    license_: str | None,
    source: str | None,
    author: str | None,
    box: str | None,
    landmarks: str | None,
    tags: str,
    label_items: tuple[str, ...],
    sources_csv: Path | None,
    as_json: bool,
) -> None:
    """Add reference images (files or folders of them) to a style.

    Each file ends added, exists, quarantined (stored, kept out of matching: a style
    outlier) or refused (nothing stored, with the reason). Exit status 1 when any file
    was refused. A reference whose five face points are known (given, or found by the face
    detector) is trained on aligned like the selfies; `refs list --json` shows its
    landmarks and their source (the detector's name, or human).
    """
    from agents.errors import InvalidRequest
    from agents.references.geometry import parse_landmarks, read_landmarks
    from agents.references.library import Box, read_sources

    labels = _labels(label_items)
    region = Box.parse(box) if box else None
    try:
        points = parse_landmarks(landmarks, what="value") if landmarks else None
    except InvalidRequest as exc:
        raise click.BadParameter(str(exc), param_hint="--landmarks") from None
    sources = read_sources(sources_csv) if sources_csv else None
    landmarks_of = read_landmarks(sources_csv) if sources_csv else None
    outcomes = _library(settings_of(ctx)).add(
        list(paths),
        style=style,
        license=license_,
        source=source,
        author=author,
        box=region,
        tags=[t for t in tags.split(",") if t.strip()],
        labels=labels,
        sources=sources,
        landmarks=points,
        landmarks_of=landmarks_of,
    )
    if as_json:
        for outcome in outcomes:
            emit_json(outcome.as_dict())
    else:
        emit_table(
            [
                (
                    o.file,
                    o.outcome.value,
                    o.reason.value if o.reason else None,
                    (o.ref_id or "")[:8],
                    o.license,
                    o.region,
                    None if o.outlier_score is None else f"{o.outlier_score:.1f}",
                    o.detail,
                )
                for o in outcomes
            ],
            ("file", "outcome", "reason", "ref", "license", "region", "z", "detail"),
        )
    refused = sum(o.outcome.value == "refused" for o in outcomes)
    if refused:
        raise click.ClickException(f"{refused} of {len(outcomes)} file(s) refused")


@refs.command("list")
@click.option("--style", help="only this style")
@click.option("--status", type=click.Choice(["active", "quarantined"]))
@click.option("--json", "as_json", is_flag=True, help="a JSON array on stdout")
@click.pass_context
def list_refs(ctx: click.Context, style: str | None, status: str | None, as_json: bool) -> None:
    """References with their style, status, license and credit, oldest first.

    BY and AT name who set the status by hand and when (UTC); empty when the style check
    set it. With --json they are status_by and status_at.
    """
    rows = _library(settings_of(ctx)).list(style=style, status=status)
    if as_json:
        # status_by and status_at are null unless a person set the status by hand.
        emit_json([row.model_dump(mode="json") for row in rows])
        return
    emit_table(
        [
            (
                r.ref_id[:8],
                r.style,
                r.status,
                r.reason,
                r.license,
                r.author,
                r.region,
                f"{r.width}x{r.height}",
                None if r.outlier_score is None else f"{r.outlier_score:.1f}",
                r.library_version,
                r.status_by,
                _when(r.status_at),
            )
            for r in rows
        ],
        (
            "ref",
            "style",
            "status",
            "reason",
            "license",
            "author",
            "region",
            "size",
            "z",
            "v",
            "by",
            "at",
        ),
    )


def _show(change: Any, as_json: bool) -> None:
    if as_json:
        emit_json(change.as_dict())
        return
    emit_table(
        [
            (
                change.ref_id[:8],
                change.style,
                f"{change.previous.value} -> {change.status.value}",
                change.by,
                _when(change.at),
                change.library_version,
                change.detail,
            )
        ],
        ("ref", "style", "status", "by", "at", "v", "detail"),
    )


@refs.command("quarantine")
@click.argument("ref")
@click.option("--reason", required=True, help="why, in words (kept as the reference's detail)")
@click.option("--by", "by", default=None, help="who decides (default: your login name)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@click.pass_context
def quarantine(ctx: click.Context, ref: str, reason: str, by: str | None, as_json: bool) -> None:
    """Take an active reference out of matching, overruling the style check.

    REF is a reference id or its first 8+ characters (as `s2a refs list` shows). Makes a
    new library version whose index no longer holds it; who and when are recorded.
    """
    change = _library(settings_of(ctx)).quarantine(ref, reason=reason, by=by or _user())
    _show(change, as_json)


@refs.command("reinstate")
@click.argument("ref")
@click.option("--by", "by", default=None, help="who decides (default: your login name)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@click.pass_context
def reinstate(ctx: click.Context, ref: str, by: str | None, as_json: bool) -> None:
    """Put a quarantined reference back into matching, overruling the style check.

    REF is a reference id or its first 8+ characters. Makes a new library version whose
    index holds it again; who and when are recorded.
    """
    change = _library(settings_of(ctx)).reinstate(ref, by=by or _user())
    _show(change, as_json)
