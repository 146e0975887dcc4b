"""The review page's HTTP server: the page, its static files, a JSON API and the images.

Standard library only (:class:`http.server.ThreadingHTTPServer`); one thread per request,
all of them sharing one :class:`~agents.review.store.ReviewStore`.

    GET  /                               the page
    GET  /static/<file>                  its script and style sheet
    GET  /api/queue[?limit=N]            {"reviewer", "include_unmatched", "waiting", "items"}
    GET  /api/pairs/<id>                 one item (ReviewItem.to_json())
    POST /api/pairs/<id>/decision        {"action", "ref_id"?, "labels"?, "seen_updated_at"}
                                         -> {"pair": {...}, "notice": str | null}
    GET  /blobs/<sha256>.png             a face crop or reference image that SQL knows of

Errors are JSON ``{"error": "..."}`` with 400 (bad request or decision), 403 (a request
from another origin), 404, 409 (decided by someone else since the page loaded it), 413,
415 (not JSON) or 500.

The page has no login: it binds to loopback by default, answers only requests addressed to
its own host name (so a DNS-rebinding page cannot read faces through it), and refuses a
POST whose ``Origin`` is another site's or whose body is not ``application/json`` (so
another local page cannot decide for the reviewer).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine

from agents.errors import Conflict, InvalidDecision, NotFound, Refused, ReviewError, StorageError
from agents.review import checks
from agents.review.decisions import check_reviewer
from agents.review.store import ReviewStore
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from schemas.settings import Settings
from schemas.tables import Pair

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_DIGEST = re.compile(r"[0-9a-f]{64}")

#: The page only ever loads its own script, style sheet and images; framing is refused
#: because a framed page would take the reviewer's keystrokes (a clickjacked "a").
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

OnDecision = Callable[[Pair], None]
"""Called with the committed pair after each approve, pick or reject (not after a
relabel-only decision, which leaves the pair as it was). Runs on the request's thread."""


