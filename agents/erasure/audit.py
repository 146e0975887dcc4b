"""The erasure's answer and the audit log it is read back from: :class:`ErasureResult`,
:func:`find_audit` (a request carried out before) and :func:`erased_versions` (the retrain
trigger's input)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine, select

from agents.erasure.tables import AUDIT, VERSION_ERASURES, VERSIONS
from agents.stores.db import sql_errors

Outcome = Literal["erased", "nothing_found"]


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """The answer to one erasure request, as its audit row records it.

    ``already`` is True when the request had been carried out before (the same
    ``request_id``): nothing was done now, and the counts are those of the first time.
    """

    request_id: str
    outcome: Outcome
    requested_by: str
    requested_at: datetime
    erased_at: datetime
    via: str
    counts: Mapping[str, int]
    snapshots: Sequence[str] = ()
    model_versions: Sequence[str] = ()
    already: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "outcome": self.outcome,
            "already": self.already,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at.isoformat(),
            "erased_at": self.erased_at.isoformat(),
            "via": self.via,
            "counts": dict(self.counts),
            "snapshots": list(self.snapshots),
            "model_versions": list(self.model_versions),
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], *, already: bool = False) -> ErasureResult:
        return cls(
            request_id=row["request_id"],
            outcome=row["outcome"],
            requested_by=row["requested_by"],
            requested_at=row["requested_at"],
            erased_at=row["erased_at"],
            via=row["via"],
            counts=dict(row["counts"]),
            snapshots=tuple(row["snapshots"]),
            model_versions=tuple(row["model_versions"]),
            already=already,
        )


def find_audit(engine: Engine, request_id: str) -> ErasureResult | None:
    """The recorded answer to ``request_id``, or None when it has not been carried out."""
    query = select(AUDIT).where(AUDIT.c.request_id == request_id)
    with sql_errors("reading the erasure audit"), engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return None if row is None else ErasureResult.from_row(row, already=True)


def erased_versions(engine: Engine) -> dict[tuple[str, int], int]:
    """``{(name, version): erased subjects}`` of every model version trained on subjects
    that have been erased since: the retrain trigger's input (retrain while the champion
    is among them)."""
    query = select(VERSIONS.c.name, VERSIONS.c.version, VERSION_ERASURES.c.erased_subjects)
    query = query.select_from(
        VERSION_ERASURES.join(VERSIONS, VERSIONS.c.id == VERSION_ERASURES.c.version_id)
    )
    with sql_errors("reading erased model versions"), engine.connect() as connection:
        return {(str(n), int(v)): int(e) for n, v, e in connection.execute(query)}
