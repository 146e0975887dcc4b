"""The dataset report: one self-contained HTML page about a snapshot.

Made from the manifest (and, for its pictures, the blob store). No scripts, fonts or
stylesheets are fetched: the charts are inline SVG drawn here, and every piece of text from
the data is HTML-escaped. The page shows what an ML engineer decides on before training:
coverage gaps against the snapshot's ``target_coverage`` (flagged), label distributions per
split, pose bands, the style mix, subjects per split, how many distinct references the pairs
use, pairs dropped by the per-subject cap, duplicates removed at ingestion, and how much of
the data a person reviewed. Given the blob store, it also shows the pairs themselves (a
contact sheet per split, :mod:`trainer.dataset.sheet`), and given the library's quarantined
references, those with the reason each was quarantined: numbers alone hide a wrong crop or a
reference of the wrong style. Images are embedded as ``data:`` URIs, so the page is still
one file.

Example::

    manifest = read_manifest(settings.dataset_dir, snapshot_id)
    quarantined = Catalog(engine).list(style=manifest.params.style, status="quarantined")
    path = write_report(
        manifest,
        settings.dataset_dir / snapshot_id / "report.html",
        blobs=open_blobs(settings),
        quarantined=quarantined,
    )
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from agents.stores.blobs import BlobStore
from schemas.labels import VALUES, LabelName
from schemas.manifest import ManifestRecord
from schemas.tables import AnimeRef
from trainer.dataset.policy import SPLITS
from trainer.dataset.sheet import (
    DEFAULT_SHEET_SIZE,
    DEFAULT_THUMB_SIZE,
    SHEET_STYLE,
    Thumbnails,
    pair_sheets,
    problems_note,
    quarantine_section,
)
from trainer.dataset.snapshot import Manifest
from trainer.errors import DatasetError

REPORT_NAME = "report.html"

#: A target value holding fewer records than this share of an even split across the
#: attribute's target values is flagged as under-represented.
UNDER_REPRESENTED = 0.5

#: Bar colour of each split in the charts.
_COLOURS = {"train": "#3b6ea5", "validation": "#e08a2c"}

#: Shown for records that carry no value of a label.
_NONE = "(none)"


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """How many records hold one target value, per split, and whether that is a gap."""

    attribute: str
    value: str
    counts: Mapping[str, int]
    total: int
    status: str
    """``ok``, ``under-represented`` or ``missing``"""


@dataclass(frozen=True, slots=True)
class ReferenceUse:
    """How many distinct anime references a snapshot's pairs use, and the most used one.

    Few references over many pairs teach the model a handful of drawings, not a style.
    """

    distinct: int
    per_split: Mapping[str, int]
    top_ref: str | None
    top_count: int
    top_share: float
    """``top_count`` over the snapshot's pairs (0.0 for an empty snapshot)"""


def reference_use(manifest: Manifest) -> ReferenceUse:
    """Distinct references overall and per split, and the most-used one (ties: lowest id)."""
    counts = Counter(r.lineage.ref_id for r in manifest.records)
    per_split = {s: len({r.lineage.ref_id for r in manifest.split(s)}) for s in SPLITS}
    if not counts:
        return ReferenceUse(0, per_split, None, 0, 0.0)
    top_ref, top_count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return ReferenceUse(
        len(counts), per_split, top_ref, top_count, top_count / len(manifest.records)
    )


def _label_value(record: ManifestRecord, name: str) -> str | None:
    label = record.labels.get(name)
    return None if label is None else label.value


def coverage(manifest: Manifest) -> list[CoverageRow]:
    """Every target value of the snapshot's ``target_coverage`` with its counts and status.

    ``missing`` when no record holds it; ``under-represented`` when it holds fewer than
    ``UNDER_REPRESENTED`` times an even share of the records labelled with any target
    value of the attribute.
    """
    rows: list[CoverageRow] = []
    for attribute, targets in sorted(manifest.params.target_coverage.items()):
        per_split = {
            split: Counter(_label_value(r, attribute) for r in manifest.split(split))
            for split in SPLITS
        }
        totals = {v: sum(per_split[s][v] for s in SPLITS) for v in targets}
        labelled = sum(totals.values())
        even_share = labelled / len(targets) if targets else 0.0
        for value in targets:
            total = totals[value]
            if total == 0:
                status = "missing"
            elif total < UNDER_REPRESENTED * even_share:
                status = "under-represented"
            else:
                status = "ok"
            counts = {split: per_split[split][value] for split in SPLITS}
            rows.append(CoverageRow(attribute, value, counts, total, status))
    return rows


def _distribution(manifest: Manifest, name: str) -> tuple[list[str], dict[str, list[int]]]:
    """Values of label ``name`` in display order, and the count of each per split."""
    counts = {
        split: Counter(_label_value(r, name) or _NONE for r in manifest.split(split))
        for split in SPLITS
    }
    seen = set().union(*counts.values())
    try:
        known = list(VALUES[LabelName(name)])
    except ValueError:
        known = []
    values = [v for v in known if v in seen] + sorted(seen - set(known) - {_NONE})
    if _NONE in seen:
        values.append(_NONE)
    return values, {split: [counts[split][v] for v in values] for split in SPLITS}


