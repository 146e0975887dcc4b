"""An erased subject stays erased: uploads of theirs still on their way when the erasure ran
are refused ``subject_erased`` and store nothing, on SQLite and PostgreSQL.

The pipeline is the real one (MTCNN, the seeded embedder, the Qdrant local store, blobs);
the erasure runs where a test needs it through the detector's seam, so it commits while a
batch is between validate and store. The last two tests hold one side's transaction open
by hand and show the other side waits for it, then sees what it wrote.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from qdrant_client import QdrantClient
from records import face_row, valid_upload
from sqlalchemy import Engine, event, insert, select, text
from sqlmodel import SQLModel

from agents.erasure import Eraser, ErasureResult
from agents.errors import Rejected
from agents.pipeline import Incoming, IngestPipeline
from agents.records import CleanImage, Detection, ValidUpload
from agents.stages.anonymize import pseudonymize
from agents.stages.detect import FaceDetector, MtcnnDetector
from agents.stages.embed import InceptionEmbedder
from agents.stages.prepare import face_id_for
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for, for_writing
from agents.stores.repository import Repository
from agents.stores.tombstones import lock_subject, record_tombstone, tombstone_digest
from infra.waiting import wait_until
from schemas.erasure import ErasureRequest
from schemas.reasons import ReasonCode, Stage, UploadState
from schemas.rejections import Origin
from schemas.settings import Settings
from schemas.tables import Face, Subject, Tombstone, Upload
from schemas.uploads import Consent, DeclaredAttributes, ImagePayload, UploadEvent

REAL = Path(__file__).parents[1] / "data" / "real"
ERASED = "person-erased@example.com"
OTHER = "person-other@example.com"
DAY = timedelta(days=1)


def _table(model: type[SQLModel]) -> Any:
    return SQLModel.metadata.tables[str(model.__tablename__)]


def _event(photo: str | bytes, subject: str, granted_at: datetime) -> UploadEvent:
    data = photo if isinstance(photo, bytes) else (REAL / photo).read_bytes()
    return UploadEvent(
        upload_id=f"u-{uuid.uuid4().hex[:12]}",
        subject_id=subject,
        consent=Consent(version="1", scopes=["training"], granted_at=granted_at),
        image=ImagePayload(data=data),
        attributes=DeclaredAttributes(age=30, gender="female"),
        submitted_at=granted_at,
    )


@dataclass
class World:
    settings: Settings
    engine: Engine
    pipeline: IngestPipeline

    @property
    def key(self) -> bytes:
        return self.pipeline.pseudonym_key

    def pseudonym(self, raw: str) -> str:
        return pseudonymize(raw, self.key)

    def erase(self, raw: str, request_id: str | None = None) -> ErasureResult:
        eraser = Eraser.from_settings(self.settings, self.engine, self.pipeline.store.index.client)
        request = ErasureRequest(
            subject_id=raw,
            requested_by="privacy-office",
            requested_at=datetime.now(UTC),
            **({"request_id": request_id} if request_id else {}),
        )
        return eraser.erase_request(request, self.key)

    def rows(self, model: type[SQLModel]) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(select(_table(model)))]

    def upload(self, upload_id: str) -> dict[str, Any]:
        [row] = [u for u in self.rows(Upload) if u["upload_id"] == upload_id]
        return row

    def text(self) -> str:
        """Every value of every SQL row and every Qdrant point (id and payload)."""
        parts = [
            json.dumps(row, default=str)
            for model in SQLModel.metadata.sorted_tables
            for row in self._all(model.name)
        ]
        index = self.pipeline.store.index
        parts += [f"{fid} {json.dumps(p)}" for fid, p in index.payloads().items()]
        return "\n".join(parts)

    def _all(self, name: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            table = SQLModel.metadata.tables[name]
            return [dict(r._mapping) for r in connection.execute(select(table))]

    def crops_in_sql(self) -> set[str]:
        return {d for face in self.rows(Face) for d in (face["crop_256"], face["crop_512"])}

    def blobs(self) -> set[str]:
        return set(BlobStore(self.settings.blob_dir).digests())


@pytest.fixture
def world(
    sql_url: str,
    tmp_path: Path,
    detector: MtcnnDetector,
    embedder: InceptionEmbedder,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[World]:
    caplog.set_level(logging.DEBUG)
    settings = Settings(home=tmp_path / "home", database_url=sql_url)
    pipeline = IngestPipeline.build(settings, detector=detector, embedder=embedder)
    engine = create_engine_for(settings.sql_url)
    yield World(settings, engine, pipeline)
    pipeline.close()
    engine.dispose()


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        record.getMessage()
        for phase in ("setup", "call")
        for record in caplog.get_records(phase)  # type: ignore[arg-type]
    )


def test_an_upload_queued_before_the_erasure_is_refused_and_stores_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    [first] = world.pipeline.run(
        [Incoming(_event("london_001_neutral.jpg", ERASED, now - DAY).to_bytes())]
    )
    assert first.state is UploadState.ACCEPTED
    # Published before the erasure, consumed after it.
    queued = _event("london_004_neutral.jpg", ERASED, now - DAY)
    erased = world.erase(ERASED)
    assert (erased.outcome, erased.counts["faces"]) == ("erased", 1)
    blobs_after_erasure = world.blobs()

    origin = Origin(topic="uploads", partition=0, offset=7)
    [outcome] = world.pipeline.run([Incoming(queued.to_bytes(), origin=origin)])

    assert outcome.state is UploadState.REJECTED
    rejection = outcome.rejection
    assert rejection is not None
    assert (rejection.reason, rejection.stage) == (ReasonCode.SUBJECT_ERASED, Stage.VALIDATE)
    assert erased.erased_at.isoformat() in rejection.detail
    # The dead letter names no subject, and nothing is handed on to record one.
    assert rejection.subject is None
    assert "subject" not in json.loads(rejection.to_bytes())
    assert outcome.upload is None
    assert outcome.face is None
    row = world.upload(queued.upload_id)
    assert (row["state"], row["reason"], row["stage"], row["subject"]) == (
        UploadState.REJECTED,
        "subject_erased",
        "validate",
        None,
    )
    assert (row["origin_topic"], row["origin_offset"]) == ("uploads", 7)
    # Nothing of the subject came back: no face, point, crop, subject row or pseudonym.
    pseudonym = world.pseudonym(ERASED)
    assert world.pipeline.repository.faces_of_subject(pseudonym) == []
    assert world.pipeline.store.index.payloads([face_id_for(queued.upload_id)]) == {}
    assert world.blobs() == blobs_after_erasure
    assert world.rows(Subject) == []
    everything = world.text()
    for needle in (pseudonym, ERASED):
        assert needle not in everything
        assert needle not in _logged(caplog)
    # The tombstone is the one trace, and it is not the pseudonym.
    [tombstone] = world.rows(Tombstone)
    assert tombstone["subject_digest"] == tombstone_digest(pseudonym, world.key)
    assert tombstone["subject_digest"] != pseudonym
    assert tombstone["erased_at"] == erased.erased_at
    # A re-delivery changes nothing: the first terminal state stands.
    [again] = world.pipeline.run([Incoming(queued.to_bytes())])
    assert again.state is None


def test_a_consent_granted_after_the_erasure_is_ingested(world: World) -> None:
    before = datetime.now(UTC) - DAY
    queued = _event("london_004_neutral.jpg", ERASED, before)
    # Never seen: the erasure finds nothing, and still leaves the tombstone, so the
    # subject's first upload, queued before it, is refused too.
    nothing = world.erase(ERASED)
    assert nothing.outcome == "nothing_found"
    returned = _event("london_001_neutral.jpg", ERASED, datetime.now(UTC))
    assert returned.consent.granted_at > nothing.erased_at

    outcomes = world.pipeline.run([Incoming(queued.to_bytes()), Incoming(returned.to_bytes())])

    assert [o.rejection.reason if o.rejection else o.state for o in outcomes] == [
        ReasonCode.SUBJECT_ERASED,
        UploadState.ACCEPTED,
    ]
    face = outcomes[1].face
    assert face is not None
    assert face.subject == world.pseudonym(ERASED)
    [subject] = world.rows(Subject)
    assert subject["consent_granted_at"] == returned.consent.granted_at
    assert world.upload(queued.upload_id)["subject"] is None


def test_erasing_twice_keeps_one_tombstone_and_moves_it_forward(world: World) -> None:
    first = world.erase(ERASED, request_id="er-1")
    again = world.erase(ERASED, request_id="er-1")
    later = world.erase(ERASED, request_id="er-2")

    assert again.already
    assert again.erased_at == first.erased_at
    assert (later.outcome, later.already) == ("nothing_found", False)
    assert later.erased_at > first.erased_at
    [tombstone] = world.rows(Tombstone)
    assert tombstone["erased_at"] == later.erased_at
    assert set(later.counts.values()) == {0}


class _ErasesOnDetect:
    """The real detector, which first erases a subject (once) and finds no face in images
    ``blind`` pixels wide: the erasure commits after the batch was validated."""

    def __init__(self, inner: FaceDetector, world: World, raw: str, blind: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.world = world
        self.raw = raw
        self.blind = blind
        self.result: ErasureResult | None = None

    def detect(self, images: Sequence[CleanImage]) -> list[list[Detection]]:
        if self.result is None:
            self.result = self.world.erase(self.raw)
        found = self.inner.detect(images)
        return [
            [] if image.width == self.blind else faces
            for image, faces in zip(images, found, strict=True)
        ]


def test_an_erasure_between_validate_and_store_stores_nothing(world: World) -> None:
    now = datetime.now(UTC)
    [first] = world.pipeline.run(
        [Incoming(_event("london_001_neutral.jpg", ERASED, now - DAY).to_bytes())]
    )
    assert first.state is UploadState.ACCEPTED
    stored = _event("london_004_neutral.jpg", ERASED, now - DAY)
    odd = io.BytesIO()
    Image.open(REAL / "london_007_neutral.jpg").resize((333, 333)).save(odd, "JPEG")
    faceless = _event(odd.getvalue(), ERASED, now - DAY)
    other = _event("london_013_neutral.jpg", OTHER, now - DAY)
    real = world.pipeline.detector
    erasing = _ErasesOnDetect(real, world, ERASED, blind=333)
    world.pipeline.detector = erasing
    try:
        outcomes = world.pipeline.run([Incoming(e.to_bytes()) for e in (stored, faceless, other)])
    finally:
        world.pipeline.detector = real

    assert erasing.result is not None
    assert (erasing.result.outcome, erasing.result.counts["faces"]) == ("erased", 1)
    assert [o.rejection.reason if o.rejection else o.state for o in outcomes] == [
        ReasonCode.SUBJECT_ERASED,
        ReasonCode.NO_FACE,
        UploadState.ACCEPTED,
    ]
    # The store refused the face in its transaction, and took back its point and crops.
    refused = outcomes[0].rejection
    assert refused is not None
    assert refused.stage is Stage.STORE
    assert refused.subject is None
    assert world.upload(stored.upload_id)["subject"] is None
    assert world.pipeline.store.index.payloads([face_id_for(stored.upload_id)]) == {}
    # Rejected for another reason: recorded as the erasure leaves uploads, unattributed.
    row = world.upload(faceless.upload_id)
    assert (row["state"], row["reason"], row["subject"], row["detail"]) == (
        UploadState.ERASED,
        "no_face",
        None,
        None,
    )
    # Only the other subject is left, in SQL, in Qdrant and in the blob store.
    pseudonym = world.pseudonym(ERASED)
    assert [s["pseudonym"] for s in world.rows(Subject)] == [world.pseudonym(OTHER)]
    assert [f["subject"] for f in world.rows(Face)] == [world.pseudonym(OTHER)]
    assert world.blobs() == world.crops_in_sql()
    assert pseudonym not in world.text()


# -- the two transactions, one held open by hand ------------------------------------------

KEY = b"pseudonym-key"
SUBJECT = pseudonymize("app-user-7", KEY)
GRANTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class _Killed(BaseException):
    """The worker dying (SIGKILL) after a face's point and crops are written and before its
    SQL commit: nothing below the pipeline catches it."""


def _killed_before_commit(world: World, queued: UploadEvent) -> set[str]:
    """Run ``queued`` until its SQL commit and stop there; the crops it left behind."""
    before = world.blobs()
    store = world.pipeline.store
    recording = store.repository.record_accepted

    def killed(*args: Any, **kwargs: Any) -> None:
        raise _Killed

    store.repository.record_accepted = killed  # type: ignore[method-assign]
    try:
        with pytest.raises(_Killed):
            world.pipeline.run([Incoming(queued.to_bytes())])
    finally:
        store.repository.record_accepted = recording  # type: ignore[method-assign]
    left = world.blobs() - before
    face_id = face_id_for(queued.upload_id)
    assert len(left) == 2  # the 256 and 512 px crops, named by the point written first
    assert store.index.payloads([face_id])[face_id]["crops"] == sorted(left)
    assert world.crops_in_sql().isdisjoint(left)
    return left


def test_an_erasure_removes_a_face_written_but_never_recorded(world: World) -> None:
    queued = _event("london_004_neutral.jpg", ERASED, datetime.now(UTC) - DAY)
    left = _killed_before_commit(world, queued)

    world.erase(ERASED)

    assert world.blobs().isdisjoint(left)
    assert world.pipeline.store.index.payloads([face_id_for(queued.upload_id)]) == {}
    [again] = world.pipeline.run([Incoming(queued.to_bytes())])
    assert again.rejection is not None
    assert again.rejection.reason is ReasonCode.SUBJECT_ERASED
    assert world.blobs().isdisjoint(left)


def test_a_redelivery_refused_at_validate_takes_back_what_it_wrote_before(world: World) -> None:
    # The erasure committed after this upload was validated and before its point was
    # written: it could not see the point; the redelivery, refused at validate, removes it.
    queued = _event("london_004_neutral.jpg", ERASED, datetime.now(UTC) - DAY)
    left = _killed_before_commit(world, queued)
    digest = tombstone_digest(world.pseudonym(ERASED), world.key)
    with for_writing(world.engine).begin() as connection:
        record_tombstone(connection, digest, datetime.now(UTC))

    [outcome] = world.pipeline.run([Incoming(queued.to_bytes())])

    assert outcome.rejection is not None
    assert outcome.rejection.reason is ReasonCode.SUBJECT_ERASED
    assert world.blobs().isdisjoint(left)
    assert world.pipeline.store.index.payloads([face_id_for(queued.upload_id)]) == {}


def _upload(upload_id: str = "u-1") -> ValidUpload:
    return valid_upload(upload_id, SUBJECT, consent_granted_at=GRANTED, submitted_at=GRANTED)


def _face(upload: ValidUpload) -> Face:
    return face_row(upload, face_id=face_id_for(upload.upload_id), embedder="test")


@contextmanager
def _waits_for_the_lock(engine: Engine) -> Iterator[None]:
    """Hold until another thread has asked for the subject's lock this test holds (SQLite's
    ``BEGIN IMMEDIATE``; PostgreSQL's advisory lock, seen waiting in ``pg_locks``): from
    then on it cannot go on before this test's transaction ends."""
    asked = threading.Event()

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread() is not threading.main_thread() and (
            "BEGIN IMMEDIATE" in statement or "pg_advisory_xact_lock" in statement
        ):
            asked.set()

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield
        wait_until(asked.is_set, deadline_s=30, what="the other side asking for the lock")
        if engine.dialect.name == "postgresql":
            waiting = text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            with engine.connect() as connection:
                wait_until(
                    lambda: connection.execute(waiting).scalar_one() > 0,
                    deadline_s=30,
                    what="the other side waiting for the advisory lock",
                )
    finally:
        event.remove(engine, "before_cursor_execute", seen)


