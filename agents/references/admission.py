"""Admission: the decision about each file given to :meth:`RefLibrary.add`, and its outcome.

The checks of a call (style name, labels, tags), then per file the license policy,
decoding, the face region and its size, and the style statistics: everything that turns
an input into a :class:`Candidate` (then judged ``added`` or ``quarantined`` by
:func:`judge`) or refuses it with a :class:`RefReason`. No SQL here; the one store touched
is the content-addressed blob store, which takes each admitted original.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agents.errors import ImageRefused, InvalidRequest, LicenseRefused, Rejected
from agents.records import RGBImage
from agents.references import palette as pal
from agents.references import style as st
from agents.references.geometry import HUMAN, inside
from agents.references.inputs import (
    NO_CREDIT_NEEDED,
    Attribution,
    Box,
    RefInput,
    normalise_license,
)
from agents.stages.imageio import decode_image, encode_png, read_bounded
from agents.stores.blobs import BlobStore
from schemas.labels import LabelError, check
from schemas.reasons import ReasonCode, RefReason
from schemas.settings import RefSettings, Settings

__all__ = [
    "MAX_DETAIL",
    "REF_NAMESPACE",
    "Candidate",
    "Outcome",
    "RefOutcome",
    "admit",
    "check_labels",
    "check_license",
    "check_style",
    "check_tags",
    "crop",
    "judge",
    "ref_id_for",
    "truncate",
]

#: Namespace of reference ids: ``uuid5(REF_NAMESPACE, "<style>:<sha256 of original PNG>")``.
REF_NAMESPACE = uuid.UUID("6f1c2b7e-3d4a-5b8c-9e0f-a1b2c3d4e5f6")


_STYLE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_TEXT = 512
MAX_DETAIL = 1024
_MAX_TAG = 64


class Outcome(StrEnum):
    """What became of one file given to :meth:`RefLibrary.add`."""

    ADDED = "added"
    EXISTS = "exists"
    QUARANTINED = "quarantined"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class RefOutcome:
    """The one outcome of one file; ``as_dict()`` is the line ``refs add --json`` prints."""

    file: str
    outcome: Outcome
    style: str
    ref_id: str | None = None
    reason: RefReason | None = None
    detail: str | None = None
    license: str | None = None
    region: str | None = None
    outlier_score: float | None = None
    library_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "outcome": self.outcome.value,
            "style": self.style,
            "ref_id": self.ref_id,
            "reason": None if self.reason is None else self.reason.value,
            "detail": self.detail,
            "license": self.license,
            "region": self.region,
            "outlier_score": self.outlier_score,
            "library_version": self.library_version,
        }


def ref_id_for(style: str, original_sha256: str) -> str:
    """The reference id of an image in a style: the same image twice is the same id."""
    return str(uuid.uuid5(REF_NAMESPACE, f"{style}:{original_sha256}"))


@dataclass(slots=True)
class Candidate:
    """A file that passed every refusal check, its original already in the blob store.

    Pixels are not kept: a bulk load holds only numbers per file, and the face region is
    read back from the original blob when its training version and embedding are made.
    """

    index: int
    name: str
    ref_id: str
    license: str
    source: str
    author: str
    width: int
    height: int
    region_name: str
    box: list[float]
    original: str
    stats: dict[str, float]
    histogram: st.FloatArray
    verdict: st.Verdict | None = None
    training: str = ""
    landmarks: list[list[float]] | None = None
    """5 x 2 pixels of the original (``LANDMARK_NAMES`` order), when known"""
    landmarks_source: str | None = None
    """the detector's name, or ``human`` for landmarks a person gave"""

    @property
    def is_outlier(self) -> bool:
        return self.verdict is not None and self.verdict.is_outlier

    def exists(self, style: str, where: str) -> RefOutcome:
        """The ``exists`` outcome: the image is already stored, or earlier in this call."""
        return RefOutcome(
            self.name,
            Outcome.EXISTS,
            style,
            ref_id=self.ref_id,
            detail=f"already in style {style!r} ({where})",
            license=self.license,
            region=self.region_name,
        )

    def outcome(self, style: str, version: int) -> RefOutcome:
        """The ``added`` or ``quarantined`` outcome, once stored as library ``version``."""
        verdict = self.verdict or st.Verdict(score=None)
        quarantined = verdict.is_outlier
        return RefOutcome(
            self.name,
            Outcome.QUARANTINED if quarantined else Outcome.ADDED,
            style,
            ref_id=self.ref_id,
            reason=RefReason.STYLE_OUTLIER if quarantined else None,
            detail=verdict.detail,
            license=self.license,
            region=self.region_name,
            outlier_score=verdict.score,
            library_version=version,
        )


# -- one file -----------------------------------------------------------------------------