def bar_chart(title: str, categories: Sequence[str], series: Mapping[str, Sequence[int]]) -> str:
    """An inline SVG of horizontal bars: one group per category, one bar per series."""
    label_w, bar_w, row_h, gap, legend_h = 150, 300, 14, 8, 24
    group_h = row_h * len(series) + gap
    height = legend_h + group_h * max(len(categories), 1)
    width = label_w + bar_w + 60
    peak = max([1, *(n for values in series.values() for n in values)])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    x = label_w
    for name in series:
        colour = _COLOURS.get(name, "#777777")
        parts.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="14" font-size="12">{escape(name)}</text>')
        x += 110
    for i, category in enumerate(categories):
        top = legend_h + i * group_h
        middle = top + row_h * len(series) / 2 + 4
        parts.append(
            f'<text x="{label_w - 6}" y="{middle:.0f}" font-size="12" '
            f'text-anchor="end">{escape(category)}</text>'
        )
        for j, (name, values) in enumerate(series.items()):
            n = values[i]
            y = top + j * row_h
            length = bar_w * n / peak
            colour = _COLOURS.get(name, "#777777")
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{row_h - 2}" '
                f'fill="{colour}"><title>{escape(f"{category} ({name}): {n}")}</title></rect>'
            )
            parts.append(
                f'<text x="{label_w + length + 4:.1f}" y="{y + row_h - 3}" '
                f'font-size="11">{n}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], flag: int | None = None) -> str:
    """An HTML table; with ``flag``, rows whose cell ``flag`` is not ``ok`` are marked."""
    out = ["<table><thead><tr>"]
    out += [f"<th>{escape(str(h))}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in rows:
        marked = flag is not None and row[flag] != "ok"
        out.append('<tr class="gap">' if marked else "<tr>")
        out += [f"<td>{escape('' if cell is None else str(cell))}</td>" for cell in row]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


#: The page's sections, in order: each ``<h2>`` gets the id the top navigation links to.
_SECTIONS = (
    "Overview",
    "Review",
    "Coverage gaps",
    "Pose bands",
    "Style mix",
    "Attribute distributions",
    "Pairs",
    "Quarantined references",
    "Parameters",
)


def _anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def _h2(title: str) -> str:
    return f'<h2 id="{_anchor(title)}">{escape(title)}</h2>'


#: In-page links only: the pictures come after long charts, one click away from the top.
_NAV = (
    '<nav class="note">'
    + " · ".join(f'<a href="#{_anchor(t)}">{escape(t)}</a>' for t in _SECTIONS)
    + "</nav>"
)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:66em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left}th{background:#f3f3f3}tr.gap td{background:#fde2e1;font-weight:bold}
.note{color:#555}.flag{color:#b00020;font-weight:bold}figure{margin:1em 0}
figcaption{font-weight:bold;margin-bottom:.3em}code{font-size:.95em}
"""


def render_report(
    manifest: Manifest,
    *,
    blobs: BlobStore | None = None,
    quarantined: Sequence[AnimeRef] | None = None,
    sheet_size: int = DEFAULT_SHEET_SIZE,
    thumb_size: int = DEFAULT_THUMB_SIZE,
) -> str:
    """The report page of ``manifest`` as HTML text.

    ``blobs``: the blob store the manifest's digests name; without it the page has no
    pictures. ``quarantined``: the library's quarantined references (``Catalog.list(...,
    status="quarantined")``); ``None`` says the library was not read, ``[]`` that none is
    quarantined. ``sheet_size``: at most this many pairs per split, and quarantined
    references, are shown. ``thumb_size``: the side of a thumbnail, in pixels.
    """
    if sheet_size < 0:
        raise DatasetError(
            f"sheet_size must be 0 or more (pairs shown per split), got {sheet_size}"
        )
    thumbs = None if blobs is None else Thumbnails(blobs, thumb_size)
    cell = 2 * thumb_size + 16  # two thumbnails, their gap and the cell's padding
    summary = manifest.summary
    records = summary.records
    splits = summary.splits
    queue = summary.queue
    decided = summary.decided_by
    refs = reference_use(manifest)
    people = [
        len({r.identity or r.subject for r in manifest.records if r.split == split})
        for split in SPLITS
    ]
    html: list[str] = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>Dataset report {escape(manifest.snapshot_id)}</title>",
        f"<style>{_STYLE}{SHEET_STYLE}:root{{--thumb:{thumb_size}px;--cell:{cell}px}}</style>",
        "</head><body>",
        f"<h1>Dataset snapshot <code>{escape(manifest.snapshot_id)}</code></h1>",
        _NAV,
        f'<p class="note">manifest sha256 <code>{escape(manifest.sha256)}</code>; '
        f"reference library version {escape(str(manifest.library_version))}</p>",
        _h2("Overview"),
        _table(
            ("", *SPLITS, "total"),
            [
                ("pairs", *(splits[s].records for s in SPLITS), records),
                ("subjects", *(splits[s].subjects for s in SPLITS), summary.subjects),
                ("people (identity groups)", *people, summary.identity_groups),
                ("distinct references", *(refs.per_split[s] for s in SPLITS), refs.distinct),
            ],
        ),
        _table(
            ("measure", "count"),
            [
                ("most-used reference", _top_ref_text(refs)),
                ("pairs dropped by the per-subject cap", summary.dropped_by_cap),
                ("duplicate uploads removed at ingestion", summary.duplicate_uploads),
                (
                    "subjects merged as one person (kept in one split)",
                    summary.merged_subjects,
                ),
                ("approved pairs left out (reference quarantined)", summary.quarantined_refs),
                (
                    "identity groups moved by the split fallback",
                    ", ".join(summary.split_fallback) or "none",
                ),
            ],
        ),
        _h2("Review"),
        _table(
            ("decided by", "pairs", "share"),
            [(k, decided.get(k, 0), _share(decided.get(k, 0), records)) for k in decided],
        ),
        f"<p>Human-reviewed share: <b>{_share(decided.get('human', 0), records)}</b>. "
        f"Review queue: <b>{queue.get('pending', 0)}</b> pending, "
        f"{queue.get('unmatched', 0)} unmatched, {queue.get('rejected', 0)} rejected.</p>",
    ]

    rows = coverage(manifest)
    gaps = [row for row in rows if row.status != "ok"]
    html.append(_h2("Coverage gaps"))
    if gaps:
        html.append(
            f'<p class="flag">{len(gaps)} target value(s) missing or under-represented '
            f"(under {UNDER_REPRESENTED:.0%} of an even share):</p>"
        )
    elif rows:
        html.append('<p class="note">Every target value is represented.</p>')
    else:
        html.append('<p class="note">No target coverage was set for this snapshot.</p>')
    if rows:
        html.append(
            _table(
                ("attribute", "value", *SPLITS, "total", "status"),
                [
                    (r.attribute, r.value, *(r.counts[s] for s in SPLITS), r.total, r.status)
                    for r in rows
                ],
                flag=3 + len(SPLITS),  # the status column
            )
        )

    pose_values, pose_series = _distribution(manifest, LabelName.POSE_BAND.value)
    html += [_h2("Pose bands"), _figure("pose_band", pose_values, pose_series)]

    style_counts = {split: Counter(r.style for r in manifest.split(split)) for split in SPLITS}
    styles = sorted(set().union(*style_counts.values()))
    html += [
        _h2("Style mix"),
        _figure("style", styles, {s: [style_counts[s][v] for v in styles] for s in SPLITS}),
    ]

    html.append(_h2("Attribute distributions"))
    names = sorted({name for r in manifest.records for name in r.labels})
    for name in names:
        if name == LabelName.POSE_BAND.value:
            continue
        values, series = _distribution(manifest, name)
        html.append(_figure(name, values, series))
    if not names:
        html.append('<p class="note">No record carries a label.</p>')

    # Both sections are built before the problems note placed above them, so that it
    # lists every blob they found broken.
    sheets = pair_sheets(manifest, thumbs, sheet_size)
    refs_html = quarantine_section(manifest, quarantined, thumbs, sheet_size)
    html += [_h2("Pairs"), problems_note(thumbs), sheets, _h2("Quarantined references"), refs_html]

    params = manifest.params.model_dump(mode="json")
    html += [
        _h2("Parameters"),
        _table(
            ("parameter", "value"),
            [(k, _param_text(v)) for k, v in sorted(params.items())],
        ),
        "</body></html>\n",
    ]
    return "".join(html)


def _top_ref_text(refs: ReferenceUse) -> str:
    if refs.top_ref is None:
        return "none"
    return f"{refs.top_ref}: {refs.top_count} pair(s), {refs.top_share:.1%} of the snapshot"


def _figure(title: str, categories: Sequence[str], series: Mapping[str, Sequence[int]]) -> str:
    return (
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f"{bar_chart(title, categories, series)}</figure>"
    )


def _param_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_param_text(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def write_report(
    manifest: Manifest,
    out: Path,
    *,
    blobs: BlobStore | None = None,
    quarantined: Sequence[AnimeRef] | None = None,
    sheet_size: int = DEFAULT_SHEET_SIZE,
    thumb_size: int = DEFAULT_THUMB_SIZE,
) -> Path:
    """Write the report of ``manifest`` to ``out`` (whole or not at all); returns ``out``.

    The keyword arguments are :func:`render_report`'s.
    """
    page = render_report(
        manifest,
        blobs=blobs,
        quarantined=quarantined,
        sheet_size=sheet_size,
        thumb_size=thumb_size,
    )
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        raise DatasetError(f"cannot write the report to {out}: {exc}") from exc
    return out
