"""A dataset snapshot as torch data: selfie crop -> anime image pairs for image-to-image
training, drawn by the manifest's sampling weights.

    PairDataset(records, blobs, size)     ds[i] -> PairSample, as stored (validation)
                                          ds[Draw(i, key)] -> PairSample, the selfie augmented
    sampling_weights(records)             the manifest's ``weight`` column as a tensor
    weighted_sampler(records, n, seed)    torch's WeightedRandomSampler over those weights
    DrawSampler(weights, total, seed)     the same draws, numbered, resumable at any position
    replay_weights(new, old, fraction)    weights of new pairs mixed with replayed older ones

A sample holds float32 tensors of shape ``(3, size, size)`` in ``[-1, 1]`` (RGB, ``x / 127.5
- 1``):

    selfie      the selfie crop (the 256 px crop for ``size <= 256``, else the 512 px one),
                augmented when drawn with a :class:`Draw`
    condition   ``condition(selfie)`` when the dataset has a condition function (a family's
                input transform, e.g. pix2pix-lora's classical stylisation), else the selfie
    anime       the anime reference, never augmented: it is the style target, and a crop
                or colour shift would teach the model a style that is not the reference's
    weight      the record's sampling weight (float), index (int), key (int; -1 unaugmented)

Augmentation (selfie only) is a random crop of 85-100 % of the side, a horizontal flip and
a colour jitter (brightness, contrast, saturation ±15 %, hue ±4 degrees), the ranges of
pix2pix/CycleGAN-style training that keep a face a face. Its randomness comes from
``numpy.random.default_rng((seed, key))``, never from a global RNG: draw ``key`` gives the
same pixels in any process, in any order, after any resume.

Every blob is checked against the SHA-256 that names it (:class:`DatasetError` otherwise),
as the exports do.

Example::

    manifest = read_manifest(settings.dataset_dir, "ds-3f2a9c0d1e2b4a5f")
    train = PairDataset(manifest.split("train"), open_blobs(settings), 128)
    sampler = DrawSampler(sampling_weights(train.records), total=1000, seed=0)
    loader = DataLoader(train, batch_size=4, sampler=sampler)
    next(iter(loader))["selfie"].shape      # torch.Size([4, 3, 128, 128])
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, TypedDict

import cv2
import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from agents.stores.blobs import BlobStore
from schemas.manifest import ManifestRecord
from trainer.errors import DatasetError

RGB = npt.NDArray[np.uint8]
"""H x W x 3 uint8 RGB."""

ConditionFn = Callable[[RGB], RGB]
"""A family's input transform: RGB uint8 in, RGB uint8 of the same shape out."""

#: Augmentation ranges (selfie side only).
CROP_SCALE = (0.85, 1.0)
JITTER = 0.15
HUE_DEGREES = 4.0


class Draw(NamedTuple):
    """One draw of a record for training: which record, and the key of its augmentation."""

    record: int
    key: int


class PairSample(TypedDict):
    """One pair as tensors; see the module docstring for shapes and ranges."""

    selfie: torch.Tensor
    condition: torch.Tensor
    anime: torch.Tensor
    weight: float
    index: int
    key: int


def to_tensor(rgb: RGB) -> torch.Tensor:
    """H x W x 3 uint8 -> (3, H, W) float32 in [-1, 1]."""
    # In numpy: torch's in-place ops on a small CPU tensor wake its thread pool, which cost
    # ~5 ms each on a busy 2-core machine, more than decoding the image.
    array = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    array *= np.float32(1 / 127.5)
    array -= np.float32(1.0)
    return torch.from_numpy(array)


def to_rgb(tensor: torch.Tensor) -> RGB:
    """(3, H, W) float in [-1, 1] -> H x W x 3 uint8 (values outside are clipped)."""
    array = tensor.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round()
    return np.ascontiguousarray(array.permute(1, 2, 0).numpy().astype(np.uint8))


def decode_rgb(data: bytes, what: str) -> RGB:
    """PNG/JPEG bytes -> RGB uint8 (alpha dropped over white, as references are shown)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in ("RGBA", "LA", "P"):
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{what} does not decode as an image: {exc}") from exc


def square_resize(rgb: RGB, size: int) -> RGB:
    """Centre square crop, then area (downscale) or cubic (upscale) resize to ``size``."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(square, (size, size), interpolation=interpolation))


