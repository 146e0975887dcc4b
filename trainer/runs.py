"""Run directories of the training families: layout, checkpoints, loss curves, sample grids.

One run, one directory (``settings.train_dir/<name>`` or ``--out``)::

    run.json                 what was trained from what: family, mode, snapshot, base and
                             parent hashes, LoRA settings, flags; ``status`` running |
                             stopped | complete
    losses.jsonl             one JSON object per step (step, every loss term, lr)
    losses.png               the loss curves
    samples/step-NNNNNN.png  validation grids at each checkpoint, samples/final.png at the end
    checkpoints/step-NNNNNN/ accelerate state (models, optimizers, LR schedulers, RNG
                             states) + trainer_state.json (step, data position, seconds in
                             training steps so far); the newest ``keep`` are kept, each
                             written beside and renamed into place
    result.json              the summary a finished run returns (also ``s2a train --json``)

plus the family's outputs (pix2pix-lora: ``generator.safetensors`` + ``generator.json`` of a
base run, ``adapter/`` of a lora run, ``discriminator.safetensors``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from schemas.manifest import ManifestRecord
from trainer.dataset.snapshot import Manifest, read_manifest
from trainer.errors import CheckpointError, DatasetError

RUN_JSON = "run.json"
RESULT_JSON = "result.json"
LOSSES = "losses.jsonl"
LOSS_PLOT = "losses.png"
SAMPLES = "samples"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^step-(\d{6,})$")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except ValueError as exc:
        raise CheckpointError(f"{path} is not JSON: {exc}") from exc


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's complete checkpoints as ``(step, path)``, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before :func:`commit_checkpoint` names it."""
    path = run_dir / CHECKPOINTS / f".{checkpoint_name(step)}.tmp"
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def commit_checkpoint(run_dir: Path, staging: Path, step: int, keep: int) -> Path:
    """Rename a written checkpoint into place and drop all but the newest ``keep``."""
    final = run_dir / CHECKPOINTS / checkpoint_name(step)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for _, old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def append_losses(run_dir: Path, row: dict[str, float]) -> None:
    with (run_dir / LOSSES).open("a") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


def read_losses(run_dir: Path, upto_step: int | None = None) -> list[dict[str, float]]:
    path = run_dir / LOSSES
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if upto_step is None or r["step"] <= upto_step]


def truncate_losses(run_dir: Path, step: int) -> None:
    """Keep the loss rows up to ``step``: a resumed run redoes the steps after it."""
    rows = read_losses(run_dir, step)
    tmp = run_dir / f".{LOSSES}.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(run_dir / LOSSES)


