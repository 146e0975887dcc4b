"""The review page's web app: login, the page, its static files, a JSON API and images.

A Starlette app (:class:`ReviewApp`), served by :class:`agents.review.server.ReviewServer`;
the store's blocking SQL and the Argon2 checks run in Starlette's thread pool.

    GET  /login                          the login form
    POST /login                          name, password, csrf_token (a form) -> 303 /
    POST /logout                         csrf_token (form) or X-CSRF-Token -> 303 /login
    GET  /                               the page (303 /login without a session)
    GET  /static/<file>                  its script and style sheet
    GET  /api/queue[?limit=N]            {"reviewer", "include_unmatched", "waiting", "items"}
    GET  /api/pairs/<id>                 one item (ReviewItem.to_json())
    POST /api/pairs/<id>/decision        {"action", "ref_id"?, "labels"?, "seen_updated_at"}
                                         with X-CSRF-Token -> {"pair": {...}, "notice": ...}
    GET  /blobs/<sha256>.png             a face crop or reference image that SQL knows of

Errors are JSON ``{"error": "..."}`` with 400 (bad request or decision), 401 (no session:
log in), 403 (another origin, or a missing or wrong CSRF token), 404, 409 (decided by
someone else since the page loaded it), 411, 413, 415 (not JSON) or 500. The login form
answers itself again with 401 (wrong name or password), 403 (a stale form) or 429 (too
many wrong passwords from one address for one name: :class:`~checks.LoginThrottle`).

Who may do what: every page and API call but the login form and the static files needs a
session, a signed cookie (``SameSite=Strict``, ``HttpOnly``, ``Secure`` under TLS) that
names a reviewer account (:mod:`agents.review.accounts`) and lasts
``review.session_hours``. Each state change (decision, logout, login) also carries the
session's CSRF token, and an ``Origin`` of another site is refused. The page answers only
requests addressed to its own host name (so a DNS-rebinding page cannot read faces through
it), and refuses to listen beyond loopback without TLS.
"""

from __future__ import annotations

import html
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.errors import Conflict, InvalidDecision, NotFound, Refused, StorageError
from agents.review import checks
from agents.review.accounts import ReviewerAccounts
from agents.review.store import ReviewStore
from agents.stores.blobs import BlobStore
from schemas.tables import Pair

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_DIGEST_LEN = 64
_LOGIN_BODY_BYTES = 4096
SESSION_COOKIE = "s2a_review"

#: The page only ever loads its own script, style sheet and images, and posts its forms to
#: itself; framing is refused because a framed page would take the reviewer's keystrokes
#: (a clickjacked "a").
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # Not no-referrer: under it browsers send "Origin: null" with a form's POST, which the
    # origin check must refuse; same-origin still tells no other site where we were.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

OnDecision = Callable[[Pair], None]
"""Called with the committed pair after each approve, pick or reject (not after a
relabel-only decision, which leaves the pair as it was). Runs on a worker thread. The
decision's ``pairs`` record is in the outbox already (agents.review.decisions); ``s2a
review`` passes its outbox relay's ``wake`` here, so the record goes out at once."""

T = TypeVar("T")


