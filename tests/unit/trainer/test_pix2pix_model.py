"""pix2pix-lora's networks: an untrained generator returns the stylised base, every
learnable layer is one LoRA can adapt, and the family registry finds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainer.errors import TrainingConfigError
from trainer.families import FAMILIES, get_family
from trainer.families.pix2pix_lora.model import (
    BASE_SCALE,
    GeneratorConfig,
    PatchDiscriminator,
    build_model,
    count_parameters,
    lora_targets,
    prepare,
    stylise,
)
from trainer.torchdata import square_resize


def _face(size: int) -> np.ndarray:
    from PIL import Image
    from snapshot_fixture import LONDON_BOX, london_photos

    with Image.open(london_photos()[0]) as image:
        return square_resize(np.asarray(image.convert("RGB").crop(LONDON_BOX)), size)


def test_stylise_is_a_deterministic_same_shape_image() -> None:
    face = _face(64)
    out = stylise(face)
    assert out.shape == face.shape
    assert out.dtype == np.uint8
    assert np.array_equal(out, stylise(face))
    # It flattens: fewer distinct colours than the photo, and still the same picture.
    assert len(np.unique(out.reshape(-1, 3), axis=0)) < len(np.unique(face.reshape(-1, 3), axis=0))
    assert np.abs(out.astype(int) - face.astype(int)).mean() < 40
    with pytest.raises(ValueError, match="uint8 RGB"):
        stylise(face.astype(np.float32))


def test_untrained_generator_returns_the_stylised_base() -> None:
    torch.manual_seed(0)
    generator = build_model(GeneratorConfig(width=8, levels=2, res_blocks=1))
    selfie, base = prepare(_face(64), 32)
    assert selfie.shape == base.shape == (1, 3, 32, 32)
    out = generator(selfie, base)
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out, torch.tanh(torch.atanh(base * BASE_SCALE)), atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 8"):
        generator(selfie[..., :28, :28], base[..., :28, :28])


def test_default_sizes_and_lora_targets() -> None:
    generator = build_model()
    assert 2_000_000 < count_parameters(generator) < 6_000_000  # "a few million"
    modules = dict(generator.named_modules())
    targets = lora_targets(generator)
    assert targets
    assert all(isinstance(modules[name], nn.Conv2d) for name in targets)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in modules.values())
    scores = PatchDiscriminator(width=8)(torch.zeros(2, 3, 64, 64))[1]
    assert scores.shape == (2, 1, 6, 6)  # 64 / 8 - 2


def test_registry() -> None:
    family = get_family("pix2pix-lora")
    assert set(FAMILIES) == {"pix2pix-lora", "sd-lora"}
    assert callable(family.parse_args)
    assert callable(family.main)
    assert count_parameters(family.build_model(GeneratorConfig(width=8))) > 0
    with pytest.raises(TrainingConfigError, match="families are: pix2pix-lora, sd-lora"):
        get_family("cyclegan")
