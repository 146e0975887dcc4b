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

Example::

    version = read_version(Path("/srv/s2a/models/converter/7"))
    verify(version, update.artifacts)       # ArtifactMismatch names the file that differs
    version.resolution                      # 256
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

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
