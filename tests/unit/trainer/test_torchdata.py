"""The snapshot as torch data: shapes and ranges, selfie-only seeded augmentation, weighted
draws that follow the manifest and resume at any position."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from snapshot_fixture import FixtureSnapshot
from torch.utils.data import DataLoader

from agents.stores.blobs import BlobStore
from trainer.dataset.snapshot import Manifest, read_manifest
from trainer.errors import DatasetError
from trainer.families.pix2pix_lora.model import stylise
from trainer.torchdata import (
    Draw,
    DrawSampler,
    PairDataset,
    replay_weights,
    sampling_weights,
    weighted_sampler,
)


@pytest.fixture(scope="module")
def manifest(snapshot: FixtureSnapshot) -> Manifest:
    return read_manifest(snapshot.home / "datasets", snapshot.snapshot_id)


def _dataset(manifest: Manifest, snapshot: FixtureSnapshot, size: int = 48) -> PairDataset:
    return PairDataset(
        manifest.split("train"), BlobStore(snapshot.blob_dir), size, condition=stylise, seed=7
    )


def test_samples_are_rgb_tensors_in_range(manifest: Manifest, snapshot: FixtureSnapshot) -> None:
    dataset = _dataset(manifest, snapshot, size=48)
    assert len(dataset) == 6
    for item in (0, Draw(5, 123)):
        sample = dataset[item]
        for key in ("selfie", "condition", "anime"):
            tensor = sample[key]
            assert tensor.shape == (3, 48, 48)
            assert tensor.dtype == torch.float32
            assert tensor.min() >= -1.0
            assert tensor.max() <= 1.0
            assert tensor.std() > 0.05  # a real image, not a constant
        # The condition is the family's stylisation of the selfie, not the selfie.
        assert not torch.equal(sample["condition"], sample["selfie"])
    assert dataset[Draw(5, 123)]["weight"] == 4.0
    # 512 px training reads the 512 px crop.
    big = PairDataset(manifest.split("train"), BlobStore(snapshot.blob_dir), 320)
    assert big.crop_size == 512
    assert big[0]["selfie"].shape == (3, 320, 320)


def test_augmentation_is_selfie_only_and_keyed_by_seed_and_draw(
    manifest: Manifest, snapshot: FixtureSnapshot
) -> None:
    dataset = _dataset(manifest, snapshot)
    plain, first, again, other = (
        dataset[2],
        dataset[Draw(2, 10)],
        dataset[Draw(2, 10)],
        dataset[Draw(2, 11)],
    )
    for key in ("selfie", "condition"):
        assert torch.equal(first[key], again[key])  # same seed and key: same pixels
        assert not torch.equal(first[key], other[key])
        assert not torch.equal(first[key], plain[key])
    for sample in (first, other):
        assert torch.equal(sample["anime"], plain["anime"])  # the reference is never touched
    reseeded = PairDataset(dataset.records, dataset.blobs, 48, condition=stylise, seed=8)
    assert not torch.equal(reseeded[Draw(2, 10)]["selfie"], first["selfie"])
    unaugmented = PairDataset(dataset.records, dataset.blobs, 48, augment=False)
    assert torch.equal(unaugmented[Draw(2, 10)]["selfie"], plain["selfie"])


def test_sampler_follows_the_manifest_weights(manifest: Manifest) -> None:
    records = manifest.split("train")
    weights = sampling_weights(records)
    assert weights.tolist() == [1, 1, 1, 1, 2, 4]
    sampler = weighted_sampler(records, 20_000, seed=0)
    counts = np.bincount(list(sampler), minlength=6) / 20_000
    expected = np.array([1, 1, 1, 1, 2, 4]) / 10
    # 20k draws: the standard error of a share p is sqrt(p(1-p)/n) <= 0.0035.
    assert np.abs(counts - expected).max() < 0.015
    draws = list(DrawSampler(weights, 20_000, seed=0))
    assert (
        np.abs(np.bincount([d.record for d in draws], minlength=6) / 20_000 - expected).max()
        < 0.015
    )


def test_draws_resume_where_they_stopped(manifest: Manifest) -> None:
    weights = sampling_weights(manifest.split("train"))
    whole = list(DrawSampler(weights, 40, seed=3))
    assert [d.key for d in whole] == list(range(40))
    assert list(DrawSampler(weights, 40, seed=3, start=12)) == whole[12:]
    assert list(DrawSampler(weights, 40, seed=3, start=12, stop=20)) == whole[12:20]
    assert list(DrawSampler(weights, 40, seed=4)) != whole
    # Two processes draw different indices under keys that never collide.
    a = list(DrawSampler(weights, 40, seed=3, stream=0, streams=2))
    b = list(DrawSampler(weights, 40, seed=3, stream=1, streams=2))
    assert not {d.key for d in a} & {d.key for d in b}
    assert [d.record for d in a] != [d.record for d in b]


def test_loader_batches(manifest: Manifest, snapshot: FixtureSnapshot) -> None:
    dataset = _dataset(manifest, snapshot, size=32)
    sampler = DrawSampler(sampling_weights(dataset.records), 6, seed=0)
    batches = list(DataLoader(dataset, batch_size=4, sampler=sampler))
    assert [b["selfie"].shape for b in batches] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    assert batches[0]["key"].tolist() == [0, 1, 2, 3]


def test_replay_weights_give_the_replayed_pairs_their_share(manifest: Manifest) -> None:
    new, old = manifest.split("train")[:4], manifest.split("train")[4:]
    weights = replay_weights(new, old, 0.25)
    assert weights[:4].sum().item() == pytest.approx(0.75)
    assert weights[4:].sum().item() == pytest.approx(0.25)
    assert weights[4:].tolist() == pytest.approx([0.25 / 3, 0.5 / 3])  # old weights 2 and 4
    assert replay_weights(new, [], 0.25).sum().item() == pytest.approx(0.75)
    with pytest.raises(DatasetError, match="replay fraction"):
        replay_weights(new, old, 1.0)


def test_a_corrupt_blob_is_named(
    manifest: Manifest, snapshot: FixtureSnapshot, tmp_path: Path
) -> None:
    store = BlobStore(tmp_path / "blobs")
    shutil.copytree(snapshot.blob_dir, store.root)
    record = manifest.split("train")[0]
    store.path(record.anime.training).write_bytes(b"not the image")
    dataset = PairDataset([record], store, 32)
    with pytest.raises(DatasetError, match=f"pair {record.pair_id} anime: blob .* is corrupt"):
        dataset[0]
    store.path(record.anime.training).unlink()
    with pytest.raises(DatasetError, match="is missing from"):
        dataset[0]
