"""Load a pix2pix-lora generator for export: a base run's weights, plus optionally a LoRA
adapter folded into them with peft's ``merge_and_unload``, and save the merged weights.

A base run directory holds ``generator.safetensors`` + ``generator.json`` (what
``train.py base`` writes); an adapter is a lora run directory or its ``adapter/`` folder
(``adapter_config.json`` + ``adapter_model.safetensors``, written by peft's
``save_pretrained``, with the ``generator.json`` of the shape it fits). The merged
generator is saved in the base run's own layout, so a version directory is also a valid
``--base`` for the next retrain.

Example::

    loaded = load_generator(Path("runs/base"), Path("runs/lora-7"))
    loaded.generator            # Generator in eval mode, adapters merged (plain Conv2d)
    save_generator(loaded.generator, Path("models/pix2pix/7"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from schemas.digests import sha256_file
from trainer.errors import ExportInputError
from trainer.families.pix2pix_lora.model import (
    GENERATOR_CONFIG,
    GENERATOR_WEIGHTS,
    Generator,
    GeneratorConfig,
    build_model,
)
from trainer.families.pix2pix_lora.train import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS


@dataclass(frozen=True)
class LoadedGenerator:
    """A generator ready for export and where it came from.

    ``generator`` is in eval mode on the CPU with any adapter merged into its weights;
    ``unmerged`` is a copy of the peft model before merging (the adapter as separate
    low-rank branches; ``None`` without an adapter), kept to measure what merging changed.
    ``sources`` maps ``base`` / ``adapter`` to ``{"path", "sha256"}`` (adapter ``None``
    when there is none); ``adapter_settings`` holds its LoRA rank, alpha and targets.
    """

    generator: Generator
    config: GeneratorConfig
    sources: dict[str, dict[str, str] | None]
    adapter_settings: dict[str, Any] | None
    unmerged: torch.nn.Module | None


def adapter_folder(adapter_dir: Path) -> Path:
    """The folder holding the adapter files: ``adapter_dir`` itself or its ``adapter/``."""
    folder = adapter_dir / ADAPTER_DIR if (adapter_dir / ADAPTER_DIR).is_dir() else adapter_dir
    missing = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise ExportInputError(
            f"adapter_dir {adapter_dir}: no {' and '.join(missing)} there; give a finished "
            f"lora run directory or its {ADAPTER_DIR}/ folder, or None to export the base alone"
        )
    return folder


def load_base(base_dir: Path) -> tuple[Generator, GeneratorConfig]:
    """The base generator of a base run directory (or of an earlier export), eval mode."""
    from safetensors.torch import load_file

    for name in (GENERATOR_WEIGHTS, GENERATOR_CONFIG):
        if not (base_dir / name).is_file():
            raise ExportInputError(
                f"base_dir {base_dir}: no {name} there; give the directory of a finished "
                "`s2a train base` run or of an exported version"
            )
    config = GeneratorConfig.load(base_dir)
    generator = build_model(config)
    try:
        generator.load_state_dict(load_file(base_dir / GENERATOR_WEIGHTS))
    except RuntimeError as exc:
        raise ExportInputError(
            f"base_dir {base_dir}: {GENERATOR_WEIGHTS} does not fit {config}: {exc}"
        ) from exc
    return generator.eval(), config


def load_generator(base_dir: Path, adapter_dir: Path | None) -> LoadedGenerator:
    """Base weights + adapter (peft ``PeftModel.from_pretrained``), then merged with
    ``merge_and_unload``. Raises :class:`ExportInputError` for missing files or an adapter
    made for another generator shape."""
    generator, config = load_base(base_dir)
    sources: dict[str, dict[str, str] | None] = {
        "base": {"path": str(base_dir), "sha256": sha256_file(base_dir / GENERATOR_WEIGHTS)},
        "adapter": None,
    }
    if adapter_dir is None:
        return LoadedGenerator(generator, config, sources, None, None)

    import copy

    from peft import LoraConfig, PeftModel

    folder = adapter_folder(adapter_dir)
    if (folder / GENERATOR_CONFIG).is_file():
        # train.py writes the generator shape beside the adapter: check it before peft
        # fails on mismatched tensors with a less readable message.
        fits = GeneratorConfig.load(folder)
        if fits != config:
            raise ExportInputError(
                f"adapter_dir {adapter_dir} was trained on a {fits} generator, but base_dir "
                f"{base_dir} holds a {config} one; pair the adapter with its own base"
            )
    try:
        peft_model = PeftModel.from_pretrained(generator, str(folder))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ExportInputError(
            f"adapter_dir {adapter_dir} does not load onto base_dir {base_dir}: {exc}"
        ) from exc
    peft_model.eval()
    lora = peft_model.peft_config["default"]
    settings = (
        {
            "r": lora.r,
            "lora_alpha": lora.lora_alpha,
            "target_modules": sorted(lora.target_modules or []),
        }
        if isinstance(lora, LoraConfig)
        else None
    )
    unmerged = copy.deepcopy(peft_model)
    merged = peft_model.merge_and_unload()
    if not isinstance(merged, Generator):
        raise ExportInputError(
            f"adapter_dir {adapter_dir}: merging gave a {type(merged).__name__}, not a Generator"
        )
    sources["adapter"] = {"path": str(folder), "sha256": sha256_file(folder / ADAPTER_WEIGHTS)}
    return LoadedGenerator(merged.eval(), config, sources, settings, unmerged)


def save_generator(generator: Generator, out_dir: Path) -> list[str]:
    """Write ``generator.safetensors`` + ``generator.json`` (the base run layout) into
    ``out_dir``; returns the file names written."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    save_file(state, out_dir / GENERATOR_WEIGHTS, metadata={"family": "pix2pix-lora"})
    generator.config.save(out_dir)
    return [GENERATOR_WEIGHTS, GENERATOR_CONFIG]
