"""The evaluation gate: measure a converter on a snapshot's validation split, and decide
whether a candidate may replace the champion.

**Metrics** (:func:`evaluate`), each a mean over the validation pairs, at the version's
training resolution:

``l1``, ``ssim``, ``psnr``
    Reconstruction against the pair's anime reference. Pairs are *retrieval* pairs: the
    reference is another face drawn in the target style, not a drawing of this selfie,
    and nothing is pixel-aligned. These are **reference-similarity** numbers (how close in
    layout, tone and colour the output lands to a face the matcher found similar), not
    reconstruction errors; useful to compare two models on the same split, meaningless as
    absolute quality. L1: mean absolute difference, [0, 1] per pixel and channel. PSNR:
    ``10 log10(1 / MSE)`` in dB on [0, 1] values. SSIM: Wang, Bovik, Sheikh and Simoncelli,
    "Image quality assessment: from error visibility to structural similarity", IEEE TIP
    13(4), 2004 — Gaussian window sigma 1.5 (11 x 11), K1 0.01, K2 0.03, L 1, per RGB
    channel, the map's mean over the pixels 5 px inside the border (the paper's "valid"
    window positions), in [-1, 1].
``identity``
    Identity preservation: the ingestion embedder (``agents.stages.embed``, the one
    ``S2A_MODELS__EMBEDDER`` names) on the input crop and on the output, both in the same
    aligned frame: the selfie crop is aligned with the loose template, and the output is
    an image of that same frame, so both get the template's face box
    (:data:`TEMPLATE_FACE_BOX`) and landmarks instead of a detector's. Both are resized
    (cubic) to ``gate.embed_side`` first, so a 32 px test model is embedded as a 128 px
    production one is. Euclidean distance of the unit vectors, 0..2 (two photos of one
    person: 0.08-0.29 with dlib, BENCHMARKS.md "Identity").
``style_z``
    Style against the target style's references: the rendering statistics of
    ``agents.references.style`` (``measure``) of the output against those of the
    snapshot's anime references of the record's style (resized to the same resolution, as
    training sees them). Each statistic's robust z-score (``robust_z``, with the module's
    floors), then the larger of the two one-sided composites of ``INDICES``
    ("photographic", "sketched"): how far the output leans away from how the style is
    drawn. 0 or below: drawn like the references; the reference check quarantines at 3.5.
    ``style_photographic`` and ``style_sketched`` are the two composites' means.

**Gate** (:func:`judge_candidate`): with a champion, both are evaluated on the *same*
split (the new snapshot's validation pairs) and the candidate passes when no metric is
worse than the champion's by more than its tolerance (``settings.gate``); with no champion
yet, it passes when every metric is within the absolute limits. A metric that could not
be measured (no embedder, fewer than 2 references) is skipped and the reason says so.

Example::

    generator = load_generator(version_dir)
    metrics = evaluate(generator, manifest.split("validation"), blobs, resolution=128,
                       embedder=build_embedder(settings.models), references=refs)
    verdict = judge_candidate(metrics, champion_metrics, settings.gate)
    verdict.promote, verdict.reason
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch

from agents.records import EMBED_SIZE, CleanImage, EmbedInput
from agents.references.style import INDICES, STATISTICS, measure, robust_z
from agents.stages.align import LOOSE_TEMPLATE, align
from agents.stages.embed import Embedder
from agents.stores.blobs import BlobStore
from schemas.manifest import ManifestRecord
from schemas.settings import GateSettings
from trainer.errors import DatasetError, EvaluationError
from trainer.torchdata import PairDataset, decode_rgb, square_resize, to_rgb

RGB = npt.NDArray[np.uint8]
Stats = dict[str, float]

#: The face box (x1, y1, x2, y2, fractions of the side) of a loose-template aligned crop:
#: the mean MTCNN box of 12 London-set photos (tests/data/real) mapped into the 512 px
#: template frame by their alignment transforms (spread under 0.02 on every side). dlib's
#: 5-point predictor is given this box, as ingestion gives it the detector's.
TEMPLATE_FACE_BOX = (0.2304, 0.1767, 0.7650, 0.8951)

#: SSIM's constants (Wang et al. 2004, section III.C): K1, K2, Gaussian sigma and window.
SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW = 0.01, 0.03, 1.5, 11

Direction = Literal["lower", "higher"]


# -- pixel metrics --------------------------------------------------------------------------


def _unit(image: RGB) -> npt.NDArray[np.float64]:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
    return image.astype(np.float64) / 255.0


def l1(a: RGB, b: RGB) -> float:
    """Mean absolute difference of two RGB uint8 images of one shape, on [0, 1] values."""
    return float(np.mean(np.abs(_unit(a) - _unit(b))))


def psnr(a: RGB, b: RGB) -> float:
    """Peak signal-to-noise ratio ``10 log10(1 / MSE)`` in dB on [0, 1] values; 100 dB
    for identical images (an infinite ratio would poison means)."""
    mse = float(np.mean((_unit(a) - _unit(b)) ** 2))
    return 100.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)


def ssim(a: RGB, b: RGB) -> float:
    """Structural similarity of two RGB uint8 images of one shape (>= 11 px a side), in
    [-1, 1]: Wang et al. (2004), eq. 13 with a Gaussian window (see the module docstring),
    per channel, averaged over the positions where the whole window fits the image."""
    x, y = _unit(a), _unit(b)
    if x.shape != y.shape or min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs two images of one shape >= {SSIM_WINDOW} px, got {x.shape}")
    c1, c2 = (SSIM_K1 * 1.0) ** 2, (SSIM_K2 * 1.0) ** 2

    def blur(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        size = (SSIM_WINDOW, SSIM_WINDOW)
        return np.asarray(cv2.GaussianBlur(z, size, SSIM_SIGMA), dtype=np.float64)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    m = SSIM_WINDOW // 2
    return float(np.mean(ssim_map[m:-m, m:-m]))


# -- identity -------------------------------------------------------------------------------


def template_input(image: RGB, side: int) -> EmbedInput:
    """An aligned (loose-template) face image as the embedder reads it, at ``side`` px:
    the template's face box for dlib, the tight 160 px crop re-aligned from the template's
    landmarks for InceptionResnetV1 (as ``agents.reembed`` does for stored crops)."""
    if side <= EMBED_SIZE:
        raise ValueError(f"side must exceed {EMBED_SIZE} (the loose template's range), got {side}")
    resized: RGB = np.ascontiguousarray(
        cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC), dtype=np.uint8
    )
    box = tuple(float(v) * side for v in TEMPLATE_FACE_BOX)
    points = LOOSE_TEMPLATE * float(side)
    tight = align(CleanImage(resized, "PNG"), points, sizes=(EMBED_SIZE,)).crops[EMBED_SIZE]
    return EmbedInput(resized, (box[0], box[1], box[2], box[3]), tight)


def identity_distances(
    embedder: Embedder, inputs: Sequence[RGB], outputs: Sequence[RGB], side: int
) -> list[float]:
    """Euclidean distance of the unit embeddings of each input and its output (0..2)."""
    faces = [template_input(image, side) for image in [*inputs, *outputs]]
    vectors = embedder.embed(faces)
    n = len(inputs)
    return [float(np.linalg.norm(vectors[i] - vectors[n + i])) for i in range(n)]


# -- style ----------------------------------------------------------------------------------


def reference_statistics(
    records: Sequence[ManifestRecord], blobs: BlobStore, resolution: int
) -> dict[str, list[Stats]]:
    """``style -> rendering statistics`` of the distinct anime references of ``records``,
    each resized to ``resolution`` (as training sees it) before it is measured."""
    seen: dict[str, set[str]] = defaultdict(set)
    stats: dict[str, list[Stats]] = defaultdict(list)
    for record in records:
        digest = record.anime.training
        if digest in seen[record.style]:
            continue
        seen[record.style].add(digest)
        try:
            data = blobs.read(digest)
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"pair {record.pair_id}: anime blob {digest}: {exc}") from exc
        image = square_resize(decode_rgb(data, f"pair {record.pair_id} anime"), resolution)
        stats[record.style].append(measure(image))
    return dict(stats)


def style_scores(output: RGB, references: Sequence[Stats]) -> dict[str, float]:
    """The composites of ``INDICES`` (z units) of ``output`` against ``references``."""
    row = measure(output)
    zs = {
        s.name: robust_z(
            [s.scale(float(r[s.name])) for r in references], s.scale(float(row[s.name])), s.floor
        )
        for s in STATISTICS
    }
    return {index.name: index.z(zs) for index in INDICES}


# -- evaluating a generator -----------------------------------------------------------------


@torch.no_grad()
def evaluate(
    generator: torch.nn.Module,
    records: Sequence[ManifestRecord],
    blobs: BlobStore,
    *,
    resolution: int,
    condition: Any,
    embedder: Embedder | None,
    references: Mapping[str, Sequence[Stats]],
    embed_side: int = 256,
    batch_size: int = 8,
) -> dict[str, float | None]:
    """Every metric of the module docstring for ``generator`` on ``records`` (validation).

    ``generator(selfie, condition) -> output`` takes and returns float32 (N, 3, H, W) in
    [-1, 1]; ``condition`` is the family's function of the selfie crop (pix2pix-lora:
    ``stylise``). ``embedder`` None skips ``identity``; a style with fewer than 2
    ``references`` skips ``style_z`` for its records. Returns metric -> mean (None when
    skipped), plus ``pairs``, the number of records.
    """
    if not records:
        raise EvaluationError("no validation pair to evaluate on; snapshot with more subjects")
    dataset = PairDataset(records, blobs, resolution, condition=condition, augment=False)
    was_training = generator.training
    generator.eval()
    inputs: list[RGB] = []
    outputs: list[RGB] = []
    targets: list[RGB] = []
    try:
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            selfie = torch.stack([s["selfie"] for s in samples])
            base = torch.stack([s["condition"] for s in samples])
            out = generator(selfie, base)
            for sample, image in zip(samples, out, strict=True):
                inputs.append(to_rgb(sample["selfie"]))
                outputs.append(to_rgb(image))
                targets.append(to_rgb(sample["anime"]))
    finally:
        generator.train(was_training)

    metrics: dict[str, float | None] = {
        "pairs": float(len(records)),
        "l1": _mean(l1(o, t) for o, t in zip(outputs, targets, strict=True)),
        "ssim": _mean(ssim(o, t) for o, t in zip(outputs, targets, strict=True)),
        "psnr": _mean(psnr(o, t) for o, t in zip(outputs, targets, strict=True)),
        "identity": None,
        "style_z": None,
        "style_photographic": None,
        "style_sketched": None,
    }
    if embedder is not None:
        metrics["identity"] = _mean(identity_distances(embedder, inputs, outputs, embed_side))
    scored = [
        style_scores(o, references[r.style])
        for o, r in zip(outputs, records, strict=True)
        if len(references.get(r.style, ())) >= 2
    ]
    if scored:
        metrics["style_z"] = _mean(max(s.values()) for s in scored)
        for index in INDICES:
            metrics[f"style_{index.name}"] = _mean(s[index.name] for s in scored)
    return metrics


def _mean(values: Any) -> float:
    data = [float(v) for v in values]
    return round(float(np.mean(data)), 6) if data else float("nan")


# -- loading a version's generator ----------------------------------------------------------


def load_generator(version_dir: Path) -> torch.nn.Module:
    """The merged generator of a version directory (``generator.json`` and
    ``generator.safetensors``: the base with its adapter folded in), in eval mode."""
    from safetensors.torch import load_file

    from trainer.families.pix2pix_lora.model import (
        GENERATOR_CONFIG,
        GENERATOR_WEIGHTS,
        GeneratorConfig,
        build_model,
    )

    for needed in (GENERATOR_CONFIG, GENERATOR_WEIGHTS):
        if not (version_dir / needed).is_file():
            raise EvaluationError(f"{version_dir} has no {needed}: it holds no finished version")
    generator = build_model(GeneratorConfig.load(version_dir))
    try:
        generator.load_state_dict(load_file(version_dir / GENERATOR_WEIGHTS))
    except RuntimeError as exc:
        raise EvaluationError(f"{version_dir}: weights do not fit generator.json: {exc}") from exc
    return generator.eval()


# -- the gate -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One metric's comparison: passed, or why not."""

    metric: str
    direction: Direction
    candidate: float | None
    champion: float | None
    limit: float | None
    passed: bool | None
    """None: skipped (not measured)"""
    note: str


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """The gate's decision, every check behind it, and one line saying why."""

    promote: bool
    reason: str
    checks: tuple[Check, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "checks": [asdict(c) for c in self.checks],
        }


