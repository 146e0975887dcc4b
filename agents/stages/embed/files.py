"""Model files of the embedders: where an installed package keeps them, and their hashes.

Nothing is downloaded: a file is read from the installed package (or a configured path),
and its absence is an error that names the file and how to install it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from agents.errors import PackageModelMissing

__all__ = ["package_file", "sha256_of"]


def package_file(package: str, relative: str, model: str) -> Path:
    """The file ``relative`` inside the installed ``package``, located without importing it.

    Importing ``face_recognition_models`` fails on current setuptools (it imports
    ``pkg_resources``, gone since setuptools 84), so the package is found by its import
    spec instead. Raises :class:`PackageModelMissing` naming the file and the install step.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise PackageModelMissing(model, package, None)
    path = Path(locations[0]) / relative
    if not path.is_file():
        raise PackageModelMissing(model, package, path)
    return path


def sha256_of(paths: Sequence[Path]) -> str:
    """SHA-256 of the files' bytes in order (``cat a b | sha256sum`` for two files).

    Cached by path, size and modification time: the worker, the CLI and the stores ask for
    the same hash of files of 20-100 MB.
    """
    stats = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _sha256(stats)


@lru_cache(maxsize=16)
def _sha256(stats: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in stats:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
