"""The gate's metrics and verdicts on plain arrays and metric dictionaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.settings import GateSettings
from trainer.evaluate import judge_candidate, l1, psnr, ssim


def _image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_pixel_metrics_on_known_images() -> None:
    a = _image(0)
    assert l1(a, a) == 0.0
    assert psnr(a, a) == 100.0
    assert ssim(a, a) == pytest.approx(1.0)

    black, white = np.zeros_like(a), np.full_like(a, 255)
    assert l1(black, white) == 1.0
    assert psnr(black, white) == 0.0  # MSE 1 on [0, 1] values
    grey = np.full_like(a, 128)
    assert psnr(black, grey) == pytest.approx(-10 * math.log10((128 / 255) ** 2))
    # Unrelated noise is structurally unlike; a slightly brightened copy is alike.
    assert abs(ssim(a, _image(1))) < 0.1
    assert ssim(a, np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)) > 0.9
    with pytest.raises(ValueError, match="one shape"):
        ssim(a, _image(0, 8)[:8, :8])


GOOD = {"l1": 0.30, "ssim": 0.20, "psnr": 9.0, "identity": 0.50, "style_z": 1.0}


def test_first_candidate_is_judged_against_absolute_limits() -> None:
    gate = GateSettings()
    assert judge_candidate(GOOD, None, gate).promote

    verdict = judge_candidate(GOOD | {"identity": 1.2}, None, gate)

    assert not verdict.promote
    assert verdict.reason.startswith("refused against the first-version limits: identity 1.2")
    failed = [c.metric for c in verdict.checks if c.passed is False]
    assert failed == ["identity"]


def test_candidate_against_champion_within_and_beyond_tolerance() -> None:
    gate = GateSettings(l1_tolerance=0.02, style_tolerance=0.5)
    slightly_worse = GOOD | {"l1": 0.31, "style_z": 1.4}
    assert judge_candidate(slightly_worse, GOOD, gate).promote

    verdict = judge_candidate(GOOD | {"ssim": 0.1, "style_z": 2.0}, GOOD, gate)

    assert not verdict.promote
    assert [c.metric for c in verdict.checks if c.passed is False] == ["ssim", "style_z"]
    assert "ssim 0.1 is below champion 0.2 beyond tolerance" in verdict.reason


def test_unmeasured_metrics_are_skipped_and_said() -> None:
    verdict = judge_candidate(GOOD | {"identity": None}, GOOD, GateSettings())
    assert verdict.promote
    assert verdict.reason.endswith("(not compared: identity)")
    nan = judge_candidate(GOOD | {"l1": float("nan")}, None, GateSettings())
    assert not nan.promote
    nothing = judge_candidate(dict.fromkeys(GOOD), None, GateSettings())
    assert not nothing.promote
    assert "no metric could be compared" in nothing.reason


def test_identity_in_the_template_frame_tells_people_apart() -> None:
    """dlib given the template's face box, on crops aligned as ingestion aligns them: two
    photos of one person measure near, two people far (London set: 0.17 vs 0.44-0.50)."""
    from PIL import Image
    from snapshot_fixture import DATA

    from agents.records import CleanImage
    from agents.stages.align import align
    from agents.stages.detect import MtcnnDetector
    from agents.stages.embed import DlibResnetEmbedder
    from trainer.evaluate import identity_distances

    detector = MtcnnDetector()
    crops = []
    for name in ("london_001_neutral", "london_001_smiling", "london_003_neutral"):
        image = CleanImage(
            np.asarray(Image.open(DATA / "real" / f"{name}.jpg").convert("RGB")), "JPEG"
        )
        face = max(detector.detect([image])[0], key=lambda d: d.prob)
        crops.append(align(image, face.landmarks, sizes=(256,)).crops[256])
    neutral, smiling, other = crops

    same, different = identity_distances(
        DlibResnetEmbedder(batch_size=4), [neutral, neutral], [smiling, other], side=256
    )

    assert same < 0.3 < different
