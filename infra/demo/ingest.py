"""``s2a demo``: the whole pipeline on the embedded default, on bundled samples.

Under a fresh ``<home>/demo``: loads the bundled anime references (two styles, with their
licenses; the style check quarantines the grayscale pencil sketch among them, and one
photo that is not anime, added last), starts a stack (broker, worker), publishes good
selfies and bad uploads of many kinds (and one re-delivery), waits until every upload
reaches its terminal state and every accepted face is paired for each style, then freezes
the approved pairs into a dataset snapshot, exports it as an imagefolder and writes its
report. It shows what became of each upload next to what was expected, and ends by naming
the report.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infra.broker import free_port
from infra.kafka import UploadPublisher, consumer_lag, read_pairs, read_rejections
from infra.output import Progress
from infra.publish import UploadRequest, build_event
from infra.runtime import Stack
from infra.waiting import wait_until
from schemas.settings import Settings
from schemas.uploads import DeclaredAttributes, Source

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
    age: int | None = None
    gender: str | None = None
    """self-declared, as the London set's subjects reported them (london_info.csv)"""


SAMPLES = (
    Sample("london_001_neutral.jpg", "demo-user-1", "accepted", age=24, gender="female"),
    Sample("london_001_smiling.jpg", "demo-user-1", "accepted", age=24, gender="female"),
    Sample("dup_london_001_neutral_q75.jpg", "demo-user-1", "duplicate"),
    Sample("london_004_neutral.jpg", "demo-user-2", "accepted", age=30, gender="male"),
    Sample("london_013_smiling.jpg", "demo-user-3", "accepted", age=26, gender="female"),
    Sample("selfie_lisa1.jpg", "demo-user-4", "accepted"),
    Sample("selfie_lisa2.jpg", "demo-user-4", "accepted"),
    Sample("selfie_zoom_30cm.jpg", "demo-user-4", "accepted"),
    Sample("tilted_london_014.jpg", "demo-user-5", "accepted", age=23, gender="female"),
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


#: Not anime: added to a style last, so the style check has references to judge it by.
STYLE_OUTLIER = ("london_012_neutral.jpg", "renpy")


def samples_dir() -> Path:
    return Path(__file__).with_name("samples")


def anime_dir() -> Path:
    return samples_dir() / "anime"


@dataclass
class DemoReport:
    home: Path
    rows_: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: int = 0
    redelivery_ignored: bool = False
    seconds: float = 0.0
    references: list[dict[str, Any]] = field(default_factory=list)
    pairs: dict[str, int] = field(default_factory=dict)
    pair_records: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)
    export: Path | None = None
    report: Path | None = None

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
        outcomes: dict[str, int] = {}
        for ref in self.references:
            outcomes[ref["outcome"]] = outcomes.get(ref["outcome"], 0) + 1
        quarantined = [r for r in self.references if r["outcome"] == "quarantined"]
        pairs = ", ".join(f"{n} {status}" for status, n in sorted(self.pairs.items()))
        splits = self.snapshot.get("summary", {}).get("splits", {})
        return "\n".join(
            [
                f"References: {len(self.references)} files, "
                + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
                + "".join(f"; {r['file']} {r['reason']}: {r['detail']}" for r in quarantined),
                f"Uploads: {len(self.rows_)} in {self.seconds:.1f}s: {accepted} accepted, "
                f"{len(self.rows_) - accepted} rejected ({self.dead_letters} dead letters); "
                f"{self.matched}/{len(self.rows_)} as expected; re-delivered event "
                f"{'changed nothing' if self.redelivery_ignored else 'WAS PROCESSED TWICE'}.",
                f"Pairs: {pairs} ({self.pair_records} on the pairs topic); "
                f"review the pending ones: S2A_HOME={self.home} s2a review",
                f"Snapshot: {self.snapshot.get('snapshot_id')} "
                + ", ".join(f"{name} {v.get('records')}" for name, v in sorted(splits.items()))
                + f"; exported as imagefolder to {self.export}",
                f"Data: {self.home}  (inspect: S2A_HOME={self.home} s2a uploads | pairs list)",
                f"Report: {self.report}",
            ]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "uploads": self.rows_,
            "dead_letters": self.dead_letters,
            "redelivery_ignored": self.redelivery_ignored,
            "as_expected": self.matched,
            "seconds": round(self.seconds, 2),
            "references": self.references,
            "pairs": self.pairs,
            "pair_records": self.pair_records,
            "snapshot": self.snapshot,
            "export": None if self.export is None else str(self.export),
            "report": None if self.report is None else str(self.report),
        }


def load_references(settings: Settings) -> list[dict[str, Any]]:
    """The bundled anime references, with their licenses and labels, then the outlier."""
    import csv

    from agents.references.library import RefLibrary, read_sources

    folder = anime_dir()
    sources = read_sources(folder / "SOURCES.csv")
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Path]] = {}
    with (folder / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            labels = tuple(sorted((k, v) for k, v in row.items() if k not in ("file", "style")))
            groups.setdefault((row["style"], labels), []).append(folder / row["file"])
    library = RefLibrary(settings)
    outcomes = []
    for (style, labels), paths in sorted(groups.items()):
        outcomes += library.add(paths, style=style, labels=dict(labels), sources=sources)
    outlier, style = STYLE_OUTLIER
    outcomes += library.add(
        [samples_dir() / outlier],
        style=style,
        license="CC-BY-4.0",
        source="Face Research Lab London Set",
        author="DeBruine, L. & Jones, B. (2017)",
    )
    return [outcome.as_dict() for outcome in outcomes]


def freeze(settings: Settings, engine: Any, report: DemoReport) -> None:
    """Snapshot the approved pairs, export the snapshot and write its report."""
    from agents.stores.blobs import BlobStore
    from trainer.dataset.export import export_snapshot
    from trainer.dataset.report import REPORT_NAME, write_report
    from trainer.dataset.snapshot import create_snapshot, read_manifest

    result = create_snapshot(engine, settings)
    report.snapshot = result.as_dict()
    manifest = read_manifest(settings.dataset_dir, result.snapshot_id)
    report.export = settings.home / "exports" / f"{result.snapshot_id}-imagefolder"
    export_snapshot(manifest, BlobStore(settings.blob_dir), report.export, "imagefolder")
    report.report = write_report(manifest, settings.dataset_dir / result.snapshot_id / REPORT_NAME)


def run_demo(settings: Settings) -> DemoReport:
    from agents.pairing.store import PairStore
    from agents.stores.db import create_engine_for
    from agents.stores.repository import Repository
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
    engine = create_engine_for(demo.sql_url)
    repository = Repository(engine)
    pair_store = PairStore(engine)
    report = DemoReport(home=home)
    report.references = load_references(demo)
    styles = len(pair_store.library().styles)
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
                attributes=DeclaredAttributes(age=sample.age, gender=sample.gender),
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
            # last record (the re-delivery), so "changed nothing" is an observation; and
            # every accepted face has its pair for each style.
            done = repository.finished(expected)
            progress.update(len(done))
            if len(done) < len(expected) or consumer_lag(demo).behind > 0:
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
        progress.close()
        rejected = repository.counts().get("rejected", 0)
        rejections = read_rejections(demo, expect=rejected)
        report.pairs = pair_store.status_counts()
        records = read_pairs(demo, expect=sum(report.pairs.values()))
        report.pair_records = len({record.pair_id for record in records})
    report.seconds = time.monotonic() - started
    freeze(demo, engine, report)
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
