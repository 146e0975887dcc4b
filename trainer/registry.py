"""The model registry: numbered versions of each model, their lineage and files, and the
aliases ``candidate`` and ``champion`` that say which one to try and which one serves.

In SQL (tables in :mod:`schemas.tables`, migration 0005)::

    model_versions     name, version (1, 2, ... per name), parent_version, snapshot_id,
                       family, status (schemas.model_updates.VersionStatus) and its reason,
                       config / metrics / artifacts JSON, path, run_dir, log_path
    model_aliases      (name, alias) -> version, who moved it last and when
    model_alias_moves  every move: who, when, from, to, why (append-only audit)
    version_subjects   (version, subject pseudonym) for every record of its snapshot

On disk, each version owns the numbered directory ``models_dir/<name>/<version>/``
(adapter, merged weights, ``config.json``, and what the export step adds: ``model.onnx``,
...); the registry creates it when it registers the version and never reuses a number.
With an artifact store (``S2A_STORAGE__BACKEND=s3``, :func:`agents.objects.artifact_store`)
an update that records a version's ``artifacts`` (``relative path -> SHA-256``, from
:func:`hash_tree`) first copies those files to ``<name>/<version>/...`` there,
``export.json`` last and stale keys removed, so a server that sees ``export.json`` finds
every file it lists; Convert servers fetch versions from there
(:func:`serving.version.fetch_version`). With the local backend nothing is copied.

Moving an alias is one transaction that also writes its audit row; ``expect`` makes it a
compare-and-set, so a gate that evaluated against champion 3 cannot overwrite a champion
someone promoted by hand meanwhile. A move of ``champion`` also writes its
:class:`~schemas.model_updates.ModelUpdate` to the outbox in that transaction
(:mod:`trainer.updates`): the move and its announcement on ``model-updates`` commit
together, and a relay sends it when a broker answers. ``rollback`` replays the champion's
audit trail (promotions push, rollbacks pop) and moves it to the holder before the current
one, so two rollbacks in a row go back two champions rather than swapping the last two.

Example::

    registry = Registry.from_settings(settings, engine)
    row = registry.register("converter", family="pix2pix-lora", snapshot_id=sid,
                            parent_version=None, config={}, subjects=["p-1", "p-2"],
                            runs_dir=settings.train_dir, trigger="manual")
    registry.move_alias("converter", CHAMPION, row.version, actor="ana", reason="first")
    registry.alias("converter", CHAMPION)           # the champion's ModelVersion
    registry.versions_with_subject("p-1")           # [("converter", 1)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from agents.errors import StorageError as AgentsStorageError
from agents.objects import ObjectStore, artifact_store
from agents.stores.db import for_writing, sql_errors
from schemas.digests import sha256_file
from schemas.model_updates import ModelUpdate, VersionStatus
from schemas.settings import Settings
from schemas.tables import AliasMove, ModelAlias, ModelVersion, VersionErasure, VersionSubject
from trainer.errors import RegistryError, StorageError
from trainer.updates import model_update, queue_update

CANDIDATE = "candidate"
CHAMPION = "champion"
ALIASES = (CANDIDATE, CHAMPION)

Action = Literal["register", "promote", "rollback"]

_VERSIONS: Table = SQLModel.metadata.tables[ModelVersion.__tablename__]
_ALIASES: Table = SQLModel.metadata.tables[ModelAlias.__tablename__]
_MOVES: Table = SQLModel.metadata.tables[AliasMove.__tablename__]
_SUBJECTS: Table = SQLModel.metadata.tables[VersionSubject.__tablename__]
_ERASURES: Table = SQLModel.metadata.tables[VersionErasure.__tablename__]

#: Written last by the export step, uploaded last here: a version is complete once it exists.
EXPORT_JSON = "export.json"

#: Attempts at taking the next version number when another process took it first.
_INSERT_ATTEMPTS = 3


def _storage(operation: str) -> AbstractContextManager[None]:
    return sql_errors(operation, StorageError)


def hash_tree(folder: Path) -> dict[str, str]:
    """``relative/path -> sha256`` of every file under ``folder`` (sorted; hidden temporary
    files, named ``.*``, left out)."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


@dataclass(frozen=True, slots=True)
class Move:
    """One alias move as :meth:`Registry.move_alias` made it."""

    name: str
    alias: str
    action: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    moved_at: datetime
    update: ModelUpdate | None = None
    """a champion move's announcement, queued in the outbox with the move"""
    outbox_id: int | None = None
    """its outbox row (:func:`agents.stores.outbox.sent_at` says when it was sent)"""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "action": self.action,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "actor": self.actor,
            "reason": self.reason,
            "moved_at": self.moved_at.isoformat(),
        }


