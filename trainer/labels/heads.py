"""Training the label heads on human-reviewed labels (``s2a labels train``).

:mod:`agents.labelheads` loads the heads this trains and applies them.

One head per learnable label (:data:`schemas.labels.LEARNABLE`) that has enough reviewed
faces: a multinomial logistic regression on the face embedding (128-d with dlib's
descriptor, 512-d with InceptionResnetV1), with class-balanced
weights (a rare value counts as much as a common one) and an L2 penalty, fitted by
full-batch L-BFGS from zeros (a convex problem: the same rows always give the same head).
A stratified share of the rows is held out: the head is judged on it (accuracy, balanced
accuracy, the majority-class share as the chance level) and its temperature is fitted on
it, so a reported confidence of 0.9 means about 90% right on faces the head has not seen.
The head that ships is the one those numbers describe, trained without the held-out rows.

When no label has enough reviewed faces, :func:`train_heads` raises
:class:`~trainer.errors.NotEnoughLabels`, with the counts per label.

Example::

    heads = train_heads(vectors, {"gender": ["female", "male", None, ...]})
    heads.metrics["gender"]["accuracy"]          # held-out accuracy
    heads.save(heads_path(settings))
    LabelHeads.load(heads_path(settings)).predict(vectors[:1])
    # [{'gender': ('female', 0.93)}]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agents.labelheads import Head, LabelHeads, check_vectors
from schemas.labels import LEARNABLE, VALUES, LabelName, check
from trainer.errors import NotEnoughLabels

__all__ = [
    "HOLDOUT_SHARE",
    "MIN_EXAMPLES",
    "MIN_PER_CLASS",
    "train_heads",
]

#: Reviewed faces a label needs (over the values kept) before it gets a head: fewer give
#: a held-out share too small to say whether the head beats chance.
MIN_EXAMPLES = 20
#: Reviewed faces a value needs to be learned; rarer values are left out of the head
#: (and named in its metrics), since a stratified split needs some on both sides.
MIN_PER_CLASS = 3
#: Share of each value's faces held out to measure and calibrate the head.
HOLDOUT_SHARE = 0.2
#: L2 penalty on the weights (the loss is a mean over rows, so this is per row): small,
#: the embedding's 128 (dlib) or 512 dimensions are far fewer than the rows it is meant for.
L2 = 1e-3
#: Upper bound of L-BFGS iterations; the fit converges in far fewer on unit vectors.
MAX_ITER = 200
#: Temperatures tried on the held-out rows (a grid: deterministic, and cheap).
_TEMPERATURES = np.exp(np.linspace(math.log(0.05), math.log(20.0), 121))


def train_heads(
    vectors: npt.NDArray[np.float32],
    labels: Mapping[str, Sequence[str | None]],
    *,
    seed: int = 0,
    embedder: str | None = None,
) -> LabelHeads:
    """Train a head for each label of ``labels`` that has enough reviewed faces.

    ``labels[name][i]`` is the reviewed value of ``name`` for row ``i`` of
    ``vectors``, or None where that face has none; ``seed`` picks the held-out rows;
    ``embedder`` names the embedder of ``vectors``, kept with the heads. Raises
    :class:`NotEnoughLabels` when no label qualifies, with the counts per label.
    """
    if len(vectors) == 0:
        raise NotEnoughLabels(_too_few({}, {}))
    x = check_vectors(vectors, "vectors")
    rows = x.shape[0]
    heads: dict[str, Head] = {}
    metrics: dict[str, dict[str, Any]] = {}
    trained_at = datetime.now(UTC).isoformat(timespec="seconds")
    for name in sorted(labels, key=_vocabulary_order):
        values = labels[name]
        if name not in {n.value for n in LEARNABLE}:
            learnable = ", ".join(n.value for n in LEARNABLE)
            raise ValueError(f"label {name!r} is not learnable; heads learn: {learnable}")
        if len(values) != rows:
            raise ValueError(
                f"labels[{name!r}] has {len(values)} values for {rows} vectors; "
                "give one value (or None) per vector"
            )
        picked = [(i, check(name, v)[1]) for i, v in enumerate(values) if v is not None]
        counts = Counter(value for _, value in picked)
        kept = [v for v in VALUES[LabelName(name)] if counts[v] >= MIN_PER_CLASS]
        dropped = {v: n for v, n in sorted(counts.items()) if n < MIN_PER_CLASS}
        usable = sum(counts[v] for v in kept)
        report: dict[str, Any] = {"counts": dict(sorted(counts.items()))}
        if dropped:
            report["dropped"] = dropped
        if len(kept) < 2:
            report["skipped"] = (
                f"{len(kept)} value(s) with at least {MIN_PER_CLASS} reviewed faces; a head needs 2"
            )
        elif usable < MIN_EXAMPLES:
            report["skipped"] = (
                f"{usable} reviewed faces over the values kept; a head needs {MIN_EXAMPLES}"
            )
        if "skipped" in report:
            metrics[name] = report
            continue
        index = np.array([i for i, v in picked if v in kept], dtype=np.int64)
        target = np.array([kept.index(v) for _, v in picked if v in kept], dtype=np.int64)
        with _one_thread():
            head, scores = _fit(x[index], target, tuple(kept), seed)
        heads[name] = head
        metrics[name] = {**report, "classes": list(kept), **scores, "trained_at": trained_at}
    if not heads:
        raise NotEnoughLabels(_too_few(metrics, labels))
    return LabelHeads(heads, x.shape[1], metrics, embedder)


# -- fitting --------------------------------------------------------------------------------


def _fit(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], classes: tuple[str, ...], seed: int
) -> tuple[Head, dict[str, Any]]:
    """One head on rows ``x`` with class indices ``y``, and its held-out scores."""
    train, held = _stratified_split(y, HOLDOUT_SHARE, seed)
    k = len(classes)
    xt = torch.from_numpy(x[train]).to(torch.float64)
    yt = torch.from_numpy(y[train])
    counts = torch.bincount(yt, minlength=k).to(torch.float64)
    # Balanced: each value's rows weigh len(train) / (k * its count), so every value
    # contributes the same total to the loss.
    class_weight = counts.sum() / (k * counts)
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias], max_iter=MAX_ITER, line_search_fn="strong_wolfe", tolerance_grad=1e-7
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = xt @ weight.T + bias
        loss = torch.nn.functional.cross_entropy(logits, yt, weight=class_weight)
        loss = loss + 0.5 * L2 * (weight * weight).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    w32 = weight.detach().to(torch.float32).numpy()
    b32 = bias.detach().to(torch.float32).numpy()
    logits = (x[held] @ w32.T + b32).astype(np.float64)
    truth = y[held]
    temperature = _temperature(logits, truth)
    predicted = logits.argmax(axis=1)
    recalls = [float(np.mean(predicted[truth == c] == c)) for c in range(k)]
    scores = {
        "train": len(train),
        "held_out": len(held),
        "accuracy": round(float(np.mean(predicted == truth)), 4),
        "balanced_accuracy": round(float(np.mean(recalls)), 4),
        "chance": round(float(np.bincount(truth, minlength=k).max() / len(truth)), 4),
        "temperature": round(temperature, 4),
    }
    return Head(classes, w32, b32, temperature), scores


@contextmanager
def _one_thread() -> Iterator[None]:
    """Fit on one thread: on matrices this small, threads spend longer waiting for each
    other (and for the cores a worker holds) than computing (measured 30x slower with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _stratified_split(
    y: npt.NDArray[np.int64], share: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices (train, held out): ``share`` of each class held out, at least one, and
    at least one left to train on."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_held = min(max(1, round(share * len(rows))), len(rows) - 1)
        held.extend(rows[:n_held].tolist())
        train.extend(rows[n_held:].tolist())
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(held), dtype=np.int64)


def _temperature(logits: npt.NDArray[np.float64], truth: npt.NDArray[np.int64]) -> float:
    """The temperature that minimises the held-out negative log-likelihood."""
    best, best_nll = 1.0, math.inf
    for t in _TEMPERATURES:
        scaled = logits / t
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_p = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        nll = float(-log_p[np.arange(len(truth)), truth].mean())
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def _vocabulary_order(name: str) -> int:
    names = [n.value for n in LabelName]
    return names.index(name) if name in names else len(names)


def _too_few(metrics: Mapping[str, Mapping[str, Any]], labels: Mapping[str, Any]) -> str:
    if not labels:
        have = "no reviewed labels at all"
    else:
        have = "; ".join(
            f"{name}: {sum(m['counts'].values())} over {len(m['counts'])} value(s)"
            for name, m in metrics.items()
        )
    return (
        f"too few human labels to train any label head ({have}); a head needs at least "
        f"{MIN_EXAMPLES} reviewed faces over at least 2 values with {MIN_PER_CLASS} or more "
        "each. Review more faces (s2a review), then run `s2a labels train` again"
    )
