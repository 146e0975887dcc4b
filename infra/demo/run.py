"""``s2a demo``: the whole product, once, on bundled samples, under ``<home>/demo``.

Steps, each through the product's own code path (see :mod:`infra.demo.steps`):

1. load the bundled anime references (licenses kept; the style check quarantines a pencil
   sketch and a photo among them);
2. start the embedded stack (broker, worker), publish the bundled selfies and bad uploads
   (plus a malformed record and a re-delivery), wait for every terminal state and pair;
3. review the pending pairs as ``demo-reviewer`` through the review service's decisions;
4. freeze a dataset snapshot, export it and write its dataset report;
5. retrain cycle 1: a CPU-sized base, through the evaluation gate to champion;
6. start the Convert server (``s2a serve``), which loads the champion;
7. retrain cycle 2: a LoRA update on the champion, through the gate;
8. announce it while two callers keep converting: the server hot-swaps, no call fails;
9. convert the validation split's selfies (people the model never trained on) over gRPC;
10. erase one demo subject through the worker's ``erase`` agent; stop the stack and scan
    SQL, Qdrant, the blobs and every file under the data directory for them;
11. freeze the snapshot the next retrain would train on (without them) and write one HTML
    report of all of it (:mod:`infra.demo.report`).

Example::

    result = run_demo(settings)
    result.report          # Path to demo-report.html
    result.as_dict()       # what `s2a demo --json` prints
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.broker import free_port
from infra.demo.display import Step, Steps
from infra.demo.samples import ERASED_SUBJECT, HELD_OUT, SAMPLES, load_references, samples_dir
from schemas.settings import Settings

#: Training sizes that fit the demo's few minutes on 2 CPU cores (a real base trains for
#: thousands of steps; these show the loop, not the anime look).
BASE_STEPS = 40
LORA_STEPS = 20

TITLES = (
    "Load references",
    "Ingest uploads",
    "Review pending pairs",
    "Freeze snapshot",
    "Train base (cycle 1)",
    "Start Convert server",
    "Train LoRA update (cycle 2)",
    "Hot-swap under load",
    "Convert held-out selfies",
    "Erase a subject",
    "Check the erasure",
    "Write report",
)


@dataclass
class DemoResult:
    """Everything the demo did and found; ``as_dict()`` is ``s2a demo --json``."""

    home: Path
    references: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: int = 0
    redelivery_ignored: bool = False
    pairs: dict[str, int] = field(default_factory=dict)
    pair_records: int = 0
    reviewed: dict[str, int] = field(default_factory=dict)
    snapshot: dict[str, Any] = field(default_factory=dict)
    dataset_report: Path | None = None
    export: Path | None = None
    cycles: list[dict[str, Any]] = field(default_factory=list)
    swap: dict[str, Any] = field(default_factory=dict)
    conversions: list[dict[str, Any]] = field(default_factory=list)
    erasure: dict[str, Any] = field(default_factory=dict)
    traces: dict[str, int] = field(default_factory=dict)
    after_erasure: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    @property
    def as_expected(self) -> int:
        return sum(1 for row in self.uploads if row["as_expected"])

    @property
    def promoted(self) -> list[int]:
        return [c["version"] for c in self.cycles if c["status"] == "promoted"]

    def problems(self) -> list[str]:
        """What went other than the demo promises (empty when all is well)."""
        found = []
        if self.as_expected != len(self.uploads):
            found.append(f"{len(self.uploads) - self.as_expected} uploads not as expected")
        if len(self.promoted) < 2:
            found.append(f"promoted {self.promoted}, not a base and an update")
        if self.swap.get("failed", 0):
            found.append(f"{self.swap['failed']} calls failed during the swap")
        if sum(self.traces.values()):
            found.append(f"traces of the erased subject left: {self.traces}")
        return found

    def summary(self) -> str:
        """The lines printed at the end: what happened and where the report is."""
        accepted = sum(1 for row in self.uploads if row["state"] == "accepted")
        swap = ", ".join(f"{n} by v{v}" for v, n in self.swap.get("answered", {}).items())
        return "\n".join(
            [
                f"Uploads: {len(self.uploads)}, {accepted} accepted, "
                f"{len(self.uploads) - accepted} rejected with reasons; "
                f"{self.as_expected}/{len(self.uploads)} as expected",
                "Pairs: "
                + ", ".join(f"{n} {s}" for s, n in sorted(self.pairs.items()))
                + "; reviewed: "
                + (", ".join(f"{n} {a}d" for a, n in sorted(self.reviewed.items())) or "none"),
                "Models: "
                + "; ".join(f"v{c['version']} {c['status']}" for c in self.cycles)
                + f"; swap under load: {swap or 'none'}, {self.swap.get('failed', 0)} failed",
                f"Conversions: {len(self.conversions)} held-out selfies over gRPC",
                f"Erasure: {self.erasure.get('outcome')}; traces left: {sum(self.traces.values())}",
                f"Took {sum(self.seconds.values()):.0f}s. Data: {self.home}",
                f"Report: {self.report}",
            ]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "references": self.references,
            "uploads": self.uploads,
            "as_expected": self.as_expected,
            "dead_letters": self.dead_letters,
            "redelivery_ignored": self.redelivery_ignored,
            "pairs": self.pairs,
            "pair_records": self.pair_records,
            "reviewed": self.reviewed,
            "snapshot": self.snapshot,
            "dataset_report": None if self.dataset_report is None else str(self.dataset_report),
            "export": None if self.export is None else str(self.export),
            "cycles": self.cycles,
            "swap": self.swap,
            "conversions": [{k: v for k, v in c.items() if k != "image"} for c in self.conversions],
            "erasure": self.erasure,
            "traces": self.traces,
            "after_erasure": self.after_erasure,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "report": None if self.report is None else str(self.report),
        }


def demo_settings(settings: Settings, base_steps: int, lora_steps: int) -> Settings:
    """The demo's own settings: a fresh ``<home>/demo``, free ports, CPU-sized training."""
    home = settings.home / "demo"
    update: dict[str, Any] = {"home": home}
    if settings.embedded_broker:
        update["broker_port"] = free_port()
    else:
        # On a shared cluster the demo keeps to topics of its own.
        update["topic_prefix"] = f"{settings.topic_prefix}demo-{int(time.time())}."
    update["train"] = settings.train.model_copy(
        update={"steps": base_steps, "checkpoint_every": base_steps, "runs_dir": None}
    )
    serving = settings.serving.model_copy(
        update={"host": "127.0.0.1", "port": free_port(), "follow_updates": True}
    )
    update["serving"] = serving
    return settings.model_copy(update=update)


