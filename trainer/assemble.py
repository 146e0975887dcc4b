"""What a finished training run becomes: the files of its model version.

:func:`assemble_version` copies a pix2pix-lora run's weights (and adapter) into
``models/<name>/<N>/`` and writes the merged generator; :func:`export` runs the export
step there; :func:`run_files` names the run's loss curve and sample grid for the registry.
Called by :func:`trainer.cycle.run_cycle` between training and the gate.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from agents.stores.blobs import BlobStore
from trainer.dataset.snapshot import Manifest
from trainer.errors import TrainingConfigError
from trainer.runs import LOSS_PLOT, SAMPLES

log = logging.getLogger(__name__)

#: The peft adapter's folder in a run and in a version directory.
ADAPTER = "adapter"


def assemble_version(run_dir: Path, version_dir: Path, base_dir: Path, mode: str) -> dict[str, Any]:
    """Copy a finished pix2pix-lora run's model files into its version directory and
    write the merged generator; returns the version's config entries.

    base run: ``generator.safetensors`` + ``generator.json`` (+ the discriminator, which
    later lora runs on this base start from). lora run: ``adapter/`` as peft saved it, and
    ``generator.safetensors`` + ``generator.json``: the base of ``base_dir`` with the
    adapter merged in (``merge_and_unload``; outputs within ~3e-6 of base + adapter).
    """
    from safetensors.torch import save_file

    from trainer.families.pix2pix_lora.model import (
        DISCRIMINATOR_WEIGHTS,
        GENERATOR_CONFIG,
        GENERATOR_WEIGHTS,
        GeneratorConfig,
    )

    version_dir.mkdir(parents=True, exist_ok=True)
    if mode == "base":
        for name in (GENERATOR_WEIGHTS, GENERATOR_CONFIG, DISCRIMINATOR_WEIGHTS):
            shutil.copy2(run_dir / name, version_dir / name)
        return {"mode": mode, "base_dir": str(version_dir), "resolution": _resolution(run_dir)}
    adapter = run_dir / ADAPTER
    if not adapter.is_dir():
        raise TrainingConfigError(f"{run_dir} has no {ADAPTER}/: not a finished lora run")
    shutil.copytree(adapter, version_dir / ADAPTER, dirs_exist_ok=True)
    merged = merge_adapter(base_dir, version_dir / ADAPTER)
    state = {k: v.detach().cpu().contiguous() for k, v in merged.state_dict().items()}
    save_file(state, version_dir / GENERATOR_WEIGHTS)
    config = GeneratorConfig.load(base_dir)
    config.save(version_dir)
    return {"mode": mode, "base_dir": str(base_dir), "resolution": _resolution(run_dir)}


def merge_adapter(base_dir: Path, adapter_dir: Path) -> Any:
    """The base generator of ``base_dir`` with the peft adapter of ``adapter_dir`` merged
    into its weights (a plain ``Generator`` again)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from trainer.families.pix2pix_lora.model import (
        GENERATOR_WEIGHTS,
        GeneratorConfig,
        build_model,
    )

    base = build_model(GeneratorConfig.load(base_dir))
    base.load_state_dict(load_file(base_dir / GENERATOR_WEIGHTS))
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def export(
    base_dir: Path,
    adapter_dir: Path | None,
    version_dir: Path,
    manifest: Manifest,
    blobs: BlobStore,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The export step: ``trainer.export.export_version`` (ONNX FP32 and INT8, TensorRT
    where present, ``export.json``) into the version directory, calibrated on the
    snapshot's selfie crops, at the version's resolution. Recorded as not available when
    that module cannot be imported; its failure fails the version (serving could not
    load it)."""
    try:
        from trainer.export import ExportOptions, export_version, snapshot_calibration
    except ImportError as exc:
        log.warning("export: not available (%s)", exc)
        return {"status": "not available", "detail": str(exc)}
    resolution = int(config["resolution"])
    crops = snapshot_calibration(manifest, blobs)
    report = export_version(
        base_dir, adapter_dir, version_dir, crops, ExportOptions(resolution=resolution)
    )
    log.info(
        "export: %s in %.1f s (parity max abs diff %.3g)",
        ", ".join(sorted(report.files)),
        report.seconds,
        report.parity.max_abs_diff,
    )
    return {
        "status": "done",
        "files": sorted(report.files),
        "parity_max_abs_diff": report.parity.max_abs_diff,
        "seconds": report.seconds,
    }


def run_files(run_dir: Path) -> dict[str, str | None]:
    """The run's loss curve and final sample grid (None when missing)."""
    curve, grid = run_dir / LOSS_PLOT, run_dir / SAMPLES / "final.png"
    return {
        "loss_curve": str(curve) if curve.is_file() else None,
        "sample_grid": str(grid) if grid.is_file() else None,
    }


def _resolution(run_dir: Path) -> int:
    """The resolution the run ended at (its run.json's args)."""
    args = json.loads((run_dir / "run.json").read_text()).get("args", {})
    return int(args["resolution"])
