"""Model families the trainer can train, by name: each is a linear training script
(``parse_args(argv, defaults) -> args``, ``main(args) -> result``) and its model builder.

    pix2pix-lora   the embedded default: a compact residual U-Net generator with peft LoRA
                   adapters, trained with a PatchGAN on a CPU in minutes
                   (:mod:`trainer.families.pix2pix_lora`)

    sd-lora        LoRA on the UNet attention of a local diffusers InstructPix2Pix
                   pipeline (``--base FOLDER``), frozen VAE and text encoder; a GPU
                   family (:mod:`trainer.families.sd_lora`)

A family's modules are imported only when it is asked for (``torch``, ``peft`` and
``accelerate`` take seconds to import), so listing families costs nothing. A new family
adds one :class:`Family` entry whose modules follow the same contract; the scheduler and
``s2a train`` then run it unchanged.

Example::

    family = get_family("pix2pix-lora")
    result = family.main(family.parse_args(["base", "--manifest", m, "--out", run]))
    generator = family.build_model()
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.settings import Settings, TrainSettings
from trainer.errors import TrainingConfigError

ParseArgs = Callable[[Sequence[str] | None, TrainSettings | None], argparse.Namespace]
Main = Callable[[argparse.Namespace], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Family:
    """A family by the modules that hold its script and its model."""

    name: str
    train_module: str
    model_module: str
    description: str

    @property
    def parse_args(self) -> ParseArgs:
        parse: ParseArgs = importlib.import_module(self.train_module).parse_args
        return parse

    @property
    def main(self) -> Main:
        run: Main = importlib.import_module(self.train_module).main
        return run

    @property
    def build_model(self) -> Callable[..., Any]:
        build: Callable[..., Any] = importlib.import_module(self.model_module).build_model
        return build


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "pix2pix-lora",
            "trainer.families.pix2pix_lora.train",
            "trainer.families.pix2pix_lora.model",
            "residual U-Net over a classical stylisation, PatchGAN, peft LoRA; trains on a CPU",
        ),
        Family(
            "sd-lora",
            "trainer.families.sd_lora.train",
            "trainer.families.sd_lora.model",
            "peft LoRA on a local InstructPix2Pix pipeline's UNet attention; wants a GPU",
        ),
    )
}


def get_family(name: str) -> Family:
    """The family called ``name``; :class:`TrainingConfigError` lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise TrainingConfigError(f"unknown model family {name!r}; families are: {known}") from None


def script_argv(
    settings: Settings,
    mode: str,
    snapshot_id: str,
    run_dir: Path,
    options: Mapping[str, object | None] = {},
) -> list[str]:
    """The flags of a family's training script for a run on snapshot ``snapshot_id`` of
    this home (its manifest and blob store), in ``run_dir``: ``options`` maps a flag to its
    value, left out when None; torch's thread count comes from ``S2A_MODELS__TORCH_THREADS``.
    What ``s2a train`` and the retrain cycle both pass to ``main(parse_args(argv))``."""
    from trainer.dataset.snapshot import manifest_path

    manifest = manifest_path(settings.dataset_dir, snapshot_id)
    replay = (options or {}).get("--replay-manifest")
    argv = [
        mode,
        "--manifest",
        str(manifest),
        "--blob-dir",
        str(_blob_dir(settings, [manifest] + ([Path(str(replay))] if replay else []))),
        "--out",
        str(run_dir),
    ]
    for flag, value in (options or {}).items():
        if value is not None:
            argv += [flag, str(value)]
    if settings.models.torch_threads:
        argv += ["--threads", str(settings.models.torch_threads)]
    return argv


def _blob_dir(settings: Settings, manifests: Sequence[Path]) -> Path:
    """A run's ``--blob-dir``: ``home/blobs`` with local storage; with S3 storage, the
    local copy (``home/cache/blobs``) of the blobs the pairs of ``manifests`` train on,
    downloaded now: training scripts read files."""
    from agents.stores.blobs import open_blobs
    from trainer.dataset.snapshot import read_manifest

    blobs = open_blobs(settings)
    if blobs.local:
        return blobs.root
    digests: set[str] = set()
    for path in manifests:
        for record in read_manifest(path.parent.parent, path.parent.name).records:
            digests |= {record.selfie.crop_256, record.selfie.crop_512, record.anime.training}
    return blobs.stage(digests)
