"""What a snapshot is made of, and where snapshots are recorded: the SQL side.

:func:`load_state` reads the approved pairs with their face, upload, anime reference and
resolved labels (their lineage), plus the counts the report needs, in one read
transaction. :func:`record_snapshot`, :func:`list_snapshots` and :func:`find_snapshot`
keep the ``snapshots`` table: one row per manifest, numbered by version.

Example::

    state = load_state(engine, SnapshotParams.from_settings(settings))
    len(state.pairs), state.queue.get("pending", 0)
    find_snapshot(engine, "latest").snapshot_id
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col
from sqlmodel import select as model_select

from agents.stores.db import for_writing, sql_errors
from schemas.labels import LabelValue, resolve
from schemas.manifest import DatasetManifest
from schemas.pairs import PairStatus
from schemas.reasons import ReasonCode, RefStatus, UploadState
from schemas.tables import (
    AnimeRef,
    Face,
    IdentityLink,
    Label,
    Pair,
    RefLabel,
    Snapshot,
    SnapshotSubject,
    Upload,
)
from trainer.dataset.policy import TRAIN, VALIDATION, SnapshotParams
from trainer.errors import DatasetError, StorageError

_PAIRS: Table = SQLModel.metadata.tables[Pair.__tablename__]
_FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
_LINKS: Table = SQLModel.metadata.tables[IdentityLink.__tablename__]
_UPLOADS: Table = SQLModel.metadata.tables[Upload.__tablename__]
_LABELS: Table = SQLModel.metadata.tables[Label.__tablename__]
_REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]
_REF_LABELS: Table = SQLModel.metadata.tables[RefLabel.__tablename__]
_SNAPSHOTS: Table = SQLModel.metadata.tables[Snapshot.__tablename__]
_SNAPSHOT_SUBJECTS: Table = SQLModel.metadata.tables[SnapshotSubject.__tablename__]

#: Attempts at recording a new snapshot row when another process took the same version.
_INSERT_ATTEMPTS = 3


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApprovedPair:
    """One approved pair with everything a manifest record needs, as read from SQL."""

    pair_id: str
    face_id: str
    upload_id: str
    subject: str
    style: str
    score: float | None
    decided_by: str | None
    library_version: int | None
    crop_256: str
    crop_512: str
    quality: Mapping[str, float]
    face_source: str
    face_license: str | None
    face_attribution: str | None
    ref_id: str
    ref_training: str
    ref_original: str
    ref_license: str
    ref_author: str
    ref_source: str
    ref_tags: tuple[str, ...]
    ref_library_version: int
    labels: Mapping[str, LabelValue]
    ref_labels: Mapping[str, LabelValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DatasetState:
    """What a snapshot is built from: approved pairs and the counts around them."""

    pairs: tuple[ApprovedPair, ...]
    queue: Mapping[str, int] = field(default_factory=dict)
    """pairs per status other than approved: ``pending``, ``unmatched``, ``rejected``"""
    duplicate_uploads: int = 0
    """uploads rejected as ``duplicate`` (near-identical face of the same subject)"""
    quarantined_refs: int = 0
    """approved pairs left out because their reference has been quarantined since"""
    subject_links: tuple[tuple[str, str], ...] = ()
    """``(subject, subject)``: faces of the two were linked as one person at ingestion"""


# -- reading the state from SQL -----------------------------------------------------------


def _storage(operation: str) -> AbstractContextManager[None]:
    """A database failure as a trainer StorageError that says what was being done."""
    return sql_errors(operation, StorageError)


def _resolved(
    rows: Iterable[Any], owner: str, min_model_confidence: float
) -> dict[str, dict[str, LabelValue]]:
    grouped: dict[str, list[tuple[str, str, str, float]]] = defaultdict(list)
    for key, name, value, source, confidence in rows:
        grouped[key].append((name, value, source, confidence))
    try:
        return {key: resolve(found, min_model_confidence) for key, found in grouped.items()}
    except ValueError as exc:  # a label source outside schemas.labels.LabelSource
        raise DatasetError(f"a {owner} label has an unknown source: {exc}") from exc


def load_state(engine: Engine, params: SnapshotParams) -> DatasetState:
    """Read approved pairs (of ``params.style`` when set) and the counts around them.

    Everything is read in one transaction (REPEATABLE READ on PostgreSQL; SQLite's read
    transaction is a snapshot already), so a worker writing meanwhile cannot make the
    counts and the records disagree. Pairs whose upload is no longer ``accepted`` (erased)
    are left out; so are those whose reference was quarantined, which are counted.
    """
    approved = _PAIRS.c.status == PairStatus.APPROVED.value
    scope = [approved]
    if params.style is not None:
        scope.append(_PAIRS.c.style == params.style)
    pairs_query = (
        select(
            _PAIRS.c.pair_id,
            _PAIRS.c.face_id,
            _PAIRS.c.subject,
            _PAIRS.c.style,
            _PAIRS.c.score,
            _PAIRS.c.decided_by,
            _PAIRS.c.library_version,
            _FACES.c.upload_id,
            _FACES.c.crop_256,
            _FACES.c.crop_512,
            _FACES.c.quality,
            _FACES.c.source.label("face_source"),
            _FACES.c.license.label("face_license"),
            _FACES.c.attribution.label("face_attribution"),
            _UPLOADS.c.license.label("upload_license"),
            _REFS.c.ref_id,
            _REFS.c.status.label("ref_status"),
            _REFS.c.training,
            _REFS.c.original,
            _REFS.c.license.label("ref_license"),
            _REFS.c.author,
            _REFS.c.source.label("ref_source"),
            _REFS.c.tags,
            _REFS.c.library_version.label("ref_library_version"),
        )
        .select_from(
            _PAIRS.join(_FACES, _FACES.c.face_id == _PAIRS.c.face_id)
            .join(_UPLOADS, _UPLOADS.c.upload_id == _FACES.c.upload_id)
            .join(_REFS, _REFS.c.ref_id == _PAIRS.c.ref_id)
        )
        .where(*scope, _UPLOADS.c.state == UploadState.ACCEPTED.value)
        .order_by(_PAIRS.c.pair_id)
    )
    approved_faces = select(_PAIRS.c.face_id).where(*scope)
    approved_refs = select(_PAIRS.c.ref_id).where(*scope)
    labels_query = select(
        _LABELS.c.face_id,
        _LABELS.c.name,
        _LABELS.c.value,
        _LABELS.c.source,
        _LABELS.c.confidence,
    ).where(_LABELS.c.face_id.in_(approved_faces))
    ref_labels_query = select(
        _REF_LABELS.c.ref_id,
        _REF_LABELS.c.name,
        _REF_LABELS.c.value,
        _REF_LABELS.c.source,
        _REF_LABELS.c.confidence,
    ).where(_REF_LABELS.c.ref_id.in_(approved_refs))
    queue_query = select(_PAIRS.c.status, func.count()).group_by(_PAIRS.c.status)
    if params.style is not None:
        queue_query = queue_query.where(_PAIRS.c.style == params.style)
    duplicates_query = (
        select(func.count())
        .select_from(_UPLOADS)
        .where(
            _UPLOADS.c.state == UploadState.REJECTED.value,
            _UPLOADS.c.reason == ReasonCode.DUPLICATE.value,
        )
    )

    with _storage("reading approved pairs"), engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            rows = list(connection.execute(pairs_query).mappings())
            face_labels = _resolved(
                connection.execute(labels_query), "face", params.min_model_confidence
            )
            ref_labels = _resolved(
                connection.execute(ref_labels_query), "reference", params.min_model_confidence
            )
            queue = {str(s): int(n) for s, n in connection.execute(queue_query)}
            links = sorted({(row[0], row[1]) for row in connection.execute(_subject_links_query())})
            duplicates = int(connection.scalar(duplicates_query) or 0)

    pairs: list[ApprovedPair] = []
    quarantined = 0
    for row in rows:
        if row["ref_status"] != RefStatus.ACTIVE:
            quarantined += 1
            continue
        pairs.append(
            ApprovedPair(
                pair_id=row["pair_id"],
                face_id=row["face_id"],
                upload_id=row["upload_id"],
                subject=row["subject"],
                style=row["style"],
                score=row["score"],
                decided_by=row["decided_by"],
                library_version=row["library_version"],
                crop_256=row["crop_256"],
                crop_512=row["crop_512"],
                quality=dict(row["quality"] or {}),
                face_source=row["face_source"],
                face_license=row["face_license"] or row["upload_license"],
                face_attribution=row["face_attribution"],
                ref_id=row["ref_id"],
                ref_training=row["training"],
                ref_original=row["original"],
                ref_license=row["ref_license"],
                ref_author=row["author"],
                ref_source=row["ref_source"],
                ref_tags=tuple(row["tags"] or ()),
                ref_library_version=row["ref_library_version"],
                labels=face_labels.get(row["face_id"], {}),
                ref_labels=ref_labels.get(row["ref_id"], {}),
            )
        )
    return DatasetState(
        pairs=tuple(pairs),
        queue=queue,
        duplicate_uploads=duplicates,
        quarantined_refs=quarantined,
        subject_links=tuple(links),
    )


def _subject_links_query() -> Select[str, str]:
    """Every identity link as the pair of its faces' subjects (an erased face takes its
    links with it, so only live faces link)."""
    first, second = _FACES.alias("first"), _FACES.alias("second")
    return select(first.c.subject, second.c.subject).select_from(
        _LINKS.join(first, first.c.face_id == _LINKS.c.face_id).join(
            second, second.c.face_id == _LINKS.c.other_face_id
        )
    )


# -- the snapshots table -------------------------------------------------------------------


def record_snapshot(
    engine: Engine, snapshot_id: str, sha256: str, path: Path, manifest: DatasetManifest
) -> tuple[int, bool]:
    """Insert the snapshot's row with the next version; ``(version, False)`` if present.

    The subjects the manifest names (:func:`manifest_subjects`) go into
    ``snapshot_subjects`` in the same transaction, so an erasure finds the snapshot.
    """
    subjects = [
        {"snapshot_id": snapshot_id, "subject": subject}
        for subject in sorted(manifest_subjects(manifest))
    ]
    # _insert_snapshot retries a lost race (an IntegrityError) itself, inside _storage: were
    # the retry outside, _storage would turn that error (a DBAPIError) into StorageError.
    with _storage("recording the snapshot"):
        return _insert_snapshot(engine, snapshot_id, sha256, path, manifest, subjects)


def _insert_snapshot(
    engine: Engine,
    snapshot_id: str,
    sha256: str,
    path: Path,
    manifest: DatasetManifest,
    subjects: list[dict[str, str]],
) -> tuple[int, bool]:
    summary = manifest.summary
    by_id = select(_SNAPSHOTS.c.version).where(_SNAPSHOTS.c.snapshot_id == snapshot_id)
    for attempt in range(_INSERT_ATTEMPTS):
        try:
            with for_writing(engine).begin() as connection:
                found = connection.scalar(by_id)
                if found is not None:
                    return int(found), False
                version = int(connection.scalar(select(func.max(_SNAPSHOTS.c.version))) or 0) + 1
                connection.execute(
                    _SNAPSHOTS.insert(),
                    {
                        "snapshot_id": snapshot_id,
                        "version": version,
                        "manifest_sha256": sha256,
                        "manifest_path": str(path),
                        "pairs": summary.records,
                        "train": summary.splits[TRAIN].records,
                        "validation": summary.splits[VALIDATION].records,
                        "subjects": summary.subjects,
                        "library_version": manifest.library_version,
                        "params": manifest.params.model_dump(mode="json"),
                        "created_at": datetime.now(UTC),
                    },
                )
                if subjects:
                    connection.execute(_SNAPSHOT_SUBJECTS.insert(), subjects)
                return version, True
        except IntegrityError:
            # Another process recorded a snapshot between our read and our insert (same
            # id, or it took our version number): look again.
            if attempt == _INSERT_ATTEMPTS - 1:
                raise DatasetError(
                    f"could not record snapshot {snapshot_id}: other snapshots kept taking "
                    "the next version; run it again"
                ) from None
    raise DatasetError(f"could not record snapshot {snapshot_id}")  # pragma: no cover


def manifest_subjects(manifest: DatasetManifest) -> set[str]:
    """Every pseudonym ``manifest`` holds: each record's subject and identity group (a group
    is named by its smallest member, who may have no record here), and the groups the
    split fallback moved."""
    found = {r.subject for r in manifest.records}
    found |= {r.identity for r in manifest.records if r.identity is not None}
    return found | set(manifest.summary.split_fallback)


def list_snapshots(engine: Engine) -> list[Snapshot]:
    """Every recorded snapshot, oldest version first."""
    statement = model_select(Snapshot).order_by(col(Snapshot.version))
    with _storage("listing snapshots"), Session(engine) as session:
        rows = list(session.exec(statement).all())
    return rows


def find_snapshot(engine: Engine, ref: str) -> Snapshot:
    """The snapshot named by its id, its version number, or ``latest``."""
    rows = list_snapshots(engine)
    if ref == "latest" and rows:
        return rows[-1]
    for row in rows:
        if row.snapshot_id == ref or (ref.isdigit() and row.version == int(ref)):
            return row
    known = ", ".join(f"{r.version}={r.snapshot_id}" for r in rows[-5:]) or "none yet"
    raise DatasetError(
        f"no snapshot {ref!r}; give a snapshot id, a version number or 'latest' (recent: {known})"
    )
