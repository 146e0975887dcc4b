"""The digest that names and checks every file the project hands from one part to another:
SHA-256 of the file's bytes, as lowercase hex (what ``sha256sum`` prints). Model artifacts
(``export.json``, ``model_versions.artifacts``, ``ModelUpdate.artifacts``), training
lineage and the blob store's names all use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Bytes read at a time: large model files are hashed without loading them whole.
BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest (64 characters) of ``path``'s bytes, read in 1 MiB blocks.

    Raises :class:`OSError` (``FileNotFoundError`` among them) when the file cannot be read.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