def _rules(gate: GateSettings) -> list[tuple[str, Direction, float, float | None]]:
    """(metric, better direction, tolerance against the champion, absolute limit)."""
    return [
        ("l1", "lower", gate.l1_tolerance, gate.max_l1),
        ("ssim", "higher", gate.ssim_tolerance, gate.min_ssim),
        ("psnr", "higher", gate.psnr_tolerance, None),
        ("identity", "lower", gate.identity_tolerance, gate.max_identity_distance),
        ("style_z", "lower", gate.style_tolerance, gate.max_style_z),
    ]


def judge_candidate(
    candidate: Mapping[str, float | None],
    champion: Mapping[str, float | None] | None,
    gate: GateSettings,
) -> GateVerdict:
    """Promote ``candidate`` when no metric is worse than ``champion``'s beyond its
    tolerance, or, with no champion (None), when each is within the absolute limits.

    Both metric sets must come from :func:`evaluate` on the same records.
    """
    checks: list[Check] = []
    for metric, direction, tolerance, absolute in _rules(gate):
        value = candidate.get(metric)
        theirs = None if champion is None else champion.get(metric)
        sign = 1.0 if direction == "lower" else -1.0
        if value is None:
            checks.append(Check(metric, direction, None, theirs, None, None, "not measured"))
            continue
        if not math.isfinite(value):
            checks.append(Check(metric, direction, value, theirs, None, False, "not finite"))
            continue
        if champion is not None:
            if theirs is None or not math.isfinite(theirs):
                note = "champion not measured: not compared"
                checks.append(Check(metric, direction, value, theirs, None, None, note))
                continue
            limit = theirs + sign * tolerance
            passed = sign * (value - limit) <= 0
            worse = "above" if direction == "lower" else "below"
            note = (
                f"{value:.4g} vs champion {theirs:.4g} (limit {limit:.4g})"
                if passed
                else f"{value:.4g} is {worse} champion {theirs:.4g} beyond tolerance {tolerance}"
            )
            checks.append(Check(metric, direction, value, theirs, limit, passed, note))
        elif absolute is None:
            checks.append(Check(metric, direction, value, None, None, None, "no absolute limit"))
        else:
            passed = sign * (value - absolute) <= 0
            word = "at most" if direction == "lower" else "at least"
            note = f"{value:.4g}, {word} {absolute:.4g} " + ("holds" if passed else "fails")
            checks.append(Check(metric, direction, value, None, absolute, passed, note))
    failed = [c for c in checks if c.passed is False]
    skipped = [c.metric for c in checks if c.passed is None]
    against = "the champion" if champion is not None else "the first-version limits"
    if failed:
        reason = f"refused against {against}: " + "; ".join(f"{c.metric} {c.note}" for c in failed)
    elif not any(c.passed for c in checks):
        failed_all = "no metric could be compared"
        return GateVerdict(False, f"refused: {failed_all}", tuple(checks))
    else:
        reason = f"passed against {against}"
    if skipped:
        reason += f" (not compared: {', '.join(skipped)})"
    return GateVerdict(not failed, reason, tuple(checks))