class ReviewApp:
    """The page's routes over one store and one set of accounts; :meth:`asgi` builds the
    Starlette app (tests may serve it without a socket).

    ``hosts`` are the ``host:port`` values a request may be addressed to (``None`` accepts
    any: a wildcard bind, where the names the server is reached by are not known).
    """

    def __init__(
        self,
        store: ReviewStore,
        accounts: ReviewerAccounts,
        blobs: BlobStore,
        *,
        include_unmatched: bool = False,
        on_decision: OnDecision | None = None,
        session_hours: float = 12.0,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.blobs = blobs
        self.include_unmatched = include_unmatched
        self.on_decision = on_decision
        self.session_s = session_hours * 3600
        self.throttle = checks.LoginThrottle()
        self.static = {
            path.name: path.read_bytes()
            for path in STATIC_DIR.iterdir()
            if path.suffix in _CONTENT_TYPES
        }

    def asgi(self, secret: bytes, hosts: frozenset[str] | None, *, https: bool = False) -> ASGIApp:
        """The ASGI app: Host check and security headers, the signed session, the routes."""
        routes = [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.index, methods=["GET"]),
            Route("/index.html", self.index, methods=["GET"]),
            Route("/static/{name}", self.static_file, methods=["GET"]),
            Route("/favicon.ico", self.favicon, methods=["GET"]),
            Route("/api/queue", self.queue, methods=["GET"]),
            Route("/api/pairs/{pair_id}", self.item, methods=["GET"]),
            Route("/api/pairs/{pair_id}/decision", self.decision, methods=["POST"]),
            Route("/blobs/{name}", self.blob, methods=["GET"]),
        ]
        app = Starlette(
            routes=routes,
            middleware=[
                Middleware(
                    SessionMiddleware,
                    secret_key=secret.hex(),
                    session_cookie=SESSION_COOKIE,
                    max_age=int(self.session_s),
                    same_site="strict",
                    https_only=https,
                )
            ],
            exception_handlers={HTTPException: _http_error},
        )
        return _Guard(app, hosts)

    # -- sessions ---------------------------------------------------------------------------

    async def _reviewer(self, request: Request) -> str | None:
        """The logged-in reviewer, or None (an expired, signed-out or removed account's
        session is cleared)."""
        session = request.session
        name, at = session.get("reviewer"), session.get("at")
        if not isinstance(name, str) or not isinstance(at, int | float):
            return None
        if time.time() - at < self.session_s and await run_in_threadpool(
            self.accounts.session_valid, name, at
        ):
            return name
        session.clear()
        return None

    async def _require(self, request: Request) -> str:
        name = await self._reviewer(request)
        if name is None:
            raise Refused(HTTPStatus.UNAUTHORIZED, "log in first: open /login")
        return name

    @staticmethod
    def _csrf(request: Request) -> str:
        """The session's CSRF token, made on first need."""
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    def _render(self, name: str, **values: str) -> Response:
        text = self.static[name].decode()
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return Response(text, media_type="text/html; charset=utf-8")

    # -- pages ------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if await self._reviewer(request) is not None:
            return RedirectResponse("/", HTTPStatus.SEE_OTHER)
        return self._login_form(request, "")

    def _login_form(self, request: Request, message: str, status: int = 200) -> Response:
        error = (
            f'<p id="login-error" class="error" role="alert">{html.escape(message)}</p>'
            if message
            else ""
        )
        response = self._render(
            "login.html", csrf_token=html.escape(self._csrf(request)), message=error
        )
        response.status_code = status
        return response

    async def login(self, request: Request) -> Response:
        return await _answer(request, self._login(request))

    async def _login(self, request: Request) -> Response:
        checks.check_origin(request.headers, request.url.scheme)
        length = checks.body_length(
            request.headers, "application/x-www-form-urlencoded", _LOGIN_BODY_BYTES
        )
        form = checks.login_form(await _read(request, length))
        # A login form of another site must not log the browser in as the attacker. A
        # person with a stale form gets the form again, with a fresh token.
        try:
            checks.check_csrf(request.session.get("csrf"), form["csrf_token"])
        except Refused as exc:
            return self._login_form(request, str(exc), exc.status)
        name = form["name"].strip()
        client = request.client.host if request.client is not None else ""
        try:
            self.throttle.check(client, name)
        except Refused as exc:
            return self._login_form(request, str(exc), exc.status)
        if not name or not await run_in_threadpool(self.accounts.verify, name, form["password"]):
            self.throttle.failed(client, name)
            log.warning("review login refused for %r from %s", name[:128], client)
            return self._login_form(request, "Wrong name or password.", HTTPStatus.UNAUTHORIZED)
        self.throttle.succeeded(client, name)
        # A new token for the new session: one seen before login is not the session's.
        request.session.clear()
        request.session.update(
            {"reviewer": name, "at": time.time(), "csrf": secrets.token_urlsafe(32)}
        )
        log.info("reviewer %s logged in", name)
        return RedirectResponse("/", HTTPStatus.SEE_OTHER)

    async def logout(self, request: Request) -> Response:
        return await _answer(request, self._logout(request))

    async def _logout(self, request: Request) -> Response:
        checks.check_origin(request.headers, request.url.scheme)
        sent = request.headers.get("x-csrf-token")
        if sent is None:
            length = checks.body_length(
                request.headers, "application/x-www-form-urlencoded", _LOGIN_BODY_BYTES
            )
            sent = checks.login_form(await _read(request, length))["csrf_token"]
        checks.check_csrf(request.session.get("csrf"), sent)
        name = await self._reviewer(request)
        if name is not None:
            await run_in_threadpool(self.accounts.sign_out, name)
            log.info("reviewer %s logged out", name)
        request.session.clear()
        return RedirectResponse("/login", HTTPStatus.SEE_OTHER)

    async def index(self, request: Request) -> Response:
        async def answer() -> Response:
            if await self._reviewer(request) is None:
                return RedirectResponse("/login", HTTPStatus.SEE_OTHER)
            return self._render("index.html", csrf_token=html.escape(self._csrf(request)))

        return await _answer(request, answer())

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        data = self.static.get(name)
        if data is None or name.endswith(".html"):
            return _error(HTTPStatus.NOT_FOUND, f"no static file {name!r}")
        return Response(data, media_type=_CONTENT_TYPES[Path(name).suffix])

    async def favicon(self, request: Request) -> Response:
        # Browsers ask on their own; no icon, and no error.
        return Response(b"", HTTPStatus.NO_CONTENT, media_type="image/x-icon")

    # -- the API ----------------------------------------------------------------------------

    async def queue(self, request: Request) -> Response:
        async def answer() -> Response:
            reviewer = await self._require(request)
            limit = checks.queue_limit(request.query_params)
            items = await run_in_threadpool(self.store.queue, limit, self.include_unmatched)
            waiting = await run_in_threadpool(self.store.waiting, self.include_unmatched)
            return JSONResponse(
                {
                    "reviewer": reviewer,
                    "include_unmatched": self.include_unmatched,
                    "waiting": waiting,
                    "items": [item.to_json() for item in items],
                }
            )

        return await _answer(request, answer())

    async def item(self, request: Request) -> Response:
        async def answer() -> Response:
            await self._require(request)
            pair_id = checks.pair_id(request.path_params["pair_id"])
            item = await run_in_threadpool(self.store.item, pair_id)
            return JSONResponse(item.to_json())

        return await _answer(request, answer())

    async def decision(self, request: Request) -> Response:
        async def answer() -> Response:
            checks.check_origin(request.headers, request.url.scheme)
            reviewer = await self._require(request)
            checks.check_csrf(request.session.get("csrf"), request.headers.get("x-csrf-token"))
            pair_id = checks.pair_id(request.path_params["pair_id"])
            length = checks.body_length(request.headers, "application/json")
            body = checks.json_body(await _read(request, length))
            decide = partial(
                self.store.decide,
                pair_id,
                reviewer,
                body["action"],
                ref_id=body["ref_id"],
                labels=body["labels"],
                seen_updated_at=body["seen_updated_at"],
            )
            pair = await run_in_threadpool(decide)
            notice = None
            if self.on_decision is not None and body["action"] != "relabel":
                try:
                    await run_in_threadpool(self.on_decision, pair)
                except Exception as exc:  # the decision is committed: say so, and what failed
                    log.exception("pair %s decided, but on_decision failed", pair.pair_id)
                    notice = (
                        f"decision saved, but announcing it failed: {type(exc).__name__}: {exc}"
                    )
            return JSONResponse({"pair": _pair_json(pair), "notice": notice})

        return await _answer(request, answer())

    async def blob(self, request: Request) -> Response:
        async def answer() -> Response:
            await self._require(request)
            name: str = request.path_params["name"]
            digest = name.removesuffix(".png")
            # The digest is checked and looked up in SQL before any file is touched: the
            # path comes from the blob store's layout, never from the request.
            if (
                not name.endswith(".png")
                or len(digest) != _DIGEST_LEN
                or any(c not in "0123456789abcdef" for c in digest)
                or not await run_in_threadpool(self.store.blob_known, digest)
            ):
                raise NotFound(f"no image {digest[:64]!r}")
            try:
                data = await run_in_threadpool(self.blobs.read, digest)
            except FileNotFoundError:
                raise NotFound(f"image {digest} is known but missing from the blob store") from None
            return Response(data, media_type="image/png")

        return await _answer(request, answer())


