"""pix2pix-lora's losses, for pairs whose anime side is a *retrieved* reference.

Every image is float ``(N, 3, H, W)`` in ``[-1, 1]``; every loss returns a scalar tensor.

A retrieval pair is (a selfie, an anime face chosen for it): the reference is a different
face, so per-pixel L1 to it (pix2pix's main loss, Isola et al. 2017) would pull the output
towards a blurred average of other faces. Instead the generator's loss splits the two jobs:

    structure   L1 between the luminance of the output and of the stylised base, both
                average-pooled 4x (the face's layout and shading; colour and fine
                texture stay free for the style to change). Weight 10.
    identity    L1 between output and base in RGB: the residual stays small unless the
                style terms pay for it. CycleGAN added this term to keep a translation's
                colour composition (Zhu et al. 2017); without it, 100 CPU steps on the
                test snapshot painted faces in purple and orange bands. Weight 5,
                CycleGAN's (half its cycle weight).
    style       Gram-matrix distance (Gatys et al. 2016) of output and reference in a
                fixed feature space, plus L1 between their per-channel mean and standard
                deviation (the colour statistics of Reinhard et al. 2001). Weights 100 (the
                Gram distances of these normalised features are ~0.01 on real pairs:
                100 puts the term at the adversarial term's scale) and 1.
    adversarial LSGAN (Mao et al. 2017, as in CycleGAN) against an unconditional PatchGAN
                that only ever sees anime images. Weight 1.
    matching    feature matching (Salimans et al. 2016) on the *spatial means* of the
                discriminator's features: pix2pixHD's per-position matching (Wang et al.
                2018) assumes aligned pairs, means compare "what the patches look like"
                wherever they are. Weight 10, pix2pixHD's.
    l1          per-pixel L1 to the reference: 0 by default, for retrieval pairs; set it
                (e.g. 100, pix2pix's) only for pixel-aligned pairs.
    perceptual  L1 between VGG-16 relu3_3 features of output and selfie (Johnson et al.
                2016), only with a local VGG-16 weights file; VGG then also replaces the
                random features of the style term.

The fixed feature space without any weights file is a seeded random-weight CNN: random
shallow convolutional features carry texture statistics well enough for Gram-matrix
texture synthesis (Ustyuzhaninov et al. 2017, "What does it take to generate natural
textures?"), and nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import TrainingConfigError

#: ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)
#: ImageNet statistics VGG-16 was trained with, for inputs in [0, 1].
_VGG_MEAN = (0.485, 0.456, 0.406)
_VGG_STD = (0.229, 0.224, 0.225)
#: torchvision vgg16().features indices after relu1_2, relu2_2, relu3_3.
_VGG_TAPS = (3, 8, 15)


@dataclass(frozen=True, slots=True)
class LossWeights:
    """The generator loss weights; see the module docstring for each term's source."""

    structure: float = 10.0
    identity: float = 5.0
    style: float = 100.0
    colour: float = 1.0
    adversarial: float = 1.0
    matching: float = 10.0
    l1: float = 0.0
    perceptual: float = 1.0


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma, same range."""
    weights = image.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True)


def structure_loss(output: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """L1 of 4x average-pooled luminance: layout and shading, not colour or texture."""
    return F.l1_loss(F.avg_pool2d(luminance(output), 4), F.avg_pool2d(luminance(base), 4))


def gram(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrix, normalised by C * H * W (Gatys et al. 2016)."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def colour_loss(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """L1 between per-image, per-channel means and standard deviations."""
    return F.l1_loss(output.mean(dim=(2, 3)), reference.mean(dim=(2, 3))) + F.l1_loss(
        output.std(dim=(2, 3)), reference.std(dim=(2, 3))
    )


class RandomFeatures(nn.Module):
    """A fixed, seeded random-weight CNN: three conv+ReLU stages (32, 64, 128 channels,
    strides 1, 2, 2) whose activations feed the Gram style loss. Never trained, never
    saved: the seed rebuilds it."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        shapes = ((3, 32, 1), (32, 64, 2), (64, 128, 2))
        convs = [nn.Conv2d(cin, cout, 3, s, 1, bias=False) for cin, cout, s in shapes]
        with torch.no_grad():
            for conv in convs:
                # He initialisation (He et al. 2015): ReLU activations keep their scale.
                std = (2.0 / (conv.in_channels * 9)) ** 0.5
                conv.weight.copy_(torch.randn(tuple(conv.weight.shape), generator=generator) * std)
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        x = image
        for conv in self.convs:
            x = F.relu(conv(x))
            taps.append(x)
        return taps


class VGGFeatures(nn.Module):
    """torchvision VGG-16's convolutional part from a local state dict, tapped at relu1_2,
    relu2_2 and relu3_3; inputs in [-1, 1] are mapped to ImageNet statistics."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from torchvision.models import vgg16

        if not weights.is_file():
            raise TrainingConfigError(
                f"--perceptual-weights: no VGG-16 weights file at {weights}; save "
                "torchvision's vgg16 state dict there (S2A_TRAIN__PERCEPTUAL_WEIGHTS), or "
                "unset it to train without a perceptual loss"
            )
        state = torch.load(weights, map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items()}
        features = {k: v for k, v in features.items() if k.split(".")[0].isdigit()}
        layers = vgg16(weights=None).features[: _VGG_TAPS[-1] + 1]
        try:
            layers.load_state_dict(
                {k: v for k, v in features.items() if int(k.split(".")[0]) <= _VGG_TAPS[-1]}
            )
        except RuntimeError as exc:
            raise TrainingConfigError(
                f"--perceptual-weights: {weights} is not a torchvision VGG-16 state dict: {exc}"
            ) from exc
        self.layers = layers
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(_VGG_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_VGG_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = ((image + 1) / 2 - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in _VGG_TAPS:
                taps.append(x)
        return taps


def style_loss(features: nn.Module, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Sum over ``features``' taps of the L1 distance between Gram matrices."""
    ours, theirs = features(output), features(reference)
    return sum(
        (F.l1_loss(gram(a), gram(b)) for a, b in zip(ours, theirs, strict=True)),
        output.new_zeros(()),
    )


def perceptual_loss(
    features: nn.Module, output: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """L1 between the last tap's features (VGG relu3_3) of ``output`` and ``target``."""
    return F.l1_loss(features(output)[-1], features(target)[-1])


def lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: scores pushed to 1 (real) or 0 (generated)."""
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


def matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """L1 between batch-and-space means of discriminator features, per layer (averaged)."""
    terms = [
        F.l1_loss(f.mean(dim=(0, 2, 3)), r.detach().mean(dim=(0, 2, 3)))
        for f, r in zip(fake, real, strict=True)
    ]
    return torch.stack(terms).mean()
