"""The review page end to end: the real HTTP server on loopback, SQL, and headless Chromium.

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright; ``playwright install``
is never run; it logs in through the real login page. The HTTP contract (login, sessions,
CSRF tokens, origins, content types, conflicts, blobs) is checked with plain requests on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import json
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from argon2 import PasswordHasher
from cli_runner import run_s2a
from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from agents.errors import ReviewError
from agents.review.accounts import ReviewerAccounts
from agents.review.server import SESSION_COOKIE, ReviewServer
from agents.review.store import ReviewStore
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from schemas.migrate import upgrade
from schemas.reasons import UploadState
from schemas.settings import ReviewSettings, Settings
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
PASSWORD = "carol's long passphrase"
#: Argon2 at its cheapest: these tests check who may log in, not how slow guessing is.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


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
    settings.review.resolve_session_secret(home, create=True)
    ReviewerAccounts(engine, FAST).add(REVIEWER, PASSWORD)
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
    """A served page and a client of it that keeps the session cookie and CSRF token."""

    seeded: Seeded
    url: str
    announced: list[Pair]
    cookie: str | None = None
    csrf: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if payload is not None else {}
        if self.cookie is not None:
            sent["Cookie"] = f"{SESSION_COOKIE}={self.cookie}"
        if self.csrf is not None and method == "POST":
            sent["X-CSRF-Token"] = self.csrf
        sent.update(headers or {})
        try:
            connection.request(method, path, body=payload, headers=sent)
            response = connection.getresponse()
            cookie = SimpleCookie(response.headers.get("set-cookie", ""))
            if SESSION_COOKIE in cookie:  # the session changed (login, logout, new token)
                self.cookie = cookie[SESSION_COOKIE].value or None
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def decide(self, pair_id: str, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
        status, _, data = self.request("POST", f"/api/pairs/{pair_id}/decision", body, headers)
        return status, json.loads(data)

    def login(self, name: str = REVIEWER, password: str = PASSWORD) -> int:
        """Log in as a browser does: the form's token, then the form; returns the status
        of the POST and, on success, keeps the page's CSRF token."""
        self.cookie = self.csrf = None
        status, _, page = self.request("GET", "/login")
        assert status == 200
        form = {"name": name, "password": password, "csrf_token": _token(page)}
        status, headers, _ = self.request(
            "POST",
            "/login",
            urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status == 303:
            assert headers["location"] == "/"
            status_page, _, page = self.request("GET", "/")
            assert status_page == 200
            self.csrf = _token(page)
        return status


def _token(page: bytes) -> str:
    """The CSRF token a rendered page carries (the form's hidden field or the meta tag)."""
    found = re.search(rb'(?:name="csrf_token" value|name="csrf-token" content)="([^"]+)"', page)
    assert found is not None, page[:500]
    return found.group(1).decode()


@contextmanager
def _serve(
    home: Path,
    sql_url: str,
    on_decision: Callable[[Pair], None] | None = None,
    *,
    logged_in: bool = True,
) -> Iterator[Running]:
    seeded = seed(home, sql_url)
    announced: list[Pair] = []
    server = ReviewServer(
        seeded.settings, on_decision=on_decision or announced.append, port=0, hasher=FAST
    )
    url = server.start()
    try:
        running = Running(seeded, url, announced)
        if logged_in:
            assert running.login() == 303
        yield running
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


# -- login, sessions and CSRF ---------------------------------------------------------------


@pytest.fixture
def anonymous(tmp_path: Path) -> Iterator[Running]:
    """The server over SQLite and a client that has not logged in."""
    with _serve(tmp_path, f"sqlite:///{tmp_path / 's2a.db'}", logged_in=False) as served:
        yield served


def test_everything_but_the_login_page_needs_a_session(anonymous: Running) -> None:
    running = anonymous
    pair_id, crop = running.seeded.pairs[0], running.seeded.crops[0]
    for path in ("/api/queue", f"/api/pairs/{pair_id}", f"/blobs/{crop}.png"):
        status, headers, data = running.request("GET", path)
        assert (status, headers["Content-Type"]) == (401, "application/json"), path
        assert "log in" in json.loads(data)["error"]
    status, _ = running.decide(pair_id, {"action": "reject", "seen_updated_at": "x"})
    assert status == 401
    for page in ("/", "/index.html"):
        status, headers, _ = running.request("GET", page)
        assert (status, headers["Location"]) == (303, "/login")
    status, headers, page_html = running.request("GET", "/login")
    assert status == 200
    assert b'type="password"' in page_html
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert _pair(running.seeded.engine, pair_id).status == "pending"


@pytest.mark.parametrize(
    ("name", "password"), [(REVIEWER, "not carol's password"), ("mallory", PASSWORD), ("", "")]
)
def test_a_wrong_name_or_password_is_refused(anonymous: Running, name: str, password: str) -> None:
    running = anonymous
    assert running.login(name, password) == 401
    status, _, _ = running.request("GET", "/api/queue")
    assert status == 401


def test_repeated_wrong_passwords_are_throttled(anonymous: Running) -> None:
    running = anonymous
    for _ in range(5):
        assert running.login(REVIEWER, "not carol's password") == 401
    # Now even the right password waits: guessing costs time, not only Argon2's.
    assert running.login() == 429
    assert running.request("GET", "/api/queue")[0] == 401


def test_login_needs_the_login_pages_token(anonymous: Running) -> None:
    """Another site's form must not log the browser in (login CSRF)."""
    running = anonymous
    form = urlencode({"name": REVIEWER, "password": PASSWORD}).encode()
    status, _, page = running.request(
        "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 403
    assert b"CSRF token missing" in page
    assert b'name="csrf_token"' in page  # the form again, to log in for real
    assert running.request("GET", "/api/queue")[0] == 401


@pytest.mark.parametrize(
    ("token", "message"), [(None, "CSRF token missing"), ("forged", "CSRF token wrong")]
)
def test_a_decision_without_the_sessions_csrf_token_is_refused(
    running_sqlite: Running, token: str | None, message: str
) -> None:
    running = running_sqlite
    pair_id = running.seeded.pairs[0]
    body = {"action": "reject", "seen_updated_at": _seen(running, pair_id)}
    running.csrf = token
    status, answer = running.decide(pair_id, body)
    assert status == 403
    assert message in answer["error"]
    assert _pair(running.seeded.engine, pair_id).status == "pending"
    assert _decisions(running.seeded.engine, pair_id) == []


def test_a_decision_records_the_logged_in_reviewer(running_sqlite: Running) -> None:
    running = running_sqlite
    engine, pair_id = running.seeded.engine, running.seeded.pairs[0]
    ReviewerAccounts(engine, FAST).add("erin", "erin's long passphrase")
    assert running.login("erin", "erin's long passphrase") == 303
    status, _, data = running.request("GET", "/api/queue")
    assert json.loads(data)["reviewer"] == "erin"

    status, answer = running.decide(
        pair_id, {"action": "reject", "seen_updated_at": _seen(running, pair_id)}
    )
    assert status == 200, answer
    assert _pair(engine, pair_id).decided_by == "human:erin"
    assert [(d.actor, d.action) for d in _decisions(engine, pair_id)] == [("erin", "reject")]


def test_logout_and_removal_end_sessions(running_sqlite: Running) -> None:
    running = running_sqlite
    engine = running.seeded.engine
    cookie = running.cookie
    status, headers, _ = running.request("POST", "/logout")
    assert (status, headers["Location"]) == (303, "/login")
    # The cookie from before the logout is dead too, not only the browser's copy of it.
    running.cookie = cookie
    assert running.request("GET", "/api/queue")[0] == 401

    assert running.login() == 303
    assert running.request("GET", "/api/queue")[0] == 200
    assert ReviewerAccounts(engine, FAST).remove(REVIEWER)
    assert running.request("GET", "/api/queue")[0] == 401


def test_a_non_loopback_address_without_tls_is_refused(tmp_path: Path) -> None:
    seeded = seed(tmp_path, f"sqlite:///{tmp_path / 's2a.db'}")
    try:
        server = ReviewServer(seeded.settings, host="0.0.0.0", port=0, engine=seeded.engine)
        with pytest.raises(ReviewError, match="S2A_REVIEW__TLS_CERT and S2A_REVIEW__TLS_KEY"):
            server.start()
        assert server.url is None
    finally:
        seeded.engine.dispose()


def test_s2a_review_refuses_a_wide_bind_without_tls_in_one_line(tmp_path: Path) -> None:
    result = run_s2a("review", "--host", "0.0.0.0", "--port", "0", home=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("s2a: refusing to serve the review page on 0.0.0.0 without TLS")
    assert "S2A_REVIEW__TLS_CERT and S2A_REVIEW__TLS_KEY" in line


def test_with_tls_the_page_listens_beyond_loopback(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is absent; it makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject],
        check=True,
        capture_output=True,
    )
    seeded = seed(tmp_path, f"sqlite:///{tmp_path / 's2a.db'}")
    review = ReviewSettings(tls_cert=cert, tls_key=key)
    settings = seeded.settings.model_copy(update={"review": review})
    server = ReviewServer(settings, host="0.0.0.0", port=0, engine=seeded.engine)
    try:
        url = server.start()
        assert url.startswith("https://0.0.0.0:")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        port = int(urlsplit(url).port or 0)
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        try:
            connection.request("GET", "/login")
            response = connection.getresponse()
            assert response.status == 200
            assert "secure" in response.headers["set-cookie"].lower()
        finally:
            connection.close()
    finally:
        server.stop()
        seeded.engine.dispose()


# -- the page in a real browser -----------------------------------------------------------


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple[Any, Running]]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (CI installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    seeded = seed(tmp_path, f"sqlite:///{tmp_path / 's2a.db'}")
    announced: list[Pair] = []
    server = ReviewServer(seeded.settings, on_decision=announced.append, port=0, hasher=FAST)
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
                # Through the real login page: the queue is behind it.
                page.goto(url)
                page.wait_for_url(f"{url}login")
                page.fill("#name", REVIEWER)
                page.fill("#password", PASSWORD)
                page.click("#login-button")
                page.wait_for_url(url)
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

    # Logging out lands on the login page, and the page is behind it again.
    page.click("#logout")
    page.wait_for_url(f"{running.url}login")
    page.goto(running.url)
    page.wait_for_url(f"{running.url}login")


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
