"""Tiny model versions for the serving tests, exported by the real export code.

A ~10k-parameter pix2pix-lora generator (width 4, 2 levels, 1 residual block) is saved as
a base run and exported by :func:`trainer.export.export_version` into
``home/models/converter/<n>/`` at 32 px, FP32 only (no INT8, no TensorRT): the same files
and export.json a retrain writes, in about a second. Versions differ by their head's bias,
so their outputs differ too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from trainer.export import ExportOptions, export_version
from trainer.export.merge import save_generator
from trainer.families.pix2pix_lora.model import GeneratorConfig, build_model

RESOLUTION = 32
TINY = GeneratorConfig(width=4, levels=2, res_blocks=1)
OPTIONS = ExportOptions(resolution=RESOLUTION, int8=False, tensorrt=False, threads=1)


def export_tiny(
    models_dir: Path, version: int, *, shift: float = 0.0, name: str = "converter"
) -> Path:
    """Export version ``version`` of ``name`` under ``models_dir``; its output is the
    stylised base pushed by ``shift`` (in atanh space) on every channel."""
    torch.manual_seed(version)
    generator = build_model(TINY)
    with torch.no_grad():
        assert generator.head.bias is not None
        generator.head.bias.fill_(shift)
    base_dir = models_dir.parent / f"base-{name}-{version}"
    base_dir.mkdir(parents=True, exist_ok=True)
    save_generator(generator, base_dir)
    out = models_dir / name / str(version)
    export_version(base_dir, None, out, None, OPTIONS)
    (out / "config.json").write_text(json.dumps({"style": "cel"}) + "\n")
    return out


def copy_version(source: Path, version: int) -> Path:
    """A copy of ``source`` as another version number beside it (same files and hashes)."""
    target = source.parent / str(version)
    shutil.copytree(source, target)
    return target


def corrupt(version_dir: Path) -> None:
    """Flip bytes in the middle of model.onnx (its hash in export.json no longer matches)."""
    path = version_dir / "model.onnx"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
