"""``s2a demo``: the whole ingestion on the embedded default, on bundled sample uploads.

Starts a fresh stack (broker, worker) under ``<home>/demo``, publishes good selfies and
bad uploads of many kinds (and one re-delivery), waits until every upload reaches its
terminal state, and reports what became of each next to what was expected.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infra.broker import free_port
from infra.kafka import UploadPublisher, consumer_lag, read_rejections
from infra.output import Progress
from infra.publish import UploadRequest, build_event
from infra.runtime import Stack
from infra.waiting import wait_until
from schemas.settings import Settings
from schemas.uploads import Source

DEADLINE_S = 600.0
BAD_SCHEMA_RECORD = b'{"schema_version": 1, "upload_id": "demo-broken-record", "consent": "yes"}'


@dataclass(frozen=True, slots=True)
class Sample:
    file: str
    subject: str
    expect: str
    """'accepted' or the reason code the demo expects"""
    scopes: tuple[str, ...] = ("training",)
    consent_expired: bool = False


SAMPLES = (
    Sample("london_001_neutral.jpg", "demo-user-1", "accepted"),
    Sample("london_001_smiling.jpg", "demo-user-1", "accepted"),
    Sample("dup_london_001_neutral_q75.jpg", "demo-user-1", "duplicate"),
    Sample("london_004_neutral.jpg", "demo-user-2", "accepted"),
    Sample("london_013_smiling.jpg", "demo-user-3", "accepted"),
    Sample("selfie_lisa1.jpg", "demo-user-4", "accepted"),
    Sample("selfie_lisa2.jpg", "demo-user-4", "accepted"),
    Sample("selfie_zoom_30cm.jpg", "demo-user-4", "accepted"),
    Sample("tilted_london_014.jpg", "demo-user-5", "accepted"),
    Sample("two_faces.jpg", "demo-user-6", "multiple_faces"),
    Sample("blurry.jpg", "demo-user-7", "blurry"),
    Sample("dark.jpg", "demo-user-8", "bad_exposure"),
    Sample("small_face.jpg", "demo-user-9", "face_too_small"),
    Sample("forest_no_face.jpg", "demo-user-10", "no_face"),
    Sample("truncated.jpg", "demo-user-11", "decode_error"),
    Sample("not_an_image.jpg", "demo-user-12", "decode_error"),
    Sample("london_011_neutral.jpg", "demo-user-13", "consent_expired", consent_expired=True),
    Sample("london_012_neutral.jpg", "demo-user-14", "no_consent", scopes=("analytics",)),
)


def samples_dir() -> Path:
    return Path(__file__).with_name("samples")


@dataclass
class DemoReport:
    home: Path
    rows_: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: int = 0
    redelivery_ignored: bool = False
    seconds: float = 0.0

    def rows(self) -> list[tuple[Any, ...]]:
        return [
            (r["sample"], r["upload_id"], r["state"], r["reason"], r["stage"], r["detail"])
            for r in self.rows_
        ]

    @property
    def matched(self) -> int:
        return sum(1 for r in self.rows_ if r["as_expected"])

    def summary(self) -> str:
        accepted = sum(1 for r in self.rows_ if r["state"] == "accepted")
        return (
            f"{len(self.rows_)} uploads in {self.seconds:.1f}s: {accepted} accepted, "
            f"{len(self.rows_) - accepted} rejected ({self.dead_letters} dead letters); "
            f"{self.matched}/{len(self.rows_)} as expected; re-delivered event "
            f"{'changed nothing' if self.redelivery_ignored else 'WAS PROCESSED TWICE'}.\n"
            f"Data: {self.home}  (inspect: S2A_HOME={self.home} s2a uploads)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "uploads": self.rows_,
            "dead_letters": self.dead_letters,
            "redelivery_ignored": self.redelivery_ignored,
            "as_expected": self.matched,
            "seconds": round(self.seconds, 2),
        }


def run_demo(settings: Settings) -> DemoReport:
    from agents.db import create_engine_for
    from agents.repository import Repository
    from schemas.migrate import upgrade

    home = settings.home / "demo"
    shutil.rmtree(home, ignore_errors=True)
    update: dict[str, Any] = {"home": home}
    if settings.embedded_broker:
        update["broker_port"] = free_port()
    else:
        # On a shared cluster the demo keeps to topics of its own.
        update["topic_prefix"] = f"{settings.topic_prefix}demo-{int(time.time())}."
    demo = settings.model_copy(update=update)
    home.mkdir(parents=True)
    upgrade(demo.sql_url)
    repository = Repository(create_engine_for(demo.sql_url))
    report = DemoReport(home=home)
    started = time.monotonic()
    now = datetime.now(UTC)
    with Stack(demo) as stack, UploadPublisher(demo) as publisher:
        expected: dict[str, Sample] = {}
        first_event = None
        for sample in SAMPLES:
            request = UploadRequest(
                subject=sample.subject,
                consent_version="demo-1",
                scopes=sample.scopes,
                expires_at=now - timedelta(days=1) if sample.consent_expired else None,
                source=Source.SELFIE,
                license=None,
                attribution=None,
            )
            granted = now - timedelta(days=30) if sample.consent_expired else now
            event, _ = build_event(
                samples_dir() / sample.file, request, demo, subject=sample.subject, now=granted
            )
            publisher.publish(event)
            expected[event.upload_id] = sample
            first_event = first_event or event
        publisher.publish_raw(b"demo-broken", BAD_SCHEMA_RECORD)
        expected["demo-broken-record"] = Sample("(malformed record)", "-", "bad_schema")
        if first_event is not None:
            publisher.publish(first_event)  # the same event again: must change nothing
        progress = Progress("processed", len(expected))

        def finished() -> bool:
            # Every upload has its terminal state AND the worker has committed past the
            # last record (the re-delivery), so "changed nothing" is an observation.
            done = repository.finished(expected)
            progress.update(len(done))
            return len(done) == len(expected) and consumer_lag(demo).behind == 0

        wait_until(
            finished,
            deadline_s=DEADLINE_S,
            what=f"{len(expected)} demo uploads (see {stack.worker.log_path})",
            poll_s=0.25,
            alive=stack.check_worker,
        )
        progress.close()
        rejected = repository.counts().get("rejected", 0)
        rejections = read_rejections(demo, expect=rejected)
    report.seconds = time.monotonic() - started
    by_id = {row.upload_id: row for row in repository.list_uploads()}
    report.dead_letters = len({r.upload_id for r in rejections})
    for upload_id, sample in expected.items():
        row = by_id[upload_id]
        outcome = row.reason or row.state
        report.rows_.append(
            {
                "sample": sample.file,
                "upload_id": upload_id,
                "state": str(row.state),
                "reason": row.reason,
                "stage": row.stage,
                "detail": row.detail,
                "expected": sample.expect,
                "as_expected": outcome == sample.expect,
            }
        )
    if first_event is not None:
        first = by_id[first_event.upload_id]
        report.redelivery_ignored = first.state == "accepted" and not any(
            r.upload_id == first_event.upload_id for r in rejections
        )
    return report
