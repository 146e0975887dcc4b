"""sd-lora's model: a local diffusers InstructPix2Pix pipeline and LoRA on its UNet attention.

**Why InstructPix2Pix, not img2img.** A pair is a selfie and an anime target. The
InstructPix2Pix UNet (Brooks et al. 2023) takes the *selfie's* VAE latents concatenated to
the noisy target latents (``in_channels`` 8 = 4 noisy + 4 selfie) at every denoising step,
so training on pairs teaches "this selfie -> that drawing" with the caption as the
instruction. Stable Diffusion img2img has a 4-channel text-to-image UNet: the selfie only
seeds the starting noise at inference, so training it could learn from the anime side
alone (a text-to-image style LoRA), never from the pairing. A base must therefore be an
InstructPix2Pix pipeline (``timbrooks/instruct-pix2pix`` saved to a local folder, or any
pipeline whose UNet has 8 input channels).

The base is a local folder as ``save_pretrained`` writes it::

    model_index.json
    unet/          config.json + diffusion_pytorch_model.safetensors (in_channels 8)
    vae/           config.json + diffusion_pytorch_model.safetensors
    text_encoder/  config.json + model.safetensors (CLIPTextModel)
    tokenizer/     vocab.json + merges.txt (CLIPTokenizer)
    scheduler/     scheduler_config.json (the sampler of the pipeline; training adds noise
                   with a DDPMScheduler built from the same config)

Nothing is downloaded: a folder that lacks a part raises :class:`TrainingConfigError`
naming the folder and the missing file.

LoRA goes on the attention projections of the UNet (``to_q``, ``to_k``, ``to_v``,
``to_out.0``, self- and cross-attention), the layers the diffusers LoRA examples adapt; the
VAE and the text encoder stay frozen. The adapter is saved as diffusers saves LoRA
(``pytorch_lora_weights.safetensors``, float32, keys ``unet.<module>.lora.down.weight``
(rank x in) and ``.lora.up.weight`` (out x rank), the peft config in the safetensors
metadata), so
``pipe.load_lora_weights(folder, weight_name=ADAPTER_WEIGHTS)`` loads it.

Example::

    pipe = build_model(Path("models/instruct-pix2pix"), adapter=Path("runs/r1/adapter"))
    image = pipe("anime portrait, ghibli style", image=selfie_pil).images[0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.errors import TrainingConfigError

#: The UNet modules LoRA adapts: attention projections, as the diffusers LoRA examples.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_DIR = "adapter"
#: diffusers' own name for a LoRA file (``LORA_WEIGHT_NAME_SAFE``).
ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"
#: InstructPix2Pix: 4 noisy target latent channels + 4 selfie latent channels.
UNET_IN_CHANNELS = 8

_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
#: Each part's subfolder -> files that must be there (one of each alternative tuple).
_PARTS: dict[str, Sequence[tuple[str, ...]]] = {
    "unet": (("config.json",), _WEIGHTS),
    "vae": (("config.json",), _WEIGHTS),
    "text_encoder": (("config.json",), _WEIGHTS),
    "tokenizer": (("vocab.json", "tokenizer.json"),),
    "scheduler": (("scheduler_config.json",),),
}


@dataclass
class Components:
    """The parts training needs, loaded from a local pipeline folder, all on the CPU in
    float32 and frozen (``requires_grad`` False) until training adds the adapter."""

    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    scheduler_config: dict[str, Any]

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell along a side (8 for Stable Diffusion)."""
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def unet_multiple(self) -> int:
        """Latent sides must be multiples of this (each down block but the last halves)."""
        return int(2 ** (len(self.unet.config.down_block_types) - 1))


def check_pipeline_folder(path: Path, flag: str = "--pretrained-model-name-or-path") -> None:
    """Raise :class:`TrainingConfigError` naming ``path`` and the first missing part."""
    hint = (
        "give a local folder of an InstructPix2Pix pipeline as save_pretrained writes it "
        "(unet/, vae/, text_encoder/, tokenizer/, scheduler/); nothing is downloaded"
    )
    if not path.is_dir():
        raise TrainingConfigError(f"{flag} {path}: no such folder; {hint}")
    for part, needs in _PARTS.items():
        folder = path / part
        if not folder.is_dir():
            raise TrainingConfigError(f"{flag} {path}: no {part}/ there; {hint}")
        for alternatives in needs:
            if not any(any(folder.glob(pattern)) for pattern in alternatives):
                wanted = " or ".join(alternatives)
                raise TrainingConfigError(f"{flag} {path}: {part}/ has no {wanted}; {hint}")


