"""Training the label heads on human-reviewed labels (``s2a labels train``).

:mod:`agents.labelheads` loads the heads this trains and applies them.

One head per learnable label (:data:`schemas.labels.LEARNABLE`) that has enough reviewed
faces: a multinomial logistic regression on the face embedding (128-d with dlib's
descriptor, 512-d with InceptionResnetV1), with class-balanced
weights (a rare value counts as much as a common one) and an L2 penalty, fitted by
full-batch L-BFGS from zeros (a convex problem: the same rows always give the same head).

**Judged on people it has not seen.** The faces are cut into :data:`FOLDS` folds *by
subject* (:func:`subject_folds`: every face of one subject in one fold, each value's
subjects spread over the folds), and each fold is scored by a head trained on the others.
A split by face would put a subject's other photos on the training side: the head would
then recognise the person rather than read the label, and score above what it does on a
new person. Reported per head: accuracy over every face (each scored once, out of fold),
balanced accuracy, the mean accuracy per subject, and chance (the majority value's share
of those faces).

**Calibrated on held-out scores.** The temperature is fitted on the out-of-fold logits
(never on rows a head trained on), so a reported confidence of 0.9 means about 90 % right
on people the head has not seen. Its calibration is itself measured out of fold: each
fold's faces get the temperature fitted on the *other* folds' out-of-fold logits, and the
report gives, at the confidence threshold the pairing uses, the share of faces at or above
it (coverage) and their accuracy, plus the expected calibration error.

The head that ships is trained on every row, with the temperature fitted on all the
out-of-fold logits; the fold heads saw 1 - 1/FOLDS of the subjects, so the numbers are, if
anything, a little pessimistic for it. A head **ships only when its confident guesses are
shown to be right at least as often as the threshold promises**: those are exactly the
guesses pairing counts. The test is one-sided binomial at :data:`CALIBRATION_ALPHA`: under
the hypothesis that its out-of-fold guesses at or above the threshold are right with
probability ``threshold`` (or less), as many right as were seen must be unlikely. With a
threshold of 0.85 that takes at least 19 such guesses, all right, or more with a few
wrong. Measured on the London set (``bench/label_heads.py``), the age-band head's few
confident guesses were right about half the time; a test that only refused heads *shown*
to be worse let it ship on 3 of 5 fold seeds. A head that fails keeps its scores in the
metrics, with the reason as ``skipped``.

When no label has enough reviewed faces, or no head passes that test, :func:`train_heads`
raises :class:`~trainer.errors.NotEnoughLabels`, with the counts (and reasons) per label.

Example::

    heads = train_heads(vectors, {"gender": ["female", "male", None, ...]}, subjects=subject_ids)
    heads.metrics["gender"]["accuracy"]          # out-of-fold accuracy, by subject
    heads.save(heads_path(settings))
    LabelHeads.load(heads_path(settings)).predict(vectors[:1])
    # [{'gender': ('female', 0.93)}]
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
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
    "CALIBRATION_ALPHA",
    "FOLDS",
    "MIN_EXAMPLES",
    "MIN_PER_CLASS",
    "subject_folds",
    "train_heads",
]

#: Reviewed faces a label needs (over the values kept) before it gets a head: fewer give
#: held-out scores too few to say whether the head beats chance.
MIN_EXAMPLES = 20
#: Subjects a value needs to be learned; rarer values are left out of the head (and named
#: in its metrics). With 3, a value whose subjects carry only it lands in 3 folds, so every
#: fold's training side holds at least 2 of its subjects.
MIN_PER_CLASS = 3
#: Folds of the subject-wise cross-validation (fewer when there are fewer subjects): 5 is
#: the usual trade between heads trained on most of the data and folds big enough to score.
FOLDS = 5
#: L2 penalty on the weights (the loss is a mean over rows, so this is per row): small,
#: the embedding's 128 (dlib) or 512 dimensions are far fewer than the rows it is meant for.
L2 = 1e-3
#: Upper bound of L-BFGS iterations; the fit converges in far fewer on unit vectors.
MAX_ITER = 200
#: Confidence bins of the expected calibration error (the usual 10 of width 0.1).
CALIBRATION_BINS = 10
#: Significance at which a head's confident guesses count as shown to be at least as
#: accurate as the threshold promises (the conventional 5 %; one-sided, see module doc).
CALIBRATION_ALPHA = 0.05
#: Temperatures tried on the held-out logits (a grid: deterministic, and cheap).
_TEMPERATURES = np.exp(np.linspace(math.log(0.05), math.log(20.0), 121))


def train_heads(
    vectors: npt.NDArray[np.float32],
    labels: Mapping[str, Sequence[str | None]],
    *,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
    threshold: float = 0.85,
    embedder: str | None = None,
) -> LabelHeads:
    """Train a head for each label of ``labels`` that has enough reviewed faces.

    ``vectors`` is rows x dims float32 (unit-length embeddings of one embedder);
    ``labels[name][i]`` is the reviewed value of ``name`` for row ``i``, or None where
    that face has none; ``subjects[i]`` is the subject (or person) of row ``i``, so that
    no subject is on both sides of a held-out split (None: every row its own subject,
    right only when each subject has one face). ``seed`` deals subjects into folds;
    ``threshold`` is the confidence at which a guess counts (the pairing's
    ``settings.pairing.min_model_confidence``, 0.85 by default), and the report gives the
    coverage and accuracy of out-of-fold guesses at or above it. ``embedder`` names the
    embedder of ``vectors``, kept with the heads. Raises :class:`NotEnoughLabels` when no
    label qualifies, with the counts per label.
    """
    if len(vectors) == 0:
        raise NotEnoughLabels(_too_few({}, {}))
    x = check_vectors(vectors, "vectors")
    rows = x.shape[0]
    if subjects is not None and len(subjects) != rows:
        raise ValueError(
            f"subjects has {len(subjects)} entries for {rows} vectors; give one subject per vector"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    subject_of = list(subjects) if subjects is not None else [f"row-{i}" for i in range(rows)]
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
        people: dict[str, set[str]] = defaultdict(set)
        for i, value in picked:
            people[value].add(subject_of[i])
        kept = [v for v in VALUES[LabelName(name)] if len(people[v]) >= MIN_PER_CLASS]
        dropped = {v: n for v, n in sorted(counts.items()) if v not in kept}
        usable = sum(counts[v] for v in kept)
        report: dict[str, Any] = {"counts": dict(sorted(counts.items()))}
        if dropped:
            report["dropped"] = dropped
        if len(kept) < 2:
            report["skipped"] = (
                f"{len(kept)} value(s) with reviewed faces of at least {MIN_PER_CLASS} "
                "subjects; a head needs 2"
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
        groups = [subject_of[i] for i in index.tolist()]
        with _one_thread():
            head, scores = _cross_validated(x[index], target, groups, tuple(kept), seed, threshold)
        metrics[name] = {**report, "classes": list(kept), **scores, "trained_at": trained_at}
        untrusted = _untrusted(scores, threshold)
        if untrusted:
            metrics[name]["skipped"] = untrusted
            continue
        heads[name] = head
    if not heads:
        raise NotEnoughLabels(_too_few(metrics, labels))
    return LabelHeads(heads, x.shape[1], metrics, embedder)


def subject_folds(
    y: npt.NDArray[np.int64], subjects: Sequence[str], folds: int, seed: int
) -> npt.NDArray[np.int64]:
    """The fold (``0 .. folds - 1``) of each row: every row of one subject in one fold.

    ``y`` holds each row's class index. Subjects are dealt to the folds round-robin, in a
    seeded random order within each class (a subject's class: its most frequent value),
    rarest class first, so each value's subjects spread over as many folds as they can.
    """
    if len(subjects) != len(y):
        raise ValueError(f"{len(subjects)} subjects for {len(y)} rows; give one per row")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, subject in enumerate(subjects):
        rows_of[subject].append(row)
    # A subject's class: its most frequent value (ties to the lowest index: deterministic).
    class_of = {
        s: int(np.bincount(y[r]).argmax()) for s, r in sorted(rows_of.items(), key=lambda kv: kv[0])
    }
    by_class: dict[int, list[str]] = defaultdict(list)
    for subject, c in class_of.items():
        by_class[c].append(subject)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    dealt = 0
    for c in sorted(by_class, key=lambda c: (len(by_class[c]), c)):
        for k in rng.permutation(len(by_class[c])).tolist():
            fold[rows_of[by_class[c][k]]] = dealt % folds
            dealt += 1
    return fold


# -- fitting --------------------------------------------------------------------------------


def _cross_validated(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    subjects: Sequence[str],
    classes: tuple[str, ...],
    seed: int,
    threshold: float,
) -> tuple[Head, dict[str, Any]]:
    """The head on all rows, and its out-of-fold scores (folds by subject)."""
    k = len(classes)
    n_subjects = len(set(subjects))
    folds = min(FOLDS, n_subjects)
    fold = subject_folds(y, subjects, folds, seed)
    logits = np.zeros((len(y), k), dtype=np.float64)
    for f in range(folds):
        held = fold == f
        weight, bias = _fit(x[~held], y[~held], k)
        logits[held] = (x[held] @ weight.T + bias).astype(np.float64)
    predicted = logits.argmax(axis=1)
    right = predicted == y
    recalls = [float(np.mean(right[y == c])) for c in range(k)]
    per_subject: dict[str, list[bool]] = defaultdict(list)
    for subject, ok in zip(subjects, right.tolist(), strict=True):
        per_subject[subject].append(ok)
    # Cross-fitted calibration: fold f's confidences use the temperature of the others'.
    confidence = np.zeros(len(y), dtype=np.float64)
    for f in range(folds):
        held = fold == f
        t = _temperature(logits[~held], y[~held])
        confidence[held] = _softmax(logits[held] / t).max(axis=1)
    sure = confidence >= threshold
    weight, bias = _fit(x, y, k)
    temperature = _temperature(logits, y)
    scores: dict[str, Any] = {
        "subjects": n_subjects,
        "folds": folds,
        "train": len(y),
        "held_out": len(y),
        "accuracy": round(float(np.mean(right)), 4),
        "balanced_accuracy": round(float(np.mean(recalls)), 4),
        "subject_accuracy": round(float(np.mean([np.mean(v) for v in per_subject.values()])), 4),
        "chance": round(float(np.bincount(y, minlength=k).max() / len(y)), 4),
        "temperature": round(temperature, 4),
        "threshold": threshold,
        "confident_share": round(float(np.mean(sure)), 4),
        "confident_accuracy": round(float(np.mean(right[sure])), 4) if sure.any() else None,
        "calibration_error": round(_calibration_error(confidence, right), 4),
    }
    return Head(classes, weight, bias, temperature), scores


def _fit(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Weights (k x dim) and biases (k) of a class-balanced, L2-penalised logistic
    regression on rows ``x`` with class indices ``y``, float32."""
    xt = torch.from_numpy(x).to(torch.float64)
    yt = torch.from_numpy(y)
    counts = torch.bincount(yt, minlength=k).to(torch.float64)
    # Balanced: each value's rows weigh len(rows) / (k * its count), so every value
    # contributes the same total to the loss. A value absent from these rows (a fold's
    # training side can lack one only with fewer than MIN_PER_CLASS subjects) weighs 0.
    present = counts > 0
    class_weight = torch.where(
        present, counts.sum() / (int(present.sum()) * counts.clamp(min=1)), 0.0
    )
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
    return (
        weight.detach().to(torch.float32).numpy(),
        bias.detach().to(torch.float32).numpy(),
    )


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


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _temperature(logits: npt.NDArray[np.float64], truth: npt.NDArray[np.int64]) -> float:
    """The temperature that minimises the negative log-likelihood of held-out logits."""
    best, best_nll = 1.0, math.inf
    for t in _TEMPERATURES:
        scaled = logits / t
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_p = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        nll = float(-log_p[np.arange(len(truth)), truth].mean())
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def _untrusted(scores: Mapping[str, Any], threshold: float) -> str | None:
    """Why the head's guesses at or above ``threshold`` are not shown to be trustworthy,
    or None when they are.

    The upper binomial tail: the chance of as many right guesses as were seen, out of the
    out-of-fold guesses at or above ``threshold``, if each were right with probability
    ``threshold``; the head ships when that chance is under :data:`CALIBRATION_ALPHA`.
    """
    n = round(scores["confident_share"] * scores["held_out"])
    if n == 0 or scores["confident_accuracy"] is None:
        return (
            f"not shipped: out of fold, none of its guesses reached {threshold}, so none "
            "would ever count. Review more faces of more subjects"
        )
    right = round(scores["confident_accuracy"] * n)
    tail = sum(
        math.comb(n, k) * threshold**k * (1.0 - threshold) ** (n - k) for k in range(right, n + 1)
    )
    if tail < CALIBRATION_ALPHA:
        return None
    return (
        f"not shipped: out of fold, {right} of its {n} guesses at or above {threshold} were "
        f"right ({right / n:.0%}), too few to show they are right {threshold:.0%} of the time "
        f"(binomial p={tail:.2g}, needs < {CALIBRATION_ALPHA}); pairing would count them. "
        "Review more faces of more subjects"
    )


def _calibration_error(confidence: npt.NDArray[np.float64], right: npt.NDArray[np.bool_]) -> float:
    """Expected calibration error: the row-weighted mean, over :data:`CALIBRATION_BINS`
    equal-width confidence bins, of |accuracy - mean confidence| in the bin."""
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    total = 0.0
    for b in np.unique(bins).tolist():
        inside = bins == b
        total += float(inside.sum()) * abs(
            float(np.mean(right[inside])) - float(np.mean(confidence[inside]))
        )
    return total / len(confidence)


def _vocabulary_order(name: str) -> int:
    names = [n.value for n in LabelName]
    return names.index(name) if name in names else len(names)


def _too_few(metrics: Mapping[str, Mapping[str, Any]], labels: Mapping[str, Any]) -> str:
    if not labels:
        have = "no reviewed labels at all"
    else:
        have = "; ".join(
            f"{name}: {sum(m['counts'].values())} over {len(m['counts'])} value(s)"
            + (f", {m['skipped']}" if "accuracy" in m else "")
            for name, m in metrics.items()
        )
    return (
        f"too few human labels to train any label head ({have}); a head needs at least "
        f"{MIN_EXAMPLES} reviewed faces over at least 2 values with {MIN_PER_CLASS} or more "
        "subjects each. Review more faces (s2a review), then run `s2a labels train` again"
    )