def run_demo(
    settings: Settings,
    *,
    base_steps: int = BASE_STEPS,
    lora_steps: int = LORA_STEPS,
    steps: Steps | None = None,
) -> DemoResult:
    """Run every step (module docstring) and return what happened. A step that fails
    raises (the display marks it failed); the data directory stays for inspection."""
    demo = demo_settings(settings, base_steps, lora_steps)
    shutil.rmtree(demo.home, ignore_errors=True)
    demo.home.mkdir(parents=True)
    result = DemoResult(home=demo.home)
    display = steps or Steps(TITLES)
    with display, _logs_to(demo.run_dir / "demo.log"):
        _run(demo, result, display, lora_steps)
    result.seconds = display.seconds
    return result


@contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send this process's log records to ``path`` instead of the terminal while the live
    display owns it; the child processes keep their own logs beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    streams = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
               and not isinstance(h, logging.FileHandler)]  # fmt: skip
    for stream in streams:
        root.removeHandler(stream)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for stream in streams:
            root.addHandler(stream)


def _run(demo: Settings, result: DemoResult, display: Steps, lora_steps: int) -> None:
    from agents.pairing.store import PairStore
    from agents.stores.db import create_engine_for
    from agents.stores.repository import Repository
    from infra.demo import steps as do
    from infra.demo.ingest import ingest
    from infra.runtime import Stack
    from schemas.migrate import upgrade

    upgrade(demo.sql_url)
    engine = create_engine_for(demo.sql_url)
    with display.step("Load references") as step:
        result.references = load_references(demo)
        step.note(_count_outcomes(result.references))
    with Stack(demo) as stack:
        with display.step("Ingest uploads") as step:
            ingested = ingest(demo, stack, Repository(engine), PairStore(engine), step.progress)
            result.uploads, result.dead_letters = ingested.rows, ingested.dead_letters
            result.redelivery_ignored = ingested.redelivery_ignored
            result.pairs, result.pair_records = ingested.pairs, ingested.pair_records
            accepted = sum(1 for r in ingested.rows if r["state"] == "accepted")
            step.note(
                f"{accepted} accepted, {len(ingested.rows) - accepted} rejected; "
                f"{ingested.matched}/{len(ingested.rows)} as expected; pairs "
                + ", ".join(f"{n} {s}" for s, n in sorted(ingested.pairs.items()))
            )
        with display.step("Review pending pairs") as step:
            result.reviewed = do.review_pending(engine)
            step.note(", ".join(f"{n} {a}d" for a, n in sorted(result.reviewed.items())) or "none")
        with display.step("Freeze snapshot") as step:
            manifest = _freeze(demo, engine, result)
            splits = manifest.summary.splits
            step.note(
                f"{manifest.snapshot_id}: "
                + ", ".join(f"{name} {v.records}" for name, v in sorted(splits.items()))
            )
        with display.step("Train base (cycle 1)") as step:
            first = _cycle(demo, engine, result, step)
        if first.update is None:
            return
        do.announce(demo, engine)  # v1's promotion, and the review decisions
        with ExitStack() as server:
            with display.step("Start Convert server") as step:
                client = server.enter_context(do.convert_server(demo, first.update.version))
                update = first.update
                step.note(f"serving {update.name} v{update.version} at {client.address}")
            _serve(demo, engine, result, display, client, lora_steps, manifest)
        with display.step("Erase a subject") as step:
            erased = _subject_data(demo, engine)
            result.erasure = _erase(demo)
            counts = result.erasure["counts"]
            step.note(", ".join(f"{n} {what}" for what, n in counts.items() if n))
    with display.step("Check the erasure") as step:
        result.traces = do.traces(demo, engine, erased.needles, erased.crops)
        left = sum(result.traces.values())
        step.note("nothing left" if left == 0 else f"TRACES LEFT: {result.traces}")
    with display.step("Write report") as step:
        result.after_erasure = _refreeze(demo, engine)
        from infra.demo.report import write_demo_report

        result.seconds = display.seconds
        result.report = write_demo_report(demo, engine, result)
        step.note(str(result.report))
    engine.dispose()