class _Running:
    """A call on another thread, and what it returned or raised."""

    def __init__(self, call: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,))
        self.thread.start()

    def _run(self, call: Any) -> None:
        try:
            self.value = call()
        except BaseException as exc:  # handed to the test thread
            self.error = exc


def test_the_recording_transaction_waits_for_an_erasure_in_progress(engine: Engine) -> None:
    repository = Repository(engine, pseudonym_key=KEY)
    upload = _upload()
    digest = tombstone_digest(SUBJECT, KEY)
    with for_writing(engine).begin() as erasure:
        # The erasure's transaction, before its commit: lock taken, tombstone written.
        lock_subject(erasure, digest)
        record_tombstone(erasure, digest, GRANTED + DAY)
        with _waits_for_the_lock(engine):
            recording = _Running(lambda: repository.record_accepted(upload, _face(upload), []))
        assert recording.thread.is_alive(), "the face was recorded during the erasure"
    recording.thread.join(timeout=30)

    assert isinstance(recording.error, Rejected)
    assert (recording.error.reason, recording.error.stage) == (
        ReasonCode.SUBJECT_ERASED,
        Stage.STORE,
    )
    with engine.connect() as connection:
        for model in (Face, Upload, Subject):
            assert list(connection.execute(select(_table(model)))) == []
    # A consent granted after the erasure is recorded.
    later = dataclasses.replace(_upload("u-2"), consent_granted_at=GRANTED + 2 * DAY)
    assert repository.record_accepted(later, _face(later), [])


