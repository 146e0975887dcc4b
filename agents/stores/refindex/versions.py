"""Immutable versioned folders: publishing a library version, finding, opening and
pruning them (:func:`publish_version`, :func:`open_ref_index`, :func:`prune_versions`).

Embedded default: one **immutable folder per library version** under
``settings.ref_index_dir`` (``v000007/``), so that the CLI can publish version N+1 while
the worker keeps searching version N in another process::

    v000007/
      manifest.json      written last: the folder is complete (version, backend, count,
                         the embedder that made its vectors and their dim)
      edge/              a qdrant-edge shard, or qdrant-local/ for qdrant-client's store

:func:`publish_version` copies the base version's engine folder into a temporary folder,
applies the upserts and deletes, flushes, writes the manifest and renames the folder into
place, so a crash never leaves a half version under a version's name. A reader opens a
version with :func:`open_ref_index` and keeps it until it switches to a newer one; old
folders go with :func:`prune_versions` (on Linux a reader that still has one open keeps
working: the engine holds its files open or mapped).

With ``settings.qdrant_url`` set (production) every version is the server's collection of
the embedder, ``anime_refs-<space slug>``, updated in place; the version number only labels
the reader.

Vectors of two embedders are never compared: a version is opened for one
:class:`~agents.records.EmbeddingSpace` and refused (:class:`EmbedderMismatch`) when its
manifest names another embedder, or none (a folder from before embedders were recorded).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from agents.errors import EmbedderMismatch, PipelineError, RefVersionMissing, StorageError
from agents.records import EmbeddingSpace
from agents.stores.refindex.contract import (
    _UPSERT_BATCH,
    RefIndex,
    RefInputError,
    RefPoint,
    _check_ref_id,
    _checked_points,
    ref_collection,
)
from agents.stores.refindex.edge import EdgeRefIndex
from agents.stores.refindex.qdrant import QdrantRefIndex, _local_client_index, _server_client
from agents.stores.refindex.tuning import EDGE_TUNING
from schemas.settings import Settings

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
Backend = Literal["edge", "qdrant-local"]

_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_TEMP_DIR = re.compile(r"^\.v\d{6,}\.tmp-(\d+)-[0-9a-f]+$")


def _check_version(version: int, what: str = "version") -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RefInputError(f"{what} must be a positive int, got {version!r}")


def version_dir(settings: Settings, version: int) -> Path:
    """Where version ``version`` of the embedded index lives (complete or not)."""
    return settings.ref_index_dir / f"v{version:06d}"


def server_location(url: str, space: EmbeddingSpace) -> str:
    """How a version on a Qdrant server is named in ``library_versions.index_location``."""
    host = url.split("://", 1)[-1].rstrip("/")
    return f"qdrant://{host}/{ref_collection(space)}"


#: What to do when a library version was embedded by another embedder.
_REEMBED = (
    "embed the reference library again with this embedder (not automated yet: "
    "`s2a faces reembed` moves faces only), or set S2A_MODELS__EMBEDDER back"
)


def _server_index(settings: Settings, version: int, space: EmbeddingSpace) -> QdrantRefIndex:
    return QdrantRefIndex(
        _server_client(settings),
        version=version,
        dim=space.dim,
        collection=ref_collection(space),
        server=True,
    )


def _check_embedder(
    folder: Path, manifest: dict[str, Any], version: int, space: EmbeddingSpace
) -> None:
    found = manifest.get("embedder")
    if found != space.name or manifest.get("dim") != space.dim:
        raise EmbedderMismatch(
            f"reference index version {version} ({folder})", found, space.name, _REEMBED
        )


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {folder / MANIFEST}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _open_folder(
    folder: Path, manifest: dict[str, Any], version: int, space: EmbeddingSpace
) -> EdgeRefIndex | QdrantRefIndex:
    _check_embedder(folder, manifest, version, space)
    # A folder is read by the engine that wrote it, whatever the settings say now.
    backend = manifest.get("backend")
    if backend == "edge":
        return EdgeRefIndex.load(folder / "edge", version=version, dim=space.dim)
    if backend == "qdrant-local":
        return _local_client_index(folder / "qdrant-local", version, space.dim)
    raise StorageError(f"{folder / MANIFEST} names an unknown backend {backend!r}")


def open_ref_index(settings: Settings, version: int, space: EmbeddingSpace) -> RefIndex:
    """A reader for library version ``version`` of ``space``'s vectors: the server
    collection of that embedder when ``settings.qdrant_url`` is set, else the version's
    folder.

    Raises :class:`RefVersionMissing` (naming the folder) when the version was never
    published here or has been pruned, and :class:`EmbedderMismatch` when another embedder
    (or an unrecorded one) built it.
    """
    _check_version(version)
    if settings.qdrant_url:
        return _server_index(settings, version, space)
    folder = version_dir(settings, version)
    manifest = _manifest(folder)
    if manifest is None:
        raise RefVersionMissing(version, folder, MANIFEST)
    return _open_folder(folder, manifest, version, space)


def latest_local_version(settings: Settings) -> int | None:
    """The newest complete version folder, or None when there is none."""
    versions = _local_versions(settings)
    return versions[-1] if versions else None


def _local_versions(settings: Settings) -> list[int]:
    root = settings.ref_index_dir
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _VERSION_DIR.match(entry.name)
        if match and _manifest(entry) is not None:
            found.append(int(match.group(1)))
    return sorted(found)


def prune_versions(settings: Settings, keep: int = 3) -> list[int]:
    """Delete all but the newest ``keep`` complete versions (and temporary folders left by
    publishers that died); returns the versions deleted, oldest first.

    A process that still has a deleted version open keeps reading it (its files stay
    open or mapped until it closes), but can no longer open it again.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise RefInputError(f"keep must be an int of at least 1, got {keep!r}")
    _remove_dead_temps(settings.ref_index_dir)
    doomed = _local_versions(settings)[:-keep]
    for version in doomed:
        discard_version(settings, version)
    if doomed:
        log.info("pruned reference index versions %s", doomed)
    return doomed


