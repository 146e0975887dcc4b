"""Soak: thousands of uploads through the live stream at a fixed share of its capacity.

One run, one machine: the embedded broker (Tansu), one Faust worker process (ingest and
pairs agents, a reference library to pair against), SQLite and the Qdrant local store.

1. Capacity: a burst of ``--capacity-uploads`` uploads, from the first publish to the last
   terminal state, on a warm worker: uploads/s.
2. Soak: ``--uploads`` uploads published at ``--load`` x that capacity, evenly spaced; a
   share of them bad (truncated JPEG, a photo without a face), every one a new subject.
   Every ``--sample-s`` seconds: the worker's resident memory (psutil), the ingest group's
   consumer lag (records published but not committed) and the terminal states so far.
3. Afterwards: every upload has exactly one terminal state (one row, accepted or rejected
   with a reason), the lag is back to 0, and memory is summarised as its level after the
   warm-up share of the run, its peak, its end, and a least-squares slope (MiB per 1,000
   uploads) over the samples after the warm-up.

Usage:  python bench/soak.py [--uploads 3000] [--load 0.8] [--json OUT]
Prints a Markdown summary (RELIABILITY.md: Soak).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.pairing.store import PairStore  # noqa: E402
from agents.stores.db import create_engine_for  # noqa: E402
from agents.stores.repository import Repository  # noqa: E402
from infra.broker import free_port  # noqa: E402
from infra.kafka import UploadPublisher, consumer_lag  # noqa: E402
from infra.runtime import Stack, settings_env  # noqa: E402
from infra.waiting import wait_until  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from schemas.uploads import Consent, ImagePayload, UploadEvent  # noqa: E402

DATA = ROOT / "tests" / "data"
PHOTOS = sorted((DATA / "real").glob("*.jpg"))
MiB = 1024 * 1024


@dataclass
class Sample:
    t_s: float
    published: int
    finished: int
    lag: int
    rss_mib: float


def uploads(n: int, bad_share: float, tag: str) -> list[UploadEvent]:
    """``n`` uploads, each of a new subject; every ``1/bad_share``-th one bad (alternately
    a truncated JPEG and a face-less PNG)."""
    photos = [p.read_bytes() for p in PHOTOS]
    blank = io.BytesIO()
    Image.new("RGB", (400, 400), (90, 140, 200)).save(blank, "PNG")
    every = round(1 / bad_share) if bad_share > 0 else 0
    now = datetime.now(UTC)
    consent = Consent(version="soak", scopes=["training"], granted_at=now)
    out = []
    for i in range(n):
        data = photos[i % len(photos)]
        if every and i % every == every - 1:
            data = data[:4000] if (i // every) % 2 else blank.getvalue()
        out.append(
            UploadEvent(
                upload_id=f"{tag}-{i}-{uuid.uuid4().hex[:8]}",
                subject_id=f"{tag}-subject-{i}",
                consent=consent,
                image=ImagePayload(data=data),
                submitted_at=now,
            )
        )
    return out


def finished(repository: Repository) -> int:
    counts = repository.counts()
    return counts.get("accepted", 0) + counts.get("rejected", 0)


def add_references(settings: Settings) -> None:
    """The bundled Ren'Py faces as the reference library, through the command line."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "refs",
            "add",
            *(str(p) for p in sorted((DATA / "anime").glob("renpy_*_face.png"))),
            "--style",
            "renpy",
            "--sources",
            str(DATA / "SOURCES.csv"),
        ],
        env=settings_env(settings),
        check=True,
        capture_output=True,
    )


def measure_capacity(
    publisher: UploadPublisher, repository: Repository, n: int, deadline_s: float
) -> float:
    """Uploads/s of a burst of ``n``, first publish to last terminal state."""
    burst = uploads(n, 0.0, "capacity")
    before = finished(repository)
    start = time.perf_counter()
    for event in burst:
        publisher.producer.send(
            publisher.topic, key=event.upload_id.encode(), value=event.to_bytes()
        )
    publisher.producer.flush()
    wait_until(
        lambda: finished(repository) >= before + n,
        deadline_s=deadline_s,
        what="the capacity burst",
        poll_s=0.05,
    )
    return n / (time.perf_counter() - start)


def soak(
    stack: Stack,
    publisher: UploadPublisher,
    repository: Repository,
    events: list[UploadEvent],
    rate: float,
    sample_s: float,
) -> list[Sample]:
    """Publish ``events`` at ``rate`` per second, sampling as it goes; then wait for the
    last terminal state and a lag of 0."""
    proc = stack.worker.proc
    if proc is None:
        raise RuntimeError("the worker is not running")
    worker = psutil.Process(proc.pid)
    settings = stack.settings
    base = finished(repository)
    samples: list[Sample] = []
    start = time.monotonic()
    next_sample = start

    def sample(published: int) -> None:
        stack.check_worker()
        samples.append(
            Sample(
                t_s=round(time.monotonic() - start, 1),
                published=published,
                finished=finished(repository) - base,
                lag=consumer_lag(settings).behind,
                rss_mib=round(worker.memory_info().rss / MiB, 1),
            )
        )

    for i, event in enumerate(events):
        due = start + i / rate
        # Pacing a load generator is what this wait is for: it sets when records leave.
        while (now := time.monotonic()) < due:
            if now >= next_sample:
                publisher.producer.flush()
                sample(i)
                next_sample += sample_s
            time.sleep(min(due - now, 0.05))
        publisher.producer.send(
            publisher.topic, key=event.upload_id.encode(), value=event.to_bytes()
        )
    publisher.producer.flush()
    while True:
        sample(len(events))
        if samples[-1].finished >= len(events) and samples[-1].lag == 0:
            return samples
        if time.monotonic() - start > 10 * len(events) / rate + 600:
            raise TimeoutError(f"not finished; last sample {samples[-1]}")
        time.sleep(sample_s)


