"""The review page's server: :class:`ReviewServer` checks the setup (TLS beyond loopback,
a reviewer account, the session secret), binds, and serves :class:`~agents.review.web.ReviewApp`
with uvicorn from a background thread. The routes, errors and who may do what are in
:mod:`agents.review.web`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from argon2 import PasswordHasher
from sqlalchemy import Engine

from agents.errors import ReviewError
from agents.review import checks
from agents.review.accounts import ReviewerAccounts
from agents.review.store import ReviewStore
from agents.review.web import SESSION_COOKIE, OnDecision, ReviewApp
from agents.stores.blobs import open_blobs
from agents.stores.db import create_engine_for
from schemas.settings import Settings

__all__ = ["SESSION_COOKIE", "ReviewServer"]


class ReviewServer:
    """The review page on ``host:port`` (default ``settings.review``), served by uvicorn
    from a background thread. Reviewers log in with their accounts (``s2a reviewers add``).

    Example::

        server = ReviewServer(settings, on_decision=lambda pair: relay.wake(), port=0)
        url = server.start()        # 'http://127.0.0.1:41234/'
        ...
        server.stop()

    ``start`` raises :class:`ReviewError` when the address is not loopback and
    ``review.tls_cert``/``tls_key`` are unset, when no reviewer account exists, or when
    the session secret is lost (:meth:`ReviewSettings.resolve_session_secret`).
    """

    def __init__(
        self,
        settings: Settings,
        on_decision: OnDecision | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        include_unmatched: bool = False,
        engine: Engine | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self._settings = settings
        self._host = host if host is not None else settings.review.host
        self._port = port if port is not None else settings.review.port
        self._owns_engine = engine is None
        self._engine = engine if engine is not None else create_engine_for(settings.sql_url)
        self._app = ReviewApp(
            ReviewStore(self._engine, settings.pairing.min_model_confidence),
            ReviewerAccounts(self._engine, hasher),
            open_blobs(settings),
            include_unmatched=include_unmatched,
            on_decision=on_decision,
            session_hours=settings.review.session_hours,
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    @property
    def on_decision(self) -> OnDecision | None:
        """Called with each decided pair; may be set until :meth:`start`."""
        return self._app.on_decision

    @on_decision.setter
    def on_decision(self, value: OnDecision | None) -> None:
        self._app.on_decision = value

    def check(self) -> bytes:
        """What :meth:`start` checks before it binds (TLS beyond loopback, an account to
        log in with, the session secret), for a caller that wants to fail before other
        setup; returns the session secret."""
        review = self._settings.review
        if not checks.is_loopback(self._host) and not review.tls:
            raise ReviewError(
                f"refusing to serve the review page on {self._host} without TLS: set "
                "S2A_REVIEW__TLS_CERT and S2A_REVIEW__TLS_KEY, or listen on 127.0.0.1"
            )
        if self._app.accounts.count() == 0:
            raise ReviewError(
                "no reviewer account exists, so nobody could log in; add one with "
                "`s2a reviewers add NAME`"
            )
        return review.resolve_session_secret(self._settings.home, create=False)

    def start(self) -> str:
        """Check the setup, bind, serve from a background thread and return the page's URL."""
        if self._server is not None:
            raise ReviewError(f"the review server is already serving at {self.url}")
        secret = self.check()
        review = self._settings.review
        sock = self._bind()
        port = int(sock.getsockname()[1])
        app = self._app.asgi(secret, checks.hosts_for(self._host, port), https=review.tls)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the process's logging is set up once, by the s2a group
            log_level=logging.WARNING,
            access_log=False,
            server_header=False,
            ssl_certfile=review.tls_cert,
            ssl_keyfile=review.tls_key,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="s2a-review", daemon=True
        )
        thread.start()
        while not server.started and thread.is_alive():
            time.sleep(0.01)
        if not server.started:
            sock.close()
            raise ReviewError(
                f"the review server on {self._host}:{port} did not start; see the log above"
            )
        self._server, self._thread = server, thread
        shown = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"{'https' if review.tls else 'http'}://{shown}:{port}/"
        return self.url

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise ReviewError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}; "
                "pass another --port (0 picks a free one)"
            ) from exc
        return sock

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts the wait)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop serving, close the socket and the database connections; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
