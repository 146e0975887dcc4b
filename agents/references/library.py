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

A person may overrule the check later: :meth:`RefLibrary.quarantine` takes an active
reference out of the index (with a reason), :meth:`RefLibrary.reinstate` puts a
quarantined one back; each records who and when on the reference and makes a new library
version, published like an ``add``'s.

A call that adds or quarantines anything makes a new library version. Order for crash
safety: blobs first (content-addressed, rewriting them is a no-op), then the immutable
index folder of the new version, then one SQL transaction that makes the version current.
A crash before the SQL leaves only unreferenced blobs and a folder no SQL row names; the
next call overwrites or ignores them.

This module ties the parts together: deciding about each file (license, decoding, face
region, style verdict) is :mod:`agents.references.admission`, the SQL rows of references,
labels and versions are :mod:`agents.references.catalog`; :meth:`RefLibrary.add` adds
the blobs, the embeddings and the vector index version.

Example::

    library = RefLibrary(settings)
    outcomes = library.add([Path("refs/pc")], style="pc", sources=read_sources(csv_path))
    [o.outcome for o in outcomes]          # ['added', 'added', 'quarantined', ...]
    library.styles()                       # {'pc': 9}
    library.list(style="pc", status="active")
"""

from __future__ import annotations

import fcntl
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image
from sqlalchemy import Engine

from agents.errors import InvalidRequest, RefRefused, StorageError
from agents.records import EMBED_SIZE, CleanImage, EmbedInput, RGBImage
from agents.references import geometry as geo
from agents.references import palette as pal
from agents.references import style as st
from agents.references.admission import (
    REF_NAMESPACE,
    Candidate,
    Outcome,
    RefOutcome,
    admit,
    check_labels,
    check_style,
    check_tags,
    crop,
    judge,
    ref_id_for,
)
from agents.references.catalog import ActiveRef, Catalog
from agents.references.geometry import Points
from agents.references.inputs import (
    Attribution,
    Box,
    RefInput,
    normalise_license,
    read_sources,
    sources_for,
)
from agents.references.overrides import StatusChange, check_by, check_reason
from agents.stages.imageio import encode_png, image_files
from agents.stores.blobs import BlobStore, open_blobs
from agents.stores.db import create_engine_for
from schemas.labels import LabelSource
from schemas.reasons import RefReason, RefStatus
from schemas.settings import Settings
from schemas.tables import AnimeRef, LibraryVersion, RefLabel

if TYPE_CHECKING:
    from agents.records import EmbeddingSpace
    from agents.stages.detect import FaceDetector
    from agents.stages.embed import Embedder
    from agents.stores.refindex import RefPoint

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


class RefLibrary:
    """The anime reference library: SQL rows, PNG blobs and one vector index per version.

    ``engine``, ``blobs`` and ``embedder`` default to what ``settings`` names; tests hand
    in their own. The embedder is built on first use (``add`` only); references are embedded
    with the embedder faces are, so that both land in one space (each library version
    records it, and the pairer refuses a version of another embedder).

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
        embedder: Embedder | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = Catalog(engine or create_engine_for(settings.sql_url))
        self.blobs = blobs or open_blobs(settings)
        self._embedder = embedder
        self._detector = detector

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            # Imported here: the models are only needed to add, not to list or count.
            from agents.stages.embed import build_embedder

            self._embedder = build_embedder(
                self.settings.models, self.settings.worker.embed_batch_size
            )
        return self._embedder

    @property
    def detector(self) -> FaceDetector:
        """The faces' detector, finding references' landmarks (built on first use)."""
        if self._detector is None:
            from agents.stages.detect import build_detector

            self._detector = build_detector(self.settings.models)
        return self._detector

    # -- reads (the catalog's) ------------------------------------------------------------

    def current_version(self) -> int | None:
        """The newest library version, or ``None`` before the first ``add``."""
        return self.catalog.current_version()

    def versions(self) -> list[LibraryVersion]:
        """Every library version, oldest first."""
        return self.catalog.versions()

    def styles(self) -> dict[str, int]:
        """Active references per style, for every style the library holds (0 included)."""
        return self.catalog.styles()

    def get(self, ref_id: str) -> AnimeRef | None:
        return self.catalog.get(ref_id)

    def labels_of(self, ref_id: str) -> list[RefLabel]:
        """The labels of one reference, by name then source."""
        return self.catalog.labels_of(ref_id)

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
        landmarks: Points | None = None,
        landmarks_of: Mapping[str, Points] | None = None,
    ) -> list[RefOutcome]:
        """Add reference images (files, folders or :class:`RefInput`) to ``style``.

        ``license``/``source``/``author`` override ``sources`` (see :func:`read_sources`)
        for every file; ``box`` is the face region of every file (else the whole image);
        ``tags`` and ``labels`` (human labels, ``{name: value}`` from
        :mod:`schemas.labels`) go to every file. ``landmarks`` (5 x 2 pixels, a person's)
        are those of every file, ``landmarks_of`` per file name or base name (see
        :func:`~agents.references.geometry.read_landmarks`); a file with neither gets the
        detector's, when it finds the face (:mod:`agents.references.geometry`). Returns one
        outcome per file, in order.
        """
        style = check_style(style)
        checked_labels = check_labels(labels or {})
        clean_tags = check_tags(tags)
        given = Attribution(license=license, source=source, author=author)
        inputs = self._inputs(items)
        outcomes: list[RefOutcome | None] = [None] * len(inputs)
        candidates: list[Candidate] = []
        for i, (name, item) in enumerate(inputs):
            base = item.attribution if isinstance(item, RefInput) else Attribution()
            attribution = given.over(sources_for(name, sources or {}).over(base))
            points = (landmarks_of or {}).get(name)
            if points is None:
                points = (landmarks_of or {}).get(Path(name).name, landmarks)
            try:
                candidates.append(
                    admit(
                        i,
                        name,
                        item,
                        style=style,
                        attribution=attribution,
                        box=box,
                        settings=self.settings,
                        blobs=self.blobs,
                        landmarks=points,
                    )
                )
            except RefRefused as refused:
                outcomes[i] = RefOutcome(
                    name, Outcome.REFUSED, style, reason=refused.reason, detail=refused.detail
                )
        candidates = self._drop_existing(candidates, outcomes, style)
        self._locate([c for c in candidates if c.landmarks is None])
        if candidates:
            version = self._store(candidates, style, clean_tags, checked_labels, note)
            for c in candidates:
                outcomes[c.index] = c.outcome(style, version)
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

    def _locate(self, candidates: list[Candidate]) -> None:
        """Give each candidate the landmarks the detector finds in its face region, if any.

        One detector batch at a time; a region with no face the detector is sure of keeps
        none (the cel-style drawings: MTCNN finds no face in them).
        """
        step = self.settings.worker.batch_size
        for start in range(0, len(candidates), step):
            chunk = candidates[start : start + step]
            regions = [CleanImage(self._region_of(c.original, c.box), "PNG") for c in chunk]
            found = self.detector.detect(regions)
            for c, detections in zip(chunk, found, strict=True):
                points = geo.find_landmarks(detections, c.box)
                if points is not None:
                    c.landmarks = np.round(points, 2).tolist()
                    c.landmarks_source = self.detector.name

    def _drop_existing(
        self, candidates: list[Candidate], outcomes: list[RefOutcome | None], style: str
    ) -> list[Candidate]:
        """Candidates not yet in the library (nor earlier in this call); the rest 'exists'."""
        stored = self.catalog.statuses(list(dict.fromkeys(c.ref_id for c in candidates)))
        fresh: list[Candidate] = []
        seen: dict[str, str] = {}
        for c in candidates:
            if c.ref_id in stored or c.ref_id in seen:
                where = (
                    f"stored as {stored[c.ref_id]}"
                    if c.ref_id in stored
                    else f"same image as {seen[c.ref_id]} in this call"
                )
                outcomes[c.index] = c.exists(style, where)
            else:
                seen[c.ref_id] = c.name
                fresh.append(c)
        return fresh

    def _store(
        self,
        candidates: list[Candidate],
        style: str,
        tags: list[str],
        labels: dict[str, str],
        note: str | None,
    ) -> int:
        """Judge, match, embed and store the candidates as one new library version."""
        # Imported here: qdrant-client takes over a second to import, and reading the
        # library (``list``, ``styles``) needs SQL only.
        from agents.stores.refindex import RefPoint

        with self._lock():
            existing = self.catalog.active_refs(style)
            judge(candidates, [self._stats_of(r) for r in existing], self.settings.refs)
            active = [c for c in candidates if not c.is_outlier]
            palette = self._palette(existing, [c.histogram for c in active])
            vectors = self._derive(candidates, palette)
            base = self.catalog.current_version()
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
            self._publish(
                version,
                base,
                points,
                (),
                self.embedder.space,
                lambda location: self.catalog.record_version(
                    candidates,
                    style=style,
                    tags=tags,
                    labels=labels,
                    note=note,
                    embedder=self.embedder.name,
                    base=base,
                    version=version,
                    location=location,
                ),
            )
        log.info(
            "reference library version %d: %d added, %d quarantined to style %r",
            version,
            len(active),
            len(candidates) - len(active),
            style,
        )
        return version

    def _publish(
        self,
        version: int,
        base: int | None,
        upserts: Sequence[RefPoint],
        deletes: Sequence[str],
        space: EmbeddingSpace,
        record: Callable[[str], None],
    ) -> None:
        """Make library version ``version``: its index first (``base`` plus ``upserts``
        minus ``deletes``), then ``record(location)``, the SQL transaction that makes it
        current, then the old index folders go.

        A crash between the index and SQL leaves a folder no row names: it is removed here
        before publishing (``publish_version`` would keep an existing one). Pruning comes
        after the commit, so the current version is always among those kept
        (``refs.keep_index_versions``); its failure is logged, as the version is made.
        """
        from agents.stores.refindex import discard_version, prune_versions, publish_version

        embedded = not self.settings.qdrant_url
        if embedded and discard_version(self.settings, version):
            log.warning("removed index version %d left by a writer that did not commit", version)
        record(publish_version(self.settings, version, base, upserts, deletes, space=space))
        if embedded:
            try:
                prune_versions(self.settings, keep=self.settings.refs.keep_index_versions)
            except StorageError as exc:
                log.warning("old reference index versions not pruned: %s", exc)

    def _palette(self, existing: list[ActiveRef], new: list[st.FloatArray]) -> pal.Palette | None:
        """The style's palette over its active references, the new ones included.

        Existing references are re-read from their original blobs, so the palette always
        reflects exactly the references that are active now (the review may change that).
        """
        histograms = list(new)
        for ref in existing:
            region = self._region_of(ref.original, ref.box)
            histograms.append(pal.lab_histograms(st.resize_square(region, pal.STATS_SIDE)))
        return pal.Palette.from_histograms(histograms) if histograms else None

    def _derive(
        self, candidates: list[Candidate], palette: pal.Palette | None
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Store every candidate's training version; embed the active ones (by ref id).

        One embedder batch at a time, so memory stays bounded on a bulk load.
        """
        vectors: dict[str, npt.NDArray[np.float32]] = {}
        step = self.embedder.batch_size
        for start in range(0, len(candidates), step):
            chunk = candidates[start : start + step]
            faces: dict[str, EmbedInput] = {}
            for c in chunk:
                square = pal.square_pad(self._region_of(c.original, c.box))
                training = (
                    pal.training_image(square, palette)
                    if c.landmarks is None
                    else geo.aligned_training_image(
                        self._original_pixels(c.original),
                        np.asarray(c.landmarks, dtype=np.float64),
                        palette,
                    )
                )
                c.training = self.blobs.put(encode_png(training))
                if not c.is_outlier:
                    faces[c.ref_id] = _embed_input(square)
            if faces:
                embedded = self.embedder.embed(list(faces.values()))
                vectors.update(zip(faces, embedded, strict=True))
        return vectors

    def _region_of(self, digest: str, box: Sequence[float]) -> RGBImage:
        return crop(self._original_pixels(digest), box)

    def _original_pixels(self, digest: str) -> RGBImage:
        try:
            with Image.open(io.BytesIO(self.blobs.read(digest))) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise StorageError(
                f"cannot read reference blob {digest} in {self.blobs.where}: {exc}"
            ) from exc

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One ``add`` at a time per data directory, from version number to commit.

        Two concurrent calls would otherwise both build index version N and the second
        would overwrite the first's folder; the SQL check in :meth:`Catalog.record_version`
        still catches writers on other machines sharing a PostgreSQL database.
        """
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.settings.run_dir / "refs-add.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _stats_of(self, ref: ActiveRef) -> dict[str, float]:
        """An active reference's style statistics; measured again from its original when
        they were stored by an older version of the style check (names it lacks)."""
        if not st.missing_statistics(ref.stats):
            return ref.stats
        return st.measure(self._region_of(ref.original, ref.box))

    # -- a person overrules the style check -----------------------------------------------

    def quarantine(self, ref: str, *, reason: str, by: str) -> StatusChange:
        """Take an active reference out of matching, for ``reason``, as a new library version.

        ``ref`` is a reference id or a unique prefix of 8+ characters. The new version's
        index no longer holds it; its row keeps everything and records reason ``by_hand``,
        ``reason`` as the detail, ``by`` and when. Pairs already made with it stay as they
        are (dataset snapshots leave out pairs whose reference is quarantined).

        Example::

            library.quarantine("3f2a9c1e", reason="a photo, not a drawing", by="alice")
        """
        return self._set_status(ref, RefStatus.QUARANTINED, check_reason(reason), check_by(by))

    def reinstate(self, ref: str, *, by: str) -> StatusChange:
        """Put a quarantined reference back into matching, as a new library version: its
        embedding (made as :meth:`add` makes it) goes into the new version's index.

        Example::

            library.reinstate("3f2a9c1e", by="alice")   # the check was wrong about it
        """
        return self._set_status(ref, RefStatus.ACTIVE, None, check_by(by))

    def _set_status(self, ref: str, status: RefStatus, reason: str | None, by: str) -> StatusChange:
        """The one path of both verbs, in :meth:`add`'s order: the index version first,
        then one SQL transaction that makes it current (a crash in between leaves a folder
        no SQL row names, which the next writer replaces)."""
        from agents.stores.refindex import RefPoint

        with self._lock():
            row = self.catalog.resolve(ref)
            previous = RefStatus(row.status)
            if previous == status:
                why = f" ({row.reason}: {row.detail})" if row.reason else ""
                raise InvalidRequest(f"reference {row.ref_id} is already {status.value}{why}")
            base = self.catalog.current_version()
            version = (base or 0) + 1
            upserts: list[RefPoint] = []
            deletes: list[str] = []
            code: RefReason | None
            detail: str | None
            if status == RefStatus.ACTIVE:
                upserts.append(RefPoint(row.ref_id, self._vector_of(row), self._payload_of(row)))
                code, detail = None, f"reinstated by hand; was {row.reason}: {row.detail}"
                note = f"refs reinstate {row.ref_id} by {by}"
            else:
                deletes.append(row.ref_id)
                code, detail = RefReason.BY_HAND, reason
                note = f"refs quarantine {row.ref_id} by {by}: {reason}"
            at = datetime.now(UTC)
            self._publish(
                version,
                base,
                upserts,
                deletes,
                self._space,
                lambda location: self.catalog.record_status(
                    row,
                    status=status,
                    reason=code,
                    detail=detail,
                    by=by,
                    at=at,
                    note=note,
                    base=base,
                    version=version,
                    location=location,
                ),
            )
        log.info("reference library version %d: %s", version, note)
        stored = self.catalog.get(row.ref_id)
        return StatusChange(
            ref_id=row.ref_id,
            style=row.style,
            status=status,
            previous=previous,
            reason=code,
            detail=None if stored is None else stored.detail,
            by=by,
            at=at,
            library_version=version,
        )

    @property
    def _space(self) -> EmbeddingSpace:
        """The embedding space of the library's index, without loading a model to know it."""
        if self._embedder is not None:
            return self._embedder.space
        from agents.stages.embed import embedder_space

        return embedder_space(self.settings.models)

    def _vector_of(self, ref: AnimeRef) -> npt.NDArray[np.float32]:
        """A stored reference's embedding, made from its original as :meth:`add` makes it."""
        square = pal.square_pad(self._region_of(ref.original, ref.box))
        vector: npt.NDArray[np.float32] = self.embedder.embed([_embed_input(square)])[0]
        return vector

    def _payload_of(self, ref: AnimeRef) -> dict[str, object]:
        """A stored reference's index payload, the same fields :meth:`add` gives it."""
        labels = {
            label.name: label.value
            for label in self.catalog.labels_of(ref.ref_id)
            if label.source == LabelSource.HUMAN
        }
        return {
            "style": ref.style,
            "tags": list(ref.tags),
            "labels": labels,
            "license": ref.license,
            "source": ref.source,
            "author": ref.author,
            "library_version": ref.library_version,
        }

    # Last in the class: a method named ``list`` hides the builtin from the annotations of
    # every method after it.
    def list(self, style: str | None = None, status: str | None = None) -> list[AnimeRef]:
        """References in the order they were added, optionally of one style and status."""
        return self.catalog.list(style, status)


def _embed_input(square: RGBImage) -> EmbedInput:
    """A reference's face region as an embedder reads it: the whole square is the face
    box (its region was chosen as the face), and its resized copy the aligned crop (a
    drawing has no landmarks our detector can be trusted to find)."""
    side = float(square.shape[0])
    return EmbedInput(square, (0.0, 0.0, side, side), st.resize_square(square, EMBED_SIZE))
