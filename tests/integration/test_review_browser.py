"""The review page end to end: the real HTTP server on loopback, SQL, and headless Chromium.

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright; ``playwright install``
is never run. The HTTP contract (origins, content types, conflicts, blobs) is checked with
plain requests on SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from agents.review.server import ReviewServer
from agents.review.store import ReviewStore
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from schemas.migrate import upgrade
from schemas.reasons import UploadState
from schemas.settings import Settings
from schemas.tables import (
    AnimeRef,
    Face,
    Label,
    LibraryVersion,
    Pair,
    ReviewDecision,
    Subject,
    Upload,
)

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[1] / "data"
CHROMIUM = Path("/usr/bin/chromium")
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SELFIES = ("london_001_neutral.jpg", "london_004_neutral.jpg", "london_007_neutral.jpg")
#: (file, license, author) of the candidates every pair gets, in rank order.
REFS = (
    ("renpy_eileen_happy_face.png", "MIT", "Piroshki (Eileen sprites), Ren'Py demo"),
    ("renpy_sylvie_blue_smile_face.png", "MIT", "Deji (updated art), derik (original art)"),
    ("pc_chaosah_pepper_face.jpg", "CC-BY-4.0", "David Revoy (Pepper&Carrot)"),
)
REVIEWER = "carol"


@functools.cache
def _png(path: Path, side: int) -> bytes:
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Seeded:
    settings: Settings
    engine: Engine
    pairs: list[str]
    """pending pair ids, oldest first"""
    faces: list[str]
    refs: list[str]
    crops: list[str]


def seed(home: Path, sql_url: str) -> Seeded:
    """Three faces, each with one pending pair whose three candidates are REFS."""
    settings = Settings(home=home, database_url=sql_url)
    upgrade(sql_url)
    engine = create_engine_for(sql_url)
    blobs = BlobStore(settings.blob_dir)
    rows: list[Any] = [LibraryVersion(version=1, created_at=T0, added=len(REFS))]
    refs = [f"ref-{i}" for i in range(len(REFS))]
    for ref_id, (name, license_, author) in zip(refs, REFS, strict=True):
        training = blobs.put(_png(DATA / "anime" / name, 256))
        rows.append(
            AnimeRef(
                ref_id=ref_id,
                style="vn",
                status="active",
                original=training,
                training=training,
                region="whole",
                box=[0.0, 0.0, 1.0, 1.0],
                width=256,
                height=256,
                license=license_,
                source=f"tests/data/anime/{name}",
                author=author,
                tags=[],
                stats={},
                embedder="test",
                library_version=1,
                added_at=T0,
            )
        )
    faces, crops, pairs = [], [], []
    for i, name in enumerate(SELFIES):
        subject = hashlib.sha256(f"subject-{i}".encode()).hexdigest()
        face_id, crop = f"face-{i}", blobs.put(_png(DATA / "real" / name, 256))
        faces.append(face_id)
        crops.append(crop)
        pairs.append(f"pair-{i}")
        at = T0 + timedelta(minutes=i)
        rows += [
            Subject(
                pseudonym=subject,
                first_seen_at=T0,
                consent_version="test-1",
                consent_scopes=["training"],
                consent_granted_at=T0,
            ),
            Upload(
                upload_id=f"up-{i}", subject=subject, state=UploadState.ACCEPTED, finished_at=T0
            ),
            Face(
                face_id=face_id,
                upload_id=f"up-{i}",
                subject=subject,
                source="selfie",
                detector="mtcnn",
                detection_prob=0.99,
                box=[0.0, 0.0, 512.0, 512.0],
                landmarks=[[0.0, 0.0]] * 5,
                quality={},
                crop_256=crop,
                crop_512=crop,
                align={},
                embedder="test",
                embedder_random_init=True,
                image_width=512,
                image_height=512,
                created_at=T0,
            ),
            Label(
                face_id=face_id,
                name="gender",
                value="female",
                source="declared",
                confidence=1.0,
                created_at=T0,
            ),
            Pair(
                pair_id=f"pair-{i}",
                face_id=face_id,
                subject=subject,
                style="vn",
                status="pending",
                candidates=[
                    {"ref_id": r, "score": 0.7 - k / 10, "similarity": 0.8, "label_agreement": 1.0}
                    for k, r in enumerate(refs)
                ],
                library_version=1,
                created_at=at,
                updated_at=at,
            ),
        ]
    with Session(engine) as session:
        for row in rows:  # parents before children, whatever the mapper's order
            session.add(row)
            session.flush()
        session.commit()
    return Seeded(settings, engine, pairs, faces, refs, crops)


def _pair(engine: Engine, pair_id: str) -> Pair:
    with Session(engine) as session:
        row = session.get(Pair, pair_id)
        if row is None:
            raise LookupError(pair_id)
        return row


def _decisions(engine: Engine, pair_id: str) -> list[ReviewDecision]:
    statement = (
        select(ReviewDecision)
        .where(col(ReviewDecision.pair_id) == pair_id)
        .order_by(col(ReviewDecision.id))
    )
    with Session(engine) as session:
        return list(session.exec(statement).all())


def _human_label(engine: Engine, face_id: str, name: str) -> str | None:
    statement = select(Label.value).where(
        col(Label.face_id) == face_id, col(Label.name) == name, col(Label.source) == "human"
    )
    with Session(engine) as session:
        return session.exec(statement).first()


# -- the HTTP contract --------------------------------------------------------------------


@dataclass
class Running:
    seeded: Seeded
    url: str
    announced: list[Pair]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if payload is not None else {}
        sent.update(headers or {})
        try:
            connection.request(method, path, body=payload, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def decide(self, pair_id: str, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
        status, _, data = self.request("POST", f"/api/pairs/{pair_id}/decision", body, headers)
        return status, json.loads(data)


@contextmanager
def _serve(
    home: Path, sql_url: str, on_decision: Callable[[Pair], None] | None = None
) -> Iterator[Running]:
    seeded = seed(home, sql_url)
    announced: list[Pair] = []
    server = ReviewServer(
        seeded.settings, REVIEWER, on_decision=on_decision or announced.append, port=0
    )
    url = server.start()
    try:
        yield Running(seeded, url, announced)
    finally:
        server.stop()
        seeded.engine.dispose()


@pytest.fixture
def running(sql_url: str, tmp_path: Path) -> Iterator[Running]:
    """The server over SQLite and over PostgreSQL."""
    with _serve(tmp_path, sql_url) as served:
        yield served


@pytest.fixture
def running_sqlite(tmp_path: Path) -> Iterator[Running]:
    """The server over SQLite, for checks that end before SQL is reached."""
    with _serve(tmp_path, f"sqlite:///{tmp_path / 's2a.db'}") as served:
        yield served


def _seen(running: Running, pair_id: str) -> str:
    status, _, data = running.request("GET", f"/api/pairs/{pair_id}")
    assert status == 200
    seen: str = json.loads(data)["updated_at"]
    return seen


def test_queue_and_item_are_served_as_json(running: Running) -> None:
    status, headers, data = running.request("GET", "/api/queue")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    queue = json.loads(data)
    assert queue["reviewer"] == REVIEWER
    assert [item["pair_id"] for item in queue["items"]] == running.seeded.pairs
    status, _, data = running.request("GET", f"/api/pairs/{running.seeded.pairs[0]}")
    item = json.loads(data)
    assert item["crop"] == running.seeded.crops[0]
    assert [c["ref"]["author"] for c in item["candidates"]] == [r[2] for r in REFS]


def test_decisions_commit_and_approvals_are_announced(running: Running) -> None:
    engine = running.seeded.engine
    pair_id, face_id, ref = running.seeded.pairs[0], running.seeded.faces[0], running.seeded.refs[1]
    seen = _seen(running, pair_id)
    relabel = {"action": "relabel", "labels": {"glasses": "yes"}, "seen_updated_at": seen}
    status, answer = running.decide(pair_id, relabel, Origin=running.url.rstrip("/"))
    assert status == 200, answer
    assert _human_label(engine, face_id, "glasses") == "yes"
    assert running.announced == []  # a relabel leaves the pair as it was

    pick = {"action": "pick", "ref_id": ref, "labels": {"glasses": "no"}, "seen_updated_at": seen}
    status, answer = running.decide(pair_id, pick, Origin=running.url.rstrip("/"))
    assert status == 200, answer
    assert answer["pair"]["status"] == "approved"
    stored = _pair(engine, pair_id)
    assert (stored.status, stored.ref_id, stored.decided_by) == ("approved", ref, "human:carol")
    assert _human_label(engine, face_id, "glasses") == "no"
    assert [d.action for d in _decisions(engine, pair_id)] == ["relabel", "pick"]
    [announced] = running.announced
    assert (announced.pair_id, announced.status, announced.ref_id) == (pair_id, "approved", ref)


def test_a_stale_decision_is_409_naming_who_decided(running: Running) -> None:
    pair_id = running.seeded.pairs[0]
    seen = _seen(running, pair_id)
    ReviewStore(running.seeded.engine).decide(pair_id, "dave", "reject", seen_updated_at=None)
    status, answer = running.decide(pair_id, {"action": "approve", "seen_updated_at": seen})
    assert status == 409
    assert "rejected by human:dave" in answer["error"]
    assert _pair(running.seeded.engine, pair_id).decided_by == "human:dave"
    assert running.announced == []


@pytest.mark.parametrize(
    ("body", "headers", "expected", "message"),
    [
        ({"action": "reject", "seen": 1}, {"Origin": "http://evil.example"}, 403, "cross-origin"),
        (b"action=reject", {"Content-Type": "text/plain"}, 415, "application/json"),
        ({"action": "reject"}, {}, 400, "seen_updated_at"),
        ({"action": "relabel", "labels": {"glasses": "maybe"}, "seen": 1}, {}, 400, "not a value"),
        ({"action": "approve", "ref_id": "ref-nope", "seen": 1}, {}, 400, "does not exist"),
        ({"action": "reject", "by": "x", "seen": 1}, {}, 400, "unknown field"),
    ],
)
def test_refused_decisions_change_nothing(
    running_sqlite: Running, body: Any, headers: dict[str, str], expected: int, message: str
) -> None:
    """``"seen": 1`` stands for the pair's real updated_at, so only the fault is wrong."""
    running = running_sqlite
    pair_id = running.seeded.pairs[0]
    if isinstance(body, dict) and body.pop("seen", None):
        body["seen_updated_at"] = _seen(running, pair_id)
    status, response_headers, data = running.request(
        "POST", f"/api/pairs/{pair_id}/decision", body, headers
    )
    assert status == expected
    assert response_headers["Content-Type"] == "application/json"
    assert message in json.loads(data)["error"]
    assert _pair(running.seeded.engine, pair_id).status == "pending"
    assert _decisions(running.seeded.engine, pair_id) == []


