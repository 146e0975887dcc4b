"""Train the pix2pix-lora converter: ``parse_args(argv)`` -> ``main(args)``, two modes.

    base   train the generator (and its discriminator) from scratch on a snapshot
    lora   load a base generator, add LoRA adapters to its Conv2d/Linear layers and train
           only those (warm-started from a parent adapter when given), replaying a sample
           of older pairs when a replay snapshot is given

**What this family expects of its pairs.** A pair is an aligned selfie crop and an anime
face *retrieved* for it: the reference shows another face in the target style, it is not
a drawing of this selfie, and nothing is pixel-aligned. So the reference teaches style only
(Gram, colour statistics, an unconditional PatchGAN with mean feature matching), and the
structure comes from the selfie's own classical stylisation (see ``losses.py`` for each
term and its source; ``--lambda-l1`` > 0 adds pix2pix's per-pixel L1 for pixel-aligned pairs
only). References of one style should share it: the discriminator learns their common
look, and a snapshot mixing styles trains their average (snapshot one style,
``s2a dataset snapshot --style S``). The selfie side is augmented (crop, flip, colour); the
reference never is.

The same script runs on a CPU, one GPU or several, under ``accelerate``::

    python -m trainer.families.pix2pix_lora.train base --manifest M --out RUN
    accelerate launch --multi_gpu --num_processes 4 -m trainer.families.pix2pix_lora.train \\
        lora --manifest M --base BASE_RUN --out RUN

Each process draws its own ``--batch-size`` pairs a step (``trainer.torchdata.DrawSampler``
streams), so the effective batch is ``batch_size x processes``. Every ``--checkpoint-every``
steps the run directory gets a checkpoint (models, optimizers, LR schedulers, RNG states,
data position; layout in :mod:`trainer.runs`); ``--resume`` continues from the newest and
ends with the weights an uninterrupted run ends with (bit-identical on a CPU with the
same thread count, tested). All training randomness is keyed by (seed, draw number), never
by wall-clock or global RNG, so the data after a resume are the data an uninterrupted run
would have drawn.

Example::

    args = parse_args(["base", "--manifest", str(m), "--out", str(run), "--steps", "500"])
    result = main(args)             # dict: run_dir, steps, samples_per_s, files, losses
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader

from agents.stores.blobs import BlobStore
from schemas.digests import sha256_file
from schemas.manifest import ManifestRecord
from schemas.settings import TrainSettings
from trainer.errors import DatasetError, TrainingConfigError
from trainer.families.pix2pix_lora.losses import (
    LossWeights,
    RandomFeatures,
    VGGFeatures,
    colour_loss,
    lsgan,
    matching_loss,
    perceptual_loss,
    structure_loss,
    style_loss,
)
from trainer.families.pix2pix_lora.model import (
    DISCRIMINATOR_WEIGHTS,
    GENERATOR_CONFIG,
    GENERATOR_WEIGHTS,
    Generator,
    GeneratorConfig,
    PatchDiscriminator,
    build_model,
    count_parameters,
    lora_targets,
    stylise,
)
from trainer.runs import (
    LOSS_PLOT,
    RUN_JSON,
    SAMPLES,
    append_losses,
    checkpoint_seconds,
    finish_run,
    plot_losses,
    progress_bar,
    read_losses,
    read_manifest_at,
    replay_sample,
    run_result,
    sample_grid,
    save_checkpoint,
    start_run,
    write_json,
)
from trainer.torchdata import DrawSampler, PairDataset, PairSample, replay_weights, to_rgb

log = logging.getLogger(__name__)

FAMILY = "pix2pix-lora"
MODES = ("base", "lora")
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LOSS_TERMS = (
    "d",
    "g",
    "structure",
    "identity",
    "style",
    "colour",
    "adversarial",
    "matching",
    "l1",
    "perceptual",
    "lr",
)

#: Flags a resumed run must share with the run it resumes (the rest: pacing, paths).
_FINGERPRINT = (
    "mode",
    "steps",
    "batch_size",
    "lr",
    "resolution",
    "progressive",
    "seed",
    "width",
    "levels",
    "res_blocks",
    "d_width",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "replay_fraction",
    "replay_max",
    "warmup",
    "decay",
    "mixed_precision",
)


def parse_args(
    argv: Sequence[str] | None = None, defaults: TrainSettings | None = None
) -> argparse.Namespace:
    """Flags -> a checked namespace; ``defaults`` (``settings.train``) fills the defaults.

    Cross-flag checks run at the end and raise :class:`TrainingConfigError` naming the
    flag, so the scheduler and the CLI get the same messages as the command line.
    """
    d = defaults or TrainSettings()
    parser = argparse.ArgumentParser(
        prog="python -m trainer.families.pix2pix_lora.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mode", choices=MODES)
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", type=Path, required=True, help="a snapshot's manifest.json")
    data.add_argument(
        "--blob-dir", type=Path, default=None, help="blob store (default: HOME/blobs of it)"
    )
    data.add_argument("--replay-manifest", type=Path, default=None, help="older snapshot")
    data.add_argument("--replay-fraction", type=float, default=d.replay_fraction)
    data.add_argument("--replay-max", type=int, default=256, help="older pairs sampled")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True, help="the run directory")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument("--steps", type=int, default=d.steps)
    run.add_argument("--batch-size", type=int, default=d.batch_size)
    run.add_argument("--resolution", type=int, default=d.resolution)
    run.add_argument("--progressive", action=argparse.BooleanOptionalAction, default=d.progressive)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    run.add_argument("--samples", type=int, default=6, help="validation rows in sample grids")
    run.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    run.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    run.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="end after this many steps as if interrupted (no final save): tests resume",
    )
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=None, help="default: lr | lora_lr setting")
    optim.add_argument("--d-lr", type=float, default=d.lr, help="discriminator learning rate")
    optim.add_argument("--warmup", type=float, default=0.05, help="share of steps, linear")
    optim.add_argument("--decay", type=float, default=0.5, help="last share, linear to 0")
    model = parser.add_argument_group("model")
    model.add_argument("--width", type=int, default=32)
    model.add_argument("--levels", type=int, default=3)
    model.add_argument("--res-blocks", type=int, default=2)
    model.add_argument("--d-width", type=int, default=32)
    lora = parser.add_argument_group("lora")
    lora.add_argument("--base", type=Path, default=None, help="base run dir (generator.*)")
    lora.add_argument("--parent-adapter", type=Path, default=None, help="adapter to continue")
    lora.add_argument("--lora-rank", type=int, default=None, help=f"default {d.lora_rank}")
    lora.add_argument("--lora-alpha", type=int, default=None, help=f"default {d.lora_alpha}")
    lora.add_argument("--lora-dropout", type=float, default=0.0)
    weights = parser.add_argument_group("loss weights (losses.py gives each one's source)")
    for field in dataclasses.fields(LossWeights):
        weights.add_argument(f"--lambda-{field.name}", type=float, default=field.default)
    weights.add_argument("--perceptual-weights", type=Path, default=d.perceptual_weights)
    args = parser.parse_args(argv)

    # -- cross-flag checks ----------------------------------------------------------------
    def bad(message: str) -> TrainingConfigError:
        return TrainingConfigError(message)

    if args.mode == "lora":
        if args.base is None:
            raise bad(
                "lora runs need --base, the base run directory (generator.json, .safetensors)"
            )
        args.lr = d.lora_lr if args.lr is None else args.lr
    else:
        for flag in ("base", "parent_adapter", "replay_manifest", "lora_rank", "lora_alpha"):
            if getattr(args, flag) is not None:
                raise bad(f"--{flag.replace('_', '-')} is for lora runs only")
        args.lr = d.lr if args.lr is None else args.lr
    multiple = 2 ** (args.levels + 1)
    if args.resolution % multiple or args.resolution < 2 * multiple:
        raise bad(
            f"--resolution must be a multiple of {multiple} (2^(levels+1)) and at least "
            f"{2 * multiple}, got {args.resolution}"
        )
    if args.progressive and (args.resolution // 2) % multiple:
        raise bad(
            f"--progressive halves --resolution {args.resolution}: not a multiple of {multiple}"
        )
    positive = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "width", "levels")
    for flag in positive:
        if getattr(args, flag) < 1:
            raise bad(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.stop_after is not None and not 0 < args.stop_after < args.steps:
        raise bad(f"--stop-after must be between 1 and --steps - 1, got {args.stop_after}")
    if not 0 <= args.replay_fraction < 1:
        raise bad(f"--replay-fraction must be in [0, 1), got {args.replay_fraction}")
    if not (0 <= args.warmup < 1 and 0 <= args.decay <= 1 and args.warmup + args.decay <= 1):
        raise bad("--warmup and --decay are shares of the steps in [0, 1] adding up to <= 1")
    if args.blob_dir is None:
        # manifest.json lives in HOME/datasets/<id>/; the blobs in HOME/blobs.
        args.blob_dir = args.manifest.resolve().parent.parent.parent / "blobs"
    return args


class LinearSchedule:
    """LR factor: linear warm-up over ``warmup`` of the steps, constant, then linear decay
    to 0 over the last ``decay`` (pix2pix's constant-then-linear-decay schedule)."""

    def __init__(self, total: int, warmup: float, decay: float) -> None:
        self.total = total
        self.warmup = max(1, round(total * warmup)) if warmup > 0 else 0
        self.decay_from = total - round(total * decay)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if step >= self.decay_from:
            return max(0.0, (self.total - step) / max(1, self.total - self.decay_from))
        return 1.0


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` say; returns the run's summary (also written to result.json).

    ``--threads`` holds for the run only: the caller's torch thread count comes back after
    (the CLI and the scheduler run this in their own process).
    """
    previous = torch.get_num_threads()
    if args.threads:
        # On a shared CPU one thread a process can beat two: measured 3x faster on a busy
        # 2-core machine (BENCHMARKS.md, Training).
        torch.set_num_threads(args.threads)
    try:
        return train(args)
    finally:
        torch.set_num_threads(previous)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The training run itself, top to bottom: data, models, resume, steps, outputs."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    run_dir: Path = args.out

    # -- data ---------------------------------------------------------------------------
    manifest = read_manifest_at(args.manifest, "--manifest")
    blobs = BlobStore(args.blob_dir)
    train_records = manifest.split("train")
    if not train_records:
        raise DatasetError(f"snapshot {manifest.snapshot_id} has no train pair to learn from")
    replay_records: list[ManifestRecord] = []
    replay_id = None
    if args.replay_manifest is not None:
        older = read_manifest_at(args.replay_manifest, "--replay-manifest")
        replay_id = older.snapshot_id
        replay_records = replay_sample(older, train_records, args.replay_max, args.seed)
    records = train_records + replay_records
    weights = replay_weights(train_records, replay_records, args.replay_fraction)
    shown = (manifest.split("validation") or train_records)[: args.samples]
    half = args.resolution // 2
    phases = (
        [(half, 0, args.steps // 2), (args.resolution, args.steps // 2, args.steps)]
        if args.progressive
        else [(args.resolution, 0, args.steps)]
    )

    # -- models ---------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    lineage: dict[str, Any] = {}
    lora_settings: dict[str, Any] | None = None
    if args.mode == "base":
        config = GeneratorConfig(width=args.width, levels=args.levels, res_blocks=args.res_blocks)
        generator: torch.nn.Module = build_model(config)
    else:
        base, config, lineage["base"] = _load_base(args.base)
        generator, lora_settings, parent = _add_lora(base, args)
        if parent:
            lineage["parent_adapter"] = parent
    discriminator = PatchDiscriminator(args.d_width)
    if args.mode == "lora" and (args.base / DISCRIMINATOR_WEIGHTS).is_file():
        # The base run's discriminator already knows the anime look: adapters start
        # against an informed critic instead of a random one.
        from safetensors.torch import load_file

        try:
            discriminator.load_state_dict(load_file(args.base / DISCRIMINATOR_WEIGHTS))
        except RuntimeError:
            log.warning("the base discriminator does not fit --d-width %s: a new one", args.d_width)
    features: torch.nn.Module = (
        VGGFeatures(args.perceptual_weights)
        if args.perceptual_weights is not None
        else RandomFeatures(args.seed)
    )
    lambdas = LossWeights(
        **{f.name: getattr(args, f"lambda_{f.name}") for f in dataclasses.fields(LossWeights)}
    )
    if args.perceptual_weights is None:
        lambdas = dataclasses.replace(lambdas, perceptual=0.0)

    trainable = [p for p in generator.parameters() if p.requires_grad]
    # Adam with beta1 0.5: pix2pix's and DCGAN's setting for GANs (Radford et al. 2016).
    opt_g = torch.optim.Adam(trainable, lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.d_lr, betas=(0.5, 0.999))
    # accelerate steps a prepared scheduler once per process per call: count in those.
    horizon = args.steps * accelerator.num_processes
    sched_g = torch.optim.lr_scheduler.LambdaLR(
        opt_g, LinearSchedule(horizon, args.warmup, args.decay)
    )
    sched_d = torch.optim.lr_scheduler.LambdaLR(
        opt_d, LinearSchedule(horizon, args.warmup, args.decay)
    )
    generator, discriminator, opt_g, opt_d, sched_g, sched_d = accelerator.prepare(
        generator, discriminator, opt_g, opt_d, sched_g, sched_d
    )
    features.to(accelerator.device)

    # -- run directory, resume ------------------------------------------------------------
    fingerprint = {k: getattr(args, k) for k in _FINGERPRINT} | {
        "family": FAMILY,
        "manifest_sha256": manifest.sha256,
        "replay_snapshot": replay_id,
        "lambdas": dataclasses.asdict(lambdas),
        **{k: v.get("sha256") for k, v in lineage.items()},
    }
    run_info = {
        "family": FAMILY,
        "mode": args.mode,
        "snapshot": manifest.snapshot_id,
        "manifest_sha256": manifest.sha256,
        "replay_snapshot": replay_id,
        "replay_pairs": len(replay_records),
        "train_pairs": len(train_records),
        "generator": config.as_dict(),
        "lora": lora_settings,
        "lineage": lineage,
        "parameters": {
            "generator": count_parameters(generator),
            "trainable": count_parameters(generator, trainable_only=True),
            "discriminator": count_parameters(discriminator),
        },
        "fingerprint": fingerprint,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": _versions(),
        "processes": accelerator.num_processes,
    }
    step, finished = start_run(accelerator, run_dir, args.resume, fingerprint, run_info, args.steps)
    if finished is not None:
        return finished
    # Checkpoints record the training seconds from step 0, across resumes.
    seconds_before = checkpoint_seconds(run_dir, step)

    # -- training ---------------------------------------------------------------------------
    bar = progress_bar(accelerator, args.progress, args.steps, step, f"{FAMILY} {args.mode}")
    trained_seconds = 0.0
    trained_steps = 0
    stopped = False
    rows: list[dict[str, float]] = []
    for resolution, _, phase_end in phases:
        if step >= phase_end:
            continue
        dataset = PairDataset(records, blobs, resolution, condition=stylise, seed=args.seed)
        sampler = DrawSampler(
            weights,
            total=args.steps * args.batch_size,
            seed=args.seed,
            start=step * args.batch_size,
            stop=phase_end * args.batch_size,
            stream=accelerator.process_index,
            streams=accelerator.num_processes,
        )
        loader = DataLoader(
            dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers
        )
        shown_set = PairDataset(shown, blobs, resolution, condition=stylise, augment=False)
        for batch in loader:
            began = time.perf_counter()
            row = _train_step(
                batch, generator, discriminator, features, opt_g, opt_d, lambdas, accelerator
            )
            sched_g.step()
            sched_d.step()
            step += 1
            trained_seconds += time.perf_counter() - began
            trained_steps += 1
            row |= {"step": step, "lr": sched_g.get_last_lr()[0], "resolution": resolution}
            rows.append(row)
            if accelerator.is_main_process:
                append_losses(run_dir, row)
            bar.update(1)
            bar.set_postfix(g=f"{row['g']:.3f}", d=f"{row['d']:.3f}", refresh=False)
            if step % args.checkpoint_every == 0 and step < args.steps:
                save_checkpoint(
                    accelerator,
                    run_dir,
                    step,
                    args.keep_checkpoints,
                    draws_per_process=step,
                    trained_seconds=seconds_before + trained_seconds,
                )
                if accelerator.is_main_process:
                    _write_samples(generator, accelerator, shown_set, run_dir, f"step-{step:06d}")
            if args.stop_after is not None and step >= args.stop_after:
                stopped = True
                break
        if stopped:
            break
    bar.close()
    samples_per_s = (
        trained_steps * args.batch_size * accelerator.num_processes / trained_seconds
        if trained_seconds
        else 0.0
    )
    if stopped:
        if accelerator.is_main_process:
            write_json(run_dir / RUN_JSON, run_info | {"status": "stopped", "step": step})
        return {"run_dir": str(run_dir), "status": "stopped", "step": step}

    # -- outputs ----------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    files: list[str] = []
    result: dict[str, Any] | None = None
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        unwrapped = accelerator.unwrap_model(generator)
        if args.mode == "base":
            save_file(_contiguous(unwrapped.state_dict()), run_dir / GENERATOR_WEIGHTS)
            config.save(run_dir)
            files += [GENERATOR_WEIGHTS, GENERATOR_CONFIG]
        else:
            unwrapped.save_pretrained(run_dir / ADAPTER_DIR)
            config.save(run_dir / ADAPTER_DIR)  # which generator shape the adapter fits
            files += [f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", f"{ADAPTER_DIR}/{ADAPTER_CONFIG}"]
        save_file(
            _contiguous(accelerator.unwrap_model(discriminator).state_dict()),
            run_dir / DISCRIMINATOR_WEIGHTS,
        )
        files.append(DISCRIMINATOR_WEIGHTS)
        history = read_losses(run_dir)
        plot_losses(history, run_dir / LOSS_PLOT, LOSS_TERMS)
        final_resolution = phases[-1][0]
        _write_samples(
            generator,
            accelerator,
            PairDataset(shown, blobs, final_resolution, condition=stylise, augment=False),
            run_dir,
            "final",
        )
        files += [LOSS_PLOT, f"{SAMPLES}/final.png"]
        result = run_result(
            run_dir,
            family=FAMILY,
            mode=args.mode,
            snapshot=manifest.snapshot_id,
            steps=args.steps,
            samples_per_s=samples_per_s,
            parameters=run_info["parameters"],
            lora=lora_settings,
            lineage=lineage,
            history=history,
            loss_terms=LOSS_TERMS,
            files=files,
        )
    return finish_run(accelerator, run_dir, run_info, step, result)


def _train_step(
    batch: PairSample,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    features: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    lambdas: LossWeights,
    accelerator: Any,
) -> dict[str, float]:
    """One discriminator step, then one generator step; returns every loss term."""
    device = accelerator.device
    selfie = batch["selfie"].to(device)
    base = batch["condition"].to(device)
    anime = batch["anime"].to(device)
    fake = generator(selfie, base)

    # Discriminator: real and generated in one forward (DDP wants one forward per
    # backward), LSGAN targets 1 and 0, halved as in pix2pix to slow D relative to G.
    _, scores = discriminator(torch.cat([anime, fake.detach()]))
    real_scores, fake_scores = scores.chunk(2)
    loss_d = 0.5 * (lsgan(real_scores, True) + lsgan(fake_scores, False))
    opt_d.zero_grad(set_to_none=True)
    accelerator.backward(loss_d)
    opt_d.step()

    # Generator.
    with torch.no_grad():
        real_features, _ = discriminator(anime)
    fake_features, fake_scores = discriminator(fake)
    terms = {
        "structure": structure_loss(fake, base),
        "identity": torch.nn.functional.l1_loss(fake, base),
        "style": style_loss(features, fake, anime),
        "colour": colour_loss(fake, anime),
        "adversarial": lsgan(fake_scores, True),
        "matching": matching_loss(fake_features, real_features),
    }
    if lambdas.l1:
        terms["l1"] = torch.nn.functional.l1_loss(fake, anime)
    if lambdas.perceptual:
        terms["perceptual"] = perceptual_loss(features, fake, selfie)
    loss_g = sum(
        (getattr(lambdas, name) * value for name, value in terms.items()), fake.new_zeros(())
    )
    opt_g.zero_grad(set_to_none=True)
    accelerator.backward(loss_g)
    opt_g.step()
    # The generator step also left gradients on D's parameters: drop them now.
    opt_d.zero_grad(set_to_none=True)
    return {"d": loss_d.item(), "g": loss_g.item()} | {k: v.item() for k, v in terms.items()}


@torch.no_grad()
def _write_samples(
    generator: torch.nn.Module, accelerator: Any, shown: PairDataset, run_dir: Path, name: str
) -> None:
    """Validation selfie | stylised base | output | reference, one row per pair."""
    if not len(shown):
        return
    model = accelerator.unwrap_model(generator)
    was_training = model.training
    model.eval()
    rows = []
    for i in range(len(shown)):
        sample = shown[i]
        selfie = sample["selfie"][None].to(accelerator.device)
        base = sample["condition"][None].to(accelerator.device)
        output = model(selfie, base)[0]
        rows.append(
            [
                to_rgb(sample["selfie"]),
                to_rgb(sample["condition"]),
                to_rgb(output),
                to_rgb(sample["anime"]),
            ]
        )
    model.train(was_training)
    (run_dir / SAMPLES).mkdir(exist_ok=True)
    sample_grid(
        rows, ["selfie", "stylised", "output", "reference"], run_dir / SAMPLES / f"{name}.png"
    )


def _load_base(folder: Path) -> tuple[Generator, GeneratorConfig, dict[str, Any]]:
    """The base generator of a base run directory, and its lineage entry."""
    from safetensors.torch import load_file

    weights, config_file = folder / GENERATOR_WEIGHTS, folder / GENERATOR_CONFIG
    for needed in (weights, config_file):
        if not needed.is_file():
            raise TrainingConfigError(
                f"--base {folder}: no {needed.name} there; give the directory of a finished "
                "`s2a train base` run"
            )
    config = GeneratorConfig.load(folder)
    generator = build_model(config)
    try:
        generator.load_state_dict(load_file(weights))
    except RuntimeError as exc:
        raise TrainingConfigError(
            f"--base {folder}: {weights.name} does not fit {config}: {exc}"
        ) from exc
    return generator, config, {"path": str(folder), "sha256": sha256_file(weights)}


def _add_lora(
    base: Generator, args: argparse.Namespace
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any] | None]:
    """Wrap ``base`` in peft LoRA adapters: new ones, or the parent's to train further."""
    from peft import LoraConfig, PeftModel, get_peft_model

    parent = args.parent_adapter
    if parent is not None:
        folder = parent / ADAPTER_DIR if (parent / ADAPTER_DIR).is_dir() else parent
        if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
            raise TrainingConfigError(
                f"--parent-adapter {parent}: no {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} there; "
                "give a finished lora run directory or its adapter/ folder"
            )
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
        config = cast(LoraConfig, model.peft_config["default"])
        for flag, value, theirs in (
            ("--lora-rank", args.lora_rank, config.r),
            ("--lora-alpha", args.lora_alpha, config.lora_alpha),
        ):
            if value is not None and value != theirs:
                raise TrainingConfigError(
                    f"{flag} {value} differs from the parent adapter's {theirs}; a warm start "
                    f"keeps the parent's settings: drop {flag}"
                )
        args.lora_rank, args.lora_alpha = config.r, config.lora_alpha
        lineage = {"path": str(folder), "sha256": sha256_file(folder / ADAPTER_WEIGHTS)}
    else:
        rank = args.lora_rank if args.lora_rank is not None else TrainSettings().lora_rank
        alpha = args.lora_alpha if args.lora_alpha is not None else TrainSettings().lora_alpha
        args.lora_rank, args.lora_alpha = rank, alpha
        config = LoraConfig(
            r=rank,  # adapter rank: 8 adds ~3 % of the generator's parameters
            lora_alpha=alpha,  # update scale alpha / r = 1: the lr means the same at any rank
            lora_dropout=args.lora_dropout,  # 0: few pairs, and dropout would break resume parity
            target_modules=lora_targets(base),  # every Conv2d (and Linear): all learnable maps
            bias="none",  # biases and norms stay the base's: the adapter is the whole delta
            init_lora_weights=True,  # B = 0: the adapted model starts as the base exactly
        )
        model = get_peft_model(base, config)
        lineage = None
    settings = {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules or []),
        "bias": config.bias,
    }
    return model, settings, lineage


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _versions() -> dict[str, str]:
    import accelerate
    import peft

    return {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


if __name__ == "__main__":
    from schemas.settings import Settings

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    main(parse_args(sys.argv[1:], Settings().train))
