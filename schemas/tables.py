"""SQL tables (SQLModel). SQLite is the embedded default, PostgreSQL the production one.

Every change here needs a migration in ``schemas/migrations/versions``;
``tests/integration/test_migrations.py`` fails while the two disagree.

No column holds a raw subject id or image bytes: subjects are HMAC pseudonyms and images
are content hashes of metadata-free crops in the blob store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Dialect, Index, Text, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from schemas.model_updates import VersionStatus
from schemas.pairs import PairStatus
from schemas.reasons import RefStatus, UploadState


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back aware and in UTC.

    PostgreSQL keeps the zone (``timestamptz``); SQLite stores text and hands datetimes
    back naive. Written values are converted to UTC (a naive one is taken as UTC already),
    read values get UTC attached, so no caller fixes up a datetime it read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _utc_column(nullable: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable))


def _enum_column(enum: type[StrEnum], length: int = 16, *, index: bool = True) -> Any:
    # Stored as the lower-case values in plain VARCHAR: readable in raw SQL, and a new
    # value needs no ALTER TYPE on PostgreSQL.
    return Field(
        sa_column=Column(
            SAEnum(
                enum,
                native_enum=False,
                length=length,
                values_callable=lambda members: [m.value for m in members],
            ),
            nullable=False,
            index=index,
        )
    )


def _json_column(nullable: bool = False) -> Any:
    return Field(sa_column=Column(JSON, nullable=nullable))


class Subject(SQLModel, table=True):
    """A person, known only by the keyed-HMAC pseudonym of the app's user id."""

    __tablename__ = "subjects"

    pseudonym: str = Field(primary_key=True, max_length=64)
    first_seen_at: datetime = _utc_column()
    consent_version: str = Field(max_length=64)
    consent_scopes: list[str] = _json_column()
    consent_granted_at: datetime = _utc_column()
    consent_expires_at: datetime | None = _utc_column(nullable=True)


class Upload(SQLModel, table=True):
    """One upload and the terminal state it reached. ``upload_id`` is the idempotency key."""

    __tablename__ = "uploads"

    upload_id: str = Field(primary_key=True, max_length=128)
    subject: str | None = Field(
        default=None, foreign_key="subjects.pseudonym", index=True, max_length=64
    )
    state: UploadState = _enum_column(UploadState)
    reason: str | None = Field(default=None, max_length=32, index=True)
    stage: str | None = Field(default=None, max_length=16)
    detail: str | None = Field(default=None, max_length=1024)
    source: str | None = Field(default=None, max_length=32)
    license: str | None = Field(default=None, max_length=128)
    consent_version: str | None = Field(default=None, max_length=64)
    submitted_at: datetime | None = _utc_column(nullable=True)
    finished_at: datetime = _utc_column()
    origin_topic: str | None = Field(default=None, max_length=255)
    origin_partition: int | None = None
    origin_offset: int | None = Field(default=None, sa_column=Column(BigInteger))


class Face(SQLModel, table=True):
    """An accepted face: where its crops are, how it was found, aligned and embedded."""

    __tablename__ = "faces"

    face_id: str = Field(primary_key=True, max_length=36)
    upload_id: str = Field(foreign_key="uploads.upload_id", unique=True, max_length=128)
    subject: str = Field(foreign_key="subjects.pseudonym", index=True, max_length=64)
    source: str = Field(max_length=32)
    license: str | None = Field(default=None, max_length=128)
    attribution: str | None = Field(default=None, max_length=512)
    detector: str = Field(max_length=64)
    detection_prob: float
    box: list[float] = _json_column()
    landmarks: list[list[float]] = _json_column()
    quality: dict[str, float] = _json_column()
    crop_256: str = Field(max_length=64, description="sha256 of the 256px aligned PNG")
    crop_512: str = Field(max_length=64, description="sha256 of the 512px aligned PNG")
    align: dict[str, Any] = _json_column()
    embedder: str = Field(max_length=128)
    embedder_random_init: bool
    embedder_sha256: str | None = Field(
        default=None, max_length=64, description="sha256 of the embedder's weights file"
    )
    flag: str | None = Field(
        default=None, index=True, max_length=32, description="why the face needs a look"
    )
    flag_detail: str | None = Field(default=None, max_length=512)
    image_width: int
    image_height: int
    created_at: datetime = _utc_column()


