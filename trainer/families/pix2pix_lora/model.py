"""pix2pix-lora's networks: a residual U-Net generator over a classical stylisation of its
input, and a PatchGAN discriminator. Serving imports this module (and nothing else of the
trainer) to run a trained generator.

**Why a residual over a classical stylisation.** A GAN generator trained from scratch for
a few CPU minutes draws noise. This one never starts from nothing: :func:`stylise` turns
the selfie into a cel-shaded portrait with the real-time video abstraction of Winnemöller,
Olsen and Gooch (2006): iterated bilateral filtering (flat regions, kept edges), soft
quantisation of CIELAB lightness into tone bands, and difference-of-Gaussians lines. The
generator sees the selfie and that base, and learns a *residual* on top of it::

    out = tanh(atanh(0.98 * base) + r(selfie, base))      r's last conv is zero at init

so an untrained generator already returns the stylised portrait (``atanh`` keeps the sum
inside ``(-1, 1)`` with smooth gradients), and every training step can only move it
towards the anime references. Serving must compute the same base: :func:`prepare` does
both steps for an RGB crop.

Shapes: ``selfie`` and ``base`` are float32 ``(N, 3, H, W)`` in ``[-1, 1]`` with ``H`` and
``W`` multiples of ``2 ** (levels + 1)`` (16 by default: the network runs at half
resolution); the output has the same shape and range.
The discriminator takes ``(N, 3, H, W)`` images and returns its intermediate feature maps
and a ``(N, 1, H/8 - 2, W/8 - 2)`` map of patch scores (70 x 70 px receptive field at
width 64, as pix2pix's; Isola et al. 2017).

Every learnable layer is a ``Conv2d`` (strided convs down, nearest-neighbour upsampling
then a conv up): peft's LoRA adapts ``Conv2d`` and ``Linear`` but not ``ConvTranspose2d``,
and resize-convolution also avoids checkerboard artefacts (Odena et al. 2016).

Example::

    generator = build_model(GeneratorConfig(width=32, res_blocks=2))
    selfie, base = prepare(crop_rgb_uint8, size=256)          # (1, 3, 256, 256) each
    anime = generator(selfie, base)                           # (1, 3, 256, 256) in [-1, 1]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

RGB = npt.NDArray[np.uint8]

GENERATOR_CONFIG = "generator.json"
GENERATOR_WEIGHTS = "generator.safetensors"
DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"

#: ``atanh`` of a base value at ±1 is infinite: the base is scaled into (-0.98, 0.98).
BASE_SCALE = 0.98

# -- the classical stylisation ------------------------------------------------------------

#: Winnemöller et al. (2006) parameters, for a 128 px face (spatial ones scale with size).
_BILATERAL_ITERATIONS = 3
_BILATERAL_SIGMA_COLOUR = 20.0
_BILATERAL_SIGMA_SPACE = 1.5
_TONE_BANDS = 8
_TONE_SHARPNESS = 3.0
_SATURATION = 1.2
_DOG_SIGMA = 0.6
_DOG_K = 1.6  # the sigma ratio of Marr-Hildreth's DoG approximation of the LoG
_DOG_TAU = 0.98
_DOG_PHI = 40.0


def stylise(rgb: RGB) -> RGB:
    """A cel-shaded version of an RGB uint8 face crop (same shape; any size >= 8 px).

    Deterministic and about 3 ms at 128 px on one core. See the module docstring for the
    method and its source.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"stylise takes H x W x 3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    scale = min(rgb.shape[:2]) / 128.0
    smooth = np.ascontiguousarray(rgb)
    for _ in range(_BILATERAL_ITERATIONS):
        smooth = np.asarray(
            cv2.bilateralFilter(
                smooth,
                d=-1,
                sigmaColor=_BILATERAL_SIGMA_COLOUR,
                sigmaSpace=_BILATERAL_SIGMA_SPACE * scale,
            ),
            dtype=np.uint8,
        )
    # CIELAB: L in 0..100. float32 throughout (OpenCV's float colour conversions need it).
    lab = _f32(cv2.cvtColor(smooth.astype(np.float32) / np.float32(255), cv2.COLOR_RGB2LAB))
    lightness = lab[..., 0].copy()
    band = np.float32(100.0 / _TONE_BANDS)
    nearest = _f32(np.round(lightness / band) * band)
    # Soft quantisation: flat tone bands with smooth steps between them (no banding noise).
    lab[..., 0] = nearest + band / 2 * np.tanh(_TONE_SHARPNESS * 2 * (lightness - nearest) / band)
    lab[..., 1:] *= np.float32(_SATURATION)
    toned = _f32(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))
    grey = _f32(lightness / np.float32(100))
    sigma = _DOG_SIGMA * scale
    dog = _f32(cv2.GaussianBlur(grey, (0, 0), sigma)) - np.float32(_DOG_TAU) * _f32(
        cv2.GaussianBlur(grey, (0, 0), _DOG_K * sigma)
    )
    lines = _f32(np.where(dog > 0, 1.0, 1.0 + np.tanh(_DOG_PHI * dog)))
    lines = _f32(cv2.GaussianBlur(lines, (0, 0), 0.5 * scale))
    out = np.clip(toned * lines[..., None], 0.0, 1.0)
    return (out * 255.0 + 0.5).astype(np.uint8)


