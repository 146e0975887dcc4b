"""Hand-made pairs from a CSV file (``s2a pairs import``).

Columns: ``face_id`` or ``upload_id`` (one of them), ``ref_id``, and optionally ``status``
(``approved``, the default, or ``rejected``) and ``style`` (checked against the reference's).
The whole file is checked before anything is written: a file with one bad row changes
nothing, and the error lists the rows to fix with their line numbers.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agents.errors import ImportRefused
from agents.pairing.store import PairStore, pair_id_for
from schemas.pairs import PairStatus
from schemas.reasons import RefStatus
from schemas.tables import Pair

IMPORTABLE = (PairStatus.APPROVED, PairStatus.REJECTED)
#: Problems listed in the error before it says "and N more".
SHOWN_PROBLEMS = 10


@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int
    written: int
    pairs: list[Pair]


def import_pairs(store: PairStore, path: Path, now: datetime | None = None) -> ImportResult:
    """Check every row of ``path``, then write the pairs in one transaction."""
    stamp = now or datetime.now(UTC)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportRefused(f"cannot read {path}: {exc}") from exc
    if not rows:
        raise ImportRefused(f"{path} has no rows (a header with face_id or upload_id, ref_id)")
    columns = set(rows[0])
    if "ref_id" not in columns or not columns & {"face_id", "upload_id"}:
        raise ImportRefused(
            f"{path} needs the columns ref_id and face_id or upload_id; it has {sorted(columns)}"
        )
    by_upload = store.face_ids_of_uploads([r["upload_id"] for r in rows if r.get("upload_id")])
    face_ids = [r.get("face_id") or by_upload.get(r.get("upload_id") or "", "") for r in rows]
    faces = store.faces([f for f in face_ids if f])
    refs = store.refs([r["ref_id"] for r in rows if r.get("ref_id")])
    problems: list[str] = []
    pairs: dict[str, Pair] = {}
    for line, (row, face_id) in enumerate(zip(rows, face_ids, strict=True), start=2):
        ref = refs.get(row.get("ref_id") or "")
        status = (row.get("status") or PairStatus.APPROVED.value).strip().lower()
        if face_id not in faces:
            problems.append(f"line {line}: no stored face for {_face_key(row)}")
        elif ref is None:
            problems.append(f"line {line}: no reference {row.get('ref_id')!r}")
        elif ref.status != RefStatus.ACTIVE:
            problems.append(f"line {line}: reference {ref.ref_id} is {ref.status} ({ref.reason})")
        elif row.get("style") and row["style"] != ref.style:
            problems.append(
                f"line {line}: style {row['style']!r} but reference {ref.ref_id} is {ref.style!r}"
            )
        elif status not in {s.value for s in IMPORTABLE}:
            problems.append(f"line {line}: status {status!r}; use approved or rejected")
        else:
            pair = Pair(
                pair_id=pair_id_for(face_id, ref.style),
                face_id=face_id,
                subject=faces[face_id].subject,
                style=ref.style,
                ref_id=ref.ref_id,
                score=None,
                status=PairStatus(status),
                decided_by=f"import:{path.name}"[:128],
                decided_at=stamp,
                candidates=[],
                library_version=ref.library_version,
                created_at=stamp,
                updated_at=stamp,
            )
            pairs[pair.pair_id] = pair  # a later row for the same face and style wins
    if problems:
        more = len(problems) - SHOWN_PROBLEMS
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise ImportRefused(f"{path}: nothing imported, {len(problems)} bad row(s): {shown}")
    written = store.import_pairs(list(pairs.values()))
    return ImportResult(rows=len(rows), written=written, pairs=list(pairs.values()))


def _face_key(row: dict[str, str]) -> str:
    if row.get("face_id"):
        return f"face_id {row['face_id']!r}"
    return f"upload_id {row.get('upload_id')!r}"