class Label(SQLModel, table=True):
    """One attribute of a face with where it came from and how sure we are."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("face_id", "name", "source"),)

    id: int | None = Field(default=None, primary_key=True)
    face_id: str = Field(foreign_key="faces.face_id", index=True, max_length=36)
    name: str = Field(max_length=32)
    value: str = Field(max_length=64)
    source: str = Field(max_length=16, description="declared | measured | model | human")
    confidence: float
    created_at: datetime = _utc_column()


class IdentityLink(SQLModel, table=True):
    """Two faces of different subjects that the embedder puts within
    ``settings.worker.identity_link_distance``: probably one person under two subject ids (a
    selfie and a public-dataset copy, say). Found at ingestion, so the snapshot split can
    keep every subject of one person on one side. ``face_id`` is the later face."""

    __tablename__ = "identity_links"

    face_id: str = Field(primary_key=True, foreign_key="faces.face_id", max_length=36)
    other_face_id: str = Field(
        primary_key=True, foreign_key="faces.face_id", index=True, max_length=36
    )
    distance: float = Field(description="Euclidean, unit identity embeddings (0..2)")
    embedder: str = Field(max_length=128, description="the embedder both vectors came from")
    created_at: datetime = _utc_column()


class LibraryVersion(SQLModel, table=True):
    """One state of the anime reference library. Every ``refs add`` makes a new version;
    pairs and snapshots name the version they were matched against."""

    __tablename__ = "library_versions"

    version: int = Field(primary_key=True)
    created_at: datetime = _utc_column()
    added: int = 0
    quarantined: int = 0
    note: str | None = Field(default=None, max_length=512)
    index_location: str | None = Field(
        default=None, max_length=1024, description="the vector index of this version, if local"
    )


class AnimeRef(SQLModel, table=True):
    """An anime reference image with its license and attribution, always kept together."""

    __tablename__ = "anime_refs"

    ref_id: str = Field(primary_key=True, max_length=36)
    style: str = Field(index=True, max_length=64)
    status: RefStatus = _enum_column(RefStatus)
    reason: str | None = Field(default=None, max_length=32, description="why quarantined")
    detail: str | None = Field(default=None, max_length=1024)
    original: str = Field(max_length=64, description="sha256 of the metadata-free original PNG")
    training: str = Field(
        max_length=64, description="sha256 of the face region matched to the style's palette"
    )
    region: str = Field(max_length=8, description="box: a given crop box | whole: the image")
    box: list[float] = _json_column()
    width: int
    height: int
    license: str = Field(max_length=128)
    source: str = Field(max_length=512)
    author: str = Field(max_length=512)
    tags: list[str] = _json_column()
    stats: dict[str, float] = _json_column()
    outlier_score: float | None = None
    embedder: str = Field(max_length=128)
    library_version: int = Field(foreign_key="library_versions.version", index=True)
    added_at: datetime = _utc_column()
    status_by: str | None = Field(
        default=None, max_length=128, description="who set the status by hand (else the check)"
    )
    status_at: datetime | None = _utc_column(nullable=True)
    landmarks: list[list[float]] | None = _json_column(nullable=True)
    landmarks_source: str | None = Field(
        default=None, max_length=16, description="detector name | human"
    )


class RefLabel(SQLModel, table=True):
    """One attribute of an anime reference, like :class:`Label` for faces."""

    __tablename__ = "ref_labels"
    __table_args__ = (UniqueConstraint("ref_id", "name", "source"),)

    id: int | None = Field(default=None, primary_key=True)
    ref_id: str = Field(foreign_key="anime_refs.ref_id", index=True, max_length=36)
    name: str = Field(max_length=32)
    value: str = Field(max_length=64)
    source: str = Field(max_length=16, description="declared | measured | model | human")
    confidence: float
    created_at: datetime = _utc_column()


class Pair(SQLModel, table=True):
    """A (selfie face, anime reference) training pair for one style, and its review state.

    One pair per face and style: re-matching a face updates its pair instead of adding one.
    """

    __tablename__ = "pairs"
    __table_args__ = (UniqueConstraint("face_id", "style"),)

    pair_id: str = Field(primary_key=True, max_length=36)
    face_id: str = Field(foreign_key="faces.face_id", index=True, max_length=36)
    subject: str = Field(index=True, max_length=64, description="pseudonym of the face's subject")
    style: str = Field(index=True, max_length=64)
    ref_id: str | None = Field(default=None, foreign_key="anime_refs.ref_id", max_length=36)
    score: float | None = None
    status: PairStatus = _enum_column(PairStatus)
    decided_by: str | None = Field(
        default=None, max_length=128, description="auto | human:<name> | import:<file>"
    )
    decided_at: datetime | None = _utc_column(nullable=True)
    candidates: list[dict[str, Any]] = _json_column()
    library_version: int | None = Field(default=None, foreign_key="library_versions.version")
    created_at: datetime = _utc_column()
    updated_at: datetime = _utc_column()


class ReviewDecision(SQLModel, table=True):
    """Every human decision on a pair or a label: who, what and when (append-only)."""

    __tablename__ = "review_decisions"

    id: int | None = Field(default=None, primary_key=True)
    pair_id: str = Field(foreign_key="pairs.pair_id", index=True, max_length=36)
    face_id: str = Field(index=True, max_length=36)
    actor: str = Field(max_length=128)
    action: str = Field(max_length=16, description="approve | reject | pick | relabel")
    ref_id: str | None = Field(default=None, max_length=36)
    detail: dict[str, Any] = _json_column()
    decided_at: datetime = _utc_column()


class Snapshot(SQLModel, table=True):
    """A frozen dataset: its manifest is immutable and named by its content hash."""

    __tablename__ = "snapshots"

    snapshot_id: str = Field(primary_key=True, max_length=64)
    version: int = Field(unique=True)
    manifest_sha256: str = Field(max_length=64)
    manifest_path: str = Field(max_length=1024)
    pairs: int
    train: int
    validation: int
    subjects: int
    library_version: int | None = None
    params: dict[str, Any] = _json_column()
    created_at: datetime = _utc_column()


class ModelVersion(SQLModel, table=True):
    """One trained version of a model (``s2a models list``): what it was trained from, with
    what, where its files are and how it measured. ``version`` counts up per ``name``;
    the files live in the numbered directory ``path`` (``S2A_HOME/models/<name>/<version>``).
    """

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, index=True)
    version: int
    parent_version: int | None = Field(
        default=None, description="the champion it was warm-started from (same name)"
    )
    snapshot_id: str = Field(max_length=64, index=True, description="the snapshot trained on")
    family: str = Field(max_length=64)
    status: VersionStatus = _enum_column(VersionStatus)
    reason: str | None = Field(default=None, max_length=2048, description="why this status")
    trigger: str | None = Field(
        default=None,
        max_length=64,
        description="what started it: schedule | data | erasure | manual",
    )
    config: dict[str, Any] = _json_column()
    metrics: dict[str, Any] = _json_column()
    artifacts: dict[str, str] = _json_column()
    path: str = Field(max_length=1024, description="the version directory")
    run_dir: str = Field(max_length=1024, description="the training run directory")
    log_path: str = Field(max_length=1024, description="the run's log file")
    created_at: datetime = _utc_column()
    updated_at: datetime = _utc_column()
    #: When the retention (trainer.retention) deleted the version's directory, run
    #: directory and artifact-store copy; the row stays, for the lineage. Such a version
    #: can no longer be promoted or rolled back to.
    files_deleted_at: datetime | None = _utc_column(nullable=True)


class ModelAlias(SQLModel, table=True):
    """Where an alias (``candidate``, ``champion``) of a model points now."""

    __tablename__ = "model_aliases"

    name: str = Field(primary_key=True, max_length=64)
    alias: str = Field(primary_key=True, max_length=32)
    version: int
    moved_at: datetime = _utc_column()
    moved_by: str = Field(max_length=128)


class AliasMove(SQLModel, table=True):
    """Every move of an alias, written in the move's transaction (append-only audit)."""

    __tablename__ = "model_alias_moves"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, index=True)
    alias: str = Field(max_length=32)
    action: str = Field(max_length=16, description="register | promote | rollback")
    from_version: int | None = None
    to_version: int
    actor: str = Field(max_length=128)
    reason: str = Field(max_length=2048)
    moved_at: datetime = _utc_column()