def test_an_erasure_waits_for_a_face_being_recorded_and_erases_it(
    engine: Engine, tmp_path: Path
) -> None:
    upload = _upload()
    eraser = Eraser(
        engine, QdrantClient(":memory:"), BlobStore(tmp_path / "blobs"), tmp_path, key=KEY
    )
    with for_writing(engine).begin() as recording:
        # The store's transaction, before its commit: lock taken, face written.
        lock_subject(recording, tombstone_digest(SUBJECT, KEY))
        recording.execute(
            insert(_table(Subject)).values(
                pseudonym=SUBJECT,
                first_seen_at=GRANTED,
                consent_version="1",
                consent_scopes=["training"],
                consent_granted_at=GRANTED,
            )
        )
        recording.execute(
            insert(_table(Upload)).values(
                upload_id=upload.upload_id,
                subject=SUBJECT,
                state=UploadState.ACCEPTED,
                finished_at=GRANTED,
            )
        )
        recording.execute(insert(_table(Face)).values(**_face(upload).model_dump()))
        with _waits_for_the_lock(engine):
            erasing = _Running(
                lambda: eraser.erase(
                    SUBJECT, request_id="er-1", requested_by="t", requested_at=GRANTED
                )
            )
        assert erasing.thread.is_alive(), "the erasure committed during the recording"
    erasing.thread.join(timeout=60)

    assert erasing.error is None
    result: ErasureResult = erasing.value
    # It planned again once the face was committed, and erased it.
    assert (result.outcome, result.counts["faces"], result.counts["uploads"]) == ("erased", 1, 1)
    with engine.connect() as connection:
        assert list(connection.execute(select(_table(Face)))) == []
        assert list(connection.execute(select(_table(Subject)))) == []
