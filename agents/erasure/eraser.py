"""The :class:`Eraser`: its construction from the settings, and ``erase``, which plans,
removes points, blobs and files, then commits SQL last, in the order and with the
guarantees :mod:`agents.erasure` describes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from qdrant_client import QdrantClient
from sqlalchemy import Engine

from agents.erasure.audit import ErasureResult, find_audit
from agents.erasure.commit import commit
from agents.erasure.crops import remove_crops
from agents.erasure.files import remove_exports, remove_sample_grids, remove_snapshot_folders
from agents.erasure.plan import read_plan
from agents.erasure.vectors import crops_named_by_points, remove_points
from agents.errors import StorageError
from agents.objects import ObjectStore, artifact_store
from agents.stages.anonymize import pseudonymize
from agents.stores.blobs import BlobStore, open_blobs
from agents.stores.db import for_writing
from agents.stores.keys import checked_pseudonym_key
from agents.stores.tombstones import tombstone_digest
from schemas.erasure import ErasureRequest
from schemas.errors import ConfigError
from schemas.settings import Settings

# The package's logger, as before it was split into modules.
log = logging.getLogger("agents.erasure")

#: Attempts when a face of the subject is stored between the plan and the commit.
_ATTEMPTS = 3


class Eraser:
    """Removes one subject everywhere and records the erasure (see :mod:`agents.erasure`).

    ``client`` is the Qdrant client of the faces collections (the worker's own when it
    runs: the local store admits one process). ``export_roots`` are searched for exports
    besides ``dataset_dir``. ``key`` is the pseudonym key, for the tombstone: needed by
    :meth:`erase` (:meth:`erase_request` brings its own).

    Example::

        eraser = Eraser(engine, client, open_blobs(settings), settings.dataset_dir, key=key)
        eraser.erase(pseudonym, request_id="er-1", requested_by="alice",
                     requested_at=datetime.now(UTC)).counts
    """

    def __init__(
        self,
        engine: Engine,
        client: QdrantClient,
        blobs: BlobStore,
        dataset_dir: Path,
        export_roots: Sequence[Path] = (),
        *,
        via: str = "direct",
        models_dir: Path | None = None,
        artifacts: ObjectStore | None = None,
        key: bytes | None = None,
    ) -> None:
        self.engine = engine
        self._writer = for_writing(engine)
        self.client = client
        self.blobs = blobs
        self.dataset_dir = dataset_dir
        self.export_roots = tuple(dict.fromkeys([dataset_dir, *export_roots]))
        self.via = via
        # A run directory inside a version directory (``<version>/run``) was copied to
        # the artifact store with the version: its sample grids go there too.
        self.models_dir = models_dir
        self.artifacts = artifacts
        self.key = key

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: Engine,
        client: QdrantClient,
        *,
        via: str = "direct",
        key: bytes | None = None,
    ) -> Eraser:
        """The eraser of the stores ``settings`` name; without ``key``, the pseudonym key
        checked against the database (:func:`agents.stores.keys.checked_pseudonym_key`:
        a :class:`~schemas.errors.ConfigError` for another key)."""
        return cls(
            engine,
            client,
            open_blobs(settings),
            settings.dataset_dir,
            settings.dataset.export_roots,
            via=via,
            models_dir=settings.models_dir,
            artifacts=artifact_store(settings),
            key=key if key is not None else checked_pseudonym_key(settings, engine),
        )

    def erase_request(self, request: ErasureRequest, key: bytes) -> ErasureResult:
        """Carry out ``request``: its raw subject id becomes the pseudonym here, and only
        the pseudonym goes on."""
        return self.erase(
            pseudonymize(request.subject_id, key),
            request_id=request.request_id,
            requested_by=request.requested_by,
            requested_at=request.requested_at,
            key=key,
        )

    def erase(
        self,
        pseudonym: str,
        *,
        request_id: str,
        requested_by: str,
        requested_at: datetime,
        key: bytes | None = None,
    ) -> ErasureResult:
        """Remove the subject ``pseudonym`` everywhere and leave its tombstone; the audit
        row's answer. ``key`` is the pseudonym key ``pseudonym`` was made with (default:
        the eraser's own).

        Raises :class:`~schemas.errors.ConfigError`, before anything is removed, when there
        is no key to make the tombstone with; :class:`~agents.errors.StorageError` when a
        store fails (running the same request again then finishes the erasure).
        """
        key = key if key is not None else self.key
        if not key:
            raise ConfigError(
                f"erasure {request_id}: no pseudonym key to make the subject's tombstone "
                "with; pass key=, or build the eraser with Eraser.from_settings"
            )
        tombstone = tombstone_digest(pseudonym, key)
        done = find_audit(self.engine, request_id)
        if done is not None:
            log.info("erasure %s was carried out at %s; nothing to do", request_id, done.erased_at)
            return done
        for _ in range(_ATTEMPTS):
            plan = read_plan(self.engine, self.dataset_dir, pseudonym)
            # Crops first, points after: a point names its crops, also those of a face that
            # never reached SQL (a worker killed between its writes and the commit).
            named = crops_named_by_points(self.client, pseudonym, plan.face_ids)
            crops = remove_crops(self.engine, self.blobs, pseudonym, plan.crops | named)
            points = remove_points(self.client, pseudonym, plan.face_ids)
            exports = remove_exports(self.export_roots, plan.snapshots)
            remove_snapshot_folders(self.dataset_dir, plan.snapshots)
            grids = remove_sample_grids(plan.run_dirs, self.models_dir, self.artifacts)
            counts = plan.counts | {
                "exports": exports,
                "crops": crops,
                "points": points,
                "sample_grids": grids,
            }
            result = commit(
                self.engine,
                self._writer,
                via=self.via,
                pseudonym=pseudonym,
                tombstone=tombstone,
                plan=plan,
                counts=counts,
                request_id=request_id,
                requested_by=requested_by,
                requested_at=requested_at,
            )
            if result is not None:
                log.info(
                    "erasure %s by %s: %s %s",
                    request_id,
                    requested_by,
                    result.outcome,
                    {k: v for k, v in result.counts.items() if v},
                )
                return result
        raise StorageError(
            f"erasure {request_id}: the subject's faces kept changing while it ran "
            f"({_ATTEMPTS} attempts); run it again"
        )