class VersionSubject(SQLModel, table=True):
    """A subject (pseudonym) whose pairs a model version was trained on (its snapshot's
    records, train and validation): an erasure finds the versions to retrain from here."""

    __tablename__ = "version_subjects"

    version_id: int = Field(primary_key=True, foreign_key="model_versions.id")
    subject: str = Field(primary_key=True, max_length=64, index=True)


class Lease(SQLModel, table=True):
    """A named cross-process lock with an expiry (``trainer.leases``): the scheduler holds
    ``retrain`` while a cycle runs, on any machine that shares the database."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime = _utc_column()


class SnapshotSubject(SQLModel, table=True):
    """A subject (pseudonym) a snapshot's manifest names: the subject of a record, or the
    identity group a record was split by (a group is named by a member's pseudonym, who may
    have no record of their own). Written with the snapshot's row, in its transaction, so an
    erasure finds every snapshot that holds a subject without reading manifests."""

    __tablename__ = "snapshot_subjects"

    snapshot_id: str = Field(primary_key=True, foreign_key="snapshots.snapshot_id", max_length=64)
    subject: str = Field(primary_key=True, max_length=64, index=True)


class VersionErasure(SQLModel, table=True):
    """A model version trained on subjects erased since: how many, and when the last one
    was. The subjects themselves are gone from ``version_subjects``; a row here is what the
    retrain trigger looks for (a champion with a row is retrained, ``trigger='erasure'``)."""

    __tablename__ = "version_erasures"

    version_id: int = Field(primary_key=True, foreign_key="model_versions.id")
    erased_subjects: int = Field(description="subjects of its training data erased since")
    last_erased_at: datetime = _utc_column()


class ErasureAudit(SQLModel, table=True):
    """One erasure request and what it removed (append-only; ``s2a erase`` reads it back).

    No subject reference of any kind: not the raw id, not the pseudonym, not a hash of
    either (a hash of a pseudonym is one more pseudonym). ``request_id`` is the link a
    requester keeps on their side. Erasing a subject again, or one never seen, writes a row
    with ``outcome='nothing_found'`` and zero counts.
    """

    __tablename__ = "erasure_audit"

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(unique=True, max_length=128)
    requested_by: str = Field(max_length=128)
    requested_at: datetime = _utc_column()
    erased_at: datetime = _utc_column()
    via: str = Field(max_length=16, description="worker | direct: who ran it")
    outcome: str = Field(max_length=16, description="erased | nothing_found")
    counts: dict[str, int] = _json_column()
    snapshots: list[str] = _json_column()
    """ids of the snapshots deleted because they held the subject"""
    model_versions: list[str] = _json_column()
    """``name:version`` of the versions trained on the subject, marked for retraining"""


class Reviewer(SQLModel, table=True):
    """An account of the review page (``s2a reviewers add``): the name recorded with every
    decision, and an Argon2id hash of the password (never the password itself).

    A session cookie is honoured only while its reviewer exists and it was issued after
    ``sessions_after``: removing the account or logging out ends every session at once.
    """

    __tablename__ = "reviewers"

    name: str = Field(primary_key=True, max_length=122, description="as in human:<name>")
    password_hash: str = Field(max_length=256, description="PHC string, $argon2id$...")
    created_at: datetime = _utc_column()
    sessions_after: datetime | None = _utc_column(nullable=True)


class OutboxRecord(SQLModel, table=True):
    """An announcement for a topic, written in the transaction of the change it announces
    (the transactional outbox): a reviewer's decision and its ``pairs`` record, a champion
    move and its ``model-updates`` record commit together or not at all.

    A relay (:mod:`infra.outbox`) sends the rows whose ``sent_at`` is null in ``id`` order,
    each acked by the broker before the next, and sets ``sent_at`` as soon as the ack
    arrives; a failed send counts in ``attempts`` with ``last_error``. Sent rows are
    deleted after a retention (they hold subject pseudonyms). :mod:`agents.stores.outbox`
    reads and writes them.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_sent_at", "sent_at"),)

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=64, description="logical topic name, without the prefix")
    key: str | None = Field(default=None, max_length=255, description="the record key, as text")
    value: str = Field(sa_column=Column(Text(), nullable=False))
    """the record, as JSON text (its ``to_bytes()``)"""
    created_at: datetime = _utc_column()
    sent_at: datetime | None = _utc_column(nullable=True)
    """when the broker acked it; null while it waits"""
    attempts: int = Field(default=0, description="sends tried, the acked one included")
    last_error: str | None = Field(default=None, max_length=1024)


