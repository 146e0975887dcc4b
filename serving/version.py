"""A model version directory as serving reads it, and the check of its files' hashes.

A version directory (``S2A_HOME/models/<name>/<version>/``, written by the registry and
``trainer.export.export_version``) holds at least::

    export.json             written last by the export; no file = an incomplete export
    model.onnx              FP32 graph: selfie, base -> anime, float32 NCHW (N, 3, R, R),
                            RGB in [-1, 1] (x / 127.5 - 1); only the batch axis is dynamic
    generator.safetensors   the merged weights (the PyTorch engine), + generator.json
    model.int8.onnx         optional; model.plan optional (TensorRT, GPU machines)
    config.json             optional; its ``style`` names the style the version serves

``export.json``'s ``files`` maps each artifact to its SHA-256; :func:`verify` checks them,
and any others a ``model-updates`` record (or a Reload call) announces, before a single
byte of a model is loaded. Serving never imports ``trainer.export``: this module reads the
file contract alone.

With S3 storage (``S2A_STORAGE__BACKEND=s3``) the registry keeps each version under
``<name>/<version>/`` of the artifact store (:mod:`agents.objects`), and
:func:`fetch_version` copies it into this machine's cache (``home/cache/models``) and
checks every hash before the swapper reads it; :func:`latest_stored_version` is
:func:`latest_version` for the store.

Example::

    version = read_version(Path("/srv/s2a/models/converter/7"))
    verify(version, update.artifacts)       # ArtifactMismatch names the file that differs
    version.resolution                      # 256
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agents.errors import PipelineError
from agents.objects import ObjectStore
from schemas.digests import sha256_file
from serving.errors import ArtifactMismatch, ModelLoadError

EXPORT_JSON = "export.json"
CONFIG_JSON = "config.json"
MODEL_ONNX = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
MODEL_PLAN = "model.plan"
GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_CONFIG = "generator.json"
#: export.json layouts this server reads.
FORMAT_VERSIONS = (1,)


@dataclass(frozen=True)
class ModelVersion:
    """What a version directory says about itself (``export.json``, ``config.json``).

    ``resolution``: side in px of the square crop the graph takes; ``files``: artifact
    name -> SHA-256 hex from export.json; ``styles``: the styles it serves (empty: one
    unnamed style).
    """

    name: str
    version: int
    path: Path
    family: str
    resolution: int
    files: dict[str, str]
    styles: tuple[str, ...] = ()
    generator: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def read_version(path: Path, name: str | None = None, version: int | None = None) -> ModelVersion:
    """Read ``path``'s export.json (and config.json); ``name`` and ``version`` default to the
    directory's parent name and its own (``models/<name>/<version>``).

    Raises :class:`ModelLoadError` naming the file for a missing directory, a missing or
    unreadable export.json, an unknown ``format_version`` or a version that is not a number.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(
            f"model version directory {path} does not exist (or is not a directory); give "
            "a version directory such as S2A_HOME/models/converter/3"
        )
    export = _read_json(path / EXPORT_JSON, required=True)
    fmt = export.get("format_version")
    if fmt not in FORMAT_VERSIONS:
        raise ModelLoadError(
            f"{path / EXPORT_JSON} has format_version {fmt!r}; this server reads "
            f"{FORMAT_VERSIONS}: upgrade the server or re-export the version"
        )
    if version is None:
        try:
            version = int(path.name)
        except ValueError:
            raise ModelLoadError(
                f"cannot tell the version number of {path}: its name is not a number; "
                "pass the version explicitly (Reload's version field)"
            ) from None
    config = _read_json(path / CONFIG_JSON, required=False)
    style = config.get("style")
    styles: tuple[str, ...] = (style,) if isinstance(style, str) and style else ()
    try:
        resolution = int(export["resolution"])
        files = {str(k): str(v) for k, v in dict(export.get("files") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path / EXPORT_JSON} lacks a usable {exc}") from None
    return ModelVersion(
        name=name or path.parent.name,
        version=int(version),
        path=path,
        family=str(export.get("family", "")),
        resolution=resolution,
        files=files,
        styles=styles,
        generator=dict(export.get("generator") or {}),
    )


def verify(version: ModelVersion, expected: Mapping[str, str] | None = None) -> None:
    """Check every file export.json lists, then every file of ``expected`` (relative path
    -> SHA-256 hex, as a ``ModelUpdate.artifacts``), against its hash on disk.

    Raises :class:`ArtifactMismatch` naming the first file whose bytes differ, and
    :class:`ModelLoadError` for a file that is missing or a path outside the directory.
    """
    wanted = dict(version.files)
    for name, digest in (expected or {}).items():
        if name in wanted and wanted[name] != digest:
            raise ArtifactMismatch(
                f"{version.path}: the update says {name} has SHA-256 {digest[:12]}..., "
                f"export.json says {wanted[name][:12]}...; the announcement and the "
                "directory disagree: re-export or re-announce the version"
            )
        wanted[name] = digest
    for name, digest in sorted(wanted.items()):
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelLoadError(f"artifact path {name!r} leaves {version.path}; refused")
        target = version.path / relative
        if not target.is_file():
            raise ModelLoadError(f"{target} is missing (listed with its hash); re-export it")
        actual = sha256_file(target)
        if actual != digest.lower():
            raise ArtifactMismatch(
                f"{target} has SHA-256 {actual[:12]}..., expected {digest[:12]}...: the file "
                "changed or is corrupt after export; the current model keeps serving"
            )


def latest_version(models_dir: Path, name: str) -> Path | None:
    """The highest-numbered complete version directory (one with export.json) of ``name``
    under ``models_dir``, or None."""
    folder = models_dir / name
    if not folder.is_dir():
        return None
    numbered = [
        (int(child.name), child)
        for child in folder.iterdir()
        if child.name.isdigit() and (child / EXPORT_JSON).is_file()
    ]
    return max(numbered)[1] if numbered else None


def latest_stored_version(objects: ObjectStore, name: str) -> int | None:
    """The highest version number of ``name`` with an export.json in the artifact store
    (uploaded last, so its files are all there), or None."""
    try:
        keys = objects.list_keys(f"{name}/")
    except PipelineError as exc:
        raise ModelLoadError(
            f"cannot list the versions of {name} in {objects.where}: {exc}"
        ) from exc
    numbers = [
        int(parts[1])
        for parts in (key.split("/") for key in keys)
        if len(parts) == 3 and parts[1].isdigit() and parts[2] == EXPORT_JSON
    ]
    return max(numbers, default=None)


def fetch_version(
    objects: ObjectStore,
    name: str,
    version: int,
    cache: Path,
    expected: Mapping[str, str] | None = None,
) -> Path:
    """Version ``version`` of ``name`` from the artifact store, as the local directory
    ``cache/<name>/<version>/`` (for :func:`read_version`).

    Every file under ``<name>/<version>/`` is downloaded into a hidden folder beside it,
    and the hashes export.json lists, with those of ``expected`` (a ``ModelUpdate``'s
    ``artifacts``), are checked there before it takes the directory's place: a copy that
    does not match never becomes loadable. A directory fetched before is reused when its
    files are the stored ones and still hash right.

    Raises :class:`ArtifactMismatch` naming the stored file whose bytes differ, and
    :class:`ModelLoadError` when the store cannot be read, holds no such version, or lacks
    a file listed with its hash.
    """
    prefix = f"{name}/{version}/"
    try:
        stored = [key[len(prefix) :] for key in objects.list_keys(prefix)]
    except PipelineError as exc:
        raise ModelLoadError(f"cannot list {name} v{version} in {objects.where}: {exc}") from exc
    if not stored:
        raise ModelLoadError(
            f"{name} v{version} is not in {objects.where}{prefix}: it was never registered "
            "with this store, or was deleted; check S2A_STORAGE__* on the trainer and here"
        )
    target = cache / name / str(version)
    if target.is_dir():
        with contextlib.suppress(ModelLoadError):
            if sorted(_files(target)) == sorted(stored):
                _check(target, name, version, expected, f"{target}/")
                return target
    staging = target.with_name(f".{version}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        for relative in stored:
            objects.get_file(prefix + relative, staging / relative)
        _check(staging, name, version, expected, f"{objects.where}{prefix}")
        if target.is_dir():
            shutil.rmtree(target)
        staging.rename(target)
    except PipelineError as exc:
        raise ModelLoadError(
            f"cannot fetch {name} v{version} from {objects.where}{prefix}: {exc}"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot copy {name} v{version} into {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _files(folder: Path) -> list[str]:
    return [
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def _check(
    folder: Path, name: str, version: int, expected: Mapping[str, str] | None, where: str
) -> None:
    """:func:`verify` on a fetched copy, its messages naming the file as ``where`` has it."""
    try:
        verify(read_version(folder, name, version), expected)
    except ModelLoadError as exc:
        raise type(exc)(str(exc).replace(f"{folder}/", where).replace(str(folder), where)) from None


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if not required:
            return {}
        raise ModelLoadError(
            f"{path} is missing: the export did not finish (export.json is written last); "
            "export the version again"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data
