"""A small dataset snapshot made of real test images, written as ``s2a dataset snapshot``
writes one (content-named canonical manifest, blobs in a BlobStore), without a database.

Selfie crops come from the London set portraits in ``tests/data/real`` (a fixed box around
the face, near what the aligner's loose template frames, at 256 and 512 px); anime
references from the face crops in ``tests/data/anime``. Used by the trainer tests and by
``bench/training.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agents.stages.imageio import encode_png
from agents.stores.blobs import BlobStore
from schemas.manifest import (
    AnimeImages,
    DatasetManifest,
    Lineage,
    ManifestParams,
    ManifestRecord,
    ManifestSummary,
    SelfieCrops,
    SplitCounts,
)
from trainer.dataset.snapshot import MANIFEST_NAME, canonical_json, snapshot_id_of

DATA = Path(__file__).resolve().parents[2] / "data"
#: Box (left, top, right, bottom) around the face in the 512 px London portraits.
LONDON_BOX = (134, 90, 378, 334)


@dataclass(frozen=True)
class FixtureSnapshot:
    home: Path
    snapshot_id: str
    manifest_path: Path
    blob_dir: Path


def london_photos() -> list[Path]:
    return sorted((DATA / "real").glob("london_*.jpg"))


def anime_faces() -> list[Path]:
    return sorted((DATA / "anime").glob("*_face.*"))


def _crop(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        face = image.convert("RGB").crop(LONDON_BOX).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(face)


def _anime(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS))


def make_snapshot(
    home: Path,
    n_train: int = 6,
    n_validation: int = 2,
    weights: Sequence[float] | None = None,
    offset: int = 0,
) -> FixtureSnapshot:
    """Write a snapshot of ``n_train + n_validation`` pairs under ``home`` (S2A_HOME).

    ``weights`` are the train records' sampling weights (default all 1); ``offset`` picks
    other photos and pair ids, for a second, "older" snapshot.
    """
    blobs = BlobStore(home / "blobs")
    photos, refs = london_photos(), anime_faces()
    records: list[ManifestRecord] = []
    for i in range(n_train + n_validation):
        k = i + offset
        photo, ref = photos[k % len(photos)], refs[k % len(refs)]
        split = "train" if i < n_train else "validation"
        weight = 1.0 if weights is None or split == "validation" else float(weights[i])
        crop_256 = blobs.put(encode_png(_crop(photo, 256)))
        crop_512 = blobs.put(encode_png(_crop(photo, 512)))
        anime = blobs.put(encode_png(_anime(ref)))
        records.append(
            ManifestRecord(
                pair_id=f"pair-{k:04d}",
                face_id=f"face-{k:04d}",
                upload_id=f"upload-{k:04d}",
                subject=f"subject-{k:04d}",
                style="ghibli",
                split=split,
                weight=weight,
                caption="anime portrait, ghibli style",
                selfie=SelfieCrops(crop_256=crop_256, crop_512=crop_512),
                anime=AnimeImages(training=anime, original=anime),
                labels={},
                ref_labels={},
                quality={},
                lineage=Lineage(
                    ref_id=f"ref-{k % len(refs):04d}",
                    library_version=1,
                    ref_library_version=1,
                    decided_by="auto",
                    score=0.9,
                    ref_license="CC-BY-4.0",
                    ref_author="test",
                    ref_source=ref.name,
                    ref_tags=[],
                    face_source="public-dataset",
                    face_license="CC-BY-4.0",
                    face_attribution="Face Research Lab London Set",
                ),
            )
        )
    manifest = DatasetManifest(
        library_version=1,
        params=ManifestParams(
            seed=0,
            validation_fraction=0.2,
            max_per_subject=20,
            target_coverage={},
            min_model_confidence=0.85,
            style=None,
        ),
        summary=ManifestSummary(
            records=len(records),
            subjects=len(records),
            splits={
                "train": SplitCounts(records=n_train, subjects=n_train),
                "validation": SplitCounts(records=n_validation, subjects=n_validation),
            },
            styles={"ghibli": len(records)},
            dropped_by_cap=0,
            split_fallback=[],
            queue={},
            decided_by={"auto": len(records)},
            duplicate_uploads=0,
            quarantined_refs=0,
        ),
        records=records,
    )
    data = canonical_json(manifest)
    snapshot_id = snapshot_id_of(data)
    folder = home / "datasets" / snapshot_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_bytes(data)
    return FixtureSnapshot(home, snapshot_id, folder / MANIFEST_NAME, blobs.root)
