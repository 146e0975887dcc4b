"""What a request to the review page must be before it reaches the store: addressed to the
server's own host, from its own origin, carrying its session's CSRF token, a body of the
right size, type and fields.

Each check raises :class:`Refused` (with the HTTP status to answer),
:class:`~agents.review.NotFound` or :class:`~agents.review.InvalidDecision`;
:mod:`agents.review.web` says why the page needs them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from agents.errors import InvalidDecision, NotFound, Refused

#: Decision bodies are a few hundred bytes; anything this large is not one.
MAX_BODY_BYTES = 64 * 1024
MAX_QUEUE_LIMIT = 500
_PAIR_ID = re.compile(r"[A-Za-z0-9._:-]{1,36}")
_DECISION_FIELDS = frozenset({"action", "ref_id", "labels", "seen_updated_at"})


def check_host(hosts: frozenset[str] | None, headers: Mapping[str, str]) -> None:
    """Refuse a request whose ``Host`` is none of ``hosts`` (``None`` accepts any)."""
    host = (headers.get("host") or "").lower()
    if hosts is not None and host not in hosts:
        raise Refused(
            HTTPStatus.BAD_REQUEST,
            f"this server answers to {', '.join(sorted(hosts))}, not Host {host!r}",
        )


def check_origin(headers: Mapping[str, str], scheme: str = "http") -> None:
    """Refuse a request whose ``Origin`` is another site's."""
    origin = headers.get("origin")
    own = f"{scheme}://{(headers.get('host') or '').lower()}"
    if origin is not None and origin.lower() != own:
        raise Refused(HTTPStatus.FORBIDDEN, f"cross-origin request from {origin!r} refused")


def check_csrf(expected: object, sent: str | None) -> None:
    """Refuse a state-changing request whose CSRF token is missing or not its session's.

    The token lives in the signed session and reaches the page inside its HTML; another
    site can make the browser send the cookie, but cannot read the token to send along.
    """
    if not isinstance(expected, str) or not sent:
        raise Refused(HTTPStatus.FORBIDDEN, "CSRF token missing; reload the page (or log in again)")
    if not hmac.compare_digest(expected.encode(), sent.encode()):
        raise Refused(HTTPStatus.FORBIDDEN, "CSRF token wrong; reload the page (or log in again)")


def body_length(headers: Mapping[str, str], content_type: str, limit: int = MAX_BODY_BYTES) -> int:
    """The declared length of a body that must be ``content_type`` and at most ``limit``
    bytes; Refused (415, 411 or 413) otherwise."""
    ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != content_type:
        raise Refused(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"send this as {content_type}, not {ctype or 'no content type'!r}",
        )
    try:
        length = int(headers.get("content-length") or "")
    except ValueError:
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
    if not 0 < length <= limit:
        raise Refused(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body here is 1 to {limit} bytes, got {length}"
        )
    return length


def json_body(raw: bytes) -> dict[str, Any]:
    """The decision a POST carries as JSON; see :func:`decision_body`."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
    return decision_body(body)


def login_form(raw: bytes) -> dict[str, str]:
    """The login form's fields (``name``, ``password``, ``csrf_token``), each ``""`` when
    absent."""
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(HTTPStatus.BAD_REQUEST, f"the login form is malformed: {exc}") from None
    return {key: fields.get(key, [""])[-1] for key in ("name", "password", "csrf_token")}


def queue_limit(query: Mapping[str, str]) -> int:
    """The queue's ``?limit=N`` (default 50), 1 to :data:`MAX_QUEUE_LIMIT`."""
    raw = query.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_QUEUE_LIMIT:
        raise Refused(HTTPStatus.BAD_REQUEST, f"limit must be 1 to {MAX_QUEUE_LIMIT}, got {raw!r}")
    return limit


def pair_id(raw: str) -> str:
    """A pair id taken from the path, or NotFound for one no pair can have."""
    if not _PAIR_ID.fullmatch(raw):
        raise NotFound(f"no pair {raw[:40]!r}")
    return raw


def decision_body(body: Any) -> dict[str, Any]:
    """The decision fields, checked for type; what they mean is the store's to check."""
    if not isinstance(body, dict):
        raise InvalidDecision("the body must be a JSON object with action and seen_updated_at")
    unknown = set(body) - _DECISION_FIELDS
    if unknown:
        raise InvalidDecision(
            f"unknown field(s) {sorted(unknown)}; a decision has {sorted(_DECISION_FIELDS)}"
        )
    action, ref_id, labels = body.get("action"), body.get("ref_id"), body.get("labels")
    if not isinstance(action, str):
        raise InvalidDecision("action is required: approve, reject, pick or relabel")
    if ref_id is not None and not isinstance(ref_id, str):
        raise InvalidDecision(f"ref_id must be a string or null, got {ref_id!r}")
    if labels is not None and not isinstance(labels, dict):
        raise InvalidDecision(f"labels must be an object of name: value, got {labels!r}")
    seen = body.get("seen_updated_at")
    try:
        seen_at = datetime.fromisoformat(seen) if isinstance(seen, str) else None
    except ValueError:
        seen_at = None
    if seen_at is None or seen_at.tzinfo is None:
        raise InvalidDecision(
            f"seen_updated_at must be the pair's updated_at as the page received it "
            f"(ISO 8601 with a UTC offset), got {seen!r}"
        )
    return {"action": action, "ref_id": ref_id, "labels": labels, "seen_updated_at": seen_at}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hosts_for(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` header values a request may carry, or ``None`` to accept any."""
    names: tuple[str, ...]
    if is_loopback(host):
        names = ("127.0.0.1", "localhost", "[::1]")
    elif host in ("", "0.0.0.0", "::"):
        return None
    else:
        names = (f"[{host}]" if ":" in host else host,)
    return frozenset(f"{name}:{port}".lower() for name in names)


class LoginThrottle:
    """Refuse logins for a (client address, name) after ``max_failures`` wrong passwords
    within ``window_s``, until the oldest of them is that old; a success clears the count.

    Keyed by address and name together, so guessing one reviewer's password from one place
    is slowed without letting anyone lock that reviewer out from everywhere. In memory:
    one server process, forgotten at restart. Not thread-safe: the event loop calls it.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], list[float]] = {}

    def check(self, client: str, name: str) -> None:
        """Raise Refused (429) while ``client`` may not try ``name`` again."""
        recent = self._recent((client, name))
        if len(recent) >= self._max:
            wait = int(recent[0] + self._window - self._clock()) + 1
            raise Refused(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many wrong passwords for {name!r}; try again in {wait} s",
            )

    def failed(self, client: str, name: str) -> None:
        key = (client, name)
        self._failures[key] = [*self._recent(key), self._clock()]

    def succeeded(self, client: str, name: str) -> None:
        self._failures.pop((client, name), None)

    def _recent(self, key: tuple[str, str]) -> list[float]:
        since = self._clock() - self._window
        recent = [at for at in self._failures.get(key, ()) if at > since]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent
