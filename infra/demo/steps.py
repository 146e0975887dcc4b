"""The demo's steps after ingestion, each through the product's own code path: review
(the review service's decision writer), retrain cycles (``trainer.cycle.run_cycle``, as the
scheduler runs them), the Convert server (``s2a serve`` as a child process) and its
hot-swap under load, conversions over gRPC, and erasure through the worker's ``erase``
agent, followed by a scan of every store for what is left of the erased subject.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, select

from agents.review.store import ReviewStore
from infra.errors import ChildExited
from infra.runtime import ServerProcess
from infra.waiting import wait_until
from schemas.model_updates import ModelUpdate
from schemas.settings import Settings
from serving.client import ConvertClient
from serving.errors import ConvertFailed

#: Who the demo's review decisions are recorded as (``human:demo-reviewer``).
REVIEWER = "demo-reviewer"

#: Longest wait for the Convert server to load a model, and for a swap to show, in seconds.
SERVER_DEADLINE_S = 180.0

#: Calls answered by the new model before the swap counts as seen by every caller.
CALLS_AFTER_SWAP = 4


def review_pending(engine: Engine, reviewer: str = REVIEWER) -> dict[str, int]:
    """Decide every waiting pair the way a reviewer on the review page would: look at the
    item, approve its suggested reference, or reject it when it has none. Returns the
    count of each action taken."""
    store = ReviewStore(engine)
    taken: Counter[str] = Counter()
    while items := store.queue(limit=50):
        for summary in items:
            item = store.item(summary.pair_id)
            action = "approve" if item.suggested_ref_id else "reject"
            store.decide(item.pair_id, reviewer, action, seen_updated_at=item.updated_at)
            taken[action] += 1
    return dict(taken)


def announce(settings: Settings, engine: Engine, deadline_s: float = 60.0) -> int:
    """Send what waits in the outbox (the champion moves and review decisions, written there
    in their own transactions) through the product's relay; the number of records sent.
    Raises :class:`~infra.errors.WaitTimeout` when the broker did not take them in time."""
    from infra.errors import WaitTimeout
    from infra.outbox import OutboxRelay

    delivery = OutboxRelay(settings, engine).flush(deadline_s=deadline_s)
    if not delivery.done:
        raise WaitTimeout(
            f"the outbox relay sent {delivery.sent}, {delivery.left} still waiting after "
            f"{deadline_s:.0f}s ({delivery.error or 'no error'})"
        )
    return delivery.sent


@contextmanager
def convert_server(settings: Settings, version: int) -> Iterator[ConvertClient]:
    """``s2a serve`` in a child process (following ``model-updates``), yielded as a client
    once it serves ``version`` of the converter. Stopped on the way out."""
    server = ServerProcess(settings)
    server.start()
    client = ConvertClient(f"127.0.0.1:{settings.serving.port}", timeout_s=60.0)
    try:

        def alive() -> None:
            if server.proc is not None and server.proc.poll() is not None:
                tail = server.log_path.read_text()[-2000:] if server.log_path.exists() else ""
                raise ChildExited(f"s2a serve exited; see {server.log_path}\n{tail}")

        wait_until(
            lambda: _serving(client) == version,
            deadline_s=SERVER_DEADLINE_S,
            what=f"the Convert server to serve version {version} (see {server.log_path})",
            poll_s=0.25,
            alive=alive,
        )
        yield client
    finally:
        client.close()
        server.stop()


def _serving(client: ConvertClient) -> int | None:
    try:
        if client.health(timeout_s=2.0) != "SERVING":
            return None
        return int(client.model_info(timeout_s=5.0).version)
    except ConvertFailed:
        return None


@dataclass
class SwapUnderLoad:
    """What callers saw while the server swapped models: calls answered per version, and
    every failed call's status and message (the product promises none)."""

    answered: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    callers: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "callers": self.callers,
            "answered": {str(k): v for k, v in sorted(self.answered.items())},
            "failed": len(self.failures),
            "failures": self.failures[:10],
            "seconds": round(self.seconds, 2),
        }