def _count_outcomes(outcomes: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome["outcome"]] = counts.get(outcome["outcome"], 0) + 1
    return ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))


def _freeze(demo: Settings, engine: Any, result: DemoResult) -> Any:
    """Snapshot the approved pairs, export it, write its dataset report; the manifest."""
    from agents.stores.blobs import open_blobs
    from trainer.dataset.export import export_snapshot
    from trainer.dataset.report import REPORT_NAME, write_report
    from trainer.dataset.snapshot import create_snapshot, read_manifest

    made = create_snapshot(engine, demo)
    result.snapshot = made.as_dict()
    manifest = read_manifest(demo.dataset_dir, made.snapshot_id)
    blobs = open_blobs(demo)
    # Under the dataset directory, where an erasure looks for exports of its snapshots
    # (elsewhere only under S2A_DATASET__EXPORT_ROOTS).
    result.export = demo.dataset_dir / "exports" / f"{made.snapshot_id}-imagefolder"
    export_snapshot(manifest, blobs, result.export, "imagefolder")
    result.dataset_report = write_report(
        manifest, demo.dataset_dir / made.snapshot_id / REPORT_NAME, blobs=blobs
    )
    return manifest


def _cycle(demo: Settings, engine: Any, result: DemoResult, step: Step) -> Any:
    from trainer.cycle import run_cycle

    step.note(f"training {demo.train.steps} steps at {demo.train.resolution} px")
    cycle = run_cycle(demo, "demo", engine=engine, actor="demo")
    result.cycles.append(cycle.as_dict())
    step.note(f"v{cycle.version} {cycle.status}: {cycle.reason}")
    return cycle