def _f32(array: object) -> npt.NDArray[np.float32]:
    return np.asarray(array, dtype=np.float32)


def prepare(rgb: RGB, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An RGB uint8 face crop -> the generator's ``(selfie, base)``, each (1, 3, size, size)
    float32 in [-1, 1]; the crop is resized (area) to ``size`` first, as in training."""
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA))
    selfie, base = (
        torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32) / np.float32(127.5) - 1)[None]
        for x in (rgb, stylise(rgb))
    )
    return selfie, base


# -- the generator ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """The generator's shape; saved beside its weights as ``generator.json``.

    ``width`` channels at full resolution, doubled at each of ``levels`` strided convs;
    ``res_blocks`` residual blocks at the bottom. width 32, 3 levels, 2 blocks: 3.6 M
    parameters, most in the bottom blocks (256 channels at 1/8 resolution).
    """

    width: int = 32
    levels: int = 3
    res_blocks: int = 2

    def as_dict(self) -> dict[str, Any]:
        return {"family": "pix2pix-lora", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        return cls(**{k: int(v) for k, v in data.items() if k in ("width", "levels", "res_blocks")})

    def save(self, folder: Path) -> None:
        (folder / GENERATOR_CONFIG).write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> GeneratorConfig:
        return cls.from_dict(json.loads((folder / GENERATOR_CONFIG).read_text()))


def _norm(channels: int) -> nn.Module:
    # Instance norm (Ulyanov et al. 2016), as pix2pix/CycleGAN: per-image statistics,
    # independent of batch size and of the other processes of a multi-GPU run.
    return nn.InstanceNorm2d(channels, affine=True)


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(
                cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2 if stride == 1 else 1
            ),
            _norm(cout),
            nn.LeakyReLU(0.2),
        )


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Up(nn.Module):
    """Nearest-neighbour x2, then a conv over the upsampled map and the skip."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = _ConvBlock(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Generator(nn.Module):
    """U-Net residual generator: ``forward(selfie, base) -> anime`` (see the module doc)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.width * 2**i for i in range(config.levels + 1)]
        # Pixel-unshuffle in (Shi et al. 2016), bilinear upsampling of the residual out: the
        # network runs at half resolution, 4x cheaper than full-resolution first and last
        # stages on a CPU. The base carries the fine detail at full resolution; the
        # residual restyles it smoothly. (A pixel-shuffle output was tried first: within
        # 100 steps the adversarial term turned its 2x2 sub-pixel phases into a visible
        # dot grid.)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.stem = _ConvBlock(6 * 4, widths[0])
        self.down = nn.ModuleList(
            _ConvBlock(widths[i], widths[i + 1], kernel=4, stride=2) for i in range(config.levels)
        )
        self.middle = nn.Sequential(*(_ResBlock(widths[-1]) for _ in range(config.res_blocks)))
        self.up = nn.ModuleList(
            _Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(config.levels))
        )
        self.head = nn.Conv2d(widths[0], 3, 3, padding=1)
        # Zero init (as ControlNet's zero convolutions): the untrained residual is 0 and the
        # output is the stylised base, not noise.
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def forward(self, selfie: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        multiple = 2 ** (self.config.levels + 1)
        if selfie.shape[-2] % multiple or selfie.shape[-1] % multiple:
            raise ValueError(
                f"height and width must be multiples of {multiple}, got {tuple(selfie.shape[-2:])}"
            )
        x = self.stem(self.unshuffle(torch.cat([selfie, base], dim=1)))
        skips = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = self.middle(x)
        for up, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = up(x, skip)
        residual = nn.functional.interpolate(
            self.head(x), scale_factor=2, mode="bilinear", align_corners=False
        )
        return torch.tanh(torch.atanh(base * BASE_SCALE) + residual)


def build_model(config: GeneratorConfig | None = None) -> Generator:
    """A freshly initialised generator (the family registry's ``build_model``)."""
    return Generator(config or GeneratorConfig())


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the modules LoRA adapts: every ``Conv2d`` and ``Linear`` of ``model``."""
    return [
        name for name, module in model.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)
    ]


# -- the discriminator --------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): scores overlapping patches as anime or generated.

    It is unconditional, seeing only the anime side: retrieval pairs are not pixel-aligned
    (the reference is another face), so a discriminator shown (selfie, reference) would
    learn "the faces differ" rather than "this is the style". ``forward`` returns the
    feature maps of each layer (for feature matching) and the final patch scores.
    """

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2))
        ]
        channels = width
        for i in range(1, layers + 1):
            cout = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, cout, 4, stride=stride, padding=1),
                    _norm(cout),
                    nn.LeakyReLU(0.2),
                )
            )
            channels = cout
        self.blocks = nn.ModuleList(blocks)
        self.score = nn.Conv2d(channels, 1, 4, padding=1)

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features: list[torch.Tensor] = []
        x = image
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features, self.score(x)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
