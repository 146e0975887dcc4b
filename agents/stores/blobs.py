"""Content-addressed blob store for metadata-free derived images (aligned crops).

A blob's name is the SHA-256 of its bytes, so writing the same crop twice is a no-op and a
re-delivered upload cannot create a second copy. Raw upload bytes never come here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agents.errors import StorageError


class BlobStore:
    """Files under ``root/ab/cd/<sha256><suffix>``, written atomically.

    Example::

        blobs = BlobStore(settings.blob_dir)
        digest = blobs.put(png_bytes)
        blobs.read(digest) == png_bytes
    """

    def __init__(self, root: Path, suffix: str = ".png") -> None:
        self.root = root
        self.suffix = suffix

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / f"{digest}{self.suffix}"

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            # rename is atomic: a reader never sees half a crop, and a crash leaves at
            # worst a stray .tmp file, never a corrupt blob under its digest.
            tmp.replace(target)
        except OSError as exc:
            raise StorageError(f"cannot write blob {digest} under {self.root}: {exc}") from exc
        return digest

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> list[str]:
        return sorted(
            p.name.removesuffix(self.suffix) for p in self.root.glob(f"*/*/*{self.suffix}")
        )
