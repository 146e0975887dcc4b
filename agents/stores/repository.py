"""The SQL of ingestion: terminal states of uploads, their subjects, faces and labels.

This is the only module that writes SQL for ingestion. Each ``record_*`` call is one
transaction and is idempotent on ``upload_id``: an upload that already reached a
terminal state (whichever) is left exactly as it is and the call returns ``False``. That
holds for re-deliveries and for two workers racing on the same record; the loser of the
race hits the primary key, rolls back, finds the winner's row and returns ``False``.

With the pseudonym key, the recording transaction also reads the subject's tombstone
(:mod:`agents.stores.tombstones`) under the subject's lock: an upload whose subject was
erased after its consent was granted is refused there (``record_accepted``) or recorded
as the erasure leaves uploads, ``erased`` and unattributed (``record_rejected``), however
the erasure and the batch interleave.

Datetimes go in and come out timezone-aware, in UTC (SQLite stores them naive, as UTC).
Database failures surface as :class:`~agents.errors.StorageError`, naming the operation;
the worker then stops without committing its offsets, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col
from sqlmodel import select as model_select

from agents.errors import Rejected
from agents.records import ValidUpload
from agents.stores.db import for_writing, sql_errors
from agents.stores.tombstones import erased_at, lock_subject, tombstone_digest
from schemas.errors import ConfigError
from schemas.reasons import ReasonCode, Stage, UploadState
from schemas.rejections import Origin, Rejection
from schemas.tables import AnimeRef, Face, IdentityLink, Label, Subject, Upload, UTCDateTime

_SUBJECTS: Table = SQLModel.metadata.tables[Subject.__tablename__]
_UPLOADS: Table = SQLModel.metadata.tables[Upload.__tablename__]
_FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
_LABELS: Table = SQLModel.metadata.tables[Label.__tablename__]
_LINKS: Table = SQLModel.metadata.tables[IdentityLink.__tablename__]
_REFS: Table = SQLModel.metadata.tables[AnimeRef.__tablename__]

#: The subject columns a newer consent replaces; ``first_seen_at`` is kept.
_CONSENT_COLUMNS = ("consent_version", "consent_scopes", "consent_granted_at", "consent_expires_at")

#: Upload ids per ``IN (...)`` query: far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500

_Row = TypeVar("_Row", bound=SQLModel)


class Repository:
    """Where ingestion records what became of each upload.

    Example::

        repository = Repository(create_engine_for(settings.sql_url))
        todo = [e for e in events if e.upload_id not in repository.finished(ids)]
        if repository.record_accepted(upload, face, labels, origin):
            ...  # first time this upload is stored
        repository.counts()   # {'accepted': 1, 'rejected': 0, 'erased': 0}

    ``pseudonym_key`` (the key the uploads' pseudonyms are made with) turns on the tombstone
    checks; ingestion passes it, readers need not.
    """

    def __init__(self, engine: Engine, *, pseudonym_key: bytes | None = None) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"Repository supports sqlite and postgresql engines, not {engine.dialect.name!r}"
            )
        if pseudonym_key is not None and not pseudonym_key:
            raise ConfigError("pseudonym_key is empty; pass Settings.resolve_pseudonym_key()")
        self._engine = engine
        self._writer = for_writing(engine)
        self._key = pseudonym_key

    # -- writes ---------------------------------------------------------------------------

    def finished(self, upload_ids: Iterable[str]) -> set[str]:
        """The given ids that already have a terminal state (and must not be processed)."""
        ids = list(dict.fromkeys(upload_ids))
        with sql_errors("finished"), self._engine.connect() as connection:
            return _finished_in(connection, ids)

    def erasures(self, pseudonyms: Iterable[str]) -> dict[str, datetime]:
        """``{pseudonym: latest erasure}`` of the given subjects that were erased (one
        query per 500). Raises :class:`~schemas.errors.ConfigError` without the pseudonym
        key."""
        if self._key is None:
            raise ConfigError(
                "this Repository has no pseudonym key to read tombstones with; build it "
                "with Repository(engine, pseudonym_key=checked_pseudonym_key(...))"
            )
        digests = {tombstone_digest(p, self._key): p for p in dict.fromkeys(pseudonyms)}
        with sql_errors("reading tombstones"), self._engine.connect() as connection:
            found = erased_at(connection, digests)
        return {digests[digest]: at for digest, at in found.items()}

    def record_rejected(self, rejection: Rejection, upload: ValidUpload | None = None) -> bool:
        """Record ``rejection`` as the terminal state of its upload.

        ``upload`` is the validated event when the rejection came after validation; its
        subject is then upserted with the consent it carries. Without it (the record was
        malformed, or its consent did not hold) no subject is stored or linked: nothing
        ties the row to a person whose consent was not established. When the subject was
        erased after that consent was granted (an erasure that committed during the batch),
        the upload is recorded as the erasure leaves its uploads: ``erased``, with no
        subject and no detail, and no subject row comes back.

        Returns ``False``, changing nothing, when the upload already has a terminal state.
        """
        if upload is not None and upload.upload_id != rejection.upload_id:
            raise ValueError(
                f"rejection is for upload {rejection.upload_id!r} but upload is "
                f"{upload.upload_id!r}; pass the ValidUpload the rejection is about, or None"
            )
        row = _upload_row(
            rejection.upload_id,
            UploadState.REJECTED,
            finished_at=_utc(rejection.rejected_at, "rejection.rejected_at"),
            upload=upload,
            origin=rejection.origin,
        )
        row.update(
            reason=rejection.reason.value, stage=rejection.stage.value, detail=rejection.detail
        )
        subject = None if upload is None else _subject_values(upload, now=row["finished_at"])

        def write(connection: Connection) -> None:
            if upload is not None and self._erased_since_consent(connection, upload) is not None:
                erased = row | {"state": UploadState.ERASED, "subject": None, "detail": None}
                connection.execute(_UPLOADS.insert(), erased)
                return
            if subject is not None:
                _upsert_subject(connection, subject)
            connection.execute(_UPLOADS.insert(), row)

        return self._record("record_rejected", rejection.upload_id, write)

    def record_accepted(
        self,
        upload: ValidUpload,
        face: Face,
        labels: Sequence[Label],
        origin: Origin | None = None,
        *,
        links: Sequence[IdentityLink] = (),
    ) -> bool:
        """Record ``upload`` as accepted, with its subject, its face, the face's labels and
        its ``links`` to faces of other subjects that look like the same person.

        Label ids are assigned by the database. Returns ``False``, changing nothing, when
        the upload already has a terminal state (a rejected upload stays rejected).

        Raises :class:`~agents.errors.Rejected` (``subject_erased`` at ``store``), writing
        nothing, when the subject was erased after the upload's consent was granted (the
        erasure committed after the batch was validated).
        """
        _check_accepted(upload, face, labels)
        now = datetime.now(UTC)
        row = _upload_row(
            upload.upload_id, UploadState.ACCEPTED, finished_at=now, upload=upload, origin=origin
        )
        face_row = _values(face, "face")
        label_rows = [_values(label, f"labels[{i}]") for i, label in enumerate(labels)]
        for label_row in label_rows:
            if label_row.get("id") is None:
                label_row.pop("id", None)

        link_rows = [_values(link, f"links[{i}]") for i, link in enumerate(links)]
        subject = _subject_values(upload, now=now)

        def write(connection: Connection) -> None:
            erased = self._erased_since_consent(connection, upload)
            if erased is not None:
                # The rule of agents.stages.validate.check_not_erased (stores do not
                # import stages); raised inside the transaction, so it rolls back empty.
                raise Rejected(
                    ReasonCode.SUBJECT_ERASED,
                    Stage.STORE,
                    f"the subject was erased at {erased.isoformat()}, while this upload "
                    "was being processed and after its consent was granted "
                    f"({upload.consent_granted_at.isoformat()}): nothing of it is stored",
                )
            _upsert_subject(connection, subject)
            connection.execute(_UPLOADS.insert(), row)
            connection.execute(_FACES.insert(), face_row)
            if label_rows:
                connection.execute(_LABELS.insert(), label_rows)
            if link_rows:
                connection.execute(_LINKS.insert(), link_rows)

        return self._record("record_accepted", upload.upload_id, write)

    def _erased_since_consent(self, connection: Connection, upload: ValidUpload) -> datetime | None:
        """The subject's latest erasure when it came after the upload's consent was
        granted, else None (and always None without the pseudonym key).

        Takes the subject's lock first (:func:`~agents.stores.tombstones.lock_subject`):
        an erasure of the subject then either committed before this read, and is seen, or
        starts after this transaction ends, and sees what it wrote.
        """
        if self._key is None:
            return None
        digest = tombstone_digest(upload.subject, self._key)
        lock_subject(connection, digest)
        erased = erased_at(connection, [digest]).get(digest)
        if erased is None or upload.consent_granted_at > erased:
            return None
        return erased

    def _record(self, operation: str, upload_id: str, write: Callable[[Connection], None]) -> bool:
        with sql_errors(f"{operation} of upload {upload_id!r}"):
            try:
                with self._writer.begin() as connection:
                    if _finished_in(connection, [upload_id]):
                        return False
                    write(connection)
                return True
            except IntegrityError:
                # Another worker may have recorded the same upload between our check and
                # our insert; its row stops ours at the primary key. If no row is there,
                # the violation is something else and must not pass silently.
                with self._engine.connect() as connection:
                    if _finished_in(connection, [upload_id]):
                        return False
                raise

    # -- reads ----------------------------------------------------------------------------

    def list_uploads(
        self, state: UploadState | None = None, limit: int | None = None
    ) -> list[Upload]:
        """Uploads in the order they finished, oldest first; with ``limit``, the most
        recent ``limit`` of them (still oldest first)."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        statement = model_select(Upload)
        if state is not None:
            statement = statement.where(col(Upload.state) == state)
        finished_at, upload_id = col(Upload.finished_at), col(Upload.upload_id)
        if limit is None:
            statement = statement.order_by(finished_at, upload_id)
        else:
            statement = statement.order_by(finished_at.desc(), upload_id.desc()).limit(limit)
        with sql_errors("list_uploads"), Session(self._engine) as session:
            rows = list(session.exec(statement).all())
        if limit is not None:
            rows.reverse()
        return [row for row in rows]

    def identity_links(self, face_ids: Sequence[str]) -> list[IdentityLink]:
        """The identity links that touch any of ``face_ids`` (either end), by face id."""
        if not face_ids:
            return []
        ids = list(face_ids)
        statement = (
            model_select(IdentityLink)
            .where(col(IdentityLink.face_id).in_(ids) | col(IdentityLink.other_face_id).in_(ids))
            .order_by(col(IdentityLink.face_id), col(IdentityLink.other_face_id))
        )
        with sql_errors("identity_links"), Session(self._engine) as session:
            return list(session.exec(statement).all())

    def face_flags(self, upload_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """``{upload_id: (flag, flag_detail)}`` of the flagged faces among ``upload_ids``
        (see :class:`schemas.reasons.FaceFlag`); unflagged uploads are absent."""
        if not upload_ids:
            return {}
        statement = model_select(Face.upload_id, Face.flag, Face.flag_detail).where(
            col(Face.upload_id).in_(list(upload_ids)), col(Face.flag).is_not(None)
        )
        with sql_errors("face_flags"), Session(self._engine) as session:
            return {
                upload_id: (flag, detail)
                for upload_id, flag, detail in session.exec(statement).all()
                if flag is not None
            }

    def counts(self) -> dict[str, int]:
        """Uploads per terminal state; every state is present, zero included."""
        statement = select(_UPLOADS.c.state, func.count()).group_by(_UPLOADS.c.state)
        with sql_errors("counts"), self._engine.connect() as connection:
            found = {UploadState(state).value: int(n) for state, n in connection.execute(statement)}
        return {state.value: found.get(state.value, 0) for state in UploadState}

    def reason_counts(self) -> dict[str, int]:
        """Rejected uploads per reason code, most frequent first; absent reasons omitted."""
        n = func.count().label("n")
        statement = (
            select(_UPLOADS.c.reason, n)
            .where(_UPLOADS.c.state == UploadState.REJECTED)
            .group_by(_UPLOADS.c.reason)
            .order_by(n.desc(), _UPLOADS.c.reason)
        )
        with sql_errors("reason_counts"), self._engine.connect() as connection:
            return {str(reason): int(count) for reason, count in connection.execute(statement)}

    def get_face(self, face_id: str) -> Face | None:
        """The face with this id, or ``None``."""
        with sql_errors("get_face"), Session(self._engine) as session:
            face = session.get(Face, face_id)
        return None if face is None else face

    def faces_of_subject(self, pseudonym: str) -> list[Face]:
        """Every stored face of one subject, oldest first."""
        statement = (
            model_select(Face)
            .where(col(Face.subject) == pseudonym)
            .order_by(col(Face.created_at), col(Face.face_id))
        )
        with sql_errors("faces_of_subject"), Session(self._engine) as session:
            faces = list(session.exec(statement).all())
        return [face for face in faces]

    def crops_of_subject(self, pseudonym: str) -> dict[str, str]:
        """``{face_id: crop_256 digest}`` of one subject's stored faces (a lookup on the
        subject index: cheap on every upload)."""
        statement = model_select(Face.face_id, Face.crop_256).where(col(Face.subject) == pseudonym)
        with sql_errors("crops_of_subject"), Session(self._engine) as session:
            return {face_id: crop for face_id, crop in session.exec(statement).all()}

    def crops_in_use(self, digests: Iterable[str]) -> set[str]:
        """The given blob digests that a stored face or an anime reference uses (blobs
        are content-addressed: one digest can be several faces' crop)."""
        wanted = sorted(set(digests))
        found: set[str] = set()
        with sql_errors("crops_in_use"), self._engine.connect() as connection:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                faces = select(_FACES.c.crop_256, _FACES.c.crop_512).where(
                    _FACES.c.crop_256.in_(chunk) | _FACES.c.crop_512.in_(chunk)
                )
                refs = select(_REFS.c.original, _REFS.c.training).where(
                    _REFS.c.original.in_(chunk) | _REFS.c.training.in_(chunk)
                )
                for query in (faces, refs):
                    found.update(d for row in connection.execute(query) for d in row if d)
        return found & set(wanted)

    def labels_of_face(self, face_id: str) -> list[Label]:
        """The labels of one face, by name then source."""
        statement = (
            model_select(Label)
            .where(col(Label.face_id) == face_id)
            .order_by(col(Label.name), col(Label.source))
        )
        with sql_errors("labels_of_face"), Session(self._engine) as session:
            labels = list(session.exec(statement).all())
        return [label for label in labels]


# -- helpers ------------------------------------------------------------------------------


def _finished_in(connection: Connection, upload_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(upload_ids), _CHUNK):
        chunk = upload_ids[start : start + _CHUNK]
        statement = select(_UPLOADS.c.upload_id).where(_UPLOADS.c.upload_id.in_(chunk))
        found.update(connection.scalars(statement))
    return found


def _subject_values(upload: ValidUpload, now: datetime) -> dict[str, Any]:
    return {
        "pseudonym": upload.subject,
        "first_seen_at": now,
        "consent_version": upload.consent_version,
        "consent_scopes": list(upload.consent_scopes),
        "consent_granted_at": _utc(upload.consent_granted_at, "upload.consent_granted_at"),
        "consent_expires_at": _utc_or_none(upload.consent_expires_at, "upload.consent_expires_at"),
    }


def _upsert_subject(connection: Connection, values: dict[str, Any]) -> None:
    """Insert the subject, or give it this upload's consent when that one is not older.

    Uploads of one subject can finish out of order (different partitions); comparing the
    grant times keeps the latest consent whatever order they are recorded in.
    """
    if connection.dialect.name == "postgresql":
        pg = postgresql.insert(_SUBJECTS).values(values)
        connection.execute(
            pg.on_conflict_do_update(
                index_elements=[_SUBJECTS.c.pseudonym],
                set_={name: pg.excluded[name] for name in _CONSENT_COLUMNS},
                where=_SUBJECTS.c.consent_granted_at <= pg.excluded.consent_granted_at,
            )
        )
    else:
        lite = sqlite.insert(_SUBJECTS).values(values)
        connection.execute(
            lite.on_conflict_do_update(
                index_elements=[_SUBJECTS.c.pseudonym],
                set_={name: lite.excluded[name] for name in _CONSENT_COLUMNS},
                where=_SUBJECTS.c.consent_granted_at <= lite.excluded.consent_granted_at,
            )
        )


def _upload_row(
    upload_id: str,
    state: UploadState,
    *,
    finished_at: datetime,
    upload: ValidUpload | None,
    origin: Origin | None,
) -> dict[str, Any]:
    return {
        "upload_id": upload_id,
        "subject": upload.subject if upload else None,
        "state": state,
        "reason": None,
        "stage": None,
        "detail": None,
        "source": upload.source.value if upload else None,
        "license": upload.license if upload else None,
        "consent_version": upload.consent_version if upload else None,
        "submitted_at": _utc(upload.submitted_at, "upload.submitted_at") if upload else None,
        "finished_at": finished_at,
        "origin_topic": origin.topic if origin else None,
        "origin_partition": origin.partition if origin else None,
        "origin_offset": origin.offset if origin else None,
    }


def _check_accepted(upload: ValidUpload, face: Face, labels: Sequence[Label]) -> None:
    """The rows must describe one upload; a mismatch is a bug upstream, not a bad image."""
    if face.upload_id != upload.upload_id:
        raise ValueError(
            f"face.upload_id is {face.upload_id!r} but the upload is {upload.upload_id!r}; "
            "build the Face from the upload being recorded"
        )
    if face.subject != upload.subject:
        raise ValueError(
            f"face.subject is {face.subject!r} but the upload's subject is "
            f"{upload.subject!r}; use the upload's pseudonym"
        )
    for i, label in enumerate(labels):
        if label.face_id != face.face_id:
            raise ValueError(
                f"labels[{i}].face_id is {label.face_id!r} but the face is "
                f"{face.face_id!r}; every label must belong to the face being recorded"
            )


def _values(row: SQLModel, name: str) -> dict[str, Any]:
    """A table model's column values, its datetimes converted to UTC."""
    values = row.model_dump()
    for column in row.__table__.columns:  # type: ignore[attr-defined]
        if isinstance(column.type, UTCDateTime):
            values[column.key] = _utc_or_none(values.get(column.key), f"{name}.{column.key}")
    return values


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} is a naive datetime ({value.isoformat()}); pass a timezone-aware one, "
            "e.g. datetime.now(UTC)"
        )
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None, name: str) -> datetime | None:
    return None if value is None else _utc(value, name)
