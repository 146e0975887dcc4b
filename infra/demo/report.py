"""The demo's one HTML report: inputs, aligned crops and their matched references,
conversions (input, output, reference side by side), rejections with reasons, the
references the style check quarantined, coverage plots of the snapshot the next retrain
would use, model lineage and gate metrics, the hot-swap, the erasure and its check, and
the time of each step.

Rendered with Jinja2 (autoescaped) from ``report.html`` beside this module. Images are
``data:`` URIs of small JPEGs and the charts inline SVG (``trainer.dataset.report``), so the
file stands alone. It is written after the erasure from what the stores hold then, so the
erased subject is in it only as a count: their photo, crops, pairs and conversions are left
out.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from PIL import Image, ImageOps
from sqlalchemy import Engine, select

from agents.review.rows import FACES, PAIRS, REFS
from agents.stores.blobs import BlobStore, open_blobs
from infra.demo.samples import ERASED_SUBJECT, samples_dir
from schemas.settings import Settings
from trainer.dataset.report import bar_chart, coverage
from trainer.dataset.snapshot import read_manifest
from trainer.registry import CHAMPION, Registry

if TYPE_CHECKING:
    from infra.demo.run import DemoResult

REPORT_NAME = "demo-report.html"
THUMB_PX = 128
_JPEG_QUALITY = 82


def thumbnail(data: bytes, size: int = THUMB_PX) -> str:
    """A ``data:image/jpeg`` URI of ``data`` (any image Pillow reads) fitted into a
    ``size`` px square, EXIF orientation applied, alpha flattened on white."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        fitted = ImageOps.contain(upright.convert("RGBA"), (size, size))
    flat = Image.new("RGB", fitted.size, "white")
    flat.paste(fitted, mask=fitted.getchannel("A"))
    out = io.BytesIO()
    flat.save(out, format="JPEG", quality=_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _file_thumb(path: Path) -> str | None:
    try:
        return thumbnail(path.read_bytes())
    except OSError:  # not an image (the demo's broken uploads): shown as text instead
        return None


def write_demo_report(settings: Settings, engine: Engine, result: DemoResult) -> Path:
    """Render the report of ``result`` into ``<demo home>/demo-report.html``; the path."""
    blobs = open_blobs(settings)
    out = settings.home / REPORT_NAME
    environment = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = environment.get_template("report.html").render(
        r=result,
        erased_subject=ERASED_SUBJECT,
        uploads=_uploads(result),
        pairs=_pairs(engine, blobs),
        references=_references(result),
        conversions=_conversions(engine, blobs, result),
        coverage=_coverage(settings, result),
        versions=_versions(settings, engine),
        total_s=sum(result.seconds.values()),
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def _uploads(result: DemoResult) -> list[dict[str, Any]]:
    rows = []
    for row in result.uploads:
        erased = row["subject"] == ERASED_SUBJECT
        path = samples_dir() / row["sample"]
        thumb = None if erased or not path.is_file() else _file_thumb(path)
        shown = {k: v for k, v in row.items() if k != "subject"}
        rows.append(shown | {"thumb": thumb, "erased": erased})
    return rows


def _pairs(engine: Engine, blobs: BlobStore) -> list[dict[str, Any]]:
    """Every pair left after the erasure, with the face's aligned crop and the reference."""
    statement = (
        select(PAIRS.c.pair_id, PAIRS.c.style, PAIRS.c.status, PAIRS.c.score,
               PAIRS.c.decided_by, FACES.c.crop_256, REFS.c.training, REFS.c.license,
               REFS.c.author)
        .join(FACES, FACES.c.face_id == PAIRS.c.face_id)
        .outerjoin(REFS, REFS.c.ref_id == PAIRS.c.ref_id)
        .order_by(PAIRS.c.style, PAIRS.c.pair_id)
    )  # fmt: skip
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    return [
        {
            "style": row["style"],
            "status": str(row["status"]),
            "score": row["score"],
            "decided_by": row["decided_by"],
            "crop": thumbnail(blobs.read(row["crop_256"])),
            "ref": None if row["training"] is None else thumbnail(blobs.read(row["training"])),
            "credit": None if row["license"] is None else f"{row['author']} ({row['license']})",
        }
        for row in rows
    ]


def _references(result: DemoResult) -> list[dict[str, Any]]:
    return [
        ref | {"thumb": _file_thumb(Path(ref["file"])), "name": Path(ref["file"]).name}
        for ref in result.references
    ]


def _conversions(engine: Engine, blobs: BlobStore, result: DemoResult) -> list[dict[str, Any]]:
    """Each conversion of a subject still here: input photo, output, and the reference
    their face was paired with (the first style's)."""
    shown = []
    for conversion in result.conversions:
        if conversion["subject"] == ERASED_SUBJECT:
            continue
        statement = (
            select(REFS.c.training, PAIRS.c.style)
            .join(PAIRS, PAIRS.c.ref_id == REFS.c.ref_id)
            .join(FACES, FACES.c.face_id == PAIRS.c.face_id)
            .where(FACES.c.upload_id == conversion["upload_id"])
            .order_by(PAIRS.c.style)
        )
        with engine.connect() as connection:
            ref = connection.execute(statement).first()
        shown.append(
            {
                "sample": conversion["sample"],
                "input": _file_thumb(samples_dir() / conversion["sample"]),
                "output": thumbnail(conversion["image"], size=2 * THUMB_PX),
                "ref": None if ref is None else thumbnail(blobs.read(ref[0])),
                "style": None if ref is None else ref[1],
                "model": conversion["model"],
                "size": f"{conversion['width']} x {conversion['height']}",
            }
        )
    return shown


def _coverage(settings: Settings, result: DemoResult) -> list[Markup]:
    """One bar chart per label attribute of the snapshot frozen after the erasure."""
    snapshot_id = result.after_erasure.get("snapshot_id")
    if not snapshot_id:
        return []
    manifest = read_manifest(settings.dataset_dir, snapshot_id)
    by_attribute: dict[str, list[Any]] = {}
    for row in coverage(manifest):
        by_attribute.setdefault(row.attribute, []).append(row)
    charts = []
    for attribute, rows in by_attribute.items():
        splits = sorted({split for row in rows for split in row.counts})
        series = {split: [row.counts.get(split, 0) for row in rows] for split in splits}
        # bar_chart escapes every text it draws: its SVG is safe to insert as is.
        charts.append(Markup(bar_chart(attribute, [row.value for row in rows], series)))
    return charts


def _versions(settings: Settings, engine: Engine) -> dict[str, Any]:
    registry = Registry.from_settings(settings, engine)
    name = settings.train.model_name
    champion = registry.alias(name, CHAMPION)
    versions = []
    for row in registry.versions(name):
        metrics = row.metrics or {}
        versions.append(
            {
                "version": row.version,
                "parent": row.parent_version,
                "mode": (row.config or {}).get("mode"),
                "snapshot": row.snapshot_id,
                "status": str(row.status),
                "reason": row.reason,
                "candidate": metrics.get("candidate") or {},
                "champion": metrics.get("champion") or {},
                "train": (row.config or {}).get("train") or {},
            }
        )
    history = [move.as_dict() for move in registry.history(name)]
    return {
        "name": name,
        "champion": None if champion is None else champion.version,
        "rows": versions,
        "history": history,
    }