def version_dict(row: ModelVersion) -> dict[str, Any]:
    """A version row as JSON-ready values (``s2a models show --json``)."""
    data = row.model_dump(mode="json")
    data.pop("id", None)
    return data


class Registry:
    """Model versions and aliases in SQL, version directories under ``models_dir``.

    ``engine`` is a SQLAlchemy engine on a migrated database (``schemas.migrate.upgrade``);
    ``artifacts``: where version directories are copied (None: they stay on this disk).
    """

    def __init__(
        self, engine: Engine, models_dir: Path, artifacts: ObjectStore | None = None
    ) -> None:
        self.engine = engine
        self.models_dir = models_dir
        self.artifacts = artifacts

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> Registry:
        """The registry of ``settings.models_dir``, copying versions to the artifact store
        the storage settings name (none with the local backend)."""
        return cls(engine, settings.models_dir, artifact_store(settings))

    def version_dir(self, name: str, version: int) -> Path:
        return self.models_dir / name / str(version)

    # -- versions ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        family: str,
        snapshot_id: str,
        parent_version: int | None,
        config: Mapping[str, Any],
        subjects: Iterable[str],
        runs_dir: Path | None = None,
        trigger: str | None = None,
    ) -> ModelVersion:
        """Record a new version (status ``training``) with the next number of ``name``,
        and the subjects it is trained on; creates its empty version directory.

        Its run directory is ``runs_dir/<name>-v<version>`` (``<version dir>/run`` when
        ``runs_dir`` is None), its log ``<run directory>.log``: the number is not known
        before this call.
        """
        now = datetime.now(UTC)
        subjects = sorted(set(subjects))
        with _storage(f"registering a version of {name!r}"):
            for attempt in range(_INSERT_ATTEMPTS):
                try:
                    # Caught inside _storage (which makes database errors StorageError): a
                    # number another process took first is retried, not a failure.
                    with for_writing(self.engine).begin() as connection:
                        latest = connection.scalar(
                            select(func.max(_VERSIONS.c.version)).where(_VERSIONS.c.name == name)
                        )
                        version = int(latest or 0) + 1
                        folder = self.version_dir(name, version)
                        run = (
                            folder / "run" if runs_dir is None else runs_dir / f"{name}-v{version}"
                        )
                        # Beside the run directory: the family refuses a run directory
                        # that already holds files.
                        log = run.with_name(f"{run.name}.log")
                        inserted = connection.execute(
                            _VERSIONS.insert().returning(_VERSIONS.c.id),
                            {
                                "name": name,
                                "version": version,
                                "parent_version": parent_version,
                                "snapshot_id": snapshot_id,
                                "family": family,
                                "status": VersionStatus.TRAINING.value,
                                "reason": None,
                                "trigger": trigger,
                                "config": dict(config),
                                "metrics": {},
                                "artifacts": {},
                                "path": str(folder),
                                "run_dir": str(run),
                                "log_path": str(log),
                                "created_at": now,
                                "updated_at": now,
                            },
                        )
                        version_id = inserted.scalar_one()
                        if subjects:
                            connection.execute(
                                _SUBJECTS.insert(),
                                [{"version_id": version_id, "subject": s} for s in subjects],
                            )
                    break
                except IntegrityError:
                    # Another process registered this number between our read and our insert.
                    if attempt == _INSERT_ATTEMPTS - 1:
                        raise RegistryError(
                            f"could not register a version of {name!r}: other registrations kept "
                            "taking the next number; run it again"
                        ) from None
        folder.mkdir(parents=True, exist_ok=True)
        return self.get(name, version)

    def update(
        self,
        name: str,
        version: int,
        *,
        status: VersionStatus | None = None,
        reason: str | None = None,
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """Set the given fields of a version (None leaves a field as it is).

        With an artifact store, the files of ``artifacts`` are copied there first (see the
        module docstring); :class:`StorageError` when that fails, and nothing is recorded.
        """
        if artifacts is not None and self.artifacts is not None:
            self.upload(name, version, artifacts)
        values: dict[str, Any] = {"updated_at": datetime.now(UTC)}
        if status is not None:
            values["status"] = VersionStatus(status).value
        if reason is not None:
            values["reason"] = reason[:2048]
        for key, value in (("config", config), ("metrics", metrics), ("artifacts", artifacts)):
            if value is not None:
                values[key] = dict(value)
        where = (_VERSIONS.c.name == name) & (_VERSIONS.c.version == version)
        with _storage(f"updating {name} v{version}"), self.engine.begin() as connection:
            changed = connection.execute(_VERSIONS.update().where(where).values(**values))
        if changed.rowcount != 1:
            raise self._unknown(name, version)
        return self.get(name, version)

    def upload(self, name: str, version: int, artifacts: Mapping[str, str]) -> None:
        """Copy the files ``artifacts`` lists (relative to the version directory) to
        ``<name>/<version>/`` of the artifact store, ``export.json`` last, and delete the
        store's other keys of the version (a re-export's leftovers)."""
        if self.artifacts is None:
            return
        folder = self.version_dir(name, version)
        prefix = f"{name}/{version}/"
        # export.json marks a complete version to servers: it goes up after every file.
        order = sorted(artifacts, key=lambda rel: (rel == EXPORT_JSON, rel))
        try:
            for relative in order:
                source = folder / relative
                if not source.is_file():
                    raise StorageError(
                        f"{name} v{version}: {source} is listed among its artifacts but is "
                        "not a file; hash the version directory again (hash_tree)"
                    )
                self.artifacts.put_file(prefix + relative, source)
            for key in self.artifacts.list_keys(prefix):
                if key[len(prefix) :] not in artifacts:
                    self.artifacts.delete(key)
        except AgentsStorageError as exc:
            raise StorageError(
                f"cannot copy {name} v{version} to the artifact store: {exc}"
            ) from exc

    def get(self, name: str, version: int) -> ModelVersion:
        """The version ``version`` of ``name``; :class:`RegistryError` lists the known ones."""
        query = select(_VERSIONS).where(_VERSIONS.c.name == name, _VERSIONS.c.version == version)
        with _storage(f"reading {name} v{version}"), self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None:
            raise self._unknown(name, version)
        return ModelVersion.model_validate(dict(row))

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of ``name``), by name then version."""
        query = select(_VERSIONS).order_by(_VERSIONS.c.name, _VERSIONS.c.version)
        if name is not None:
            query = query.where(_VERSIONS.c.name == name)
        with _storage("listing model versions"), self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [ModelVersion.model_validate(dict(r)) for r in rows]

    def subjects(self, name: str, version: int) -> list[str]:
        """The subject pseudonyms version ``version`` was trained on, sorted."""
        query = (
            select(_SUBJECTS.c.subject)
            .select_from(_SUBJECTS.join(_VERSIONS, _VERSIONS.c.id == _SUBJECTS.c.version_id))
            .where(_VERSIONS.c.name == name, _VERSIONS.c.version == version)
            .order_by(_SUBJECTS.c.subject)
        )
        with _storage(f"reading the subjects of {name} v{version}"), self.engine.connect() as c:
            return [str(s) for s in c.scalars(query)]

    def retain_subjects(self, name: str, version: int, subjects: Iterable[str]) -> int:
        """Narrow the subjects recorded on a version to those of ``subjects``; how many
        rows went. Never adds one: a version registered with more subjects than it ends up
        trained on (a cycle before its replay is drawn) loses the extra ones, and a subject
        erased meanwhile stays gone. :class:`RegistryError` for an unknown version."""
        keep = set(subjects)
        version_id = self.get(name, version).id
        recorded_of = select(_SUBJECTS.c.subject).where(_SUBJECTS.c.version_id == version_id)
        operation = f"narrowing the subjects of {name} v{version}"
        with _storage(operation), for_writing(self.engine).begin() as connection:
            extra = sorted(set(connection.scalars(recorded_of)) - keep)
            # In chunks: SQLite caps the parameters of one statement.
            for start in range(0, len(extra), 500):
                connection.execute(
                    _SUBJECTS.delete().where(
                        _SUBJECTS.c.version_id == version_id,
                        _SUBJECTS.c.subject.in_(extra[start : start + 500]),
                    )
                )
        return len(extra)

    def erasures(self, name: str) -> dict[int, tuple[int, datetime]]:
        """``version -> (subjects erased since it was trained, when the last was)`` for
        each version of ``name`` whose training data lost subjects to an erasure (the
        eraser's ``version_erasures`` counts)."""
        query = (
            select(_VERSIONS.c.version, _ERASURES.c.erased_subjects, _ERASURES.c.last_erased_at)
            .join(_ERASURES, _ERASURES.c.version_id == _VERSIONS.c.id)
            .where(_VERSIONS.c.name == name)
        )
        with _storage(f"reading the erasures of {name}"), self.engine.connect() as connection:
            return {v: (int(n), _aware(at)) for v, n, at in connection.execute(query).all()}

    def versions_with_subject(self, subject: str) -> list[tuple[str, int]]:
        """``(name, version)`` of every version trained on ``subject`` (for an erasure)."""
        query = (
            select(_VERSIONS.c.name, _VERSIONS.c.version)
            .select_from(_SUBJECTS.join(_VERSIONS, _VERSIONS.c.id == _SUBJECTS.c.version_id))
            .where(_SUBJECTS.c.subject == subject)
            .order_by(_VERSIONS.c.name, _VERSIONS.c.version)
        )
        with _storage("finding the versions of a subject"), self.engine.connect() as connection:
            return [(str(n), int(v)) for n, v in connection.execute(query)]

    # -- aliases ----------------------------------------------------------------------------

    def alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` of ``name`` points at, or None."""
        number = self.aliases(name).get(alias)
        return None if number is None else self.get(name, number)

    def aliases(self, name: str) -> dict[str, int]:
        """``alias -> version`` of ``name``."""
        query = select(_ALIASES.c.alias, _ALIASES.c.version).where(_ALIASES.c.name == name)
        with _storage(f"reading the aliases of {name!r}"), self.engine.connect() as connection:
            return {str(a): int(v) for a, v in connection.execute(query)}

    def history(self, name: str, alias: str | None = None) -> list[Move]:
        """The alias moves of ``name`` (of one ``alias``), oldest first."""
        query = select(_MOVES).where(_MOVES.c.name == name).order_by(_MOVES.c.id)
        if alias is not None:
            query = query.where(_MOVES.c.alias == alias)
        with _storage(f"reading the alias history of {name!r}"), self.engine.connect() as c:
            rows = c.execute(query).mappings().all()
        return [
            Move(
                name=r["name"],
                alias=r["alias"],
                action=r["action"],
                from_version=r["from_version"],
                to_version=r["to_version"],
                actor=r["actor"],
                reason=r["reason"],
                moved_at=_aware(r["moved_at"]),
            )
            for r in rows
        ]

    def move_alias(
        self,
        name: str,
        alias: str,
        to_version: int,
        *,
        actor: str,
        reason: str,
        action: Action = "promote",
        expect: int | Literal["any"] | None = "any",
        status: VersionStatus | None = None,
    ) -> Move:
        """Point ``alias`` of ``name`` at ``to_version``, audited, in one transaction
        (which also sets the version's ``status`` when given).

        ``expect`` (a version, or None for "no holder yet") makes the move conditional:
        when the alias points elsewhere by then, nothing changes and :class:`RegistryError`
        says who moved it. The default ``"any"`` moves it whatever it points at.
        """
        if alias not in ALIASES:
            raise RegistryError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
        if not actor.strip():
            raise RegistryError("actor is empty; say who moves the alias (--by, or $USER)")
        self.get(name, to_version)  # an unknown version is refused before anything moves
        now = datetime.now(UTC)
        with _storage(f"moving {name}@{alias} to v{to_version}"):
            try:
                return self._move(
                    name, alias, to_version, actor, reason, action, expect, status, now
                )
            except IntegrityError:
                # Two first moves of one alias raced (no row to lock yet): one inserted.
                raise RegistryError(
                    f"{name}@{alias} was set by another process meanwhile; look at "
                    "`s2a models show` and decide again"
                ) from None

    def _move(
        self,
        name: str,
        alias: str,
        to_version: int,
        actor: str,
        reason: str,
        action: Action,
        expect: int | Literal["any"] | None,
        status: VersionStatus | None,
        now: datetime,
    ) -> Move:
        key = (_ALIASES.c.name == name) & (_ALIASES.c.alias == alias)
        with for_writing(self.engine).begin() as connection:
            current = connection.scalar(select(_ALIASES.c.version).where(key).with_for_update())
            if expect != "any" and current != expect:
                raise RegistryError(
                    f"{name}@{alias} points at v{current}, not v{expect} as expected: it was "
                    "moved meanwhile; look at `s2a models show` and decide again"
                )
            deleted = connection.scalar(
                select(_VERSIONS.c.files_deleted_at).where(
                    _VERSIONS.c.name == name, _VERSIONS.c.version == to_version
                )
            )
            if deleted is not None:
                raise RegistryError(
                    f"{name} v{to_version}'s files were deleted by the retention at "
                    f"{_aware(deleted).isoformat(timespec='seconds')} (S2A_TRAIN__KEEP_VERSIONS);"
                    " promote a version that still has them (`s2a models list`)"
                )
            values = {"version": to_version, "moved_at": now, "moved_by": actor}
            if current is None:
                connection.execute(_ALIASES.insert().values(name=name, alias=alias, **values))
            else:
                connection.execute(_ALIASES.update().where(key).values(**values))
            connection.execute(
                _MOVES.insert().values(
                    name=name,
                    alias=alias,
                    action=action,
                    from_version=current,
                    to_version=to_version,
                    actor=actor,
                    reason=reason[:2048],
                    moved_at=now,
                )
            )
            if status is not None:
                connection.execute(
                    _VERSIONS.update()
                    .where(_VERSIONS.c.name == name, _VERSIONS.c.version == to_version)
                    .values(status=VersionStatus(status).value, updated_at=now)
                )
            update, outbox_id = None, None
            if alias == CHAMPION:
                # The announcement commits with the move, or neither happens.
                held = _VERSIONS.c.name == name, _VERSIONS.c.version == to_version
                row = connection.execute(select(_VERSIONS).where(*held)).mappings().one()
                verb: Literal["promote", "rollback"] = (
                    "rollback" if action == "rollback" else "promote"
                )
                version = ModelVersion.model_validate(dict(row))
                update = model_update(version, current, verb, reason, actor, now)
                outbox_id = queue_update(connection, update)
        return Move(name, alias, action, current, to_version, actor, reason, now, update, outbox_id)

    def promote(self, name: str, version: int, *, actor: str, reason: str) -> Move:
        """Make ``version`` the champion by hand (the gate is not asked); marks it promoted."""
        return self.move_alias(
            name, CHAMPION, version, actor=actor, reason=reason, status=VersionStatus.PROMOTED
        )

    def champion_stack(self, name: str) -> list[int]:
        """The champions a chain of rollbacks would walk back through, oldest first, the
        current one last, from the audit trail (promotions push, rollbacks pop)."""
        stack: list[int] = []
        for move in self.history(name, CHAMPION):
            if move.action == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != move.to_version:
                    stack.append(move.to_version)
            else:
                stack.append(move.to_version)
        return stack

    def previous_champion(self, name: str) -> int | None:
        """The champion before the current one, from the audit trail (None if none)."""
        stack = self.champion_stack(name)
        return stack[-2] if len(stack) >= 2 else None

    def mark_files_deleted(self, name: str, version: int) -> bool:
        """Record that ``version``'s files are about to be deleted (the retention calls
        it first, then deletes); False when it was recorded already.

        One transaction that holds ``name``'s alias rows, so it cannot interleave with a
        move: :class:`RegistryError` when an alias points at the version, and a move to
        the version afterwards is refused.
        """
        now = datetime.now(UTC)
        aliases = select(_ALIASES.c.alias, _ALIASES.c.version).where(_ALIASES.c.name == name)
        row = (_VERSIONS.c.name == name) & (_VERSIONS.c.version == version)
        with (
            _storage(f"marking {name} v{version}'s files deleted"),
            for_writing(self.engine).begin() as connection,
        ):
            held = {a: v for a, v in connection.execute(aliases.with_for_update()).all()}
            holding = sorted(a for a, v in held.items() if v == version)
            if holding:
                raise RegistryError(
                    f"{name} v{version} is the {' and '.join(holding)}: its files stay"
                )
            changed = connection.execute(
                _VERSIONS.update()
                .where(row, _VERSIONS.c.files_deleted_at.is_(None))
                .values(files_deleted_at=now, updated_at=now)
            )
        if changed.rowcount == 0:
            self.get(name, version)  # an unknown version is named as such
        return changed.rowcount == 1

    def rollback(self, name: str, *, actor: str, reason: str) -> Move:
        """Move the champion back to its previous holder (see the module docstring)."""
        current = self.aliases(name).get(CHAMPION)
        target = self.previous_champion(name)
        if current is None or target is None:
            raise RegistryError(
                f"{name} has no earlier champion to roll back to (champion: "
                f"{'none' if current is None else f'v{current}'}); `s2a models promote` one"
            )
        return self.move_alias(
            name, CHAMPION, target, actor=actor, reason=reason, action="rollback", expect=current
        )

    def _unknown(self, name: str, version: int) -> RegistryError:
        known = [r.version for r in self.versions(name)]
        listed = ", ".join(str(v) for v in known[-10:]) or "none yet"
        return RegistryError(
            f"{name} has no version {version} (versions: {listed}); see `s2a models list`"
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