def admit(
    index: int,
    name: str,
    item: Path | RefInput,
    *,
    style: str,
    attribution: Attribution,
    box: Box | None,
    settings: Settings,
    blobs: BlobStore,
    landmarks: npt.NDArray[np.float64] | None = None,
) -> Candidate:
    """Every refusal check of one file, cheapest first; the candidate if all pass.

    ``landmarks`` (5 x 2 pixels of the upright image, given by a person) must lie on the
    image, else the file is refused (``bad_box``: the face's place is wrong).
    """
    license_id, license_text = check_license(attribution, settings.refs)
    source = _with_license_text(
        _limit(attribution.source or f"file:{Path(name).name}", "source", name),
        license_text,
    )
    author = _limit(attribution.author or "", "author", name)
    limits = settings.limits
    try:
        data = item.data if isinstance(item, RefInput) else read_bounded(item, limits)
        pixels = decode_image(data, limits).pixels
    except Rejected as rejected:
        reason = (
            RefReason.TOO_LARGE
            if rejected.reason is ReasonCode.TOO_LARGE
            else RefReason.DECODE_ERROR
        )
        raise ImageRefused(reason, rejected.detail) from None
    height, width = pixels.shape[:2]
    region, region_name, region_box = _region(pixels, box)
    shorter = min(region.shape[:2])
    if shorter < settings.refs.min_side_px:
        raise ImageRefused(
            RefReason.TOO_SMALL,
            f"face region is {region.shape[1]}x{region.shape[0]}; its shorter side must be "
            f"at least refs.min_side_px={settings.refs.min_side_px}",
        )
    if landmarks is not None and not inside(landmarks, int(width), int(height)):
        raise ImageRefused(
            RefReason.BAD_BOX,
            f"landmarks {np.round(landmarks, 1).tolist()} leave the {width}x{height} image; "
            "give x1,y1,...,x5,y5 in its pixels",
        )
    # Content-addressed: putting an image that is already stored is a no-op, so an
    # ``exists`` file changes nothing, and a refused one never got this far.
    original = blobs.put(encode_png(pixels))
    # The statistics shrink the region themselves (never enlarging it); the palette
    # histogram is taken at STATS_SIDE.
    small = st.resize_square(region, pal.STATS_SIDE)
    return Candidate(
        index=index,
        name=name,
        ref_id=ref_id_for(style, original),
        license=license_id,
        source=source,
        author=author,
        width=int(width),
        height=int(height),
        region_name=region_name,
        box=region_box,
        original=original,
        stats=st.measure(region),
        histogram=pal.lab_histograms(small),
        landmarks=None if landmarks is None else np.round(landmarks, 2).tolist(),
        landmarks_source=None if landmarks is None else HUMAN,
    )


def check_license(attribution: Attribution, refs: RefSettings) -> tuple[str, str | None]:
    if not attribution.license or not attribution.license.strip():
        raise LicenseRefused(
            RefReason.LICENSE_MISSING,
            "no license: give --license or a --sources CSV row for this file",
        )
    license_id, text = normalise_license(attribution.license)
    allowed = {a.lower(): a for a in refs.allowed_licenses}
    if license_id.lower() not in allowed:
        raise LicenseRefused(
            RefReason.LICENSE_NOT_ALLOWED,
            f"license {license_id!r} is not allowed; refs.allowed_licenses: "
            f"{', '.join(refs.allowed_licenses)}",
        )
    license_id = allowed[license_id.lower()]
    if license_id not in NO_CREDIT_NEEDED and not (attribution.author or "").strip():
        raise LicenseRefused(
            RefReason.ATTRIBUTION_MISSING,
            f"{license_id} requires crediting the author: give --author or a --sources row",
        )
    return license_id, text


def judge(
    candidates: Sequence[Candidate], existing: Sequence[Mapping[str, float]], refs: RefSettings
) -> None:
    """Give every candidate its style verdict against the style's active ``existing`` stats."""
    verdicts = st.judge(
        [c.stats for c in candidates],
        existing,
        z_limit=refs.outlier_z,
        min_size=refs.min_style_size,
    )
    for c, verdict in zip(candidates, verdicts, strict=True):
        c.verdict = verdict


def _region(pixels: RGBImage, box: Box | None) -> tuple[RGBImage, str, list[float]]:
    """The face region: the box (refused when it leaves the image) or the whole image."""
    height, width = pixels.shape[:2]
    if box is None:
        return pixels, "whole", [0.0, 0.0, float(width), float(height)]
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        raise ImageRefused(
            RefReason.BAD_BOX,
            f"box {box.as_list()} leaves the {width}x{height} image; give x1,y1,x2,y2 inside it",
        )
    region = crop(pixels, box.as_list())
    if 0 in region.shape[:2]:
        raise ImageRefused(RefReason.BAD_BOX, f"box {box.as_list()} is empty")
    return region, "box", box.as_list()


def crop(pixels: RGBImage, box: Sequence[float]) -> RGBImage:
    """The pixels inside ``box``; fractional edges grow outward to whole pixels."""
    x1, y1, x2, y2 = box
    height, width = pixels.shape[:2]
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    return np.ascontiguousarray(pixels[top:bottom, left:right])


# -- the call -----------------------------------------------------------------------------


def check_style(style: str) -> str:
    if not isinstance(style, str) or not _STYLE_PATTERN.match(style):
        raise InvalidRequest(
            f"style {style!r} is not a style name: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. 'pc' or 'renpy')"
        )
    return style


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in labels.items():
        try:
            label, normalised = check(name, value)
        except LabelError as exc:
            raise InvalidRequest(f"--label {name}={value}: {exc}") from None
        checked[label.value] = normalised
    return checked


def check_tags(tags: Sequence[str]) -> list[str]:
    clean = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
    long = [t for t in clean if len(t) > _MAX_TAG]
    if long:
        raise InvalidRequest(f"tag(s) longer than {_MAX_TAG} characters: {', '.join(long)}")
    return clean


# -- text ---------------------------------------------------------------------------------


def _with_license_text(source: str, license_text: str | None) -> str:
    """The source, with the license's full wording appended when it says more than its id.

    AnimeRef has no column for it, and it is attribution that must stay with the image.
    """
    if license_text is None:
        return source
    return truncate(f"{source} [license: {license_text}]", _MAX_TEXT)


def _limit(text: str, what: str, name: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_TEXT:
        raise InvalidRequest(
            f"{what} of {name} is {len(text)} characters; at most {_MAX_TEXT} are kept"
        )
    return text


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