def swap_under_load(
    address: str,
    update: ModelUpdate,
    image: bytes,
    send: Callable[[], object],
    *,
    callers: int = 2,
) -> SwapUnderLoad:
    """Keep ``callers`` clients converting ``image`` while ``send()`` announces ``update``;
    stop once the new version has answered :data:`CALLS_AFTER_SWAP` calls after the old one
    answered at least one (so the swap happened under load)."""
    result = SwapUnderLoad(callers=callers)
    lock = threading.Lock()
    stop = threading.Event()

    def call() -> None:
        with ConvertClient(address, timeout_s=60.0) as client:
            while not stop.is_set():
                try:
                    answer = client.convert(image)
                except ConvertFailed as exc:
                    with lock:
                        result.failures.append(str(exc))
                    continue
                with lock:
                    version = answer.model[1]
                    result.answered[version] = result.answered.get(version, 0) + 1

    def answered(version: int, at_least: int) -> bool:
        with lock:
            return result.answered.get(version, 0) >= at_least

    threads = [threading.Thread(target=call, name=f"demo-caller-{i}") for i in range(callers)]
    started = datetime.now(UTC)
    for thread in threads:
        thread.start()
    try:
        previous = update.previous_version or 0
        wait_until(
            lambda: answered(previous, 1),
            deadline_s=SERVER_DEADLINE_S,
            what=f"a call answered by version {previous}",
            poll_s=0.05,
        )
        send()
        wait_until(
            lambda: answered(update.version, CALLS_AFTER_SWAP),
            deadline_s=SERVER_DEADLINE_S,
            what=f"calls answered by version {update.version} after the swap",
            poll_s=0.05,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    result.seconds = (datetime.now(UTC) - started).total_seconds()
    return result


@dataclass(frozen=True, slots=True)
class Conversion:
    """One held-out selfie converted over gRPC: the input file, the converted PNG and
    the model that answered."""

    upload_id: str
    sample: str
    subject: str
    image: bytes
    width: int
    height: int
    model: tuple[str, int, str]


def convert_files(
    client: ConvertClient, inputs: list[tuple[str, str, str, Path]]
) -> list[Conversion]:
    """Convert each ``(upload_id, sample, subject, photo path)`` with paste-back (PNG)."""
    done = []
    for upload_id, sample, subject, path in inputs:
        answer = client.convert(path.read_bytes())
        done.append(
            Conversion(
                upload_id, sample, subject, answer.image, answer.width, answer.height, answer.model
            )
        )
    return done


def traces(
    settings: Settings, engine: Engine, needles: dict[str, str], crops: set[str]
) -> dict[str, int]:
    """Where anything of an erased subject is left: rows of any SQL table whose text holds
    a needle (``{what: text}``, e.g. the pseudonym and the raw id), Qdrant points whose
    payload holds one, crops still in the blob store, and files under the data directory
    whose bytes hold one (the SQL and Qdrant files included). Every count should be 0.

    Needs the Qdrant local store to itself: run it after the worker stopped.
    """
    from agents.stores.blobs import open_blobs
    from agents.stores.faces import open_client

    found = {"sql_rows": 0, "qdrant_points": 0, "crops": 0, "files": 0}
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                text = " ".join(str(value) for value in row)
                found["sql_rows"] += any(needle in text for needle in needles.values())
    client = open_client(settings)
    try:
        for collection in client.get_collections().collections:
            offset = None
            while True:
                points, offset = client.scroll(
                    collection.name, limit=256, offset=offset, with_payload=True
                )
                for point in points:
                    text = str(point.payload)
                    found["qdrant_points"] += any(n in text for n in needles.values())
                if offset is None:
                    break
    finally:
        client.close()
    blobs = open_blobs(settings)
    found["crops"] = sum(1 for digest in crops if blobs.exists(digest))
    encoded = [needle.encode() for needle in needles.values()]
    for path in settings.home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found["files"] += any(needle in data for needle in encoded)
    return found