def augment_selfie(rgb: RGB, size: int, rng: np.random.Generator) -> RGB:
    """Random crop (85-100 % of the side), flip and colour jitter, resized to ``size``."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    crop = max(8, round(side * rng.uniform(*CROP_SCALE)))
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    out = square_resize(rgb[top : top + crop, left : left + crop], size)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    brightness, contrast, saturation = rng.uniform(1 - JITTER, 1 + JITTER, size=3)
    hue = rng.uniform(-HUE_DEGREES, HUE_DEGREES)
    pixels = out.astype(np.float32) * brightness
    mean = pixels.mean()
    pixels = (pixels - mean) * contrast + mean
    grey = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    pixels = (pixels - grey[..., None]) * saturation + grey[..., None]
    hsv = cv2.cvtColor(np.clip(pixels, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
    # OpenCV's 8-bit hue runs 0..179 (2 degrees a step).
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(hue / 2)) % 180).astype(np.uint8)
    return np.ascontiguousarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


class PairDataset(Dataset[PairSample]):
    """Selfie -> anime pairs of manifest records, at ``size`` x ``size`` px.

    ``records`` is one split of a manifest (``manifest.split("train")``), possibly joined
    with replayed records of older snapshots whose blobs live in the same store.
    ``condition`` is applied to the (augmented) selfie at ``size``. ``seed`` keys the
    augmentation together with each :class:`Draw`'s key.
    """

    def __init__(
        self,
        records: Sequence[ManifestRecord],
        blobs: BlobStore,
        size: int,
        *,
        condition: ConditionFn | None = None,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if size < 8:
            raise DatasetError(f"size must be at least 8 px, got {size}")
        self.records = list(records)
        self.blobs = blobs
        self.size = size
        self.condition = condition
        self.augment = augment
        self.seed = seed
        # The smallest stored crop that is at least ``size``: no upscaling below 512 px.
        self.crop_size = 256 if size <= 256 else 512

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | Draw) -> PairSample:
        index, key = (item.record, item.key) if isinstance(item, Draw) else (int(item), -1)
        record = self.records[index]
        selfie = decode_rgb(
            self._read(record.selfie.of_size(self.crop_size), record, "selfie"),
            f"pair {record.pair_id} selfie",
        )
        anime = decode_rgb(
            self._read(record.anime.training, record, "anime"), f"pair {record.pair_id} anime"
        )
        if self.augment and key >= 0:
            selfie = augment_selfie(selfie, self.size, np.random.default_rng((self.seed, key)))
        else:
            selfie = square_resize(selfie, self.size)
        condition = self.condition(selfie) if self.condition is not None else selfie
        return PairSample(
            selfie=to_tensor(selfie),
            condition=to_tensor(condition),
            anime=to_tensor(square_resize(anime, self.size)),
            weight=float(record.weight),
            index=index,
            key=key,
        )

    def _read(self, digest: str, record: ManifestRecord, side: str) -> bytes:
        what = f"pair {record.pair_id} {side}"
        try:
            data = self.blobs.read(digest)
        except FileNotFoundError:
            raise DatasetError(
                f"{what}: blob {digest} is missing from {self.blobs.where}; "
                "restore the blob store or snapshot again without the pair"
            ) from None
        except OSError as exc:
            raise DatasetError(f"{what}: cannot read blob {digest}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise DatasetError(f"{what}: blob {digest} is corrupt; restore it from a backup")
        return data


def sampling_weights(records: Sequence[ManifestRecord]) -> torch.Tensor:
    """The records' manifest weights, float64 of shape ``(len(records),)``.

    Raises :class:`DatasetError` when there is no record or a weight is not positive and
    finite (the snapshot's weights average 1 over a split; a zero would silently drop a
    pair)."""
    if not records:
        raise DatasetError("no record to sample from: the split is empty")
    weights = torch.tensor([r.weight for r in records], dtype=torch.float64)
    bad = [r.pair_id for r in records if not (r.weight > 0 and np.isfinite(r.weight))]
    if bad:
        raise DatasetError(f"sampling weights must be positive and finite; not so for {bad[:5]}")
    return weights


def weighted_sampler(
    records: Sequence[ManifestRecord], num_samples: int, seed: int
) -> WeightedRandomSampler:
    """Torch's sampler drawing ``num_samples`` record indices, with replacement, with
    probability proportional to each record's manifest weight; seeded."""
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        sampling_weights(records).tolist(), num_samples, replacement=True, generator=generator
    )


def replay_weights(
    new: Sequence[ManifestRecord], replay: Sequence[ManifestRecord], fraction: float
) -> torch.Tensor:
    """Weights over ``[*new, *replay]`` giving the replayed records ``fraction`` of the mass.

    Within each part the manifest weights keep their proportions. ``fraction`` 0.25 means
    one draw in four, on average, rehearses an older pair: a rehearsal share in the range
    continual-learning work uses against forgetting (e.g. Rolnick et al. 2019, "Experience
    Replay for Continual Learning").
    """
    if not 0 <= fraction < 1:
        raise DatasetError(f"replay fraction must be in [0, 1), got {fraction}")
    weights = sampling_weights(new)
    weights = weights / weights.sum() * (1 - fraction)
    if not replay or fraction == 0:
        return torch.cat([weights, torch.zeros(len(replay), dtype=torch.float64)])
    old = sampling_weights(replay)
    return torch.cat([weights, old / old.sum() * fraction])


class DrawSampler(Sampler[Draw]):
    """Numbered weighted draws: draw ``k`` of a run is ``Draw(index, key)``.

    The ``total`` indices come from one :class:`WeightedRandomSampler` seeded with
    ``(seed, stream)``; iteration starts at draw ``start``, so a resumed run continues with
    exactly the draws an uninterrupted one would have made. ``stream`` separates processes
    of a multi-GPU run (each draws its own batches); keys are unique across streams.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        total: int,
        seed: int,
        *,
        start: int = 0,
        stop: int | None = None,
        stream: int = 0,
        streams: int = 1,
    ) -> None:
        if total < 1:
            raise DatasetError(f"total draws must be at least 1, got {total}")
        self.weights = weights
        self.total = total
        self.seed = seed
        self.start = start
        self.stop = total if stop is None else stop
        self.stream = stream
        self.streams = streams
        self._indices: list[int] | None = None

    def indices(self) -> list[int]:
        """All ``total`` record indices of this stream, in draw order."""
        if self._indices is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream)
            sampler = WeightedRandomSampler(
                self.weights.tolist(), self.total, replacement=True, generator=generator
            )
            self._indices = list(sampler)
        return self._indices

    def __iter__(self) -> Iterator[Draw]:
        indices = self.indices()
        for k in range(self.start, self.stop):
            yield Draw(indices[k], k * self.streams + self.stream)

    def __len__(self) -> int:
        return self.stop - self.start