class _Guard:
    """Outermost: refuse a request for another host name before anything else runs, and
    put the security headers on every response."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            checks.check_host(self.hosts, request.headers)
        except Refused as exc:
            await _error(exc.status, str(exc))(scope, receive, self._with_headers(send))
            return
        await self.app(scope, receive, self._with_headers(send))

    @staticmethod
    def _with_headers(send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        return sending


# -- helpers ------------------------------------------------------------------------------


async def _answer(request: Request, work: Awaitable[T]) -> T | Response:
    """Run a route's work; a review error answers its status as JSON, anything else 500
    (one failed request never stops the server)."""
    try:
        return await work
    except Refused as exc:
        return _error(exc.status, str(exc))
    except NotFound as exc:
        return _error(HTTPStatus.NOT_FOUND, str(exc))
    except InvalidDecision as exc:
        return _error(HTTPStatus.BAD_REQUEST, str(exc))
    except Conflict as exc:
        return _error(HTTPStatus.CONFLICT, str(exc))
    except StorageError as exc:
        log.error("review %s %s: %s", request.method, request.url.path, exc)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
    except Exception:
        # The request boundary: a bug in one request is logged with its traceback and
        # answered 500, and the server goes on serving the others.
        log.exception("review %s %s failed", request.method, request.url.path)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the log")


async def _read(request: Request, length: int) -> bytes:
    """The body, at most ``length`` bytes (its declared Content-Length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > length:
            raise Refused(HTTPStatus.BAD_REQUEST, "the body is longer than its Content-Length")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method) as JSON like the rest."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == HTTPStatus.NOT_FOUND:
        return _error(status, f"no page at {request.url.path}")
    return _error(status, f"{request.method} is not allowed at {request.url.path}")


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
