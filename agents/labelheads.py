"""Label heads: small classifiers on face embeddings, trained on human-reviewed labels.

One head per learnable label (:data:`schemas.labels.LEARNABLE`) that had enough reviewed
faces: a multinomial logistic regression on the face embedding (the embedder's ``dim``:
128 for dlib, 512 for InceptionResnetV1), its probabilities calibrated by a temperature, so
a reported confidence of 0.9 means about 90% right on people the head has not seen (the
temperature is fitted on held-out scores, with every face of a subject held out together).
This module loads heads and applies them; training them (the method, the subject-wise
cross-validation, the calibration) is :mod:`trainer.labels.heads` (``s2a labels train``).

The predictions become ``model`` labels (:func:`model_labels`); they count only at or above
``settings.pairing.min_model_confidence`` (:func:`schemas.labels.resolve`), so an unsure
guess leaves the label open for review.

Errors (all :class:`~agents.errors.PipelineError`)::

    LabelHeadsError
     ├── HeadsMissing (FileNotFoundError)   no heads file; says how to make one
     └── HeadsUnreadable (ValueError)       the file is not a heads file of this version

Example::

    heads = LabelHeads.load(heads_path(settings))
    heads.predict(vectors[:1])
    # [{'gender': ('female', 0.93)}]
    model_labels(heads, vectors[:1], [face_id], now)   # the same, as ``model`` Label rows
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agents.errors import HeadsMissing, HeadsUnreadable, LabelHeadsError
from schemas.labels import LabelSource
from schemas.settings import Settings
from schemas.tables import Label

__all__ = [
    "FORMAT",
    "HEADS_FILE",
    "Head",
    "HeadsMissing",
    "HeadsUnreadable",
    "LabelHeads",
    "LabelHeadsError",
    "check_vectors",
    "heads_path",
    "model_labels",
]

#: File name of the trained heads under ``settings.label_model_dir``.
HEADS_FILE = "heads.pt"
#: Version of the saved file's layout; load refuses any other.
FORMAT = 1


def heads_path(settings: Settings) -> Path:
    """Where ``s2a labels train`` saves the heads and the pairs agent loads them."""
    return settings.label_model_dir / HEADS_FILE


@dataclass(frozen=True, slots=True)
class Head:
    """One label's fitted head: logistic regression weights and a temperature."""

    classes: tuple[str, ...]
    weight: npt.NDArray[np.float32]
    """classes x dim"""
    bias: npt.NDArray[np.float32]
    """classes"""
    temperature: float

    def probabilities(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        # numpy, not torch: a few rows against a few classes is microseconds on one
        # thread, while torch's thread pool, competing with the worker's models for the
        # cores, was measured at 120 ms for 32 rows.
        logits = (x @ self.weight.T + self.bias).astype(np.float64) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=1, keepdims=True))


