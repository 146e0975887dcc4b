"""Calibration and check inputs: aligned selfie crops from a snapshot, turned into the
generator's ``(selfie, base)`` pair.

Crops are RGB uint8 ``H x W x 3`` arrays (the snapshot's 256 px aligned selfie crops, as
training reads them: blob checked against its SHA-256, decoded, centre-square resized).
:func:`generator_inputs` resizes each to the export resolution and computes its classical
stylisation, exactly as training and serving do (``pix2pix_lora.model.prepare``).

Example::

    manifest = read_manifest(settings.dataset_dir, "ds-3f2a9c0d1e2b4a5f")
    crops = snapshot_calibration(manifest, open_blobs(settings), count=16)
    selfie, base = generator_inputs(crops, resolution=256)   # (16, 3, 256, 256) float32 each
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agents.stores.blobs import BlobStore
from trainer.dataset.snapshot import Manifest
from trainer.errors import ExportInputError
from trainer.families.pix2pix_lora.model import prepare
from trainer.torchdata import PairDataset, to_rgb

RGB = npt.NDArray[np.uint8]
Array = npt.NDArray[np.float32]

#: Calibration images by default: ORT's MinMax calibration settles within a dozen or two
#: face crops of one style (more only adds seconds).
DEFAULT_COUNT = 16


def snapshot_calibration(
    manifest: Manifest,
    blobs: BlobStore,
    count: int = DEFAULT_COUNT,
    split: str = "train",
    size: int = 256,
) -> list[RGB]:
    """Up to ``count`` aligned selfie crops (``size`` x ``size`` RGB uint8) of one split
    of a snapshot, spread evenly over it (not augmented). Falls back to the other split
    when this one is empty; raises :class:`DatasetError` on a missing or corrupt blob."""
    records = manifest.split(split) or manifest.records
    if count < 1 or not records:
        return []
    step = max(1, len(records) // count)
    chosen = records[::step][:count]
    dataset = PairDataset(chosen, blobs, size, augment=False)
    return [to_rgb(dataset[i]["selfie"]) for i in range(len(dataset))]


def check_crops(crops: Sequence[np.ndarray], what: str = "calibration") -> None:
    for i, crop in enumerate(crops):
        if not (
            isinstance(crop, np.ndarray)
            and crop.dtype == np.uint8
            and crop.ndim == 3
            and crop.shape[2] == 3
            and min(crop.shape[:2]) >= 8
        ):
            shape = getattr(crop, "shape", None)
            dtype = getattr(crop, "dtype", type(crop).__name__)
            raise ExportInputError(
                f"{what}[{i}] must be an H x W x 3 uint8 RGB crop (at least 8 px), got "
                f"{shape} {dtype}; read crops with snapshot_calibration()"
            )


def generator_inputs(crops: Sequence[np.ndarray], resolution: int) -> tuple[Array, Array]:
    """RGB crops -> ``(selfie, base)``, each float32 ``(len(crops), 3, R, R)`` in [-1, 1]."""
    check_crops(crops)
    if not crops:
        empty = np.zeros((0, 3, resolution, resolution), dtype=np.float32)
        return empty, empty.copy()
    pairs = [prepare(np.ascontiguousarray(crop), resolution) for crop in crops]
    selfie = np.concatenate([s.numpy() for s, _ in pairs]).astype(np.float32)
    base = np.concatenate([b.numpy() for _, b in pairs]).astype(np.float32)
    return selfie, base


def random_inputs(count: int, resolution: int, seed: int = 0) -> tuple[Array, Array]:
    """Seeded uniform inputs in [-1, 1] for parity checks when no crop is at hand."""
    rng = np.random.default_rng(seed)
    shape = (count, 3, resolution, resolution)
    selfie = rng.uniform(-1, 1, shape).astype(np.float32)
    base = rng.uniform(-1, 1, shape).astype(np.float32)
    return selfie, base
