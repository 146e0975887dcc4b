"""The report's pictures: pair contact sheets and the quarantined references.

Every image is an inline ``data:`` URI of a small JPEG made here from the blob store's
bytes, so the report stays one file that opens anywhere. Each blob is checked against the
digest that names it, as exports check them. A missing, corrupt or undecodable blob does
not stop the report: the report exists so that a person can look at the data, and one bad
blob would hide every other finding. It is shown as a flagged placeholder with the reason
instead, counted at the top of the sheets, and logged.

Example::

    thumbs = Thumbnails(open_blobs(settings), size=112)
    html = pair_sheets(manifest, thumbs, limit=60)
    thumbs.problems  # what could not be shown, and why
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

from agents.stores.blobs import BlobStore
from schemas.manifest import ManifestRecord
from schemas.tables import AnimeRef
from trainer.dataset.export import _Blobs  # the checked read exports use: same messages
from trainer.dataset.policy import SPLITS
from trainer.dataset.snapshot import Manifest
from trainer.errors import DatasetError

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Pairs (and quarantined references) shown per section unless the caller says otherwise:
#: enough to judge the data by eye, few enough that the page stays a few megabytes.
DEFAULT_SHEET_SIZE = 60

#: Side of the square box a thumbnail is fitted into, in pixels.
DEFAULT_THUMB_SIZE = 112
THUMB_SIZES = range(32, 513)

#: JPEG quality of the thumbnails: small files, faces still recognisable.
_JPEG_QUALITY = 82

#: Labels named in a pair's caption, in this order, when the record has them.
_CAPTION_LABELS = ("gender", "age_band", "pose_band", "expression", "glasses")
_CAPTION_MAX_LABELS = 3

SHEET_STYLE = """
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(var(--cell),1fr));gap:.6em;
margin:.5em 0}.pair{margin:0;padding:.3em;border:1px solid #ddd;border-radius:4px;
background:#fafafa}.imgs{display:flex;gap:4px;justify-content:center}
.imgs img,.imgs .missing{width:var(--thumb);height:var(--thumb);object-fit:contain;
background:#eee}.imgs img{display:block}.missing{color:#b00020;font-size:.75em;display:flex;
align-items:center;justify-content:center;text-align:center;overflow:hidden}
.pair figcaption{font-size:.8em;line-height:1.3;margin-top:.3em;text-align:center;
font-weight:normal;overflow-wrap:anywhere}.pair .style{font-weight:bold}
table.refs td{vertical-align:top}table.refs .imgs{justify-content:flex-start}
.reason{color:#b00020;font-weight:bold}
"""


@dataclass(frozen=True, slots=True)
class Thumb:
    """One thumbnail: a ``data:`` URI and its size, or the reason there is none."""

    uri: str | None
    width: int = 0
    height: int = 0
    problem: str | None = None


class Thumbnails:
    """Checked, cached thumbnails of blobs, fitted into a ``size`` px square.

    A reference used by many pairs is read and scaled once. Images are scaled up or down to
    fit the square with their aspect ratio kept, so square crops come out ``size`` x ``size``.
    """

    def __init__(self, blobs: BlobStore, size: int = DEFAULT_THUMB_SIZE) -> None:
        if size not in THUMB_SIZES:
            raise DatasetError(
                f"thumbnail size must be {THUMB_SIZES.start}..{THUMB_SIZES.stop - 1} px, got {size}"
            )
        self.size = size
        self.problems: list[str] = []
        self._blobs = _Blobs(blobs)
        self._cache: dict[str, Thumb] = {}

    def of(self, digest: str, what: str) -> Thumb:
        """The thumbnail of blob ``digest``; ``what`` names it in a problem message."""
        if digest not in self._cache:
            self._cache[digest] = self._make(digest, what)
        return self._cache[digest]

    def _make(self, digest: str, what: str) -> Thumb:
        try:
            data = self._blobs.read(digest, what)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                fitted = ImageOps.contain(_flatten(image), (self.size, self.size))
        except DatasetError as exc:
            return self._failed(str(exc))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            return self._failed(f"{what}: blob {digest} is not a readable image: {exc}")
        out = io.BytesIO()
        fitted.save(out, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
        uri = "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
        return Thumb(uri, fitted.width, fitted.height)

    def _failed(self, message: str) -> Thumb:
        logger.warning("dataset report: %s", message)
        self.problems.append(message)
        return Thumb(None, problem=message)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB for JPEG; transparent parts (sprites) on white rather than JPEG's black."""
    if image.mode in ("RGBA", "LA", "P") and (image.mode != "P" or "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def evenly_spaced(items: Sequence[_T], limit: int) -> list[_T]:
    """At most ``limit`` of ``items``, spread evenly over them in their order.

    The manifest is sorted by style then subject: taking the first ``limit`` would show one
    style only, while an even spread shows every style and many subjects.
    """
    if limit <= 0:
        return []
    if len(items) <= limit:
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def _img(thumb: Thumb, alt: str) -> str:
    if thumb.uri is None:
        problem = escape(thumb.problem or "no image")
        return f'<div class="missing" title="{problem}">{escape(alt)} not shown</div>'
    return (
        f'<img src="{escape(thumb.uri)}" width="{thumb.width}" height="{thumb.height}" '
        f'alt="{escape(alt)}">'
    )


def _labels(record: ManifestRecord) -> list[str]:
    known = [record.labels[n].value for n in _CAPTION_LABELS if n in record.labels]
    return known[:_CAPTION_MAX_LABELS]


def _tooltip(record: ManifestRecord) -> str:
    labels = ", ".join(f"{k}={v.value}" for k, v in sorted(record.labels.items()))
    return (
        f"pair {record.pair_id} | subject {record.subject} | reference "
        f"{record.lineage.ref_id} | {record.caption} | {labels or 'no labels'}"
    )


def _pair(record: ManifestRecord, thumbs: Thumbnails) -> str:
    selfie = thumbs.of(record.selfie.crop_256, f"pair {record.pair_id} selfie")
    anime = thumbs.of(record.anime.training, f"pair {record.pair_id} anime")
    score = record.lineage.score
    decided = record.lineage.decided_by or "undecided"
    return (
        f'<figure class="pair" data-pair="{escape(record.pair_id)}" '
        f'title="{escape(_tooltip(record))}"><div class="imgs">'
        f"{_img(selfie, 'selfie crop')}{_img(anime, 'anime reference')}</div>"
        f'<figcaption><span class="style">{escape(record.style)}</span> · '
        f"{escape(', '.join(_labels(record)) or 'no labels')}<br>"
        f"{'no score' if score is None else f'score {score:.2f}'} · {escape(decided)}"
        "</figcaption></figure>"
    )


def _showing(shown: int, total: int, what: str) -> str:
    spread = " (evenly spread over the manifest order)" if shown < total else ""
    return f'<p class="note">Showing {shown} of {total} {escape(what)}{spread}.</p>'


def contact_sheet(
    split: str, records: Sequence[ManifestRecord], thumbs: Thumbnails, limit: int
) -> str:
    """A split's pairs as (selfie crop, anime reference) thumbnails, at most ``limit``."""
    shown = evenly_spaced(records, limit)
    head = f"<h3>{escape(split)}</h3>{_showing(len(shown), len(records), f'{split} pairs')}"
    if not shown:
        return head
    cells = "".join(_pair(r, thumbs) for r in shown)
    return f'{head}<div class="sheet" data-split="{escape(split)}">{cells}</div>'


def pair_sheets(manifest: Manifest, thumbs: Thumbnails | None, limit: int) -> str:
    """The contact sheet of every split, or why there is none."""
    if thumbs is None:
        return '<p class="note">No blob store was given: the pairs are not shown.</p>'
    note = (
        '<p class="note">Each pair: the aligned selfie crop (left) and the anime reference '
        "chosen for it (right). Hover a pair for its id, subject, reference and caption.</p>"
    )
    return note + "".join(
        contact_sheet(split, manifest.split(split), thumbs, limit) for split in SPLITS
    )


def problems_note(thumbs: Thumbnails | None) -> str:
    """The images that could not be shown, and why; empty when there are none.

    Placed at the top of the pictures: a broken blob is a finding, not a footnote.
    """
    if thumbs is None or not thumbs.problems:
        return ""
    problems = "".join(f"<li>{escape(p)}</li>" for p in thumbs.problems)
    return (
        f'<p class="flag">{len(thumbs.problems)} image(s) could not be shown:</p>'
        f"<ul>{problems}</ul>"
    )


def quarantine_section(
    manifest: Manifest,
    refs: Sequence[AnimeRef] | None,
    thumbs: Thumbnails | None,
    limit: int,
) -> str:
    """The quarantined references with why: style, reason, detail and a thumbnail.

    ``refs`` ``None``: the library was not read, which is said rather than implying that no
    reference is quarantined.
    """
    if refs is None:
        return '<p class="note">The reference library was not read for this report.</p>'
    style = manifest.params.style
    scope = f"style {style}" if style else "every style"
    shown = evenly_spaced(refs, limit)
    out = [
        f'<p class="note">What the reference library holds quarantined now '
        f"({escape(scope)}). {manifest.summary.quarantined_refs} approved pair(s) were "
        "left out of this snapshot because their reference was quarantined.</p>",
        _showing(len(shown), len(refs), "quarantined references"),
    ]
    if not shown:
        return "".join(out)
    out.append(
        '<table class="refs"><thead><tr><th>image</th><th>reference</th><th>style</th>'
        "<th>reason</th><th>detail</th><th>outlier score</th></tr></thead><tbody>"
    )
    for ref in shown:
        if thumbs is None:
            image = '<div class="missing">no blob store given</div>'
        else:
            image = _img(thumbs.of(ref.training, f"reference {ref.ref_id}"), "reference")
        reason = ref.reason or (f"set by {ref.status_by}" if ref.status_by else "none recorded")
        score = "" if ref.outlier_score is None else f"{ref.outlier_score:.2f}"
        out.append(
            f'<tr data-ref="{escape(ref.ref_id)}"><td><div class="imgs">{image}</div></td>'
            f"<td><code>{escape(ref.ref_id)}</code><br>{escape(ref.author)}, "
            f"{escape(ref.license)}</td><td>{escape(ref.style)}</td>"
            f'<td class="reason">{escape(reason)}</td><td>{escape(ref.detail or "")}</td>'
            f"<td>{escape(score)}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)