class LabelHeads:
    """Trained heads by label name, with what each was trained on and how it scored.

    ``metrics[name]`` holds, for a trained head: ``classes``, ``counts`` (reviewed faces
    per value), ``subjects`` and ``folds`` (the cross-validation by subject), ``train``
    (rows the shipped head learned) and ``held_out`` (rows scored out of fold: all of
    them, once each), ``accuracy``, ``balanced_accuracy``, ``subject_accuracy`` (mean
    over subjects), ``chance`` (the majority value's share of the held-out rows),
    ``temperature``, ``threshold`` with ``confident_share`` and ``confident_accuracy``
    (share of held-out guesses at or above it, and their accuracy; None when none is),
    ``calibration_error`` (expected, 10 bins) and ``trained_at``; for a label without a
    head: ``skipped`` (why) and ``counts``. Older files lack the subject-wise keys.

    Made by :func:`trainer.labels.heads.train_heads`.

    Example::

        heads = LabelHeads.load(heads_path(settings))
        heads.predict(vectors[:2])   # [{'glasses': ('no', 0.97)}, {'glasses': ('yes', 0.88)}]
    """

    def __init__(
        self,
        heads: Mapping[str, Head],
        dim: int,
        metrics: dict[str, dict[str, Any]],
        embedder: str | None = None,
    ) -> None:
        self._heads = dict(heads)
        self.dim = dim
        self.metrics = metrics
        self.embedder = embedder
        """the embedder whose vectors the heads learned (``Face.embedder``), if known"""

    @property
    def names(self) -> tuple[str, ...]:
        """Labels that have a head, in vocabulary order."""
        return tuple(name for name in self._heads)

    # -- use -------------------------------------------------------------------------------

    def predict(self, vectors: npt.NDArray[np.float32]) -> list[dict[str, tuple[str, float]]]:
        """Per row, each head's most likely value and its calibrated probability."""
        x = check_vectors(vectors, "vectors")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"vectors have {x.shape[1]} dimensions, the heads were trained on {self.dim}; "
                "use the embedder the heads were trained with, or retrain (s2a labels train)"
            )
        out: list[dict[str, tuple[str, float]]] = [{} for _ in range(x.shape[0])]
        for name, head in self._heads.items():
            p = head.probabilities(x)
            which = p.argmax(axis=1)
            for row, k in enumerate(which.tolist()):
                out[row][name] = (head.classes[k], round(float(p[row, k]), 4))
        return out

    # -- files -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the heads to one file, atomically (a reader sees the old or the new)."""
        state = {
            "format": FORMAT,
            "dim": self.dim,
            "embedder": self.embedder,
            "heads": {
                name: {
                    "classes": list(head.classes),
                    "weight": torch.from_numpy(head.weight),
                    "bias": torch.from_numpy(head.bias),
                    "temperature": head.temperature,
                }
                for name, head in self._heads.items()
            },
            "metrics": self.metrics,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> LabelHeads:
        """The heads saved at ``path``; :class:`HeadsMissing` names the file and the fix."""
        if not path.is_file():
            raise HeadsMissing(
                f"no label heads at {path}; train them from reviewed labels with `s2a labels train`"
            )
        try:
            # weights_only: a heads file is data, and must not be able to run code.
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") != FORMAT:
                raise HeadsUnreadable(
                    f"{path} has heads format {state.get('format')!r}, this version reads "
                    f"{FORMAT}; retrain with `s2a labels train`"
                )
            heads = {
                name: Head(
                    classes=tuple(h["classes"]),
                    weight=h["weight"].to(torch.float32).numpy(),
                    bias=h["bias"].to(torch.float32).numpy(),
                    temperature=float(h["temperature"]),
                )
                for name, h in state["heads"].items()
            }
            embedder = state.get("embedder")
            return cls(heads, int(state["dim"]), dict(state["metrics"]), embedder)
        except HeadsUnreadable:
            raise
        except Exception as exc:
            raise HeadsUnreadable(
                f"cannot read label heads from {path} ({type(exc).__name__}: {exc}); "
                "retrain with `s2a labels train`"
            ) from exc


def model_labels(
    heads: LabelHeads,
    vectors: npt.NDArray[np.float32],
    face_ids: Sequence[str],
    now: datetime,
) -> list[Label]:
    """Every head's guess for each face as a ``model`` label row, whatever its confidence
    (reading applies ``settings.pairing.min_model_confidence``)."""
    if len(face_ids) != len(vectors):
        raise ValueError(
            f"{len(face_ids)} face ids for {len(vectors)} vectors; give one id per vector"
        )
    return [
        Label(
            face_id=face_id,
            name=name,
            value=value,
            source=LabelSource.MODEL.value,
            confidence=confidence,
            created_at=now,
        )
        for face_id, guesses in zip(face_ids, heads.predict(vectors), strict=True)
        for name, (value, confidence) in guesses.items()
    ]


def check_vectors(vectors: npt.ArrayLike, name: str) -> npt.NDArray[np.float32]:
    """``vectors`` as a contiguous float32 rows x dims array; a ValueError naming ``name``
    when it is empty, not 2-d, or not finite."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty rows x dims array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; pass the embedder's vectors")
    return x
