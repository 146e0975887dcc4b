"""Secret key files in the data directory (the pseudonym key, the review session secret)."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from pathlib import Path

#: Random bytes in a generated key (256 bits).
KEY_BYTES = 32


def create_key_file(path: Path) -> None:
    """Write a new random key (``KEY_BYTES``, base64 text) to ``path``, unless another
    process made one there first: then that one stands, so racing processes share a key.

    The file is owner-only from its first byte: written 0600 under a name no other process
    or thread uses (``O_CREAT | O_EXCL``), then hard-linked into place (``link`` fails when
    ``path`` exists, never replacing it).

    Raises:
        OSError: the folder cannot be made or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
