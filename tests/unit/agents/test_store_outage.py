"""A batch that fails on a store is run again, with backoff, in the worker's process.

:func:`agents.batches.until_done` is the worker's retry policy; here it drives the real
pipeline (models, SQLite, the Qdrant local store) while the vector store is unavailable for
a stretch of calls: qdrant-client's own error for a server that does not answer, raised at
the client seam (the local store has no server to stop). The outage starts after the
batch's first faces are stored, so the second run meets work done halfway: one face, one
point and one terminal state per upload afterwards, nothing twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException

from agents import batches
from agents.batches import count_by, until_done
from agents.errors import StorageError
from agents.pipeline import Incoming, IngestPipeline
from schemas.errors import ConfigError
from schemas.reasons import UploadState
from schemas.settings import Settings
from schemas.uploads import Consent, ImagePayload, UploadEvent

REAL = Path(__file__).parents[2] / "data" / "real"


class FlakyQdrant:
    """A QdrantClient whose calls numbered ``first`` to ``first + count - 1`` (from 1) fail
    as qdrant-client fails when its server does not answer; every other call goes through."""

    def __init__(self, client: QdrantClient, first: int, count: int) -> None:
        self._client = client
        self._fail = range(first, first + count)
        self.calls = 0
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name == "close":
            return attribute

        def call(*args: object, **kwargs: object) -> object:
            self.calls += 1
            if self.calls in self._fail:
                self.failed += 1
                raise ResponseHandlingException(
                    httpx.ConnectError("[Errno 111] Connection refused")
                )
            return attribute(*args, **kwargs)

        return call


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IngestPipeline]:
    # Waits of a hundredth of a second: the policy is what is tested, not the clock.
    monkeypatch.setattr(batches, "FIRST_BACKOFF_S", 0.01)
    pipe = IngestPipeline.build(Settings(home=tmp_path))
    yield pipe
    pipe.close()


def _events(n: int) -> list[UploadEvent]:
    now = datetime.now(UTC)
    photos = sorted(REAL.glob("london_0*_neutral.jpg"))
    return [
        UploadEvent(
            upload_id=f"u-{uuid.uuid4().hex[:12]}",
            subject_id=f"subject-{i}",
            consent=Consent(version="1", scopes=["training"], granted_at=now),
            image=ImagePayload(data=photos[i].read_bytes()),
            submitted_at=now,
        )
        for i in range(n)
    ]


def _handler(pipe: IngestPipeline, runs: list[int]) -> Callable[[Sequence[UploadEvent]], Any]:
    async def handle(events: Sequence[UploadEvent]) -> dict[str, int]:
        runs.append(len(events))
        outcomes = pipe.run([Incoming(event.to_bytes()) for event in events])
        return count_by([o.state.value if o.state else "skipped" for o in outcomes])

    return handle


def test_a_vector_store_outage_mid_batch_stores_every_face_once(pipeline: IngestPipeline) -> None:
    events = _events(5)
    index = pipeline.store.index
    real_client = index.client
    # Each stored face costs a few calls (duplicate check, upsert, identity links): the
    # outage begins within the batch, after its first faces are in both stores.
    flaky = FlakyQdrant(real_client, first=7, count=4)
    index.client = flaky  # type: ignore[assignment]
    runs: list[int] = []
    try:
        counts = asyncio.run(until_done(_handler(pipeline, runs), events, "ingest", retry_s=60))
    finally:
        index.client = real_client
    assert flaky.failed == 4
    assert len(runs) >= 2, "the outage never failed a run"
    ids = [e.upload_id for e in events]
    assert pipeline.repository.finished(ids) == set(ids)
    rows = [r for r in pipeline.repository.list_uploads() if r.upload_id in ids]
    assert sorted(r.upload_id for r in rows) == sorted(ids)
    assert {r.state for r in rows} == {UploadState.ACCEPTED.value}
    # The last run skipped what earlier runs finished, and accepted the rest.
    assert counts.get("accepted", 0) + counts.get("skipped", 0) == len(events)
    assert 0 < counts.get("skipped", 0) < len(events)
    assert index.count() == len(events)


def test_other_errors_and_an_outlasted_budget_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "FIRST_BACKOFF_S", 0.01)
    runs: list[int] = []

    async def refused(events: Sequence[object]) -> dict[str, int]:
        runs.append(len(events))
        raise ConfigError("S2A_SOMETHING is wrong")

    with pytest.raises(ConfigError):
        asyncio.run(until_done(refused, [1], "ingest", retry_s=60))
    assert runs == [1], "an error that is not transient was run again"

    async def down(events: Sequence[object]) -> dict[str, int]:
        runs.append(len(events))
        raise StorageError("the database is down")

    runs.clear()
    with pytest.raises(StorageError):
        asyncio.run(until_done(down, [1], "ingest", retry_s=0))
    assert runs == [1], "a zero budget still ran the batch again"

    runs.clear()
    with pytest.raises(StorageError):
        asyncio.run(until_done(down, [1], "ingest", retry_s=1))
    assert len(runs) >= 2, "a store error was not run again within the budget"
