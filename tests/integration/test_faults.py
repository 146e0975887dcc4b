"""Faults: a worker stopped mid-stream loses nothing and processes nothing twice.

The worker is killed (SIGKILL: no shutdown, no offset commit) or stopped (SIGTERM: Faust's
graceful shutdown, which acknowledges the batch in hand) while uploads are in flight; a
new worker takes over, and every upload still ends in exactly one terminal state with one
face, one Qdrant point and its crops.
"""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.stages.embed import embedder_space
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from agents.stores.faces import FaceIndex
from agents.stores.repository import Repository
from infra.broker import free_port
from infra.kafka import UploadPublisher, consumer_lag
from infra.runtime import Stack, WorkerProcess
from infra.waiting import wait_until
from schemas.settings import Settings, WorkerSettings
from schemas.uploads import Consent, ImagePayload, UploadEvent

pytestmark = pytest.mark.integration
REAL = Path(__file__).parents[1] / "data" / "real"
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
