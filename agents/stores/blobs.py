"""Content-addressed blob store for metadata-free derived images (aligned crops).

A blob's name is the SHA-256 of its bytes, so writing the same crop twice is a no-op and a
re-delivered upload cannot create a second copy. Raw upload bytes never come here.

Blobs live in an object store (:mod:`agents.objects`) under ``ab/cd/<sha256><suffix>``: a
local folder (the embedded default, ``home/blobs``) or an S3 bucket, as
``S2A_STORAGE__BACKEND`` chooses; :func:`open_blobs` is the one way to open the store the
settings name. Tools that need files on disk (a training script's ``--blob-dir``) get a
local folder of the blobs they need from :meth:`BlobStore.stage`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from agents.errors import ObjectMissing, StorageError
from agents.objects import LocalObjects, ObjectStore, cache_dir, open_objects
from schemas.settings import Settings

log = logging.getLogger(__name__)


class BlobStore:
    """Blobs under ``ab/cd/<sha256><suffix>`` of an object store, written atomically.

    ``root`` is a local folder or an :class:`~agents.objects.ObjectStore`; ``cache`` is
    where :meth:`stage` keeps local copies of a remote store's blobs.

    Example::

        blobs = open_blobs(settings)            # BlobStore(home/blobs) with local storage
        digest = blobs.put(png_bytes)
        blobs.read(digest) == png_bytes
    """

    def __init__(
        self, root: Path | ObjectStore, suffix: str = ".png", *, cache: Path | None = None
    ) -> None:
        self.objects: ObjectStore = (
            LocalObjects(Path(root)) if isinstance(root, str | os.PathLike) else root
        )
        self.suffix = suffix
        self.cache = cache

    @property
    def local(self) -> bool:
        """Whether the blobs are files of a local folder (:attr:`root`)."""
        return isinstance(self.objects, LocalObjects)

    @property
    def root(self) -> Path:
        """The local folder of the blobs; :class:`StorageError` for a remote store."""
        if isinstance(self.objects, LocalObjects):
            return self.objects.root
        raise StorageError(
            f"the blobs in {self.where} have no local folder; read() them, or stage() "
            "the ones needed into a local copy"
        )

    @property
    def where(self) -> str:
        """The folder or bucket, for messages."""
        return self.objects.where

    def key(self, digest: str) -> str:
        return f"{digest[:2]}/{digest[2:4]}/{digest}{self.suffix}"

    def path(self, digest: str) -> Path:
        """The file of ``digest`` in a local store (see :attr:`root`)."""
        return self.root / self.key(digest)

    def put(self, data: bytes, *, digest: str | None = None) -> str:
        """Store ``data`` under its digest (:func:`blob_digest`); the digest.

        ``digest``: ``blob_digest(data)`` when the caller already has it (the sink names
        the crops in their vector point before writing them), so the bytes are not hashed
        twice; it is not checked again here.
        """
        if digest is None:
            digest = blob_digest(data)
        key = self.key(digest)
        if not self.objects.exists(key):
            self.objects.put(key, data)
        return digest

    def read(self, digest: str) -> bytes:
        """The blob's bytes; :class:`~agents.errors.ObjectMissing` (a
        ``FileNotFoundError``) when it is not there."""
        return self.objects.get(self.key(digest))

    def exists(self, digest: str) -> bool:
        return self.objects.exists(self.key(digest))

    def delete(self, digest: str) -> bool:
        """Remove the blob, and this machine's staged copy of it; False when the store
        had none."""
        key = self.key(digest)
        if self.cache is not None and not self.local:
            try:
                (self.cache / key).unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot delete the copy of {key} in {self.cache}: {exc}"
                ) from exc
        return self.objects.delete(key)

    def digests(self) -> list[str]:
        found = []
        for key in self.objects.list_keys():
            parts = key.split("/")
            if len(parts) == 3 and parts[2].endswith(self.suffix):
                found.append(parts[2].removesuffix(self.suffix))
        return sorted(found)

    def stage(self, digests: Iterable[str]) -> Path:
        """A local folder holding ``digests`` in this store's layout (a training script's
        ``--blob-dir``): the store's own folder when it is local; else :attr:`cache`,
        where the blobs not there yet are downloaded (checked against their digest).

        A digest the store lacks is left out (the reader names the pair that needs it). The
        copies stay for the next run; deleting a blob here deletes its copy too.
        """
        if self.local:
            return self.root
        if self.cache is None:
            raise StorageError(f"no cache folder to stage the blobs of {self.where} into")
        missing = 0
        copy = LocalObjects(self.cache)
        for digest in sorted(set(digests)):
            key = self.key(digest)
            if copy.exists(key):
                continue
            try:
                data = self.objects.get(key)
            except ObjectMissing:
                missing += 1
                continue
            if hashlib.sha256(data).hexdigest() != digest:
                raise StorageError(
                    f"blob {key} in {self.where} does not hash to its name: it is corrupt; "
                    "restore it from a backup"
                )
            copy.put(key, data)
        if missing:
            log.warning("%d blobs to stage are missing from %s", missing, self.where)
        return self.cache


def blob_digest(data: bytes) -> str:
    """The content address of ``data``: its SHA-256, 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def open_blobs(settings: Settings) -> BlobStore:
    """The blob store the settings name (``S2A_STORAGE__*``): ``home/blobs``, or the
    bucket's ``blobs/`` with local copies under ``home/cache/blobs``."""
    return BlobStore(open_objects(settings, "blobs"), cache=cache_dir(settings, "blobs"))