def discard_version(settings: Settings, version: int) -> bool:
    """Delete the embedded folder of ``version``, complete or not; False when there is none.

    The manifest goes first, so a half-deleted folder is never taken for a complete one.

    Raises:
        StorageError: the folder cannot be deleted.
    """
    folder = version_dir(settings, version)
    if not folder.exists():
        return False
    try:
        (folder / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(folder)
    except OSError as exc:
        raise StorageError(f"cannot delete reference index folder {folder}: {exc}") from exc
    return True


def publish_version(
    settings: Settings,
    version: int,
    base: int | None,
    upserts: Sequence[RefPoint],
    deletes: Sequence[str] = (),
    *,
    space: EmbeddingSpace,
) -> str:
    """Build library version ``version`` of ``space``'s vectors as ``base`` plus
    ``upserts`` minus ``deletes`` and return where it lives (a folder, or
    ``qdrant://host:port/anime_refs-<slug>`` on a server).

    Embedded: nothing happens when the version's folder already exists complete (a retry
    after a crash or a lost race); otherwise the version is built in a temporary folder
    and renamed into place. A point both upserted and deleted ends deleted. A ``base``
    built by another embedder is refused (:class:`EmbedderMismatch`).

    Example::

        location = publish_version(settings, 4, 3, [RefPoint(ref_id, vector, payload)],
                                   space=embedder.space)
    """
    _check_version(version)
    if base is not None:
        _check_version(base, "base")
        if base >= version:
            raise RefInputError(f"base ({base}) must be older than version ({version})")
    _checked_points(upserts, space.dim)
    if isinstance(deletes, str):
        raise RefInputError("deletes must be a sequence of ref ids, not one str")
    for ref_id in deletes:
        _check_ref_id(ref_id, "deletes item")

    if settings.qdrant_url:
        # One collection, updated in place: upserts and deletes are idempotent by id.
        index = _server_index(settings, version, space)
        try:
            index.upsert(upserts)
            index.delete(deletes)
        finally:
            index.close()
        return server_location(settings.qdrant_url, space)

    target = version_dir(settings, version)
    if _manifest(target) is not None:
        return str(target)
    return str(_publish_folder(settings, version, base, upserts, deletes, target, space))


def _publish_folder(
    settings: Settings,
    version: int,
    base: int | None,
    upserts: Sequence[RefPoint],
    deletes: Sequence[str],
    target: Path,
    space: EmbeddingSpace,
) -> Path:
    backend: Backend = settings.refs.index_backend
    root = settings.ref_index_dir
    base_folder = base_manifest = None
    if base is not None:
        base_folder = version_dir(settings, base)
        base_manifest = _manifest(base_folder)
        if base_manifest is None:
            raise RefVersionMissing(base, base_folder, MANIFEST)
        # Version N+1 holds version N's points: they must be of the same embedder.
        _check_embedder(base_folder, base_manifest, base, space)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(root)
    except OSError as exc:
        raise StorageError(f"cannot prepare the reference index folder {root}: {exc}") from exc
    temp = root / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        index = _start(temp, backend, base, base_folder, base_manifest, version, space)
        try:
            index.upsert(upserts)
            index.delete(deletes)
            index.finish()
            count = index.count()
        finally:
            index.close()
        if backend == "edge":
            # The first load of a closed shard rewrites its config file; doing it here
            # leaves the published files unchanged by every later reader, so a later
            # publish may copy them while the worker has them open.
            EdgeRefIndex.load(temp / backend, dim=space.dim).close()
        _write_manifest(temp, version, base, backend, count, space)
        try:
            temp.rename(target)
        except OSError:
            if _manifest(target) is None:
                raise
            # Another publisher finished this version first: its folder is the version.
            shutil.rmtree(temp, ignore_errors=True)
            return target
        _fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, PipelineError) or not isinstance(exc, Exception):
            raise
        raise StorageError(f"cannot publish reference index version {version}: {exc}") from exc
    log.info("published reference index version %d (%d points) at %s", version, count, target)
    return target


