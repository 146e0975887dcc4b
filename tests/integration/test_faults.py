"""Faults: a worker stopped mid-stream, or a database restarted under it, loses nothing and
stores nothing twice.

The worker is killed (SIGKILL: no shutdown, no offset commit) or stopped (SIGTERM: Faust's
graceful shutdown, which acknowledges the batch in hand) while uploads are in flight; a
new worker takes over, and every upload still ends in exactly one terminal state with one
face, one Qdrant point and its crops. In one run on a PostgreSQL server of the test's own,
the worker is killed three times, then the server is restarted twice: once briefly (the
worker runs the failed batch again in the process) and once for longer than the worker's
``store_retry_s`` (the worker exits, and the stack's supervisor restarts it with backoff
until the database answers).
"""

from __future__ import annotations

import io
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_runner import run_s2a
from pgcluster import PostgresCluster
from PIL import Image

from agents.pairing.store import PairStore
from agents.stages.embed import embedder_space
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from agents.stores.faces import FaceIndex
from agents.stores.repository import Repository
from infra.broker import free_port
from infra.kafka import UploadPublisher, consumer_lag, read_rejections
from infra.runtime import Stack, WorkerProcess, settings_env
from infra.waiting import wait_until
from schemas.settings import Settings, WorkerSettings
from schemas.uploads import Consent, ImagePayload, UploadEvent

pytestmark = pytest.mark.integration
DATA = Path(__file__).parents[1] / "data"
REAL = DATA / "real"
DEADLINE_S = 300.0


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_stopped_worker_loses_nothing(tmp_path: Path, stop: signal.Signals) -> None:
    settings = Settings(
        home=tmp_path,
        broker_port=free_port(),
        topic_prefix=f"f{uuid.uuid4().hex[:6]}.",
        # Small batches, so the kill lands between committed and uncommitted work.
        worker=WorkerSettings(batch_size=4),
    )
    photos = sorted(REAL.glob("london_*.jpg"))
    now = datetime.now(UTC)
    events = [
        UploadEvent(
            upload_id=f"fault-{i}",
            subject_id=f"fault-subject-{i}",
            consent=Consent(version="1", scopes=["training"], granted_at=now),
            image=ImagePayload(data=photos[i % len(photos)].read_bytes()),
            submitted_at=now,
        )
        for i in range(24)
    ]
    ids = {e.upload_id for e in events}
    repository = Repository(create_engine_for(settings.sql_url))
    with Stack(settings) as stack, UploadPublisher(settings) as publisher:
        for event in events:
            publisher.publish(event)
        wait_until(
            lambda: len(repository.finished(ids)) >= 4,
            deadline_s=DEADLINE_S,
            what="the first uploads",
            alive=stack.check_worker,
        )
        proc = stack.worker.proc
        assert proc is not None
        proc.send_signal(stop)
        proc.wait(timeout=60)
        assert len(repository.finished(ids)) < len(ids), "the kill came too late to test"
        stack.worker = WorkerProcess(settings)
        stack.worker.start()
        wait_until(
            lambda: (
                len(repository.finished(ids)) == len(ids) and consumer_lag(settings).behind == 0
            ),
            deadline_s=DEADLINE_S,
            what="every upload after the restart",
            alive=stack.check_worker,
        )
    rows = repository.list_uploads()
    assert sorted(r.upload_id for r in rows) == sorted(ids)
    assert {r.state for r in rows} == {"accepted"}
    faces = [f for i in ids for f in repository.faces_of_subject(_subject_of(repository, i))]
    assert len(faces) == len(ids)
    index = FaceIndex.from_settings(settings, embedder_space(settings.models))
    try:
        assert index.count() == len(ids)
    finally:
        index.close()
    blobs = BlobStore(settings.blob_dir)
    assert all(blobs.exists(f.crop_256) and blobs.exists(f.crop_512) for f in faces)


def _subject_of(repository: Repository, upload_id: str) -> str:
    row = next(r for r in repository.list_uploads() if r.upload_id == upload_id)
    assert row.subject is not None
    return row.subject


def _good(i: int, photos: list[Path], now: datetime) -> UploadEvent:
    return UploadEvent(
        upload_id=f"good-{i}",
        subject_id=f"good-subject-{i}",
        consent=Consent(version="1", scopes=["training"], granted_at=now),
        image=ImagePayload(data=photos[i % len(photos)].read_bytes()),
        submitted_at=now,
    )


