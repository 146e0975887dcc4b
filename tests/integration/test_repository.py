"""The Repository on a migrated SQLite file and a migrated PostgreSQL database."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from records import face_row, valid_upload
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from agents.errors import StorageError
from agents.records import ValidUpload
from agents.stores.db import create_engine_for, for_writing
from agents.stores.repository import Repository
from schemas.engine import SQLITE_BUSY_TIMEOUT_MS
from schemas.reasons import ReasonCode, Stage, UploadState
from schemas.rejections import Origin, Rejection
from schemas.tables import Face, Label, Subject, Upload

GRANTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SUBMITTED = datetime(2026, 1, 2, 9, 30, tzinfo=UTC)
ALICE = "a" * 64
BOB = "b" * 64

MakeUpload = Callable[..., ValidUpload]
MakeFace = Callable[..., Face]
MakeLabels = Callable[..., list[Label]]
MakeRejection = Callable[..., Rejection]


@pytest.fixture
def repository(engine: Engine) -> Repository:
    return Repository(engine)


@pytest.fixture
def make_upload() -> MakeUpload:
    def make(upload_id: str = "u-1", subject: str = ALICE, **changes: Any) -> ValidUpload:
        defaults = {
            "consent_version": "2026-01",
            "submitted_at": SUBMITTED,
            "image_data": b"not used by the repository",
        }
        return valid_upload(upload_id, subject, **{**defaults, **changes})

    return make


@pytest.fixture
def make_face() -> MakeFace:
    def make(upload: ValidUpload, **changes: Any) -> Face:
        return face_row(
            upload, **{"created_at": datetime(2026, 1, 2, 9, 31, tzinfo=UTC), **changes}
        )

    return make


@pytest.fixture
def make_labels() -> MakeLabels:
    def make(face: Face, names: tuple[str, ...] = ("glasses", "yaw")) -> list[Label]:
        return [
            Label(
                face_id=face.face_id,
                name=name,
                value=f"{name}-value",
                source="measured",
                confidence=0.5 + i / 10,
                created_at=face.created_at,
            )
            for i, name in enumerate(names)
        ]

    return make


@pytest.fixture
def make_rejection() -> MakeRejection:
    def make(upload_id: str = "u-1", **changes: Any) -> Rejection:
        values: dict[str, Any] = {
            "upload_id": upload_id,
            "reason": ReasonCode.BLURRY,
            "stage": Stage.QUALITY,
            "detail": "sharpness 12.0 below 40.0",
            "rejected_at": datetime(2026, 1, 2, 10, 0, tzinfo=UTC),
        }
        values.update(changes)
        return Rejection(**values)

    return make


def _subjects(engine: Engine) -> list[Subject]:
    with Session(engine) as session:
        return list(session.exec(select(Subject)).all())


def _row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("subjects", "uploads", "faces", "labels")
        }


# -- accepted -------------------------------------------------------------------------------


def test_record_accepted_stores_upload_subject_face_and_labels(
    repository: Repository,
    engine: Engine,
    make_upload: MakeUpload,
    make_face: MakeFace,
    make_labels: MakeLabels,
) -> None:
    upload = make_upload(license="CC-BY-4.0")
    face = make_face(upload)
    before = datetime.now(UTC)

    assert repository.record_accepted(
        upload, face, make_labels(face), Origin(topic="t", partition=2, offset=41)
    )

    (row,) = repository.list_uploads()
    assert (row.upload_id, row.state, row.subject, row.reason) == ("u-1", "accepted", ALICE, None)
    assert (row.source, row.license, row.consent_version) == ("selfie", "CC-BY-4.0", "2026-01")
    assert (row.origin_topic, row.origin_partition, row.origin_offset) == ("t", 2, 41)
    assert row.submitted_at == SUBMITTED
    assert row.submitted_at is not None
    assert row.submitted_at.tzinfo == UTC
    assert before <= row.finished_at <= datetime.now(UTC)

    stored = repository.get_face(face.face_id)
    assert stored is not None
    assert stored.model_dump() == face.model_dump()
    assert stored.created_at.tzinfo == UTC
    assert repository.faces_of_subject(ALICE) == [stored]

    labels = repository.labels_of_face(face.face_id)
    assert [(label.name, label.value, label.confidence) for label in labels] == [
        ("glasses", "glasses-value", 0.5),
        ("yaw", "yaw-value", 0.6),
    ]
    assert all(label.id is not None for label in labels)

    (subject,) = _subjects(engine)
    assert (subject.pseudonym, subject.consent_version, subject.consent_scopes) == (
        ALICE,
        "2026-01",
        ["training"],
    )


def test_record_accepted_twice_changes_nothing(
    repository: Repository,
    engine: Engine,
    make_upload: MakeUpload,
    make_face: MakeFace,
    make_labels: MakeLabels,
) -> None:
    upload = make_upload()
    face = make_face(upload)
    assert repository.record_accepted(upload, face, make_labels(face))
    first = repository.list_uploads()
    counts = _row_counts(engine)

    # A re-delivery processed again yields a new face id and other labels: still a no-op.
    again = make_face(upload, face_id="face-other", detector="retinaface")
    newer_consent = make_upload(
        consent_version="2026-02", consent_granted_at=GRANTED + timedelta(days=5)
    )
    assert not repository.record_accepted(newer_consent, again, make_labels(again, ("age",)))

    assert repository.list_uploads() == first
    assert _row_counts(engine) == counts
    assert repository.get_face("face-other") is None
    assert [label.name for label in repository.labels_of_face(face.face_id)] == ["glasses", "yaw"]
    assert _subjects(engine)[0].consent_version == "2026-01"


def test_accepted_upload_with_foreign_rows_is_refused(
    repository: Repository,
    engine: Engine,
    make_upload: MakeUpload,
    make_face: MakeFace,
    make_labels: MakeLabels,
) -> None:
    upload = make_upload()
    face = make_face(upload)

    with pytest.raises(ValueError, match=r"face\.upload_id"):
        repository.record_accepted(upload, make_face(make_upload("u-2")), [])
    with pytest.raises(ValueError, match=r"face\.subject"):
        repository.record_accepted(upload, make_face(upload, subject=BOB), [])
    with pytest.raises(ValueError, match=r"labels\[0\]\.face_id"):
        repository.record_accepted(upload, face, make_labels(make_face(upload, face_id="f-x")))
    with pytest.raises(ValueError, match="naive"):
        repository.record_accepted(upload, make_face(upload, created_at=datetime(2026, 1, 1)), [])

    assert _row_counts(engine) == {"subjects": 0, "uploads": 0, "faces": 0, "labels": 0}


def test_duplicate_labels_roll_back_the_whole_upload(
    repository: Repository,
    engine: Engine,
    make_upload: MakeUpload,
    make_face: MakeFace,
    make_labels: MakeLabels,
) -> None:
    """One transaction: a failing label insert leaves no upload, face or subject behind."""
    upload = make_upload()
    face = make_face(upload)

    with pytest.raises(StorageError, match="record_accepted of upload 'u-1'"):
        repository.record_accepted(upload, face, make_labels(face, ("yaw", "yaw")))

    assert _row_counts(engine) == {"subjects": 0, "uploads": 0, "faces": 0, "labels": 0}
    assert repository.finished(["u-1"]) == set()


# -- rejected -------------------------------------------------------------------------------


def test_record_rejected_twice_changes_nothing(
    repository: Repository, engine: Engine, make_upload: MakeUpload, make_rejection: MakeRejection
) -> None:
    upload = make_upload()
    assert repository.record_rejected(make_rejection(), upload)
    first = repository.list_uploads()

    later = make_rejection(reason=ReasonCode.NO_FACE, stage=Stage.DETECT, detail="none")
    assert not repository.record_rejected(later, upload)
    assert not repository.record_rejected(later, None)

    assert repository.list_uploads() == first
    (row,) = first
    assert (row.state, row.reason, row.stage) == ("rejected", "blurry", "quality")
    assert row.detail == "sharpness 12.0 below 40.0"
    assert row.finished_at == datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
    assert _row_counts(engine) == {"subjects": 1, "uploads": 1, "faces": 0, "labels": 0}


def test_rejected_upload_can_not_become_accepted_nor_the_reverse(
    repository: Repository,
    make_upload: MakeUpload,
    make_face: MakeFace,
    make_labels: MakeLabels,
    make_rejection: MakeRejection,
) -> None:
    rejected, accepted = make_upload("u-rej"), make_upload("u-acc")
    assert repository.record_rejected(make_rejection("u-rej"), rejected)
    assert repository.record_accepted(accepted, make_face(accepted), [])

    face = make_face(rejected)
    assert not repository.record_accepted(rejected, face, make_labels(face))
    assert not repository.record_rejected(make_rejection("u-acc"), accepted)

    states = {row.upload_id: row.state for row in repository.list_uploads()}
    assert states == {"u-rej": UploadState.REJECTED, "u-acc": UploadState.ACCEPTED}
    assert repository.get_face(face.face_id) is None


def test_rejection_without_a_valid_upload_links_no_subject(
    repository: Repository, engine: Engine, make_rejection: MakeRejection
) -> None:
    rejection = make_rejection(
        "bad-1",
        reason=ReasonCode.NO_CONSENT,
        stage=Stage.VALIDATE,
        subject=ALICE,
        origin=Origin(topic="s2a.uploads", partition=0, offset=7),
        # Stored as the same instant in UTC.
        rejected_at=datetime(2026, 1, 2, 12, 0, tzinfo=timezone(timedelta(hours=2))),
    )

    assert repository.record_rejected(rejection, None)

    (row,) = repository.list_uploads()
    assert (row.subject, row.source, row.consent_version, row.submitted_at) == (None,) * 4
    assert (row.origin_topic, row.origin_partition, row.origin_offset) == ("s2a.uploads", 0, 7)
    assert row.finished_at == datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
    assert row.finished_at.tzinfo == UTC
    assert _subjects(engine) == []


def test_rejection_for_another_upload_is_refused(
    repository: Repository, make_upload: MakeUpload, make_rejection: MakeRejection
) -> None:
    with pytest.raises(ValueError, match="rejection is for upload 'u-2'"):
        repository.record_rejected(make_rejection("u-2"), make_upload("u-1"))
    assert repository.finished(["u-1", "u-2"]) == set()


# -- subjects -------------------------------------------------------------------------------


def test_subject_upsert_keeps_one_row_with_the_latest_consent(
    repository: Repository, engine: Engine, make_upload: MakeUpload, make_rejection: MakeRejection
) -> None:
    expires = GRANTED + timedelta(days=365)
    assert repository.record_rejected(make_rejection("u-1"), make_upload("u-1"))
    (first,) = _subjects(engine)

    renewed = make_upload(
        "u-2",
        consent_version="2026-02",
        consent_scopes=("training", "research"),
        consent_granted_at=GRANTED + timedelta(days=30),
        consent_expires_at=expires,
    )
    assert repository.record_rejected(make_rejection("u-2"), renewed)
    # An older upload finishing last must not roll the consent back.
    assert repository.record_rejected(make_rejection("u-3"), make_upload("u-3"))

    (subject,) = _subjects(engine)
    assert subject.consent_version == "2026-02"
    assert subject.consent_scopes == ["training", "research"]
    assert subject.consent_granted_at.replace(tzinfo=UTC) == GRANTED + timedelta(days=30)
    assert subject.consent_expires_at is not None
    assert subject.consent_expires_at.replace(tzinfo=UTC) == expires
    assert subject.first_seen_at == first.first_seen_at
    assert {row.consent_version for row in repository.list_uploads()} == {"2026-01", "2026-02"}


# -- integrity ------------------------------------------------------------------------------


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    now = datetime.now(UTC)
    orphan_upload = Upload(
        upload_id="u-x", subject="nobody", state=UploadState.ACCEPTED, finished_at=now
    )
    orphan_label = Label(
        face_id="no-face", name="n", value="v", source="human", confidence=1.0, created_at=now
    )

    for orphan in (orphan_upload, orphan_label):
        with Session(engine) as session:
            session.add(orphan)
            with pytest.raises(IntegrityError):
                session.commit()

    assert _row_counts(engine) == {"subjects": 0, "uploads": 0, "faces": 0, "labels": 0}


def test_concurrent_double_insert_ends_as_a_no_op(
    repository: Repository, engine: Engine, make_upload: MakeUpload, make_rejection: MakeRejection
) -> None:
    """Two workers record the same upload at once; the second must return False, not fail.

    Another connection holds an uncommitted accepted row for the upload. On PostgreSQL the
    repository's existence check cannot see it, so its own insert must wait for that
    transaction and then lose on the primary key; on SQLite it waits for the write lock.
    """
    upload = make_upload()
    now = datetime.now(UTC)
    holder = engine.connect()
    try:
        transaction = holder.begin()
        holder.execute(
            sa.insert(Subject),
            {
                "pseudonym": ALICE,
                "first_seen_at": now,
                "consent_version": "2026-01",
                "consent_scopes": ["training"],
                "consent_granted_at": GRANTED,
            },
        )
        holder.execute(
            sa.insert(Upload),
            {
                "upload_id": upload.upload_id,
                "subject": ALICE,
                "state": UploadState.ACCEPTED,
                "finished_at": now,
            },
        )
        with ThreadPoolExecutor(1) as pool:
            racing = pool.submit(repository.record_rejected, make_rejection(), upload)
            if engine.dialect.name == "postgresql":
                _wait_until_blocked_on_a_lock(engine)
            transaction.commit()
            recorded = racing.result(timeout=60)
    finally:
        holder.close()

    assert recorded is False
    (row,) = repository.list_uploads()
    assert (row.state, row.reason) == (UploadState.ACCEPTED, None)
    assert repository.counts() == {"accepted": 1, "rejected": 0, "erased": 0}


def _wait_until_blocked_on_a_lock(engine: Engine) -> None:
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 30
    with engine.connect() as watcher:
        while watcher.execute(query).scalar_one() == 0:
            watcher.rollback()  # a fresh snapshot of pg_stat_activity on the next query
            if time.monotonic() > deadline:
                pytest.fail("the racing insert never waited on the holder's lock")


# -- reads ----------------------------------------------------------------------------------


def test_counts_reason_counts_and_listing(
    repository: Repository,
    make_upload: MakeUpload,
    make_face: MakeFace,
    make_rejection: MakeRejection,
) -> None:
    assert repository.counts() == {"accepted": 0, "rejected": 0, "erased": 0}
    assert repository.reason_counts() == {}
    assert repository.list_uploads() == []

    hour = timedelta(hours=1)
    start = datetime.now(UTC) - 10 * hour
    rejections = [
        ("r-1", ReasonCode.NO_FACE, start + 3 * hour),
        ("r-2", ReasonCode.BLURRY, start + 1 * hour),
        ("r-3", ReasonCode.BLURRY, start + 2 * hour),
        ("r-4", ReasonCode.DECODE_ERROR, start + 4 * hour),
    ]
    for upload_id, reason, at in rejections:
        assert repository.record_rejected(make_rejection(upload_id, reason=reason, rejected_at=at))
    for upload_id in ("a-1", "a-2"):  # finished "now", after every rejection
        upload = make_upload(upload_id, subject=BOB)
        assert repository.record_accepted(upload, make_face(upload), [])

    assert repository.counts() == {"accepted": 2, "rejected": 4, "erased": 0}
    reasons = repository.reason_counts()
    assert reasons == {"blurry": 2, "decode_error": 1, "no_face": 1}
    assert next(iter(reasons)) == "blurry"

    order = [row.upload_id for row in repository.list_uploads()]
    assert order[:4] == ["r-2", "r-3", "r-1", "r-4"]
    assert sorted(order[4:]) == ["a-1", "a-2"]
    assert [row.upload_id for row in repository.list_uploads(UploadState.REJECTED)] == order[:4]
    assert [row.upload_id for row in repository.list_uploads(UploadState.REJECTED, limit=2)] == [
        "r-1",
        "r-4",
    ]
    assert repository.list_uploads(UploadState.ERASED) == []
    assert repository.list_uploads(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        repository.list_uploads(limit=-1)
    assert [face.upload_id for face in repository.faces_of_subject(BOB)] == ["a-1", "a-2"]
    assert repository.faces_of_subject(ALICE) == []


def test_finished_reports_only_terminal_uploads(
    repository: Repository, make_rejection: MakeRejection
) -> None:
    done = {f"u-{i}" for i in range(0, 1200, 7)}
    for upload_id in sorted(done):
        assert repository.record_rejected(make_rejection(upload_id))

    asked = [f"u-{i}" for i in range(1200)] + ["u-0"]  # more than one IN chunk, a repeat

    assert repository.finished(asked) == done
    assert repository.finished([]) == set()
    assert repository.finished(iter(["u-7", "missing"])) == {"u-7"}


def test_database_failures_become_storage_errors(
    sql_url: str, make_rejection: MakeRejection
) -> None:
    engine = create_engine_for(sql_url)  # never migrated: no tables
    try:
        repository = Repository(engine)
        with pytest.raises(StorageError, match="counts failed"):
            repository.counts()
        with pytest.raises(StorageError, match="record_rejected of upload 'u-1' failed"):
            repository.record_rejected(make_rejection())
    finally:
        engine.dispose()


# -- the SQLite engine ----------------------------------------------------------------------


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'new' / 'dir' / 's2a.db'}")
    try:
        with engine.connect() as connection:

            def pragma(name: str) -> Any:
                return connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()

            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == SQLITE_BUSY_TIMEOUT_MS
        assert (tmp_path / "new" / "dir" / "s2a.db").exists()
    finally:
        engine.dispose()


def test_sqlite_writers_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    """A read-then-write transaction must hold the lock before it reads; otherwise another
    process writing in between makes it fail at once, whatever the busy timeout."""
    path = tmp_path / "s2a.db"
    engine = create_engine_for(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with engine.begin():
            other.execute("BEGIN IMMEDIATE")  # a plain reader's BEGIN leaves the lock free
            other.execute("ROLLBACK")
        with for_writing(engine).begin(), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
        engine.dispose()