def _start(
    temp: Path,
    backend: Backend,
    base: int | None,
    base_folder: Path | None,
    base_manifest: dict[str, Any] | None,
    version: int,
    space: EmbeddingSpace,
) -> EdgeRefIndex | QdrantRefIndex:
    """The writable index of a new version: a copy of the base, or empty."""
    engine = temp / backend
    temp.mkdir()
    if base is None or base_folder is None or base_manifest is None:
        return _empty(engine, backend, version, space.dim)
    if base_manifest.get("backend") != backend:
        # The settings changed backend since the base was built: carry its points over.
        index = _empty(engine, backend, version, space.dim)
        old = _open_folder(base_folder, base_manifest, base, space)
        try:
            batch: list[RefPoint] = []
            for point in old.points():
                batch.append(point)
                if len(batch) == _UPSERT_BATCH:
                    index.upsert(batch)
                    batch = []
            index.upsert(batch)
        finally:
            old.close()
        return index
    # A published folder is never written again (readers included, see _publish_folder),
    # so copying it while the worker searches it yields a consistent shard.
    shutil.copytree(base_folder / backend, engine, copy_function=copy_sparse)
    copy: EdgeRefIndex | QdrantRefIndex = (
        EdgeRefIndex.load(engine, version=version, dim=space.dim, writable=True)
        if backend == "edge"
        else _local_client_index(engine, version, space.dim)
    )
    found, expected = copy.count(), base_manifest.get("count")
    if found != expected:
        copy.close()
        raise StorageError(
            f"the copy of {base_folder} holds {found} points where its manifest says {expected}"
        )
    return copy


def _empty(engine: Path, backend: Backend, version: int, dim: int) -> EdgeRefIndex | QdrantRefIndex:
    if backend == "edge":
        return EdgeRefIndex.create(engine, version=version, dim=dim)
    return _local_client_index(engine, version, dim)


def _write_manifest(
    temp: Path,
    version: int,
    base: int | None,
    backend: Backend,
    count: int,
    space: EmbeddingSpace,
) -> None:
    package = "qdrant-edge-py" if backend == "edge" else "qdrant-client"
    manifest = {
        "version": version,
        "base": base,
        "backend": backend,
        "engine": f"{package} {metadata.version(package)}",
        "count": count,
        "dim": space.dim,
        "embedder": space.name,
        "created_at": datetime.now(UTC).isoformat(),
        "tuning": asdict(EDGE_TUNING) if backend == "edge" else None,
    }
    path = temp / MANIFEST
    with path.open("w") as out:
        json.dump(manifest, out, indent=2, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())


#: Bytes moved per read while copying one data extent.
_COPY_CHUNK = 1 << 20


def copy_sparse(src: str, dst: str) -> str:
    """Copy the file ``src`` to ``dst`` keeping its holes; ``shutil.copytree``'s
    ``copy_function``. Returns ``dst``.

    The edge engine sizes its files by pages (a 32 MiB vector chunk, 4 MiB per payload
    index map) that it fills sparsely: a 20-reference shard takes 1 MiB of disk and 137 MiB
    of file length. ``shutil.copy2`` writes every byte, so each library version became
    137 MiB of disk. Written here because the standard library has no sparse copy (``cp
    --sparse`` is a separate program); it walks the data extents with ``SEEK_DATA`` /
    ``SEEK_HOLE`` (Linux 3.1+; a filesystem without them reports one extent, the whole
    file, which is a plain copy) and sets the length last so a trailing hole stays one.

    Raises:
        OSError: the file cannot be read or written.
    """
    with open(src, "rb") as source, open(dst, "wb") as target:
        fd = source.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from ``offset`` to the end
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            source.seek(start)
            target.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = source.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    break
                target.write(chunk)
                remaining -= len(chunk)
            offset = end
        target.truncate(size)
    shutil.copystat(src, dst)
    return dst


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_dead_temps(root: Path) -> None:
    """Temporary folders of publishers that died mid-way (a live one is left alone)."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        match = _TEMP_DIR.match(entry.name)
        if match and not _alive(int(match.group(1))):
            log.warning("removing %s, left by a publisher that stopped", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