def test_three_kills_and_two_database_restarts_in_one_run_lose_nothing(tmp_path: Path) -> None:
    photos = sorted(REAL.glob("london_*.jpg"))
    now = datetime.now(UTC)
    good = [_good(i, photos, now) for i in range(36)]
    blank = io.BytesIO()
    Image.new("RGB", (320, 320), (90, 140, 200)).save(blank, "PNG")
    bad = [
        (
            UploadEvent(
                upload_id=f"bad-{i}",
                subject_id=f"bad-subject-{i}",
                consent=Consent(version="1", scopes=["training"], granted_at=now),
                image=ImagePayload(data=data),
                submitted_at=now,
            ),
            reason,
        )
        for i, (data, reason) in enumerate(
            [
                (blank.getvalue(), "no_face"),
                (photos[0].read_bytes()[:5000], "decode_error"),
                (b"%PDF-1.7 not a photo", "decode_error"),
                (blank.getvalue()[:100], "decode_error"),
            ]
        )
    ]
    # Rejections in the first kill's wave and in the first outage's.
    events = (
        good[:8]
        + [event for event, _ in bad[:2]]
        + good[8:31]
        + [e for e, _ in bad[2:]]
        + good[31:]
    )
    ids = {e.upload_id for e in events}
    with PostgresCluster() as pg:
        settings = Settings(
            home=tmp_path,
            database_url=pg.url,
            broker_port=free_port(),
            topic_prefix=f"f{uuid.uuid4().hex[:6]}.",
            log_level="INFO",
            # Small batches, so each kill lands between committed and uncommitted work; a
            # short retry budget, so the second outage outlasts it.
            worker=WorkerSettings(batch_size=4, store_retry_s=6),
        )
        # The reference library, so every accepted face is paired by the worker.
        run_s2a(
            "refs",
            "add",
            *(str(path) for path in sorted((DATA / "anime").glob("renpy_*_face.png"))),
            "--style",
            "renpy",
            "--sources",
            str(DATA / "SOURCES.csv"),
            env=settings_env(settings),
            check=True,
        )
        repository = Repository(create_engine_for(settings.sql_url))
        pair_store = PairStore(create_engine_for(settings.sql_url))
        worker_log = settings.run_dir / "worker.log"

        def kill_mid_wave(wave: list[UploadEvent], stack: Stack) -> None:
            """Publish a wave, SIGKILL the worker once 3 of its uploads are finished, start
            another (what Kubernetes or systemd does), which finishes the wave."""
            wave_ids = {e.upload_id for e in wave}
            for event in wave:
                publisher.publish(event)
            wait_until(
                lambda: len(repository.finished(wave_ids)) >= 3,
                deadline_s=DEADLINE_S,
                what="the wave's first uploads",
                alive=stack.check_worker,
            )
            proc = stack.worker.proc
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            assert len(repository.finished(wave_ids)) < len(wave), "the kill came too late"
            stack.start_worker()
            wait_until(
                lambda: len(repository.finished(wave_ids)) == len(wave),
                deadline_s=DEADLINE_S,
                what="the wave, by the next worker",
                alive=stack.check_worker,
            )

        def outage(wave: list[UploadEvent], until: str, stack: Stack) -> None:
            """Stop the database, publish a wave (the stream goes on), start the database
            again once the worker has logged ``until``."""
            mark = len(worker_log.read_text())
            pg.stop()
            for event in wave:
                publisher.publish(event)
            wait_until(
                lambda: until in worker_log.read_text()[mark:],
                deadline_s=DEADLINE_S,
                what=f"{until!r} in {worker_log}",
                alive=stack.check_worker,
            )
            pg.start()

        with Stack(settings) as stack, UploadPublisher(settings) as publisher:
            for kill in range(3):
                kill_mid_wave(events[10 * kill : 10 * kill + 10], stack)
            # A short outage: the failed batch runs again in the same process.
            proc = stack.worker.proc
            outage(events[30:35], "failed on a store", stack)
            wait_until(
                lambda: len(repository.finished(ids)) == 35,
                deadline_s=DEADLINE_S,
                what="the uploads sent during the short outage",
                alive=stack.check_worker,
            )
            assert stack.worker.proc is proc
            assert stack.restarts == 0
            # A long one: the worker gives up after store_retry_s and exits; the stack
            # restarts it, and a worker that finds no database at start exits again.
            outage(events[35:], "database not reachable at start", stack)
            wait_until(
                lambda: (
                    len(repository.finished(ids)) == len(ids) and consumer_lag(settings).behind == 0
                ),
                deadline_s=DEADLINE_S,
                what="every upload after the faults",
                alive=stack.check_worker,
            )
            assert stack.restarts >= 1, "the long outage never restarted the worker"
            assert proc is not stack.worker.proc
            rows = repository.list_uploads()
            accepted = repository.counts().get("accepted", 0)
            wait_until(
                lambda: sum(pair_store.status_counts().values()) == accepted,
                deadline_s=DEADLINE_S,
                what="a pair for every accepted face",
                alive=stack.check_worker,
            )
            dead_letters = read_rejections(settings, expect=len(bad))
        # Exactly one terminal state per upload, the expected one.
        assert sorted(r.upload_id for r in rows) == sorted(ids)
        states = {r.upload_id: r.reason if r.state == "rejected" else r.state for r in rows}
        assert states == {e.upload_id: "accepted" for e in good} | {
            e.upload_id: reason for e, reason in bad
        }
        # One face per accepted upload, its crops stored; one pair per face.
        faces = [
            f
            for e in good
            for f in repository.faces_of_subject(_subject_of(repository, e.upload_id))
        ]
        assert sorted(f.upload_id for f in faces) == sorted(e.upload_id for e in good)
        blobs = BlobStore(settings.blob_dir)
        assert all(blobs.exists(f.crop_256) and blobs.exists(f.crop_512) for f in faces)
        # (pairs are unique per face and style in SQL: a second match updates the first)
        assert sum(pair_store.status_counts().values()) == len(good)
        # Dead letters are sent at least once (a kill may repeat one), for rejections only.
        assert {d.upload_id for d in dead_letters} == {e.upload_id for e, _ in bad}
        # One Qdrant point per face (the worker has stopped: the local store is free).
        index = FaceIndex.from_settings(settings, embedder_space(settings.models))
        try:
            assert index.count() == len(good)
        finally:
            index.close()
        log = worker_log.read_text()
        assert log.count("exiting without commit") >= 1
