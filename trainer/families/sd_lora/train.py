"""Train sd-lora: LoRA adapters on a local InstructPix2Pix pipeline's UNet attention, on a
dataset snapshot. ``parse_args(argv)`` -> ``main(args)``, as the diffusers examples
(``train_instruct_pix2pix.py``, ``train_text_to_image_lora.py``) are written.

One mode, ``lora``: load the pipeline's parts from ``--pretrained-model-name-or-path``
(``--base``, as ``s2a train lora SNAPSHOT --family sd-lora --base FOLDER`` passes it; a
local folder, see :mod:`.model`), freeze the VAE, the text encoder and the UNet, add peft
LoRA to the UNet's ``to_q``/``to_k``/``to_v``/``to_out.0`` (``unet.add_adapter``), and
train those with the InstructPix2Pix objective (Brooks et al. 2023): the anime target's
VAE latents are noised at a random DDPM timestep, the selfie's latents are concatenated to
them, and the UNet predicts the noise (or the velocity, as the scheduler config says)
conditioned on the pair's caption (the manifest record's ``caption``, built from its
labels and style); mean squared error. A few per cent of the draws drop the caption, the
selfie or both (``--conditioning-dropout-prob``, 0.05 as in the paper) so the adapter keeps
classifier-free guidance on both. ``--parent-adapter`` warm-starts from an earlier run's
adapter; ``--replay-manifest`` mixes in older pairs (``--replay-fraction`` of the draws).

**What this family expects of its pairs.** The target is the anime reference, as stored;
the selfie is augmented (crop, flip, colour jitter; :mod:`trainer.torchdata`), the target
never. Retrieval pairs are not pixel-aligned: both sides are aligned face crops, so
the coarse layout (a face, centred, eyes on one line) matches and the denoising loss
teaches that layout plus the references' style; fine structure (this face's identity)
comes only from the selfie latents the UNet sees, which is why the base must already be an
InstructPix2Pix model that knows how to follow its input. Pairs drawn by a person or a
model from this very selfie (pixel-aligned) teach more per pair. A snapshot of one style
(``s2a dataset snapshot --style S``) trains that style; mixed styles are told apart by
their captions.

The same script runs on a CPU, one GPU or several, under ``accelerate``::

    python -m trainer.families.sd_lora.train lora --manifest M --base PIPELINE --out RUN
    accelerate launch --multi_gpu --num_processes 4 -m trainer.families.sd_lora.train \\
        lora --manifest M --base PIPELINE --out RUN --mixed-precision bf16 \\
        --resolution 256 --batch-size 8 --gradient-accumulation-steps 2

Each process draws its own ``--batch-size`` pairs per micro-batch, so one optimizer step
sees ``batch_size x gradient_accumulation_steps x processes`` pairs. ``--mixed-precision``
fp16 | bf16 (GPU only) runs the frozen VAE and text encoder in that dtype and the UNet
under autocast; the LoRA weights and their optimizer stay float32, as the diffusers
examples keep them (``cast_training_params``).

Every ``--checkpoint-every`` optimizer steps the run directory gets a checkpoint (the LoRA
weights as diffusers saves them, optimizer, LR scheduler, RNG states, data position; the
frozen base is never copied); ``--resume`` continues from the newest and ends with the
weights an uninterrupted run ends with (bit-identical on a CPU with the same thread count,
tested). All training randomness (draws, augmentation, VAE sampling, noise, timesteps,
dropout) is keyed by (seed, process, micro-batch number), never by a global RNG.

The run directory (:mod:`trainer.runs`) gets ``losses.jsonl`` / ``losses.png``,
``samples/`` grids (validation selfie | output | reference, sampled by the pipeline with
the adapter as trained, ``--sample-steps`` denoising steps) and
``adapter/pytorch_lora_weights.safetensors``, which
``pipe.load_lora_weights(run / "adapter", weight_name="pytorch_lora_weights.safetensors")``
loads (:func:`.model.build_model` does it).

Example::

    args = parse_args(["lora", "--manifest", str(m), "--base", str(sd), "--out", str(run)])
    result = main(args)             # dict: run_dir, steps, samples_per_s, files, losses
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from agents.stores.blobs import BlobStore
from schemas.digests import sha256_file
from schemas.manifest import ManifestRecord
from schemas.settings import TrainSettings
from trainer.errors import DatasetError, TrainingConfigError
from trainer.families.sd_lora.model import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    Components,
    count_parameters,
    load_adapter_into,
    load_components,
    lora_config,
    read_adapter,
    save_adapter,
)
from trainer.runs import (
    LOSS_PLOT,
    RUN_JSON,
    SAMPLES,
    append_losses,
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

FAMILY = "sd-lora"
MODES = ("base", "lora")  # "base" is refused with a message: the base is a pretrained pipeline
LOSS_TERMS = ("loss", "lr")
#: The diffusers examples' LoRA learning rate (``train_text_to_image_lora.py``).
DEFAULT_LR = 1e-4
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")

#: Flags a resumed run must share with the run it resumes (the rest: pacing, paths).
_FINGERPRINT = (
    "mode",
    "steps",
    "batch_size",
    "gradient_accumulation_steps",
    "lr",
    "lr_scheduler",
    "lr_warmup_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "max_grad_norm",
    "resolution",
    "seed",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "conditioning_dropout_prob",
    "replay_fraction",
    "replay_max",
    "mixed_precision",
)


def parse_args(
    argv: Sequence[str] | None = None, defaults: TrainSettings | None = None
) -> argparse.Namespace:
    """Flags -> a checked namespace; ``defaults`` (``settings.train``) fills the defaults of
    steps, batch size, resolution, checkpoints, LoRA rank/alpha and replay.

    The learning rate is this family's own (``--lr``, default 1e-4, the diffusers LoRA
    examples'): ``settings.train.lora_lr`` is pix2pix-lora's. Cross-flag checks run at the
    end and raise :class:`TrainingConfigError` naming the flag.
    """
    d = defaults or TrainSettings()
    parser = argparse.ArgumentParser(
        prog="python -m trainer.families.sd_lora.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mode", choices=MODES, help="lora (base is a pretrained pipeline)")
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", type=Path, required=True, help="a snapshot's manifest.json")
    data.add_argument(
        "--blob-dir", type=Path, default=None, help="blob store (default: HOME/blobs of it)"
    )
    data.add_argument("--replay-manifest", type=Path, default=None, help="older snapshot")
    data.add_argument("--replay-fraction", type=float, default=d.replay_fraction)
    data.add_argument("--replay-max", type=int, default=256, help="older pairs sampled")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained-model-name-or-path",
        "--base",
        dest="pretrained_model_name_or_path",
        type=Path,
        default=None,
        help="local InstructPix2Pix pipeline folder (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/); nothing is downloaded",
    )
    model.add_argument("--parent-adapter", type=Path, default=None, help="adapter to continue")
    model.add_argument("--lora-rank", type=int, default=None, help=f"default {d.lora_rank}")
    model.add_argument("--lora-alpha", type=int, default=None, help=f"default {d.lora_alpha}")
    model.add_argument("--lora-dropout", type=float, default=0.0)
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True, help="the run directory")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    run.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per micro-batch")
    run.add_argument(
        "--gradient-accumulation-steps", type=int, default=1, help="micro-batches per step"
    )
    run.add_argument("--resolution", type=int, default=d.resolution, help="px, multiple of 8")
    run.add_argument(
        "--progressive",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="not supported by sd-lora (accepted so `s2a train` can pass --no-progressive)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    run.add_argument("--samples", type=int, default=4, help="validation rows in sample grids")
    run.add_argument("--sample-steps", type=int, default=20, help="denoising steps of samples")
    run.add_argument("--guidance-scale", type=float, default=7.5, help="samples: caption CFG")
    run.add_argument("--image-guidance-scale", type=float, default=1.5, help="samples: selfie CFG")
    run.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="fp16 | bf16 on a GPU; refused on a CPU",
    )
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
    optim = parser.add_argument_group("optimisation (AdamW, as the diffusers examples)")
    optim.add_argument("--lr", type=float, default=DEFAULT_LR)
    optim.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default="constant_with_warmup")
    optim.add_argument("--lr-warmup-steps", type=int, default=0)
    optim.add_argument("--adam-beta1", type=float, default=0.9)
    optim.add_argument("--adam-beta2", type=float, default=0.999)
    optim.add_argument("--adam-weight-decay", type=float, default=1e-2)
    optim.add_argument("--adam-epsilon", type=float, default=1e-8)
    optim.add_argument("--max-grad-norm", type=float, default=1.0)
    optim.add_argument(
        "--conditioning-dropout-prob",
        type=float,
        default=0.05,
        help="share of draws that drop the caption, the selfie, or both (each)",
    )
    args = parser.parse_args(argv)

    # -- cross-flag checks ----------------------------------------------------------------
    def bad(message: str) -> TrainingConfigError:
        return TrainingConfigError(message)

    if args.mode == "base":
        raise bad(
            "sd-lora trains LoRA adapters on a pretrained pipeline, it has no base run: "
            "use `lora` with --base PIPELINE_FOLDER"
        )
    if args.pretrained_model_name_or_path is None:
        raise bad(
            "sd-lora needs --pretrained-model-name-or-path (or --base), a local "
            "InstructPix2Pix pipeline folder"
        )
    if args.progressive:
        raise bad("--progressive is not supported by sd-lora; pass --no-progressive")
    if args.resolution % 8 or args.resolution < 16:
        raise bad(f"--resolution must be a multiple of 8 and at least 16, got {args.resolution}")
    positive = (
        "steps",
        "batch_size",
        "gradient_accumulation_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_steps",
    )
    for flag in positive:
        if getattr(args, flag) < 1:
            raise bad(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.stop_after is not None and not 0 < args.stop_after < args.steps:
        raise bad(f"--stop-after must be between 1 and --steps - 1, got {args.stop_after}")
    if not 0 <= args.replay_fraction < 1:
        raise bad(f"--replay-fraction must be in [0, 1), got {args.replay_fraction}")
    if not 0 <= args.conditioning_dropout_prob <= 1 / 3:
        raise bad(
            "--conditioning-dropout-prob must be in [0, 1/3] (it is used three times: "
            f"caption, selfie, both), got {args.conditioning_dropout_prob}"
        )
    if not 0 <= args.lr_warmup_steps <= args.steps:
        raise bad(f"--lr-warmup-steps must be in [0, --steps], got {args.lr_warmup_steps}")
    if args.blob_dir is None:
        # manifest.json lives in HOME/datasets/<id>/; the blobs in HOME/blobs.
        args.blob_dir = args.manifest.resolve().parent.parent.parent / "blobs"
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` say; returns the run's summary (also written to result.json).

    ``--threads`` holds for the run only: the caller's torch thread count comes back after.
    """
    if args.mixed_precision != "no" and not torch.cuda.is_available():
        raise TrainingConfigError(
            f"--mixed-precision {args.mixed_precision} needs a CUDA GPU and this machine has "
            "none: use --mixed-precision no on a CPU"
        )
    previous = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return train(args)
    finally:
        torch.set_num_threads(previous)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """The training run itself, top to bottom: data, models, resume, steps, outputs."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )
    set_seed(args.seed)
    run_dir: Path = args.out
    # Frozen parts run in the mixed-precision dtype: they only infer (diffusers examples).
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )

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

    # -- models ---------------------------------------------------------------------------
    base_dir: Path = args.pretrained_model_name_or_path
    parts = load_components(base_dir)
    multiple = parts.vae_scale * parts.unet_multiple
    if args.resolution % multiple:
        raise TrainingConfigError(
            f"--resolution must be a multiple of {multiple} for {base_dir} (VAE x{parts.vae_scale}"
            f", UNet x{parts.unet_multiple}), got {args.resolution}"
        )
    noise_scheduler = DDPMScheduler.from_config(parts.scheduler_config)
    lineage: dict[str, Any] = {"base": {"path": str(base_dir), "sha256": _tree_sha256(base_dir)}}
    parent_state: dict[str, torch.Tensor] | None = None
    rank = args.lora_rank if args.lora_rank is not None else TrainSettings().lora_rank
    alpha = args.lora_alpha if args.lora_alpha is not None else TrainSettings().lora_alpha
    if args.parent_adapter is not None:
        parent_state, parent_settings = read_adapter(args.parent_adapter, "--parent-adapter")
        theirs = {"rank": parent_settings.get("r"), "alpha": parent_settings.get("lora_alpha")}
        for flag, value, setting in (
            ("--lora-rank", args.lora_rank, "rank"),
            ("--lora-alpha", args.lora_alpha, "alpha"),
        ):
            if value is not None and theirs[setting] is not None and value != theirs[setting]:
                raise TrainingConfigError(
                    f"{flag} {value} differs from the parent adapter's {theirs[setting]}; a warm "
                    f"start keeps the parent's settings: drop {flag}"
                )
        rank = theirs["rank"] or rank
        alpha = theirs["alpha"] or alpha
        folder = args.parent_adapter
        folder = folder / ADAPTER_DIR if (folder / ADAPTER_DIR).is_dir() else folder
        lineage["parent_adapter"] = {
            "path": str(folder),
            "sha256": sha256_file(folder / ADAPTER_WEIGHTS),
        }
    args.lora_rank, args.lora_alpha = rank, alpha

    unet = parts.unet
    # Frozen weights first in their dtype, then the adapter, then the adapter back to
    # float32: small LoRA updates vanish in fp16 (train_text_to_image_lora.py does this).
    for module in (unet, parts.vae, parts.text_encoder):
        module.to(accelerator.device)
        if weight_dtype != torch.float32:  # (a float32 .to(dtype) only draws a warning)
            module.to(dtype=weight_dtype)
    torch.manual_seed(args.seed)  # the LoRA A matrices' initial draw
    unet.add_adapter(lora_config(rank, alpha, args.lora_dropout))
    if parent_state is not None:
        load_adapter_into(unet, parent_state, f"--parent-adapter {args.parent_adapter}")
    cast_training_params(unet, dtype=torch.float32)
    lora_settings = {
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": args.lora_dropout,
        "target_modules": sorted(unet.peft_config["default"].target_modules),
    }

    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.lr,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    # accelerate steps a prepared scheduler once per process per call: count in those.
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.steps * accelerator.num_processes,
    )
    _register_checkpoint_hooks(accelerator, unet)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    captions, caption_ids, null_caption = _encode_captions(parts, records, accelerator.device)

    # -- run directory, resume ------------------------------------------------------------
    fingerprint = {k: getattr(args, k) for k in _FINGERPRINT} | {
        "family": FAMILY,
        "manifest_sha256": manifest.sha256,
        "replay_snapshot": replay_id,
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
        "lora": lora_settings,
        "lineage": lineage,
        "parameters": {
            "unet": count_parameters(unet),
            "trainable": count_parameters(unet, trainable_only=True),
            "vae": count_parameters(parts.vae),
            "text_encoder": count_parameters(parts.text_encoder),
        },
        "prediction_type": noise_scheduler.config.prediction_type,
        "fingerprint": fingerprint,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": _versions(),
        "processes": accelerator.num_processes,
    }
    step, finished = start_run(accelerator, run_dir, args.resume, fingerprint, run_info, args.steps)
    if finished is not None:
        return finished

    # -- training ---------------------------------------------------------------------------
    bar = progress_bar(accelerator, args.progress, args.steps, step, f"{FAMILY} {args.mode}")
    accumulation = args.gradient_accumulation_steps
    draws_per_step = args.batch_size * accumulation
    dataset = PairDataset(records, blobs, args.resolution, seed=args.seed)
    sampler = DrawSampler(
        weights,
        total=args.steps * draws_per_step,
        seed=args.seed,
        start=step * draws_per_step,
        stream=accelerator.process_index,
        streams=accelerator.num_processes,
    )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers
    )
    shown_set = PairDataset(shown, blobs, args.resolution, augment=False)
    context = _StepContext(
        parts, noise_scheduler, captions, caption_ids, null_caption, weight_dtype, args
    )
    trained_seconds = 0.0
    trained_steps = 0
    stopped = False
    micro = step * accumulation  # micro-batches this process has drawn so far
    micro_losses: list[float] = []
    began = time.perf_counter()
    for batch in loader:
        with accelerator.accumulate(unet):
            key = _key(args.seed, accelerator.process_index, micro)
            loss = _loss(batch, unet, context, accelerator.device, key)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        micro_losses.append(loss.item())
        if not accelerator.sync_gradients:
            continue
        step += 1
        trained_seconds += time.perf_counter() - began
        trained_steps += 1
        row = {
            "step": step,
            "loss": float(np.mean(micro_losses)),
            "lr": lr_scheduler.get_last_lr()[0],
        }
        micro_losses = []
        if accelerator.is_main_process:
            append_losses(run_dir, row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        if step % args.checkpoint_every == 0 and step < args.steps:
            save_checkpoint(
                accelerator,
                run_dir,
                step,
                args.keep_checkpoints,
                draws_per_process=step * draws_per_step,
            )
            if accelerator.is_main_process:
                _write_samples(
                    unet, parts, accelerator, shown_set, run_dir, f"step-{step:06d}", args
                )
        if args.stop_after is not None and step >= args.stop_after:
            stopped = True
            break
        began = time.perf_counter()
    bar.close()
    samples_per_s = (
        trained_steps * draws_per_step * accelerator.num_processes / trained_seconds
        if trained_seconds
        else 0.0
    )
    if stopped:
        if accelerator.is_main_process:
            write_json(run_dir / RUN_JSON, run_info | {"status": "stopped", "step": step})
        return {"run_dir": str(run_dir), "status": "stopped", "step": step}

    # -- outputs ----------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    result: dict[str, Any] | None = None
    if accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(unet), run_dir / ADAPTER_DIR)
        history = read_losses(run_dir)
        plot_losses(history, run_dir / LOSS_PLOT, LOSS_TERMS)
        _write_samples(unet, parts, accelerator, shown_set, run_dir, "final", args)
        files = [f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", LOSS_PLOT, f"{SAMPLES}/final.png"]
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


class _StepContext:
    """What every training step reads and never changes: frozen parts, the noise scheduler,
    the caption embeddings, the flags."""

    def __init__(
        self,
        parts: Components,
        noise_scheduler: Any,
        captions: torch.Tensor,
        caption_ids: torch.Tensor,
        null_caption: torch.Tensor,
        weight_dtype: torch.dtype,
        args: argparse.Namespace,
    ) -> None:
        self.vae = parts.vae
        self.scaling_factor = float(parts.vae.config.scaling_factor)
        self.noise_scheduler = noise_scheduler
        self.captions = captions
        self.caption_ids = caption_ids
        self.null_caption = null_caption
        self.weight_dtype = weight_dtype
        self.dropout = args.conditioning_dropout_prob


def _key(seed: int, process: int, micro: int) -> int:
    """The seed of micro-batch ``micro`` of ``process``: the same after any resume."""
    return int(np.random.SeedSequence([seed, process, micro]).generate_state(1)[0])


def _loss(
    batch: PairSample, unet: Any, ctx: _StepContext, device: torch.device, key: int
) -> torch.Tensor:
    """InstructPix2Pix's denoising loss on one micro-batch (a float32 scalar).

    ``batch["selfie"]`` and ``batch["anime"]`` are float32 ``(B, 3, R, R)`` in ``[-1, 1]``;
    latents are ``(B, 4, R/8, R/8)`` for Stable Diffusion's VAE. Every random draw comes
    from one CPU generator seeded with ``key``.
    """
    from diffusers.utils.torch_utils import randn_tensor

    generator = torch.Generator().manual_seed(key)
    selfie = batch["selfie"].to(device, dtype=ctx.weight_dtype)
    anime = batch["anime"].to(device, dtype=ctx.weight_dtype)
    size = selfie.shape[0]
    with torch.no_grad():
        target_dist = ctx.vae.encode(anime).latent_dist
        latents = target_dist.sample(generator=generator) * ctx.scaling_factor
        # The selfie's latents are the distribution's mode, unscaled: as InstructPix2Pix
        # was trained (train_instruct_pix2pix.py), so the base's conditioning path fits.
        selfie_latents = ctx.vae.encode(selfie).latent_dist.mode()
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    steps = ctx.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (size,), generator=generator).to(device)
    noisy = ctx.noise_scheduler.add_noise(latents, noise, timesteps)
    text = ctx.captions[ctx.caption_ids[batch["index"]].to(device)]
    if ctx.dropout > 0:
        # Brooks et al. 2023, sec. 3.2.1: p drops the caption only, p both, p the selfie
        # only, so sampling can guide on each (image_guidance_scale, guidance_scale).
        draw = torch.rand(size, generator=generator).to(device)
        no_caption = (draw < 2 * ctx.dropout).reshape(size, 1, 1)
        text = torch.where(no_caption, ctx.null_caption.expand_as(text), text)
        keep_selfie = 1 - ((draw >= ctx.dropout) & (draw < 3 * ctx.dropout)).to(
            selfie_latents.dtype
        )
        selfie_latents = selfie_latents * keep_selfie.reshape(size, 1, 1, 1)
    prediction_type = ctx.noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = ctx.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise TrainingConfigError(
            f"scheduler prediction_type {prediction_type!r} is not supported; "
            "epsilon or v_prediction"
        )
    model_input = torch.cat([noisy, selfie_latents], dim=1)
    prediction = unet(model_input, timesteps, text, return_dict=False)[0]
    return torch.nn.functional.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def _encode_captions(
    parts: Components, records: Sequence[ManifestRecord], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each distinct caption once through the frozen text encoder.

    Returns the embeddings ``(C, L, D)`` (``L`` the tokenizer's max length, ``D`` the
    encoder's width, in the encoder's dtype), each record's row in them (``(N,)`` int64,
    by record position) and the empty caption's ``(1, L, D)`` for conditioning dropout.
    Captions are few (built from labels and style), so this replaces a text-encoder
    forward per step.
    """
    distinct = sorted({r.caption for r in records})
    row = {caption: i for i, caption in enumerate(distinct)}
    tokenizer = parts.tokenizer
    ids = tokenizer(
        [*distinct, ""],
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    encoded = parts.text_encoder(ids, return_dict=False)[0]
    caption_ids = torch.tensor([row[r.caption] for r in records], dtype=torch.int64)
    return encoded[:-1], caption_ids, encoded[-1:]


def _register_checkpoint_hooks(accelerator: Any, unet: Any) -> None:
    """Checkpoints hold the LoRA weights only, as diffusers saves them, never the frozen
    UNet (3.4 GB for SD 1.x): accelerate's hooks, as the diffusers LoRA examples."""

    def save_model_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        for model in models:
            if accelerator.is_main_process:
                save_adapter(accelerator.unwrap_model(model), Path(output_dir))
            if weights:
                weights.pop()  # accelerate must not save the whole UNet again

    def load_model_hook(models: list[Any], input_dir: str) -> None:
        while models:
            model = accelerator.unwrap_model(models.pop())  # popped: accelerate skips it
            state, _ = read_adapter(Path(input_dir), "checkpoint")
            load_adapter_into(model, state, f"checkpoint {input_dir}")

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


@torch.no_grad()
def _write_samples(
    unet: Any,
    parts: Components,
    accelerator: Any,
    shown: PairDataset,
    run_dir: Path,
    name: str,
    args: argparse.Namespace,
) -> None:
    """Validation selfie | the pipeline's output with the adapter | reference, one row per
    pair, sampled with a fixed seed (each grid is comparable to the previous one)."""
    if not len(shown):
        return
    import diffusers
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    config = dict(parts.scheduler_config)
    sampler_class = getattr(diffusers, str(config.get("_class_name")), diffusers.DDPMScheduler)
    model = accelerator.unwrap_model(unet)
    pipe: Any = StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=model,
        scheduler=sampler_class.from_config(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    was_training = model.training
    model.eval()
    samples = [shown[i] for i in range(len(shown))]
    device = accelerator.device
    with torch.autocast(device.type, enabled=accelerator.mixed_precision != "no"):
        images = pipe(
            prompt=[shown.records[s["index"]].caption for s in samples],
            image=[Image.fromarray(to_rgb(s["selfie"])) for s in samples],
            num_inference_steps=args.sample_steps,
            guidance_scale=args.guidance_scale,
            image_guidance_scale=args.image_guidance_scale,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="np",
        ).images
    model.train(was_training)
    rows = [
        [
            to_rgb(sample["selfie"]),
            np.asarray(np.round(np.clip(image, 0, 1) * 255), dtype=np.uint8),
            to_rgb(sample["anime"]),
        ]
        for sample, image in zip(samples, images, strict=True)
    ]
    (run_dir / SAMPLES).mkdir(exist_ok=True)
    sample_grid(rows, ["selfie", "output", "reference"], run_dir / SAMPLES / f"{name}.png")


def _tree_sha256(folder: Path) -> str:
    """SHA-256 over the base's files (relative path and content hash, sorted): what the
    adapter was trained on. Reads the whole pipeline once (seconds for SD 1.x)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


if __name__ == "__main__":
    from schemas.settings import Settings

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    main(parse_args(sys.argv[1:], Settings().train))
