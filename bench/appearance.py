"""Expression and hair colour on real photos: how well the measured labels separate.

Every photo goes through what ingestion does before labelling (MTCNN, the quality gate,
alignment), then :mod:`agents.stages.appearance`:

- **expression**: on the London set's ``london_<id>_{neutral,smiling}.jpg``, the smile
  score of each accepted photo against its file's expression: AUC, the accuracy of the
  cut (:data:`~agents.stages.appearance.EXPRESSION`), the accuracy with the cut chosen
  again with each person left out, and within each person who has both, whether the smiling
  photo scores higher;
- **hair colour**: the value (or abstention) of every accepted photo, with its hair share
  and colour, counted per value; ``--sheet OUT.png`` writes the top of each 256 px crop
  with its reading, for checking by eye (the London set has no hair labels).

Usage:  python bench/appearance.py [--photos DIR] [--sheet OUT.png] [--json OUT]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.errors import Rejected  # noqa: E402
from agents.records import AlignedFace, CleanImage  # noqa: E402
from agents.stages.align import align  # noqa: E402
from agents.stages.appearance import (  # noqa: E402
    EXPRESSION,
    HAIR_CROP,
    hair_colour,
    read_hair,
    smile_score,
)
from agents.stages.detect import MtcnnDetector  # noqa: E402
from agents.stages.quality import assess  # noqa: E402
from schemas.settings import QualitySettings  # noqa: E402


def load(path: Path) -> CleanImage:
    with Image.open(path) as img:
        pixels = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)
    return CleanImage(np.ascontiguousarray(pixels), img.format or "JPEG")


def faces(paths: list[Path]) -> list[tuple[Path, CleanImage, Any, AlignedFace]]:
    """(path, image, landmarks, aligned) of every photo the quality gate accepts."""
    detector = MtcnnDetector(max_side=640)
    quality = QualitySettings()
    kept = []
    for path in paths:
        image = load(path)
        try:
            report = assess(image, detector.detect([image])[0], quality)
        except Rejected as rejected:
            sys.stderr.write(f"<!-- {path.name}: rejected, {rejected.reason.value} -->\n")
            continue
        aligned = align(image, report.face.landmarks, sizes=(HAIR_CROP,))
        kept.append((path, image, report.face.landmarks, aligned))
    return kept


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half."""
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def best_cut(scores: np.ndarray, smiling: np.ndarray) -> float:
    """The cut with the best accuracy on these scores (nearest the shipped cut on ties)."""
    shipped = EXPRESSION.edges[0]
    ranked = [
        (float(np.mean((scores >= t) == smiling)), -abs(float(t) - shipped), float(t))
        for t in np.unique(scores)
    ]
    return max(ranked)[2]


def expression_bench(found: list[tuple[Path, CleanImage, Any, AlignedFace]]) -> dict[str, Any]:
    rows = []
    for path, _, landmarks, _ in found:
        parts = path.stem.split("_")
        if len(parts) != 3 or parts[0] != "london" or parts[2] not in ("neutral", "smiling"):
            continue
        score = smile_score(landmarks)
        if score is not None:
            rows.append((parts[1], parts[2] == "smiling", score))
    person = np.array([r[0] for r in rows])
    smiling = np.array([r[1] for r in rows])
    scores = np.array([r[2] for r in rows])
    cut = EXPRESSION.edges[0]
    left_out = []
    for who in sorted(set(person)):
        train = person != who
        t = best_cut(scores[train], smiling[train])
        left_out += list((scores[~train] >= t) == smiling[~train])
    pairs = [
        (scores[(person == who) & smiling][0], scores[(person == who) & ~smiling][0])
        for who in sorted(set(person[smiling]))
        if ((person == who) & ~smiling).any()
    ]
    return {
        "photos": len(rows),
        "smiling": int(smiling.sum()),
        "auc": auc(scores[smiling], scores[~smiling]),
        "cut": cut,
        "accuracy": float(np.mean((scores >= cut) == smiling)),
        "neutral_read_smiling": int(np.sum((scores >= cut) & ~smiling)),
        "smiling_read_neutral": int(np.sum((scores < cut) & smiling)),
        "accuracy_person_left_out": float(np.mean(left_out)),
        "people_with_both": len(pairs),
        "smiling_scores_higher": int(sum(s > n for s, n in pairs)),
        "neutral_range": [float(scores[~smiling].min()), float(scores[~smiling].max())],
        "smiling_range": [float(scores[smiling].min()), float(scores[smiling].max())],
    }


def hair_bench(
    found: list[tuple[Path, CleanImage, Any, AlignedFace]], sheet: Path | None
) -> dict[str, Any]:
    readings = {}
    tiles = []
    for path, image, _, aligned in found:
        reading = read_hair(aligned.crops[HAIR_CROP])
        label = hair_colour(aligned, image)
        value = "-" if label is None else f"{label.value} {label.confidence:.2f}"
        readings[path.name] = {
            "value": None if label is None else label.value,
            "confidence": None if label is None else label.confidence,
            "share": round(reading.share, 3),
            "L": round(reading.lightness, 1),
            "C": round(reading.chroma, 1),
            "h": round(reading.hue, 1),
        }
        if sheet is not None:
            tile = np.ascontiguousarray(aligned.crops[HAIR_CROP][: HAIR_CROP * 5 // 8]).copy()
            text = f"{path.stem[-14:]} {value}"
            cv2.putText(
                tile, text, (3, tile.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 0, 0), 1
            )
            tiles.append(tile)
    if sheet is not None and tiles:
        per_row = 8
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
        rows = [np.hstack(tiles[i : i + per_row]) for i in range(0, len(tiles), per_row)]
        cv2.imwrite(str(sheet), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    counts = Counter(r["value"] or "abstain" for r in readings.values())
    return {"photos": len(readings), "counts": dict(sorted(counts.items())), "readings": readings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=ROOT / "tests" / "data" / "real")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet of hair readings")
    parser.add_argument("--json", type=Path, help="write every number as JSON")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    found = faces(paths)
    expression = expression_bench(found)
    hair = hair_bench(found, args.sheet)
    e = expression
    lines = [
        f"## Expression ({args.photos})",
        "",
        "| photos | smiling | AUC | cut | accuracy | neutral->smiling | smiling->neutral "
        "| accuracy, person left out | smiling above own neutral |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {e['photos']} | {e['smiling']} | {e['auc']:.3f} | {e['cut']} | {e['accuracy']:.3f} "
        f"| {e['neutral_read_smiling']} | {e['smiling_read_neutral']} "
        f"| {e['accuracy_person_left_out']:.3f} "
        f"| {e['smiling_scores_higher']} of {e['people_with_both']} |",
        "",
        f"## Hair colour ({hair['photos']} accepted photos)",
        "",
        "| value | photos |",
        "|---|---|",
        *(f"| {value} | {n} |" for value, n in hair["counts"].items()),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"expression": expression, "hair": hair}, indent=1))


if __name__ == "__main__":
    main()
