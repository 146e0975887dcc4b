"""The anime reference library: what ``s2a refs add`` stores and what the other parts read.

Every file given to :meth:`RefLibrary.add` ends with exactly one :class:`RefOutcome`:

* ``refused`` (a :class:`RefReason`): license missing or not allowed, credit missing,
  decode error, over the upload limits, a bad ``box``, a face region too small. Nothing
  of it is stored.
* ``exists``: the same image (by the SHA-256 of its metadata-free PNG) is already in the
  library under that style; nothing changes, so re-running a command is harmless.
* ``quarantined`` (``style_outlier``): stored in SQL and the blob store, but not in the
  vector index, because a style statistic is far from the style's (see
  :mod:`agents.references.style`). It never mixes into a style's matches.
* ``added``: active, stored and in the index.

A call that adds or quarantines anything makes a new library version. Order for crash
safety: blobs first (content-addressed, rewriting them is a no-op), then the immutable
index folder of the new version, then one SQL transaction that makes the version current.
A crash before the SQL leaves only unreferenced blobs and a folder no SQL row names; the
next call overwrites or ignores them.

Example::

    library = RefLibrary(settings)
    outcomes = library.add([Path("refs/pc")], style="pc", sources=read_sources(csv_path))
    [o.outcome for o in outcomes]          # ['added', 'added', 'quarantined', ...]
    library.styles()                       # {'pc': 9}
    library.list(style="pc", status="active")
"""

from __future__ import annotations

import fcntl
import logging
import math
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from sqlalchemy import Connection, Engine, Table, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from agents.errors import Rejected, StorageError
from agents.records import EMBED_SIZE, RGBImage
from agents.references import style as st
from agents.references.errors import (
    ImageRefused,
    InvalidRequest,
    LicenseRefused,
    RefReason,
    RefRefused,
    VersionConflict,
)
from agents.references.inputs import (
    NO_CREDIT_NEEDED,
    Attribution,
    Box,
    RefInput,
    normalise_license,
    read_sources,
    sources_for,
)
from agents.stages.imageio import decode_image, encode_png, image_files, read_bounded
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for, for_writing, sql_errors
from schemas.labels import LabelError, LabelSource, check
from schemas.reasons import ReasonCode, RefStatus
from schemas.settings import Settings
from schemas.tables import AnimeRef, LibraryVersion, RefLabel

if TYPE_CHECKING:
    from agents.stages.embed import FaceEmbedder

log = logging.getLogger(__name__)

__all__ = [
    "REF_NAMESPACE",
    "Attribution",
    "Box",
    "Outcome",
    "RefInput",
    "RefLibrary",
    "RefOutcome",
    "normalise_license",
    "read_sources",
    "ref_id_for",
]

_VERSIONS: Table = SQLModel.metadata.tables[LibraryVersion.__tablename__]
_REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]
_REF_LABELS: Table = SQLModel.metadata.tables[RefLabel.__tablename__]

#: Namespace of reference ids: ``uuid5(REF_NAMESPACE, "<style>:<sha256 of original PNG>")``.
REF_NAMESPACE = uuid.UUID("6f1c2b7e-3d4a-5b8c-9e0f-a1b2c3d4e5f6")


_STYLE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_TEXT = 512
_MAX_DETAIL = 1024
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


# -- licenses and the sources CSV ---------------------------------------------------------


@dataclass(slots=True)
class _Candidate:
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


@dataclass(frozen=True, slots=True)
class _ActiveRef:
    ref_id: str
    stats: dict[str, float]
    original: str
    box: list[float]