def load_components(path: Path, flag: str = "--pretrained-model-name-or-path") -> Components:
    """The UNet, VAE, text encoder, tokenizer and scheduler config of a local pipeline.

    Raises :class:`TrainingConfigError` when a part is missing or the UNet is not an
    InstructPix2Pix one (``in_channels`` 8).
    """
    check_pipeline_folder(path, flag)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    if unet.config.in_channels != UNET_IN_CHANNELS:
        raise TrainingConfigError(
            f"{flag} {path}: its UNet takes {unet.config.in_channels} input channels, not "
            f"{UNET_IN_CHANNELS}: a text-to-image (img2img) UNet cannot see the selfie during "
            "training; give an InstructPix2Pix pipeline (e.g. timbrooks/instruct-pix2pix "
            "saved locally)"
        )
    components = Components(
        unet=unet,
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", local_files_only=True
        ),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
        scheduler_config=dict(DDPMScheduler.load_config(path, subfolder="scheduler")),
    )
    for module in (components.unet, components.vae, components.text_encoder):
        module.requires_grad_(False)
    return components


def lora_config(rank: int, alpha: int, dropout: float = 0.0) -> Any:
    """The peft ``LoraConfig`` of a new adapter on the UNet attention."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,  # adapter rank: the diffusers examples' 4-16 range
        lora_alpha=alpha,  # update scale alpha / r; saved with the adapter, loaders apply it
        lora_dropout=dropout,  # 0 by default: dropout draws would break exact resume
        init_lora_weights="gaussian",  # A ~ N(0, 1/r), B = 0: starts as the base exactly
        target_modules=list(LORA_TARGETS),
    )


def adapter_state(unet: Any) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights in diffusers' key format (``...lora.down.weight``), as the
    diffusers training examples hand them to ``save_lora_weights``."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state: dict[str, torch.Tensor] = convert_state_dict_to_diffusers(
        get_peft_model_state_dict(unet)
    )
    return state


def save_adapter(unet: Any, folder: Path) -> Path:
    """Write the UNet's adapter as ``folder/pytorch_lora_weights.safetensors`` (float32,
    the peft config as metadata); returns the file."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    StableDiffusionInstructPix2PixPipeline.save_lora_weights(
        folder,
        unet_lora_layers={k: v.detach().float().cpu() for k, v in adapter_state(unet).items()},
        weight_name=ADAPTER_WEIGHTS,
        safe_serialization=True,
        # What diffusers.training_utils._collate_lora_metadata stores: the loader rebuilds
        # the same rank and alpha from it (without it, alpha would default to the rank).
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    return folder / ADAPTER_WEIGHTS


def read_adapter(folder: Path, flag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A saved adapter's UNet weights in peft's key format and its peft settings.

    ``folder`` is a run directory (its ``adapter/``) or the adapter folder itself.
    """
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    if (folder / ADAPTER_DIR / ADAPTER_WEIGHTS).is_file():
        folder = folder / ADAPTER_DIR
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise TrainingConfigError(
            f"{flag} {folder}: no {ADAPTER_WEIGHTS} there; give a finished sd-lora run "
            "directory or its adapter/ folder"
        )
    state, _, metadata = StableDiffusionInstructPix2PixPipeline.lora_state_dict(
        str(folder), weight_name=ADAPTER_WEIGHTS, return_lora_metadata=True
    )
    prefix = "unet."
    unet_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not unet_state:
        raise TrainingConfigError(f"{flag} {folder}: {ADAPTER_WEIGHTS} holds no UNet LoRA")
    settings = {
        k[len(prefix) :]: v for k, v in (metadata or {}).items() if k.startswith(prefix)
    } or dict(metadata or {})
    return convert_unet_state_dict_to_peft(unet_state), settings


def load_adapter_into(unet: Any, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy peft-format LoRA weights into the UNet's adapter ``default``, exactly."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise TrainingConfigError(
            f"{what}: {len(unexpected)} adapter weights fit no UNet layer "
            f"(e.g. {unexpected[0]}); was it trained on another base?"
        )


def build_model(
    pretrained: Path,
    adapter: Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """The InstructPix2Pix pipeline of a local folder, with an sd-lora adapter loaded by
    diffusers' own ``load_lora_weights`` when ``adapter`` (a run dir or its adapter/) is
    given; no safety checker (the inputs are the service's own aligned face crops)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    check_pipeline_folder(pretrained)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        pretrained,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=dtype,
        local_files_only=True,
    )
    if adapter is not None:
        folder = adapter / ADAPTER_DIR if (adapter / ADAPTER_DIR).is_dir() else adapter
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise TrainingConfigError(f"adapter {adapter}: no {ADAPTER_WEIGHTS} there")
        pipe.load_lora_weights(str(folder), weight_name=ADAPTER_WEIGHTS)
    return pipe.to(device)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