def slope_per_1000(samples: list[Sample]) -> float:
    """Least-squares slope of resident memory against uploads finished, MiB per 1,000."""
    xs = [s.finished for s in samples]
    ys = [s.rss_mib for s in samples]
    if len(set(xs)) < 2:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var = sum((x - mean_x) ** 2 for x in xs)
    return 1000 * cov / var


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=3000)
    parser.add_argument("--load", type=float, default=0.8, help="share of measured capacity")
    parser.add_argument("--capacity-uploads", type=int, default=300)
    parser.add_argument("--bad-share", type=float, default=0.05)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-share", type=float, default=0.1)
    parser.add_argument("--json", type=Path, help="also write the results and samples here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), broker_port=free_port(), log_level="WARNING")
        add_references(settings)
        repository = Repository(create_engine_for(settings.sql_url))
        with Stack(settings) as stack, UploadPublisher(settings) as publisher:
            measure_capacity(publisher, repository, 16, 600)  # models loaded, group joined
            capacity = measure_capacity(publisher, repository, args.capacity_uploads, 900)
            rate = args.load * capacity
            events = uploads(args.uploads, args.bad_share, "soak")
            started = time.perf_counter()
            samples = soak(stack, publisher, repository, events, rate, args.sample_s)
            elapsed = time.perf_counter() - started
            # Pairing follows ingestion: a pair for every accepted face, none lost.
            pairs = PairStore(create_engine_for(settings.sql_url))
            wait_until(
                lambda: sum(pairs.status_counts().values()) == repository.counts()["accepted"],
                deadline_s=600,
                what="a pair for every accepted face",
                alive=stack.check_worker,
            )
            paired = sum(pairs.status_counts().values())
            restarts = stack.restarts
        ids = [e.upload_id for e in events]
        rows = [r for r in repository.list_uploads() if r.upload_id in set(ids)]
    states: dict[str, int] = {}
    for row in rows:
        key = f"rejected:{row.reason}" if row.state == "rejected" else str(row.state)
        states[key] = states.get(key, 0) + 1
    steady = [s for s in samples if s.finished >= args.warmup_share * len(events)]
    results: dict[str, Any] = {
        "uploads": len(events),
        "capacity_per_s": round(capacity, 2),
        "target_rate_per_s": round(rate, 2),
        "achieved_per_s": round(len(events) / elapsed, 2),
        "elapsed_s": round(elapsed, 1),
        "terminal_rows": len(rows),
        "distinct_uploads_with_a_row": len({r.upload_id for r in rows}),
        "lost": len(set(ids) - {r.upload_id for r in rows}),
        "states": states,
        "lag_max": max(s.lag for s in samples),
        "lag_p95": sorted(s.lag for s in samples)[int(0.95 * (len(samples) - 1))],
        "lag_end": samples[-1].lag,
        "rss_after_warmup_mib": steady[0].rss_mib if steady else None,
        "rss_max_mib": max(s.rss_mib for s in samples),
        "rss_end_mib": samples[-1].rss_mib,
        "rss_slope_mib_per_1000": round(slope_per_1000(steady), 2),
        "worker_restarts": restarts,
        "pairs_for_accepted_faces": paired,
        "samples": [asdict(s) for s in samples],
    }
    lines = [
        f"{len(events)} uploads ({args.bad_share:.0%} bad) at {args.load:.0%} of capacity",
        "",
        "| measure | value |",
        "|---|---|",
        f"| capacity (burst of {args.capacity_uploads}) | {capacity:.1f} uploads/s |",
        f"| offered / achieved rate | {rate:.1f} / {results['achieved_per_s']} uploads/s |",
        f"| duration | {elapsed:.0f} s |",
        f"| uploads with exactly one terminal row | {results['distinct_uploads_with_a_row']}"
        f" of {len(events)} ({len(rows)} rows; lost {results['lost']}) |",
        f"| states | {', '.join(f'{k} {v}' for k, v in sorted(states.items()))} |",
        f"| consumer lag: max / p95 / end | {results['lag_max']} / {results['lag_p95']} /"
        f" {results['lag_end']} records |",
        f"| worker RSS after {args.warmup_share:.0%} / max / end | "
        f"{results['rss_after_warmup_mib']} / {results['rss_max_mib']} / "
        f"{results['rss_end_mib']} MiB |",
        f"| RSS slope after warm-up | {results['rss_slope_mib_per_1000']} MiB per 1,000 uploads |",
        f"| pairs (every accepted face of the run, capacity bursts included) | {paired} |",
        f"| worker restarts | {restarts} |",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