def _serve(
    demo: Settings,
    engine: Any,
    result: DemoResult,
    display: Steps,
    client: Any,
    lora_steps: int,
    manifest: Any,
) -> None:
    from infra.demo import steps as do

    lora = demo.model_copy(update={"train": demo.train.model_copy(update={"steps": lora_steps})})
    with display.step("Train LoRA update (cycle 2)") as step:
        second = _cycle(lora, engine, result, step)
    probe = samples_dir() / SAMPLES[0].file
    with display.step("Hot-swap under load") as step:
        if second.update is None:
            step.note(f"nothing to swap: cycle 2 {second.status}")
        else:
            swap = do.swap_under_load(
                client.address,
                second.update,
                probe.read_bytes(),
                send=lambda: do.announce(demo, engine),
            )
            result.swap = swap.as_dict()
            step.note(
                f"v{second.update.previous_version} -> v{second.update.version} while "
                f"{swap.callers} callers converted: "
                + ", ".join(f"{n} calls by v{v}" for v, n in sorted(swap.answered.items()))
                + f", {len(swap.failures)} failed"
            )
    with display.step("Convert held-out selfies") as step:
        inputs = _held_out(result, manifest)
        converted = do.convert_files(client, inputs)
        result.conversions = [
            {
                "upload_id": c.upload_id,
                "sample": c.sample,
                "subject": c.subject,
                "width": c.width,
                "height": c.height,
                "model": {"name": c.model[0], "version": c.model[1], "engine": c.model[2]},
                "image": c.image,
            }
            for c in converted
        ]
        step.note(f"{len(converted)} converted by v{converted[0].model[1]}" if converted else "-")


def _held_out(result: DemoResult, manifest: Any) -> list[tuple[str, str, str, Path]]:
    """People the models never trained on: the validation split's uploads (their bundled
    photos, once per upload), then the photos that were never uploaded."""
    seen: dict[str, tuple[str, str, str, Path]] = {
        f"held-out-{i}": (f"held-out-{i}", name, "-", samples_dir() / name)
        for i, name in enumerate(HELD_OUT, 1)
    }
    for record in manifest.split("validation"):
        row = next((r for r in result.uploads if r["upload_id"] == record.upload_id), None)
        if row is not None and record.upload_id not in seen:
            seen[record.upload_id] = (
                record.upload_id,
                row["sample"],
                row["subject"],
                samples_dir() / row["sample"],
            )
    return sorted(seen.values(), key=lambda item: item[0].startswith("held-out"))


def _erase(demo: Settings) -> dict[str, Any]:
    from infra.erasing import erase_through_worker
    from schemas.erasure import ErasureRequest

    request = ErasureRequest(
        subject_id=ERASED_SUBJECT, requested_by="demo", requested_at=datetime.now(UTC)
    )
    return erase_through_worker(demo, request, timeout_s=120.0).as_dict()


@dataclass(frozen=True, slots=True)
class _Erased:
    """What to look for once the erased subject is gone: their pseudonym, raw id and face
    ids (``needles``), and the digests of their crops. Kept in memory only."""

    needles: dict[str, str]
    crops: set[str]


def _subject_data(demo: Settings, engine: Any) -> _Erased:
    from agents.stages.anonymize import pseudonymize
    from agents.stores.repository import Repository

    pseudonym = pseudonymize(ERASED_SUBJECT, demo.resolve_pseudonym_key())
    faces = Repository(engine).faces_of_subject(pseudonym)
    needles = {"pseudonym": pseudonym, "subject id": ERASED_SUBJECT}
    needles |= {f"face {face.face_id}": face.face_id for face in faces}
    crops = {digest for face in faces for digest in (face.crop_256, face.crop_512)}
    return _Erased(needles, crops)


def _refreeze(demo: Settings, engine: Any) -> dict[str, Any]:
    from trainer.dataset.snapshot import create_snapshot

    return create_snapshot(engine, demo).as_dict()
