"""The ingestion chain over a batch: validate → anonymize → detect → quality → align →
embed → store, with one bad upload never failing the others.

Detection and embedding run batched (they are 97% of the work); the rest is per upload.
Every input ends as exactly one :class:`Outcome`: accepted (stored), rejected (with a
reason, not yet recorded: the caller publishes it to the dead-letter topic first, then
calls :meth:`IngestPipeline.record_rejections`), or skipped because the upload already
reached a terminal state (a re-delivery).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from agents.errors import Rejected, StorageError
from agents.records import (
    EMBED_SIZE,
    AlignedFace,
    CleanImage,
    Detection,
    EmbedInput,
    QualityReport,
    ValidUpload,
)
from agents.sink import DuplicateRule, FaceStore
from agents.stages.align import align
from agents.stages.anonymize import read_image, strip_identity
from agents.stages.appearance import appearance_labels
from agents.stages.detect import FaceDetector
from agents.stages.embed import Embedder, build_embedder
from agents.stages.imageio import decode_image
from agents.stages.label import measured_labels
from agents.stages.prepare import PreparedFace, face_id_for, prepare_face
from agents.stages.quality import assess
from agents.stages.validate import check_not_erased, upload_id_of, validate
from agents.stores.repository import Repository
from schemas.reasons import ReasonCode, Stage, UploadState
from schemas.rejections import Origin, Rejection
from schemas.settings import Settings
from schemas.tables import Face

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Incoming:
    """One raw record as read from the topic (or handed in directly)."""

    raw: bytes
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    upload_id: str
    state: UploadState | None
    """None: the upload had already finished; nothing was done"""
    face: Face | None = None
    rejection: Rejection | None = None
    upload: ValidUpload | None = None


@dataclass(slots=True)
class _Item:
    incoming: Incoming
    upload_id: str = ""
    upload: ValidUpload | None = None
    image: CleanImage | None = None
    faces: list[Detection] = field(default_factory=list)
    report: QualityReport | None = None
    aligned: AlignedFace | None = None
    vector: npt.NDArray[np.float32] | None = None
    prepared: PreparedFace | None = None
    face: Face | None = None
    rejected: Rejected | None = None
    skipped: bool = False

    @property
    def live(self) -> bool:
        return not self.skipped and self.rejected is None

    def reject(self, caught: Rejected) -> None:
        """End this upload with ``caught``'s reason, keeping a copy that was never raised.

        Why a copy: a caught exception's traceback holds the frames it passed through, and
        their callers' (``f_back``), whose locals hold the whole batch; kept on the item it
        is a reference cycle that pins the batch's images and crops until a full garbage
        collection, rare in a worker with half a million long-lived objects. In the soak
        (5 % bad uploads, so a rejection in nearly every batch) that was ~250 MiB of
        resident memory per 1,000 uploads (RELIABILITY.md, "Soak").
        """
        self.rejected = Rejected(caught.reason, caught.stage, caught.detail)


class StageTimes:
    """Cumulative wall time per stage, for benchmarks and the worker's periodic log."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.uploads = 0

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def per_upload_ms(self) -> dict[str, float]:
        n = max(self.uploads, 1)
        return {stage: 1000 * s / n for stage, s in self.seconds.items()}