class RefLibrary:
    """The anime reference library: SQL rows, PNG blobs and one vector index per version.

    ``engine``, ``blobs`` and ``embedder`` default to what ``settings`` names; tests hand
    in their own. The embedder is built on first use (``add`` only).

    Example::

        library = RefLibrary(settings)
        library.add([Path("sylvie.png")], style="renpy", license="MIT", author="Deji",
                    source="Ren'Py The Question", tags=["sprite"], labels={"gender": "female"})
        library.current_version()     # 1
        library.list(style="renpy")   # [AnimeRef(...)]
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        blobs: BlobStore | None = None,
        embedder: FaceEmbedder | None = None,
    ) -> None:
        self.settings = settings
        self._engine = engine or create_engine_for(settings.sql_url)
        self._writer = for_writing(self._engine)
        self.blobs = blobs or BlobStore(settings.blob_dir)
        self._embedder = embedder

    @property
    def embedder(self) -> FaceEmbedder:
        if self._embedder is None:
            # Imported here: torch is only needed to add, not to list or count references.
            from agents.stages.embed import FaceEmbedder

            models = self.settings.models
            self._embedder = FaceEmbedder(
                models.embedder_weights,
                models.embedder_seed,
                self.settings.worker.embed_batch_size,
            )
        return self._embedder

    # -- reads ----------------------------------------------------------------------------

    def current_version(self) -> int | None:
        """The newest library version, or ``None`` before the first ``add``."""
        with sql_errors("current_version"), self._engine.connect() as connection:
            return _max_version(connection)

    def versions(self) -> list[LibraryVersion]:
        """Every library version, oldest first."""
        with sql_errors("versions"), self._engine.connect() as connection:
            rows = connection.execute(select(_VERSIONS).order_by(_VERSIONS.c.version)).mappings()
            return [LibraryVersion.model_validate(dict(row)) for row in rows]

    def styles(self) -> dict[str, int]:
        """Active references per style, for every style the library holds (0 included)."""
        active = func.sum(case((_REFS.c.status == RefStatus.ACTIVE, 1), else_=0))
        statement = select(_REFS.c.style, active).group_by(_REFS.c.style).order_by(_REFS.c.style)
        with sql_errors("styles"), self._engine.connect() as connection:
            return {style: int(n or 0) for style, n in connection.execute(statement)}

    def get(self, ref_id: str) -> AnimeRef | None:
        with sql_errors("get"), self._engine.connect() as connection:
            row = connection.execute(select(_REFS).where(_REFS.c.ref_id == ref_id)).mappings()
            found = row.first()
        return None if found is None else AnimeRef.model_validate(dict(found))

    def labels_of(self, ref_id: str) -> list[RefLabel]:
        """The labels of one reference, by name then source."""
        statement = (
            select(_REF_LABELS)
            .where(_REF_LABELS.c.ref_id == ref_id)
            .order_by(_REF_LABELS.c.name, _REF_LABELS.c.source)
        )
        with sql_errors("labels_of"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [RefLabel.model_validate(dict(row)) for row in rows]

    # -- add ------------------------------------------------------------------------------

    def add(
        self,
        items: Sequence[Path | RefInput],
        *,
        style: str,
        license: str | None = None,
        source: str | None = None,
        author: str | None = None,
        box: Box | None = None,
        tags: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        sources: Mapping[str, Attribution] | None = None,
        note: str | None = None,
    ) -> list[RefOutcome]:
        """Add reference images (files, folders or :class:`RefInput`) to ``style``.

        ``license``/``source``/``author`` override ``sources`` (see :func:`read_sources`)
        for every file; ``box`` is the face region of every file (else the whole image);
        ``tags`` and ``labels`` (human labels, ``{name: value}`` from
        :mod:`schemas.labels`) go to every file. Returns one outcome per file, in order.
        """
        style = _check_style(style)
        checked_labels = _check_labels(labels or {})
        clean_tags = _check_tags(tags)
        given = Attribution(license=license, source=source, author=author)
        inputs = self._inputs(items)
        outcomes: list[RefOutcome | None] = [None] * len(inputs)
        candidates: list[_Candidate] = []
        for i, (name, item) in enumerate(inputs):
            base = item.attribution if isinstance(item, RefInput) else Attribution()
            attribution = given.over(sources_for(name, sources or {}).over(base))
            try:
                candidates.append(self._prepare(i, name, item, style, attribution, box))
            except RefRefused as refused:
                outcomes[i] = RefOutcome(
                    name, Outcome.REFUSED, style, reason=refused.reason, detail=refused.detail
                )
        candidates = self._drop_existing(candidates, outcomes, style)
        if candidates:
            version = self._store(candidates, style, clean_tags, checked_labels, note)
            for c in candidates:
                outcomes[c.index] = _outcome_of(c, style, version)
        return [o for o in outcomes if o is not None]

    def _inputs(self, items: Sequence[Path | RefInput]) -> list[tuple[str, Path | RefInput]]:
        paths = [item for item in items if isinstance(item, Path)]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise InvalidRequest(f"no such file or folder: {', '.join(missing)}")
        expanded: list[tuple[str, Path | RefInput]] = []
        for item in items:
            if isinstance(item, RefInput):
                expanded.append((item.name, item))
            else:
                expanded.extend((str(p), p) for p in image_files([item]))
        return expanded

    def _prepare(
        self,
        index: int,
        name: str,
        item: Path | RefInput,
        style: str,
        attribution: Attribution,
        box: Box | None,
    ) -> _Candidate:
        """Every refusal check of one file, cheapest first; the candidate if all pass."""
        license_id, license_text = self._check_license(attribution)
        source = _with_license_text(
            _limit(attribution.source or f"file:{Path(name).name}", "source", name),
            license_text,
        )
        author = _limit(attribution.author or "", "author", name)
        limits = self.settings.limits
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
        if shorter < self.settings.refs.min_side_px:
            raise ImageRefused(
                RefReason.TOO_SMALL,
                f"face region is {region.shape[1]}x{region.shape[0]}; its shorter side must be "
                f"at least refs.min_side_px={self.settings.refs.min_side_px}",
            )
        # Content-addressed: putting an image that is already stored is a no-op, so an
        # ``exists`` file changes nothing, and a refused one never got this far.
        original = self.blobs.put(encode_png(pixels))
        small = st.resize_square(region, st.STATS_SIDE)
        return _Candidate(
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
            stats=st.measure(small),
            histogram=st.lab_histograms(small),
        )

    def _check_license(self, attribution: Attribution) -> tuple[str, str | None]:
        if not attribution.license or not attribution.license.strip():
            raise LicenseRefused(
                RefReason.LICENSE_MISSING,
                "no license: give --license or a --sources CSV row for this file",
            )
        license_id, text = normalise_license(attribution.license)
        allowed = {a.lower(): a for a in self.settings.refs.allowed_licenses}
        if license_id.lower() not in allowed:
            raise LicenseRefused(
                RefReason.LICENSE_NOT_ALLOWED,
                f"license {license_id!r} is not allowed; refs.allowed_licenses: "
                f"{', '.join(self.settings.refs.allowed_licenses)}",
            )
        license_id = allowed[license_id.lower()]
        if license_id not in NO_CREDIT_NEEDED and not (attribution.author or "").strip():
            raise LicenseRefused(
                RefReason.ATTRIBUTION_MISSING,
                f"{license_id} requires crediting the author: give --author or a --sources row",
            )
        return license_id, text

    def _drop_existing(
        self, candidates: list[_Candidate], outcomes: list[RefOutcome | None], style: str
    ) -> list[_Candidate]:
        """Candidates not yet in the library (nor earlier in this call); the rest 'exists'."""
        ids = list(dict.fromkeys(c.ref_id for c in candidates))
        stored: dict[str, str] = {}
        if ids:
            statement = select(_REFS.c.ref_id, _REFS.c.status).where(_REFS.c.ref_id.in_(ids))
            with sql_errors("existing refs"), self._engine.connect() as connection:
                stored = {ref_id: status for ref_id, status in connection.execute(statement)}
        fresh: list[_Candidate] = []
        seen: dict[str, str] = {}
        for c in candidates:
            if c.ref_id in stored or c.ref_id in seen:
                where = (
                    f"stored as {stored[c.ref_id]}"
                    if c.ref_id in stored
                    else f"same image as {seen[c.ref_id]} in this call"
                )
                outcomes[c.index] = RefOutcome(
                    c.name,
                    Outcome.EXISTS,
                    style,
                    ref_id=c.ref_id,
                    detail=f"already in style {style!r} ({where})",
                    license=c.license,
                    region=c.region_name,
                )
            else:
                seen[c.ref_id] = c.name
                fresh.append(c)
        return fresh

    def _store(
        self,
        candidates: list[_Candidate],
        style: str,
        tags: list[str],
        labels: dict[str, str],
        note: str | None,
    ) -> int:
        """Judge, match, embed and store the candidates as one new library version."""
        # Imported here: qdrant-client takes over a second to import, and reading the
        # library (``list``, ``styles``) needs SQL only.
        from agents.stores.refindex import RefPoint, publish_version

        refs = self.settings.refs
        with self._lock():
            existing = self._active_refs(style)
            verdicts = st.judge(
                [c.stats for c in candidates],
                [r.stats for r in existing],
                z_limit=refs.outlier_z,
                min_size=refs.min_style_size,
            )
            for c, verdict in zip(candidates, verdicts, strict=True):
                c.verdict = verdict
            active = [c for c in candidates if not _is_outlier(c)]
            palette = self._palette(existing, [c.histogram for c in active])
            vectors = self._derive(candidates, palette)
            base = self.current_version()
            version = (base or 0) + 1
            points = [
                RefPoint(
                    ref_id=c.ref_id,
                    vector=vectors[c.ref_id],
                    payload={
                        "style": style,
                        "tags": list(tags),
                        "labels": dict(labels),
                        "license": c.license,
                        "source": c.source,
                        "author": c.author,
                        "library_version": version,
                    },
                )
                for c in active
            ]
            self._discard_orphan(version)
            location = publish_version(self.settings, version, base, points)
            self._commit(candidates, style, tags, labels, note, base, version, location)
        log.info(
            "reference library version %d: %d added, %d quarantined to style %r",
            version,
            len(active),
            len(candidates) - len(active),
            style,
        )
        return version

    def _discard_orphan(self, version: int) -> None:
        """Remove an index folder of ``version`` that no SQL row names.

        Only an ``add`` that crashed between publishing and committing leaves one; its
        content is not this call's, and ``publish_version`` would keep an existing folder.
        """
        from agents.stores.refindex import MANIFEST, version_dir

        if self.settings.qdrant_url:
            return
        folder = version_dir(self.settings, version)
        if not folder.exists():
            return
        log.warning("removing index folder %s left by an add that did not commit", folder)
        try:
            # The manifest first: a half-removed folder is never taken for a complete one.
            (folder / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(folder)
        except OSError as exc:
            raise StorageError(f"cannot remove the uncommitted index {folder}: {exc}") from exc

    def _active_refs(self, style: str) -> list[_ActiveRef]:
        statement = (
            select(_REFS.c.ref_id, _REFS.c.stats, _REFS.c.original, _REFS.c.box)
            .where(_REFS.c.style == style, _REFS.c.status == RefStatus.ACTIVE)
            .order_by(_REFS.c.ref_id)
        )
        with sql_errors("active refs"), self._engine.connect() as connection:
            return [
                _ActiveRef(ref_id, dict(stats), original, list(box))
                for ref_id, stats, original, box in connection.execute(statement)
            ]

    def _palette(self, existing: list[_ActiveRef], new: list[st.FloatArray]) -> st.Palette | None:
        """The style's palette over its active references, the new ones included.

        Existing references are re-read from their original blobs, so the palette always
        reflects exactly the references that are active now (the review may change that).
        """
        histograms = list(new)
        for ref in existing:
            region = self._region_of(ref.original, ref.box)
            histograms.append(st.lab_histograms(st.resize_square(region, st.STATS_SIDE)))
        return st.Palette.from_histograms(histograms) if histograms else None

    def _derive(
        self, candidates: list[_Candidate], palette: st.Palette | None
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Store every candidate's training version; embed the active ones (by ref id).

        One embedder batch at a time, so memory stays bounded on a bulk load.
        """
        vectors: dict[str, npt.NDArray[np.float32]] = {}
        step = self.embedder.batch_size
        for start in range(0, len(candidates), step):
            chunk = candidates[start : start + step]
            crops: dict[str, RGBImage] = {}
            for c in chunk:
                square = st.square_pad(self._region_of(c.original, c.box))
                c.training = self.blobs.put(encode_png(st.training_image(square, palette)))
                if not _is_outlier(c):
                    crops[c.ref_id] = st.resize_square(square, EMBED_SIZE)
            if crops:
                embedded = self.embedder.embed(list(crops.values()))
                vectors.update(zip(crops, embedded, strict=True))
        return vectors

    def _region_of(self, digest: str, box: Sequence[float]) -> RGBImage:
        return _crop(self._original_pixels(digest), box)

    def _original_pixels(self, digest: str) -> RGBImage:
        path = self.blobs.path(digest)
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise StorageError(f"cannot read reference blob {digest} at {path}: {exc}") from exc

    def _commit(
        self,
        candidates: list[_Candidate],
        style: str,
        tags: list[str],
        labels: dict[str, str],
        note: str | None,
        base: int | None,
        version: int,
        location: str,
    ) -> None:
        now = datetime.now(UTC)
        active = sum(not _is_outlier(c) for c in candidates)
        version_row = {
            "version": version,
            "created_at": now,
            "added": active,
            "quarantined": len(candidates) - active,
            "note": _truncate(note or f"refs add: style {style}, {len(candidates)} file(s)", 512),
            "index_location": location,
        }
        ref_rows = [_ref_row(c, style, tags, self.embedder.name, version, now) for c in candidates]
        label_rows = [
            {
                "ref_id": c.ref_id,
                "name": name,
                "value": value,
                "source": LabelSource.HUMAN.value,
                "confidence": 1.0,
                "created_at": now,
            }
            for c in candidates
            for name, value in labels.items()
        ]
        with sql_errors(f"commit of library version {version}"):
            try:
                with self._writer.begin() as connection:
                    current = _max_version(connection)
                    if current != base:
                        raise VersionConflict(
                            f"library version {current} appeared while version {version} was "
                            "being built; run the command again"
                        )
                    connection.execute(_VERSIONS.insert(), version_row)
                    connection.execute(_REFS.insert(), ref_rows)
                    if label_rows:
                        connection.execute(_REF_LABELS.insert(), label_rows)
            except IntegrityError as exc:
                raise VersionConflict(
                    f"another refs add committed version {version} or one of these images "
                    f"first; run the command again ({type(exc.orig).__name__})"
                ) from exc

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One ``add`` at a time per data directory, from version number to commit.

        Two concurrent calls would otherwise both build index version N and the second
        would overwrite the first's folder; the SQL check in :meth:`_commit` still catches
        writers on other machines sharing a PostgreSQL database.
        """
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.settings.run_dir / "refs-add.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # Last in the class: a method named ``list`` hides the builtin from the annotations of
    # every method after it.
    def list(self, style: str | None = None, status: str | None = None) -> list[AnimeRef]:
        """References in the order they were added, optionally of one style and status."""
        if status is not None and status not in (RefStatus.ACTIVE, RefStatus.QUARANTINED):
            known = ", ".join(RefStatus)
            raise InvalidRequest(f"status {status!r} is not one of {known}")
        statement = select(_REFS).order_by(
            _REFS.c.library_version, _REFS.c.added_at, _REFS.c.ref_id
        )
        if style is not None:
            statement = statement.where(_REFS.c.style == style)
        if status is not None:
            statement = statement.where(_REFS.c.status == status)
        with sql_errors("list"), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [AnimeRef.model_validate(dict(row)) for row in rows]


# -- helpers ------------------------------------------------------------------------------


def _is_outlier(candidate: _Candidate) -> bool:
    return candidate.verdict is not None and candidate.verdict.is_outlier


def _outcome_of(c: _Candidate, style: str, version: int) -> RefOutcome:
    verdict = c.verdict or st.Verdict(score=None)
    quarantined = verdict.is_outlier
    return RefOutcome(
        c.name,
        Outcome.QUARANTINED if quarantined else Outcome.ADDED,
        style,
        ref_id=c.ref_id,
        reason=RefReason.STYLE_OUTLIER if quarantined else None,
        detail=verdict.detail,
        license=c.license,
        region=c.region_name,
        outlier_score=verdict.score,
        library_version=version,
    )


def _ref_row(
    c: _Candidate, style: str, tags: list[str], embedder: str, version: int, now: datetime
) -> dict[str, Any]:
    verdict = c.verdict or st.Verdict(score=None)
    return {
        "ref_id": c.ref_id,
        "style": style,
        "status": RefStatus.QUARANTINED if verdict.is_outlier else RefStatus.ACTIVE,
        "reason": RefReason.STYLE_OUTLIER.value if verdict.is_outlier else None,
        "detail": None if verdict.detail is None else _truncate(verdict.detail, _MAX_DETAIL),
        "original": c.original,
        "training": c.training,
        "region": c.region_name,
        "box": c.box,
        "width": c.width,
        "height": c.height,
        "license": c.license,
        "source": c.source,
        "author": c.author,
        "tags": list(tags),
        "stats": c.stats,
        "outlier_score": verdict.score,
        "embedder": embedder,
        "library_version": version,
        "added_at": now,
    }


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
    region = _crop(pixels, box.as_list())
    if 0 in region.shape[:2]:
        raise ImageRefused(RefReason.BAD_BOX, f"box {box.as_list()} is empty")
    return region, "box", box.as_list()


def _crop(pixels: RGBImage, box: Sequence[float]) -> RGBImage:
    """The pixels inside ``box``; fractional edges grow outward to whole pixels."""
    x1, y1, x2, y2 = box
    height, width = pixels.shape[:2]
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    return np.ascontiguousarray(pixels[top:bottom, left:right])


def _check_style(style: str) -> str:
    if not isinstance(style, str) or not _STYLE_PATTERN.match(style):
        raise InvalidRequest(
            f"style {style!r} is not a style name: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. 'pc' or 'renpy')"
        )
    return style


def _check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in labels.items():
        try:
            label, normalised = check(name, value)
        except LabelError as exc:
            raise InvalidRequest(f"--label {name}={value}: {exc}") from None
        checked[label.value] = normalised
    return checked


def _check_tags(tags: Sequence[str]) -> list[str]:
    clean = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
    long = [t for t in clean if len(t) > _MAX_TAG]
    if long:
        raise InvalidRequest(f"tag(s) longer than {_MAX_TAG} characters: {', '.join(long)}")
    return clean


def _with_license_text(source: str, license_text: str | None) -> str:
    """The source, with the license's full wording appended when it says more than its id.

    AnimeRef has no column for it, and it is attribution that must stay with the image.
    """
    if license_text is None:
        return source
    return _truncate(f"{source} [license: {license_text}]", _MAX_TEXT)


def _limit(text: str, what: str, name: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_TEXT:
        raise InvalidRequest(
            f"{what} of {name} is {len(text)} characters; at most {_MAX_TEXT} are kept"
        )
    return text


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _max_version(connection: Connection) -> int | None:
    value = connection.execute(select(func.max(_VERSIONS.c.version))).scalar()
    return None if value is None else int(value)
