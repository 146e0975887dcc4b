"""The demo's ingestion step: publish the bundled uploads (good selfies, bad uploads of
many kinds, one malformed record and one re-delivery) to the running stack, wait until each
reaches its terminal state and every accepted face is paired for each style, and compare
each outcome with what the sample expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.pairing.store import PairStore
from agents.stores.repository import Repository
from infra.demo.samples import (
    BAD_SCHEMA_RECORD,
    BAD_SCHEMA_UPLOAD,
    SAMPLES,
    Sample,
    samples_dir,
)
from infra.kafka import UploadPublisher, consumer_lag, read_pairs, read_rejections
from infra.publish import UploadRequest, build_event
from infra.runtime import Stack
from infra.waiting import wait_until
from schemas.settings import Settings
from schemas.uploads import DeclaredAttributes, Source, UploadEvent

#: The longest the stream may take over every demo upload before the demo gives up.
DEADLINE_S = 600.0

Progress = Callable[[int, int], None]
"""Called with (uploads finished, uploads published) while the stream works."""


@dataclass
class Ingested:
    """What the stream made of the demo's uploads."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    """one per upload: sample, upload_id, subject, state, reason, stage, detail, expected,
    as_expected"""
    dead_letters: int = 0
    """distinct uploads on the dead-letter topic"""
    redelivery_ignored: bool = False
    pairs: dict[str, int] = field(default_factory=dict)
    """pairs by status after the stream"""
    pair_records: int = 0
    """distinct pairs on the pairs topic"""

    @property
    def matched(self) -> int:
        return sum(1 for r in self.rows if r["as_expected"])

    def upload_of(self, upload_id: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["upload_id"] == upload_id), None)


def _event(sample: Sample, settings: Settings, now: datetime) -> UploadEvent:
    request = UploadRequest(
        subject=sample.subject,
        consent_version="demo-1",
        scopes=sample.scopes,
        expires_at=now - timedelta(days=1) if sample.consent_expired else None,
        source=Source.SELFIE,
        license=None,
        attribution=None,
        attributes=DeclaredAttributes(age=sample.age, gender=sample.gender),
    )
    granted = now - timedelta(days=30) if sample.consent_expired else now
    event, _ = build_event(
        samples_dir() / sample.file, request, settings, subject=sample.subject, now=granted
    )
    return event


def ingest(
    settings: Settings,
    stack: Stack,
    repository: Repository,
    pair_store: PairStore,
    progress: Progress,
) -> Ingested:
    """Publish every sample to the running ``stack`` and wait for the stream (module
    docstring). Raises :class:`~infra.errors.WaitTimeout` after :data:`DEADLINE_S`, and
    :class:`~infra.errors.BrokerError` when the worker dies."""
    styles = len(pair_store.library().styles)
    now = datetime.now(UTC)
    expected: dict[str, Sample] = {}
    with UploadPublisher(settings) as publisher:
        events = [_event(sample, settings, now) for sample in SAMPLES]
        for sample, event in zip(SAMPLES, events, strict=True):
            publisher.publish(event)
            expected[event.upload_id] = sample
        publisher.publish_raw(b"demo-broken", BAD_SCHEMA_RECORD)
        expected[BAD_SCHEMA_UPLOAD] = Sample("(malformed record)", "-", "bad_schema")
        publisher.publish(events[0])  # the same event again: must change nothing

    def finished() -> bool:
        # Every upload has its terminal state AND the worker has committed past the last
        # record (the re-delivery), so "changed nothing" is an observation; and every
        # accepted face has its pair for each style.
        done = repository.finished(expected)
        progress(len(done), len(expected))
        if len(done) < len(expected) or consumer_lag(settings).behind > 0:
            return False
        paired = sum(pair_store.status_counts().values())
        return paired == repository.counts()["accepted"] * styles

    wait_until(
        finished,
        deadline_s=DEADLINE_S,
        what=f"{len(expected)} demo uploads (see {stack.worker.log_path})",
        poll_s=0.25,
        alive=stack.check_worker,
    )
    result = Ingested()
    rejections = read_rejections(settings, expect=repository.counts().get("rejected", 0))
    result.pairs = pair_store.status_counts()
    records = read_pairs(settings, expect=sum(result.pairs.values()))
    result.pair_records = len({record.pair_id for record in records})
    result.dead_letters = len({r.upload_id for r in rejections})
    by_id = {row.upload_id: row for row in repository.list_uploads()}
    for upload_id, sample in expected.items():
        row = by_id[upload_id]
        outcome = row.reason or row.state
        result.rows.append(
            {
                "sample": sample.file,
                "upload_id": upload_id,
                "subject": sample.subject,
                "state": str(row.state),
                "reason": row.reason,
                "stage": row.stage,
                "detail": row.detail,
                "expected": sample.expect,
                "as_expected": outcome == sample.expect,
            }
        )
    first = by_id[events[0].upload_id]
    result.redelivery_ignored = first.state == "accepted" and not any(
        r.upload_id == first.upload_id for r in rejections
    )
    return result
