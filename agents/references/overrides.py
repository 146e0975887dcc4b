"""A person overruling the style check: what ``s2a refs quarantine | reinstate`` record.

The style check (:mod:`agents.references.style`) decides when a reference is added; a
person may later quarantine an active reference (with a reason) or reinstate a
quarantined one. :meth:`RefLibrary.quarantine <agents.references.library.RefLibrary.quarantine>`
and :meth:`~agents.references.library.RefLibrary.reinstate` do it as a new library
version; this module holds the argument checks and the :class:`StatusChange` they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agents.errors import InvalidRequest
from agents.references.admission import MAX_DETAIL
from schemas.reasons import RefReason, RefStatus

__all__ = ["MAX_BY", "StatusChange", "check_by", "check_reason"]

#: ``anime_refs.status_by`` holds this many characters.
MAX_BY = 128


def check_by(by: str) -> str:
    """Who set the status: a name or handle, 1-128 characters once trimmed."""
    name = " ".join((by or "").split())
    if not name or len(name) > MAX_BY:
        raise InvalidRequest(
            f"--by {by!r}: name who sets the status, in 1-{MAX_BY} characters (e.g. --by alice)"
        )
    return name


def check_reason(reason: str) -> str:
    """Why a person quarantines: free text, 1-1024 characters once trimmed."""
    text = " ".join((reason or "").split())
    if not text or len(text) > MAX_DETAIL:
        raise InvalidRequest(
            f"--reason: say why the reference is quarantined, in 1-{MAX_DETAIL} characters "
            "(e.g. --reason 'a photo, not a drawing')"
        )
    return text


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One reference's status set by a person, as stored in library version ``version``.

    ``as_dict()`` is what ``s2a refs quarantine | reinstate --json`` print.
    """

    ref_id: str
    style: str
    status: RefStatus
    previous: RefStatus
    reason: RefReason | None
    detail: str | None
    by: str
    at: datetime
    library_version: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref_id": self.ref_id,
            "style": self.style,
            "status": self.status.value,
            "previous": self.previous.value,
            "reason": None if self.reason is None else self.reason.value,
            "detail": self.detail,
            "status_by": self.by,
            "status_at": self.at.isoformat(),
            "library_version": self.library_version,
        }