def plot_losses(rows: Sequence[dict[str, float]], path: Path, terms: Sequence[str]) -> None:
    """One panel per loss term over steps (raw and a 20-step moving average), PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: runs go to files, and on servers
    import matplotlib.pyplot as plt

    present = [t for t in terms if any(t in r for r in rows)]
    columns = 3
    lines = max(1, -(-len(present) // columns))
    figure, axes = plt.subplots(lines, columns, figsize=(4 * columns, 2.6 * lines), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    for ax, term in zip(axes.flat, present, strict=False):
        steps = np.array([r["step"] for r in rows if term in r])
        values = np.array([r[term] for r in rows if term in r])
        ax.plot(steps, values, color="0.75", linewidth=0.8)
        if len(values) >= 5:
            window = min(20, len(values))
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color="C0", linewidth=1.5)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def sample_grid(
    rows: Sequence[Sequence[npt.NDArray[np.uint8]]], columns: Sequence[str], path: Path
) -> None:
    """Images side by side, one row per sample, column titles on top; PNG.

    Every image is H x W x 3 uint8 of one size (the training resolution)."""
    if not rows:
        return
    height, width = rows[0][0].shape[:2]
    title = 14
    grid = Image.new("RGB", (width * len(columns), title + height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((c * width + 3, 1), name, fill="black")
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            grid.paste(Image.fromarray(image), (c * width, title + r * height))
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    tmp.replace(path)


# -- what every family's training script does the same way ---------------------------------


def open_run_dir(
    run_dir: Path, resume: bool, fingerprint: dict[str, Any], run_info: dict[str, Any]
) -> None:
    """Create the run directory with its ``run.json`` (status ``running``), or, with
    ``resume``, check that the run there was started with the same ``fingerprint``.

    Raises :class:`CheckpointError` naming what differs, or when a new run would overwrite
    one (``--out`` already holds files) or a resume finds no run.
    """
    run_json = run_dir / RUN_JSON
    if resume:
        if not run_json.is_file():
            raise CheckpointError(f"--resume: {run_dir} holds no run to resume (no {RUN_JSON})")
        before = read_json(run_json).get("fingerprint", {})
        changed = sorted(
            k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k)
        )
        if changed:
            detail = ", ".join(f"{k}: {before.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
            raise CheckpointError(
                f"--resume: {run_dir} was started with other settings ({detail}); resume with "
                "the same flags, or start a new run with another --out"
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CheckpointError(
            f"{run_dir} already holds files; pass --resume to continue its run, or another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_json, run_info | {"status": "running", "step": 0})


def save_checkpoint(
    accelerator: Any,
    run_dir: Path,
    step: int,
    keep: int,
    draws_per_process: int,
    trained_seconds: float | None = None,
) -> None:
    """``accelerator.save_state`` into a staging folder renamed into place as
    ``checkpoints/step-NNNNNN`` (the newest ``keep`` are kept), with the trainer state:
    the step, how many samples each process has drawn (the data position resume skips
    to) and, when given, ``trained_seconds``: the wall seconds spent in training steps
    from step 0 to this one (start-up, checkpoints and sample grids excluded; see
    :func:`checkpoint_seconds`). Every process takes part; only the main one writes the
    trainer state."""
    staging = staging_dir(run_dir, step) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    target = staging or (run_dir / CHECKPOINTS / f".step-{step:06d}.tmp")
    accelerator.save_state(str(target), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state: dict[str, Any] = {"step": step, "draws_per_process": draws_per_process}
        if trained_seconds is not None:
            state["trained_seconds"] = round(trained_seconds, 3)
        write_json(target / TRAINER_STATE, state)
        commit_checkpoint(run_dir, target, step, keep)
    accelerator.wait_for_everyone()


def checkpoint_seconds(run_dir: Path, step: int) -> float:
    """The ``trained_seconds`` checkpoint ``step`` of ``run_dir`` records: 0.0 at step 0
    and for a checkpoint written without them. A resumed run adds its own steps' seconds
    to these, so a checkpoint counts from step 0 whatever the interruptions.

    Raises :class:`CheckpointError` when the checkpoint (or its trainer state) is missing.
    """
    if step == 0:
        return 0.0
    state = read_json(run_dir / CHECKPOINTS / checkpoint_name(step) / TRAINER_STATE)
    return float(state.get("trained_seconds", 0.0))


def read_manifest_at(path: Path, flag: str) -> Manifest:
    """A snapshot's manifest from its path (``.../<ds-id>/manifest.json`` or the folder),
    verified against its name by :func:`trainer.dataset.read_manifest`; a
    :class:`DatasetError` names ``flag``."""
    folder = path if path.is_dir() else path.parent
    try:
        return read_manifest(folder.parent, folder.name)
    except DatasetError as exc:
        raise DatasetError(f"{flag} {path}: {exc}") from exc


def replay_sample(
    older: Manifest, current: Sequence[ManifestRecord], limit: int, seed: int
) -> list[ManifestRecord]:
    """Up to ``limit`` train pairs of an older snapshot that the new one does not hold,
    chosen at random (seeded), kept in manifest order."""
    return draw_replay(replay_pool(older, current), limit, seed)


def replay_pool(older: Manifest, current: Sequence[ManifestRecord]) -> list[ManifestRecord]:
    """The train pairs of an older snapshot that ``current`` does not hold (by pair id),
    in manifest order: what :func:`replay_sample` draws from."""
    held = {r.pair_id for r in current}
    return [r for r in older.split("train") if r.pair_id not in held]


def draw_replay(pool: Sequence[ManifestRecord], limit: int, seed: int) -> list[ManifestRecord]:
    """Up to ``limit`` of ``pool`` chosen at random (seeded), in pool order; all of it
    when it holds no more than ``limit`` (so drawing again from a drawn pool changes
    nothing: the retrain cycle draws first and hands the script only what it drew)."""
    if len(pool) <= limit:
        return list(pool)
    chosen = np.random.default_rng(seed).choice(len(pool), size=limit, replace=False)
    return [pool[i] for i in sorted(chosen)]


def start_run(
    accelerator: Any,
    run_dir: Path,
    resume: bool,
    fingerprint: dict[str, Any],
    run_info: dict[str, Any],
    steps: int,
) -> tuple[int, dict[str, Any] | None]:
    """Open the run directory (:func:`open_run_dir`, on the main process) and, with
    ``resume``, load the newest checkpoint into ``accelerator``.

    Returns ``(step, None)``: the step to continue from (0 for a new run), or
    ``(step, result)`` when the run had already completed (its ``result.json``: nothing
    to do). Raises :class:`CheckpointError` when a checkpoint does not hold the step its
    name says.
    """
    step = 0
    if accelerator.is_main_process:
        open_run_dir(run_dir, resume, fingerprint, run_info)
    accelerator.wait_for_everyone()
    if not resume:
        return step, None
    done = read_json(run_dir / RUN_JSON).get("status") == "complete"
    if done and (run_dir / RESULT_JSON).is_file():
        log.info("%s is already complete: nothing to resume", run_dir)
        result: dict[str, Any] = read_json(run_dir / RESULT_JSON)
        return step, result
    found = checkpoints(run_dir)
    if found:
        step, path = found[-1]
        accelerator.load_state(str(path))
        state = read_json(path / TRAINER_STATE)
        if state["step"] != step:
            raise CheckpointError(f"{path} holds step {state['step']}, not {step}")
        log.info("resumed %s at step %d of %d", run_dir, step, steps)
    if accelerator.is_main_process:
        truncate_losses(run_dir, step)
    return step, None


def progress_bar(
    accelerator: Any, show: bool | None, steps: int, step: int, description: str
) -> Any:
    """A tqdm bar over the run's steps, on the local main process only; ``show`` None: only
    when stderr is a terminal (logs and CI stay clean)."""
    from tqdm.auto import tqdm

    visible = show if show is not None else sys.stderr.isatty()
    return tqdm(
        total=steps,
        initial=step,
        disable=not (visible and accelerator.is_local_main_process),
        desc=description,
        unit="step",
        dynamic_ncols=True,
    )


def run_result(
    run_dir: Path,
    *,
    family: str,
    mode: str,
    snapshot: str,
    steps: int,
    samples_per_s: float,
    parameters: Any,
    lora: Any,
    lineage: Any,
    history: Sequence[dict[str, float]],
    loss_terms: Sequence[str],
    files: Sequence[str],
) -> dict[str, Any]:
    """The summary a finished run returns and keeps in ``result.json``: what was trained
    (family, mode, snapshot, steps, parameters, LoRA settings, lineage), how fast
    (samples/s), its last logged loss terms and the files it wrote."""
    last = {k: v for k, v in history[-1].items() if k in loss_terms} if history else {}
    return {
        "run_dir": str(run_dir),
        "status": "complete",
        "family": family,
        "mode": mode,
        "snapshot": snapshot,
        "steps": steps,
        "samples_per_s": round(samples_per_s, 3),
        "parameters": parameters,
        "lora": lora,
        "lineage": lineage,
        "losses": last,
        "files": list(files),
    }


def finish_run(
    accelerator: Any,
    run_dir: Path,
    run_info: dict[str, Any],
    step: int,
    result: dict[str, Any] | None,
) -> dict[str, Any]:
    """Mark the run complete: the main process writes ``result`` (its
    :func:`run_result`; None on the other processes) and sets ``run.json``'s status; every
    process then returns the written result."""
    if accelerator.is_main_process:
        if result is None:
            raise ValueError("the main process must pass the run's result")
        write_json(run_dir / RESULT_JSON, result)
        write_json(run_dir / RUN_JSON, run_info | {"status": "complete", "step": step})
    accelerator.wait_for_everyone()
    written: dict[str, Any] = read_json(run_dir / RESULT_JSON)
    return written