def test_a_failed_announcement_keeps_the_decision_and_says_so(tmp_path: Path) -> None:
    def broker_down(pair: Pair) -> None:
        raise ConnectionError(f"no broker to announce {pair.pair_id}")

    with _serve(tmp_path, f"sqlite:///{tmp_path / 's2a.db'}", broker_down) as running:
        pair_id = running.seeded.pairs[0]
        body = {"action": "reject", "seen_updated_at": _seen(running, pair_id)}
        status, answer = running.decide(pair_id, body)
        assert status == 200
        assert "announcing it failed: ConnectionError: no broker" in answer["notice"]
        assert _pair(running.seeded.engine, pair_id).status == "rejected"


def test_only_known_blobs_are_served(running: Running) -> None:
    crop = running.seeded.crops[1]
    status, headers, data = running.request("GET", f"/blobs/{crop}.png")
    assert (status, headers["Content-Type"]) == (200, "image/png")
    assert hashlib.sha256(data).hexdigest() == crop
    # A blob on disk that SQL does not name is not served, nor is anything path-like.
    stray = BlobStore(running.seeded.settings.blob_dir).put(b"not a face")
    for path in (f"/blobs/{stray}.png", "/blobs/../../s2a.db.png", "/blobs/%2e%2e%2fs2a.png"):
        status, headers, data = running.request("GET", path)
        assert status == 404, path
        assert "error" in json.loads(data)