class PseudonymKey(SQLModel, table=True):
    """The fingerprint of the key subjects are pseudonymized under (one row, ``purpose``
    ``subjects``), so that a key lost and regenerated, or a changed ``S2A_PSEUDONYM_KEY``,
    is refused instead of silently giving returning subjects new pseudonyms
    (:func:`agents.stores.keys.checked_pseudonym_key`).

    The fingerprint is HMAC-SHA256 of a fixed label under the key: it tells two keys apart
    and gives away neither the key nor any pseudonym.
    """

    __tablename__ = "pseudonym_keys"

    purpose: str = Field(primary_key=True, max_length=32)
    fingerprint: str = Field(max_length=64, description="hex HMAC-SHA256 of a fixed label")
    source: str = Field(max_length=1024, description="S2A_PSEUDONYM_KEY, or the key file")
    recorded_at: datetime = _utc_column()


class Tombstone(SQLModel, table=True):
    """An erased subject, kept so that its uploads still on their way are refused
    (:mod:`agents.stores.tombstones`).

    An upload queued before an erasure, or sent again with the consent it had then, would
    otherwise bring the subject back; one whose consent was granted after ``erased_at``
    (the person came back and agreed again) is processed as usual. The erasure writes the
    row in its SQL transaction; erasing again moves ``erased_at`` forward, never back.

    ``subject_digest`` is not the pseudonym: it is HMAC-SHA256, under the pseudonym key, of
    a fixed domain label and the pseudonym. It tells ingestion "this subject was erased"
    and nothing else: without the key it leads to no pseudonym and no raw id, and no other
    table holds it. It is the least an erasure must keep to stay done.
    """

    __tablename__ = "tombstones"

    subject_digest: str = Field(
        primary_key=True, max_length=64, description="hex HMAC-SHA256, not the pseudonym"
    )
    erased_at: datetime = _utc_column()
    """the latest erasure of the subject"""
