"""A local InstructPix2Pix pipeline folder built in code, as ``save_pretrained`` writes one:
random weights, nothing downloaded. Used by the sd-lora tests and ``bench/training.py``.

    tiny   ~0.2 M UNet parameters, VAE x2, a CLIP text encoder of one layer: a training step
           at 32 px takes milliseconds
    sd15   Stable Diffusion 1.5's shapes (UNet 860 M parameters with 8 input channels as
           InstructPix2Pix's, VAE x8, CLIP ViT-L/14's text encoder of 123 M): the compute of
           a real base, for throughput only (random weights draw noise)

The tokenizer is a character-level CLIP BPE vocabulary written by the fixture (vocab.json
with no merges), loaded with ``CLIPTokenizer.from_pretrained`` as transformers 5 wants.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.-'"


def write_tokenizer(folder: Path) -> dict[str, int]:
    """A CLIP BPE vocabulary of single characters (each also as a word end, ``c</w>``)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in CHARACTERS:
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def make_pipeline(folder: Path, *, in_channels: int = 8, size: str = "tiny", seed: int = 0) -> Path:
    """Write a pipeline under ``folder/pipeline``; returns that path."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = write_tokenizer(folder / "vocab")
    torch.manual_seed(seed)
    if size == "tiny":
        # Captions are character-level here: 40 positions hold the fixture's captions.
        max_length = 40
        tokenizer = CLIPTokenizer.from_pretrained(folder / "vocab", model_max_length=max_length)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=in_channels,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=max_length,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    elif size == "sd15":
        max_length = 77
        tokenizer = CLIPTokenizer.from_pretrained(folder / "vocab", model_max_length=max_length)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=in_channels, cross_attention_dim=768
        )  # the remaining defaults are SD 1.x's UNet
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text_config = CLIPTextConfig(  # CLIP ViT-L/14's text tower
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            max_position_embeddings=max_length,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    else:
        raise ValueError(f"size must be tiny or sd15, got {size!r}")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "pipeline")
    return folder / "pipeline"
