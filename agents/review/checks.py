"""What a request to the review page must be before it reaches the store: addressed to the
server's own host, from its own origin, a decision body of the right size, type and fields.

Each check raises :class:`Refused` (with the HTTP status to answer),
:class:`~agents.review.NotFound` or :class:`~agents.review.InvalidDecision`;
:mod:`agents.review.server` says why the page needs them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from datetime import datetime
from email.message import Message
from http import HTTPStatus
from io import BufferedIOBase
from typing import Any

from agents.errors import InvalidDecision, NotFound, Refused

#: Decision bodies are a few hundred bytes; anything this large is not one.
MAX_BODY_BYTES = 64 * 1024
MAX_QUEUE_LIMIT = 500
_PAIR_ID = re.compile(r"[A-Za-z0-9._:-]{1,36}")
_DECISION_FIELDS = frozenset({"action", "ref_id", "labels", "seen_updated_at"})


def check_host(hosts: frozenset[str] | None, headers: Message) -> None:
    """Refuse a request whose ``Host`` is none of ``hosts`` (``None`` accepts any)."""
    host = (headers.get("Host") or "").lower()
    if hosts is not None and host not in hosts:
        raise Refused(
            HTTPStatus.BAD_REQUEST,
            f"this server answers to {', '.join(sorted(hosts))}, not Host {host!r}",
        )


def check_origin(headers: Message) -> None:
    """Refuse a request whose ``Origin`` is another site's."""
    origin = headers.get("Origin")
    own = f"http://{(headers.get('Host') or '').lower()}"
    if origin is not None and origin.lower() != own:
        raise Refused(HTTPStatus.FORBIDDEN, f"cross-origin request from {origin!r} refused")


def json_body(headers: Message, rfile: BufferedIOBase) -> dict[str, Any]:
    """The decision a POST carries as JSON, read from ``rfile``; see :func:`decision_body`."""
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Refused(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"send the decision as application/json, not {ctype or 'no content type'!r}",
        )
    try:
        length = int(headers.get("Content-Length") or "")
    except ValueError:
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
    if not 0 < length <= MAX_BODY_BYTES:
        raise Refused(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"a decision body is 1 to {MAX_BODY_BYTES} bytes, got {length}",
        )
    try:
        body = json.loads(rfile.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
    return decision_body(body)


def queue_limit(query: Mapping[str, list[str]]) -> int:
    """The queue's ``?limit=N`` (default 50), 1 to :data:`MAX_QUEUE_LIMIT`."""
    raw = query.get("limit", ["50"])[-1]
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