class IngestPipeline:
    """Turns raw upload records into stored faces or reasoned rejections.

    Example::

        pipeline = IngestPipeline.build(settings)
        outcomes = pipeline.run([Incoming(event.to_bytes())])
        outcomes[0].state   # UploadState.ACCEPTED
    """

    def __init__(
        self,
        *,
        settings: Settings,
        detector: FaceDetector,
        embedder: Embedder,
        store: FaceStore,
        repository: Repository,
        pseudonym_key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.embedder = embedder
        self.store = store
        self.repository = repository
        self._key = pseudonym_key
        self._clock = clock
        self.times = StageTimes()
        self._pool = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="encode"
        )

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        detector: FaceDetector | None = None,
        embedder: Embedder | None = None,
    ) -> IngestPipeline:
        """Load the models (unless given, already loaded) and open every store the
        settings name; the faces collection is the embedder's own."""
        # Imported here so that importing this module stays cheap for the CLI.
        import torch

        from agents.stages.detect import build_detector
        from agents.stores.blobs import open_blobs
        from agents.stores.db import create_engine_for
        from agents.stores.faces import FaceIndex
        from agents.stores.keys import checked_pseudonym_key
        from schemas.migrate import upgrade

        if settings.models.torch_threads:
            torch.set_num_threads(settings.models.torch_threads)
        settings.home.mkdir(parents=True, exist_ok=True)
        upgrade(settings.sql_url)
        engine = create_engine_for(settings.sql_url)
        # Before any model loads: a key other than the one the stored subjects were
        # pseudonymized under fails the start, with what to do (agents.stores.keys).
        pseudonym_key = checked_pseudonym_key(settings, engine)
        # With the key, the repository reads the tombstones of erased subjects.
        repository = Repository(engine, pseudonym_key=pseudonym_key)
        models = settings.models
        log.info(
            "loading models: detector %s, embedder %s, torch threads %d",
            models.detector,
            embedder.name if embedder else models.embedder,
            torch.get_num_threads(),
        )
        embedder = embedder or build_embedder(models, settings.worker.embed_batch_size)
        # A random-init embedder's identity distances mean nothing: duplicates are then
        # decided on appearance alone, and no face is flagged.
        informative = not embedder.random_init
        store = FaceStore(
            open_blobs(settings),
            FaceIndex.from_settings(settings, embedder.space),
            repository,
            duplicates=DuplicateRule.from_settings(
                settings.worker, identity_informative=informative
            ),
            mismatch_distance=settings.worker.identity_mismatch_distance if informative else None,
            link_distance=settings.worker.identity_link_distance if informative else None,
        )
        return cls(
            settings=settings,
            detector=detector or build_detector(models),
            embedder=embedder,
            store=store,
            repository=repository,
            pseudonym_key=pseudonym_key,
        )

    @property
    def pseudonym_key(self) -> bytes:
        """The key subjects are pseudonymized under (checked against the database by
        :meth:`build`); the ``erase`` agent turns raw ids into pseudonyms with it too."""
        return self._key

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.index.close()

    # -- the chain -----------------------------------------------------------------------

    def run(self, batch: Sequence[Incoming]) -> list[Outcome]:
        """:meth:`process` then :meth:`record_rejections`, for callers without a DLQ."""
        outcomes = self.process(batch)
        self.record_rejections(outcomes)
        return outcomes

    def process(self, batch: Sequence[Incoming]) -> list[Outcome]:
        items = [_Item(incoming) for incoming in batch]
        now = self._clock()
        with self.times.measure("validate"):
            self._validate(items, now)
        with self.times.measure("anonymize"):
            for item in self._live(items):
                self._guard(item, Stage.ANONYMIZE, self._anonymize)
        with self.times.measure("detect"):
            self._detect(items)
        with self.times.measure("quality"):
            for item in self._live(items):
                self._guard(item, Stage.QUALITY, self._assess)
        with self.times.measure("align"):
            for item in self._live(items):
                self._guard(item, Stage.ALIGN, self._align)
        with self.times.measure("embed"):
            self._embed(items)
        with self.times.measure("store"):
            self._prepare(items)
            # Writes are sequential on purpose: each face must see the one stored just
            # before it, so two copies of one photo in the same batch are duplicates.
            for item in self._live(items):
                self._guard(item, Stage.STORE, self._store)
        self.times.uploads += len(items)
        return [self._outcome(item, now) for item in items]

    def record_rejections(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.rejection is not None:
                self.repository.record_rejected(outcome.rejection, outcome.upload)

    # -- steps ---------------------------------------------------------------------------

    def _validate(self, items: list[_Item], now: datetime) -> None:
        for item in items:
            try:
                event = validate(item.incoming.raw, now)
            except Rejected as rejected:
                item.upload_id = upload_id_of(item.incoming.raw)
                item.reject(rejected)
                continue
            item.upload_id = event.upload_id
            item.upload = strip_identity(event, self._key)
        seen: set[str] = set()
        finished = self.repository.finished({item.upload_id for item in items})
        for item in items:
            # A re-delivered or re-published upload changes nothing: the first terminal
            # state stands. Within one batch, the first copy decides.
            if item.upload_id in finished or item.upload_id in seen:
                item.skipped = True
            seen.add(item.upload_id)
        self._refuse_erased([item for item in items if item.live])

    def _refuse_erased(self, items: list[_Item]) -> None:
        """Reject the uploads of subjects erased after their consent was granted (one
        tombstone query for the batch); the store checks again in its transaction."""
        uploads = [(item, _require(item.upload)) for item in items]
        if not uploads:
            return
        erased = self.repository.erasures({upload.subject for _, upload in uploads})
        for item, upload in uploads:
            try:
                check_not_erased(upload.consent_granted_at, erased.get(upload.subject))
            except Rejected as rejected:
                item.reject(rejected)
                # Its point, if a worker was killed between writing it and taking it back
                # (agents.sink.FaceStore.store), goes now; an id with no point costs nothing.
                self.store.discard(face_id_for(item.upload_id))

    def _anonymize(self, item: _Item) -> None:
        data = read_image(_require(item.upload), self.settings.limits, self.settings.uri_roots)
        item.image = decode_image(data, self.settings.limits)

    def _detect(self, items: list[_Item]) -> None:
        live = list(self._live(items))
        size = self.settings.worker.batch_size
        for start in range(0, len(live), size):
            self._batched(live[start : start + size], Stage.DETECT, self._detect_all)

    def _detect_all(self, items: Sequence[_Item]) -> None:
        found = self.detector.detect([_require(item.image) for item in items])
        for item, faces in zip(items, found, strict=True):
            item.faces = faces

    def _assess(self, item: _Item) -> None:
        item.report = assess(_require(item.image), item.faces, self.settings.quality)

    def _align(self, item: _Item) -> None:
        report = _require(item.report)
        item.aligned = align(_require(item.image), report.face.landmarks)

    def _embed(self, items: list[_Item]) -> None:
        self._batched(list(self._live(items)), Stage.EMBED, self._embed_all)

    def _embed_all(self, items: Sequence[_Item]) -> None:
        # Each embedder reads its part: dlib the image and the detector's box (it aligns
        # with its own predictor), InceptionResnetV1 the tight aligned crop.
        faces = [
            EmbedInput(
                _require(item.image).pixels,
                _require(item.report).face.box,
                _require(item.aligned).crops[EMBED_SIZE],
            )
            for item in items
        ]
        vectors = self.embedder.embed(faces)
        for item, vector in zip(items, vectors, strict=True):
            item.vector = vector

    def _batched(
        self, items: list[_Item], stage: Stage, step: Callable[[Sequence[_Item]], None]
    ) -> None:
        """Run a model over a batch; if the batched call fails, retry one upload at a time,
        so only the upload that breaks it is rejected, never its neighbours."""
        if not items:
            return
        try:
            step(items)
        except StorageError:
            raise
        except Exception as exc:
            log.warning(
                "batched %s failed (%s: %s); retrying %d uploads one by one",
                stage.value,
                type(exc).__name__,
                exc,
                len(items),
            )
            for item in items:
                self._guard(item, stage, lambda one: step([one]))

    def _prepare(self, items: list[_Item]) -> None:
        """PNG-encode every crop of the batch on all cores (zlib releases the GIL)."""
        live = list(self._live(items))
        futures = [self._pool.submit(prepare_face, _require(i.aligned)) for i in live]
        for item, future in zip(live, futures, strict=True):
            self._guard(item, Stage.STORE, partial(_collect_prepared, future))

    def _store(self, item: _Item) -> None:
        item.face = self.store.store(
            _require(item.upload),
            _require(item.image),
            _require(item.report),
            _require(item.aligned),
            _require(item.vector),
            _require(item.prepared),
            detector=self.detector.name,
            embedder=self.embedder.name,
            embedder_sha256=self.embedder.weights_sha256,
            random_init=self.embedder.random_init,
            measured=measured_labels(_require(item.report))
            + appearance_labels(_require(item.report), _require(item.aligned), item.image),
            origin=item.incoming.origin,
        )

    # -- bookkeeping ---------------------------------------------------------------------

    @staticmethod
    def _live(items: list[_Item]) -> Iterator[_Item]:
        return (item for item in items if item.live)

    def _guard(self, item: _Item, stage: Stage, step: Callable[[_Item], None]) -> None:
        """Run one upload's step: a rejection or an unexpected error ends only that upload;
        a storage failure stops everything (the record is re-delivered after restart)."""
        try:
            step(item)
        except Rejected as rejected:
            item.reject(rejected)
        except StorageError:
            raise
        except Exception as exc:
            origin = item.incoming.origin
            log.exception(
                "unexpected error at %s for upload %s (%s)",
                stage.value,
                item.upload_id,
                f"{origin.topic}[{origin.partition}]@{origin.offset}" if origin else "direct",
            )
            item.rejected = Rejected(
                ReasonCode.INTERNAL_ERROR, stage, f"{type(exc).__name__}: {exc}"[:500]
            )

    def _outcome(self, item: _Item, now: datetime) -> Outcome:
        if item.skipped:
            return Outcome(item.upload_id, None)
        if item.rejected is not None:
            # Nothing ties an erased subject's upload to them again: no pseudonym on the
            # dead letter, and no subject recorded with the rejection.
            erased = item.rejected.reason is ReasonCode.SUBJECT_ERASED
            upload = None if erased else item.upload
            rejection = Rejection(
                upload_id=item.upload_id,
                reason=item.rejected.reason,
                stage=item.rejected.stage,
                detail=item.rejected.detail[:1024],
                subject=upload.subject if upload else None,
                origin=item.incoming.origin,
                rejected_at=now,
            )
            return Outcome(item.upload_id, UploadState.REJECTED, rejection=rejection, upload=upload)
        return Outcome(item.upload_id, UploadState.ACCEPTED, face=item.face, upload=item.upload)


def _collect_prepared(future: Future[PreparedFace], item: _Item) -> None:
    item.prepared = future.result()


def _require(value: T | None) -> T:
    """Narrow an optional filled by an earlier stage; None here is a bug in the chain."""
    if value is None:
        raise RuntimeError("pipeline stage ran before the stage that feeds it")
    return value