class _App:
    """What every request handler shares."""

    def __init__(
        self,
        store: ReviewStore,
        blobs: BlobStore,
        reviewer: str,
        include_unmatched: bool,
        on_decision: OnDecision | None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.reviewer = reviewer
        self.include_unmatched = include_unmatched
        self.on_decision = on_decision
        self.static = {
            path.name: path.read_bytes()
            for path in STATIC_DIR.iterdir()
            if path.suffix in _CONTENT_TYPES
        }
        #: ``host:port`` values a request may be addressed to; ``None`` accepts any (a
        #: wildcard bind, where the names the server is reached by are not known).
        self.hosts: frozenset[str] | None = None


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    app: _App


class _Handler(BaseHTTPRequestHandler):
    server_version = "s2a-review"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> _App:
        return cast(_HttpServer, self.server).app

    # -- dispatch -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _answer(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        parts = urlsplit(self.path)
        try:
            checks.check_host(self.app.hosts, self.headers)
            route(parts.path, parse_qs(parts.query))
        except Refused as exc:
            self._json(exc.status, {"error": str(exc)})
        except NotFound as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except InvalidDecision as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Conflict as exc:
            self._json(HTTPStatus.CONFLICT, {"error": str(exc)})
        except StorageError as exc:
            log.error("review %s %s: %s", self.command, parts.path, exc)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        except Exception:  # one failed request answers 500 and the server keeps serving
            log.exception("review %s %s failed", self.command, parts.path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the log"})

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        if path in ("/", "/index.html"):
            self._static("index.html")
        elif path.startswith("/static/"):
            self._static(path.removeprefix("/static/"))
        elif path == "/api/queue":
            self._queue(query)
        elif path.startswith("/api/pairs/"):
            item = self.app.store.item(checks.pair_id(path.removeprefix("/api/pairs/")))
            self._json(HTTPStatus.OK, item.to_json())
        elif path.startswith("/blobs/") and path.endswith(".png"):
            self._blob(path.removeprefix("/blobs/").removesuffix(".png"))
        elif path == "/favicon.ico":  # browsers ask on their own; no icon, and no error
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            raise NotFound(f"no page at {path}")

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        checks.check_origin(self.headers)
        if not (path.startswith("/api/pairs/") and path.endswith("/decision")):
            raise NotFound(f"nothing to POST at {path}")
        pair_id = checks.pair_id(path.removeprefix("/api/pairs/").removesuffix("/decision"))
        body = checks.json_body(self.headers, self.rfile)
        pair = self.app.store.decide(
            pair_id,
            self.app.reviewer,
            body["action"],
            ref_id=body["ref_id"],
            labels=body["labels"],
            seen_updated_at=body["seen_updated_at"],
        )
        notice = None
        if self.app.on_decision is not None and body["action"] != "relabel":
            try:
                self.app.on_decision(pair)
            except Exception as exc:  # the decision is committed: say so, and what failed
                log.exception("pair %s decided, but on_decision failed", pair.pair_id)
                notice = f"decision saved, but announcing it failed: {type(exc).__name__}: {exc}"
        self._json(HTTPStatus.OK, {"pair": _pair_json(pair), "notice": notice})

    # -- routes ---------------------------------------------------------------------------

    def _static(self, name: str) -> None:
        data = self.app.static.get(name)
        if data is None:
            raise NotFound(f"no static file {name!r}")
        self._send(HTTPStatus.OK, data, _CONTENT_TYPES[Path(name).suffix])

    def _queue(self, query: Mapping[str, list[str]]) -> None:
        app = self.app
        items = app.store.queue(checks.queue_limit(query), app.include_unmatched)
        self._json(
            HTTPStatus.OK,
            {
                "reviewer": app.reviewer,
                "include_unmatched": app.include_unmatched,
                "waiting": app.store.waiting(app.include_unmatched),
                "items": [item.to_json() for item in items],
            },
        )

    def _blob(self, digest: str) -> None:
        # The digest is matched and looked up in SQL before any file is touched: the path
        # comes from the blob store's layout, never from the request.
        if not _DIGEST.fullmatch(digest) or not self.app.store.blob_known(digest):
            raise NotFound(f"no image {digest[:64]!r}")
        try:
            data = self.app.blobs.read(digest)
        except FileNotFoundError:
            raise NotFound(f"image {digest} is known but missing from the blob store") from None
        self._send(HTTPStatus.OK, data, "image/png")

    # -- responses ------------------------------------------------------------------------

    def _json(self, status: HTTPStatus, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        if status >= HTTPStatus.BAD_REQUEST:
            # A refused request's body may be unread; on a kept-alive connection it would
            # be parsed as the next request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class ReviewServer:
    """The review page on ``host:port`` (default ``settings.review``), served from a
    background thread.

    Example::

        server = ReviewServer(settings, "alice", on_decision=publish_pair, port=0)
        url = server.start()        # 'http://127.0.0.1:41234/'
        ...
        server.stop()
    """

    def __init__(
        self,
        settings: Settings,
        reviewer: str,
        on_decision: OnDecision | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        include_unmatched: bool = False,
        engine: Engine | None = None,
    ) -> None:
        reviewer = check_reviewer(reviewer)
        self._host = host if host is not None else settings.review.host
        self._port = port if port is not None else settings.review.port
        self._owns_engine = engine is None
        self._engine = engine if engine is not None else create_engine_for(settings.sql_url)
        store = ReviewStore(self._engine, settings.pairing.min_model_confidence)
        self._app = _App(
            store, BlobStore(settings.blob_dir), reviewer, include_unmatched, on_decision
        )
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None
        self.reviewer = reviewer

    def start(self) -> str:
        """Bind, serve from a background thread and return the page's URL."""
        if self._server is not None:
            raise ReviewError(f"the review server is already serving at {self.url}")
        server_class = _HttpServer
        if ":" in self._host:

            class _V6(_HttpServer):
                address_family = socket.AF_INET6

            server_class = _V6
        try:
            server = server_class((self._host, self._port), _Handler)
        except OSError as exc:
            raise ReviewError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}; "
                "pass another --port (0 picks a free one)"
            ) from exc
        server.app = self._app
        port = int(server.server_address[1])
        self._app.hosts = checks.hosts_for(self._host, port)
        if not checks.is_loopback(self._host):
            log.warning(
                "the review page has no login and listens on %s: anyone who can reach it "
                "can see faces and decide pairs",
                self._host,
            )
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="s2a-review", daemon=True)
        self._thread.start()
        shown = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{shown}:{port}/"
        return self.url

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts the wait)."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Stop serving, close the socket and the database connections; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- helpers ------------------------------------------------------------------------------


def _pair_json(pair: Pair) -> dict[str, Any]:
    return {
        "pair_id": pair.pair_id,
        "face_id": pair.face_id,
        "style": pair.style,
        "status": pair.status,
        "ref_id": pair.ref_id,
        "score": pair.score,
        "decided_by": pair.decided_by,
        "decided_at": None if pair.decided_at is None else pair.decided_at.isoformat(),
        "updated_at": pair.updated_at.isoformat(),
    }
