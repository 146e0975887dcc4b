"""Exports of a snapshot in the layouts training tools read as they are.

An export reads only the manifest and the blob store, checking every blob's SHA-256
against the manifest, and writes one of:

``imagefolder`` (Hugging Face ``datasets`` imagefolder, e.g. diffusers'
``train_text_to_image_lora.py --train_data_dir``)::

    train/metadata.jsonl        {"file_name": "anime/<pair>.png", "selfie_file_name":
    train/anime/<pair>.png       "selfie/<pair>.png", "text": <caption>, "pair_id", "subject",
    train/selfie/<pair>.png      "style", "weight", "labels": <JSON text {name: value}>}
    validation/...

  The imagefolder builder turns ``file_name`` into the ``image`` column (the anime target)
  and every ``<x>_file_name`` into an image column ``<x>`` (``selfie``). ``labels`` is JSON
  text rather than an object because the builder refuses splits whose inferred columns
  differ, and two splits rarely hold the same label names.

``instructpix2pix`` (the columns diffusers' ``train_instruct_pix2pix.py`` reads by
default), imagefolder-style so that ``load_dataset("imagefolder", data_dir=...)`` and the
script's ``--train_data_dir`` load it::

    train/metadata.jsonl        {"input_image_file_name": "selfie/<pair>.png",
                                 "edited_image_file_name": "anime/<pair>.png",
                                 "edit_prompt": "turn this photo into an <caption>", ...}

``webdataset``: ``train/shard-000000.tar``, ... (at most ``shard_size`` samples each;
same for ``validation/``), each sample ``<pair>.selfie.png``, ``<pair>.anime.png``,
``<pair>.txt`` (caption) and ``<pair>.json`` (labels, split, weight, lineage).

Every export also holds ``LICENSES.md`` (each reference's license, author and source;
each public-dataset face's license and attribution: licenses travel with the data) and
``export.json`` (the snapshot it came from and what is where). A split without records
gets no folder. The same snapshot always gives the same files, byte for byte: rows and
tar members in manifest order, tar headers with a fixed mtime, owner and mode.

Example::

    manifest = read_manifest(settings.dataset_dir, "ds-3f2a9c0d1e2b4a5f")
    export_snapshot(manifest, open_blobs(settings), Path("out/ds"), "imagefolder")
    datasets.load_dataset("imagefolder", data_dir="out/ds")["train"][0]["selfie"]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agents.stores.blobs import BlobStore
from schemas.manifest import ManifestRecord
from trainer.dataset.policy import SPLITS
from trainer.dataset.snapshot import Manifest, canonical_json
from trainer.errors import DatasetError


class ExportFormat(StrEnum):
    IMAGEFOLDER = "imagefolder"
    INSTRUCTPIX2PIX = "instructpix2pix"
    WEBDATASET = "webdataset"


#: Selfie crop sizes a snapshot holds (``Face.crop_256`` and ``Face.crop_512``).
SIZES = (256, 512)

DEFAULT_SHARD_SIZE = 1000

#: Fixed tar header fields: the archive's bytes then depend only on its members' content.
_TAR_MTIME = 0
_TAR_MODE = 0o644

#: A pair id becomes a file name and a webdataset key: no dots, no path separators.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Where an export went and what it holds."""

    snapshot_id: str
    format: ExportFormat
    out: Path
    size: int
    rows: Mapping[str, int]
    files: Mapping[str, Sequence[str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "format": self.format.value,
            "out": str(self.out),
            "size": self.size,
            "rows": dict(self.rows),
            "files": {split: list(names) for split, names in self.files.items()},
        }


def edit_prompt(record: ManifestRecord) -> str:
    """The InstructPix2Pix instruction for a record: its caption as an edit."""
    return f"turn this photo into an {record.caption}"


def export_snapshot(
    manifest: Manifest,
    blobs: BlobStore,
    out: Path,
    fmt: ExportFormat | str,
    *,
    size: int = 512,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> ExportResult:
    """Write ``manifest``'s pairs to the new directory ``out`` in format ``fmt``.

    ``out`` must not exist or be an empty directory; the export is built beside it and
    renamed into place, so a failure (a missing or corrupt blob, a full disk) leaves no
    half export. Raises :class:`DatasetError` naming the blob or the path.
    """
    try:
        fmt = ExportFormat(fmt)
    except ValueError:
        allowed = ", ".join(f.value for f in ExportFormat)
        raise DatasetError(f"unknown export format {fmt!r}; formats are: {allowed}") from None
    if size not in SIZES:
        raise DatasetError(f"size must be one of {SIZES} (the stored selfie crops), got {size}")
    if shard_size < 1:
        raise DatasetError(f"shard_size must be at least 1, got {shard_size}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty; give --out a new path")
    for record in manifest.records:
        if not _SAFE_KEY.match(record.pair_id):
            raise DatasetError(
                f"pair id {record.pair_id!r} in {manifest.snapshot_id} cannot name a file"
            )

    out = out.absolute()
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    writer: Callable[[Path, str, list[ManifestRecord], _Blobs, int, int], list[str]] = {
        ExportFormat.IMAGEFOLDER: _imagefolder,
        ExportFormat.INSTRUCTPIX2PIX: _instructpix2pix,
        ExportFormat.WEBDATASET: _webdataset,
    }[fmt]
    source = _Blobs(blobs)
    rows: dict[str, int] = {}
    files: dict[str, list[str]] = {}
    try:
        staging.mkdir(parents=True)
        for split in SPLITS:
            records = manifest.split(split)
            if not records:
                continue
            rows[split] = len(records)
            files[split] = writer(staging / split, split, records, source, size, shard_size)
        (staging / "LICENSES.md").write_text(licenses_markdown(manifest), encoding="utf-8")
        summary = {
            "snapshot_id": manifest.snapshot_id,
            "manifest_sha256": manifest.sha256,
            "format": fmt.value,
            "size": size,
            "rows": rows,
            "files": files,
        }
        (staging / "export.json").write_bytes(canonical_json(summary))
        if out.exists():
            out.rmdir()  # the empty directory the caller made for us
        staging.rename(out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(f"cannot write the export to {out}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(manifest.snapshot_id, fmt, out, size, rows, files)


class _Blobs:
    """Blob reads that check each blob's bytes against the digest that names it."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def read(self, digest: str, what: str) -> bytes:
        try:
            data = self.store.read(digest)
        except FileNotFoundError:
            raise DatasetError(
                f"{what}: blob {digest} is missing from {self.store.where}; "
                "restore the blob store or snapshot again without the pair"
            ) from None
        except OSError as exc:
            raise DatasetError(f"{what}: cannot read blob {digest}: {exc}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DatasetError(
                f"{what}: blob {digest} is corrupt (its bytes hash to {actual}); "
                "restore it from a backup"
            )
        return data

    def selfie(self, record: ManifestRecord, size: int) -> bytes:
        return self.read(record.selfie.of_size(size), f"pair {record.pair_id} selfie")

    def anime(self, record: ManifestRecord) -> bytes:
        return self.read(record.anime.training, f"pair {record.pair_id} anime")


def _write_pair_images(
    folder: Path, records: Sequence[ManifestRecord], blobs: _Blobs, size: int
) -> None:
    (folder / "selfie").mkdir(parents=True)
    (folder / "anime").mkdir()
    for record in records:
        key = record.pair_id
        (folder / "selfie" / f"{key}.png").write_bytes(blobs.selfie(record, size))
        (folder / "anime" / f"{key}.png").write_bytes(blobs.anime(record))


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(canonical_json(row))


def _label_text(record: ManifestRecord) -> str:
    values = {name: label.value for name, label in record.labels.items()}
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def _imagefolder(
    folder: Path,
    split: str,
    records: list[ManifestRecord],
    blobs: _Blobs,
    size: int,
    shard_size: int,
) -> list[str]:
    _write_pair_images(folder, records, blobs, size)
    _write_jsonl(
        folder / "metadata.jsonl",
        [
            {
                "file_name": f"anime/{r.pair_id}.png",
                "selfie_file_name": f"selfie/{r.pair_id}.png",
                "text": r.caption,
                "pair_id": r.pair_id,
                "subject": r.subject,
                "style": r.style,
                "weight": r.weight,
                "labels": _label_text(r),
            }
            for r in records
        ],
    )
    return [f"{split}/metadata.jsonl"]


def _instructpix2pix(
    folder: Path,
    split: str,
    records: list[ManifestRecord],
    blobs: _Blobs,
    size: int,
    shard_size: int,
) -> list[str]:
    _write_pair_images(folder, records, blobs, size)
    _write_jsonl(
        folder / "metadata.jsonl",
        [
            {
                "input_image_file_name": f"selfie/{r.pair_id}.png",
                "edited_image_file_name": f"anime/{r.pair_id}.png",
                "edit_prompt": edit_prompt(r),
                "pair_id": r.pair_id,
                "style": r.style,
                "weight": r.weight,
            }
            for r in records
        ],
    )
    return [f"{split}/metadata.jsonl"]


def _webdataset(
    folder: Path,
    split: str,
    records: list[ManifestRecord],
    blobs: _Blobs,
    size: int,
    shard_size: int,
) -> list[str]:
    folder.mkdir(parents=True)
    names: list[str] = []
    for start in range(0, len(records), shard_size):
        name = f"shard-{start // shard_size:06d}.tar"
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for record in records[start : start + shard_size]:
                key = record.pair_id
                sidecar = {
                    "pair_id": key,
                    "subject": record.subject,
                    "style": record.style,
                    "split": record.split,
                    "weight": record.weight,
                    "caption": record.caption,
                    "labels": record.labels,  # models: canonical_json writes their JSON dump
                    "lineage": record.lineage,
                }
                _add_member(tar, f"{key}.selfie.png", blobs.selfie(record, size))
                _add_member(tar, f"{key}.anime.png", blobs.anime(record))
                _add_member(tar, f"{key}.txt", record.caption.encode())
                _add_member(tar, f"{key}.json", canonical_json(sidecar))
        names.append(f"{split}/{name}")
    return names


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = _TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _cell(text: object) -> str:
    """A Markdown table cell: pipes escaped and line breaks flattened."""
    return " ".join(str(text if text is not None else "").split()).replace("|", "\\|")


def licenses_markdown(manifest: Manifest) -> str:
    """``LICENSES.md``: the license of every anime reference and public-dataset face."""
    refs: dict[str, tuple[str, ...]] = {}
    faces: dict[str, tuple[str, ...]] = {}
    for record in manifest.records:
        lineage = record.lineage
        refs[lineage.ref_id] = (
            record.style,
            lineage.ref_license,
            lineage.ref_author,
            lineage.ref_source,
        )
        if lineage.face_source == "public-dataset":
            faces[record.face_id] = (
                lineage.face_license or "",
                lineage.face_attribution or "",
            )
    lines = [
        f"# Licenses of dataset snapshot {manifest.snapshot_id}",
        "",
        "Every anime image in this export is a reference image under the license below.",
        "Keep this file with the data and credit the authors as their licenses require.",
        "",
        "## Anime references",
        "",
        "| reference | style | license | author | source |",
        "|---|---|---|---|---|",
    ]
    lines += [
        "| " + " | ".join(_cell(v) for v in (ref_id, *values)) + " |"
        for ref_id, values in sorted(refs.items())
    ]
    lines += ["", "## Public-dataset faces", ""]
    if faces:
        lines += ["| face | license | attribution |", "|---|---|---|"]
        lines += [
            "| " + " | ".join(_cell(v) for v in (face_id, *values)) + " |"
            for face_id, values in sorted(faces.items())
        ]
    else:
        lines.append("None: every selfie in this export comes from a consented upload.")
    lines += [
        "",
        "## Selfies",
        "",
        "Selfie crops come from uploads whose subjects consented to training use; they may",
        "be used only to train and evaluate this project's models, and must be deleted when",
        "a later snapshot no longer holds them (erasure requests).",
        "",
    ]
    return "\n".join(lines)