def test_requests_for_another_host_name_are_refused(running_sqlite: Running) -> None:
    running = running_sqlite
    status, _, data = running.request("GET", "/api/queue", headers={"Host": "evil.example:80"})
    assert status == 400
    assert "Host" in json.loads(data)["error"]
    status, _, _ = running.request("GET", "/api/pairs/nope")
    assert status == 404


# -- the page in a real browser -----------------------------------------------------------


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple[Any, Running]]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (CI installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    seeded = seed(tmp_path, f"sqlite:///{tmp_path / 's2a.db'}")
    announced: list[Pair] = []
    server = ReviewServer(seeded.settings, REVIEWER, on_decision=announced.append, port=0)
    url = server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            try:
                page = browser.new_page()
                page.goto(url)
                yield page, Running(seeded, url, announced)
            finally:
                browser.close()
    finally:
        server.stop()
        seeded.engine.dispose()


def test_reviewer_approves_rejects_and_relabels_from_the_page(
    browser_page: tuple[Any, Running],
) -> None:
    from playwright.sync_api import expect

    page, running = browser_page
    engine, pairs, refs = running.seeded.engine, running.seeded.pairs, running.seeded.refs
    item = page.locator("#item")
    expect(item).to_have_attribute("data-pair-id", pairs[0])
    page.wait_for_function(
        "() => { const img = document.getElementById('crop');"
        " return img.complete && img.naturalWidth > 0; }"
    )
    assert page.eval_on_selector("#crop", "img => img.naturalWidth") == 256
    cards = page.locator(".candidate")
    expect(cards).to_have_count(3)
    for i, (_, license_, author) in enumerate(REFS):
        expect(cards.nth(i).locator(".attribution")).to_contain_text(author)
        expect(cards.nth(i).locator(".attribution")).to_contain_text(license_)
    expect(page.locator('.label.missing[data-label="age_band"]')).to_be_visible()
    expect(page.locator("#reviewer")).to_have_text(REVIEWER)

    # 2 then a: approve the second candidate from the keyboard.
    page.keyboard.press("2")
    expect(cards.nth(1)).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("a")
    expect(item).to_have_attribute("data-pair-id", pairs[1])
    first = _pair(engine, pairs[0])
    assert (first.status, first.ref_id, first.decided_by) == ("approved", refs[1], "human:carol")
    [decision] = _decisions(engine, pairs[0])
    assert (decision.actor, decision.action, decision.ref_id) == (REVIEWER, "pick", refs[1])
    assert [p.pair_id for p in running.announced] == [pairs[0]]

    # Fix a label on the next face, then reject it with the button.
    page.select_option("#label-glasses", "yes")
    expect(page.locator('[data-label="glasses"] .source')).to_contain_text("human")
    assert _human_label(engine, running.seeded.faces[1], "glasses") == "yes"
    page.click("#reject")
    expect(item).to_have_attribute("data-pair-id", pairs[2])
    second = _pair(engine, pairs[1])
    assert (second.status, second.ref_id, second.decided_by) == ("rejected", None, "human:carol")
    assert [d.action for d in _decisions(engine, pairs[1])] == ["relabel", "reject"]

    # The last one with the suggested candidate; then the queue is empty.
    expect(cards.nth(0)).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("a")
    expect(page.locator("#empty")).to_be_visible()
    expect(item).to_be_hidden()
    third = _pair(engine, pairs[2])
    assert (third.status, third.ref_id, third.score) == ("approved", refs[0], 0.7)
    assert [d.action for d in _decisions(engine, pairs[2])] == ["approve"]


def test_the_page_shows_who_decided_first(browser_page: tuple[Any, Running]) -> None:
    from playwright.sync_api import expect

    page, running = browser_page
    pair_id = running.seeded.pairs[0]
    expect(page.locator("#item")).to_have_attribute("data-pair-id", pair_id)
    ReviewStore(running.seeded.engine).decide(pair_id, "dave", "reject")
    page.keyboard.press("a")
    expect(page.locator("#status")).to_contain_text("rejected by human:dave")
    expect(page.locator("#item")).to_have_attribute("data-status", "rejected")
    assert _pair(running.seeded.engine, pair_id).decided_by == "human:dave"
