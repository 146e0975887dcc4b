"""Label heads on real embeddings: how well gender and age band are read from a face vector.

Every London photo (``london_<id>_{neutral,smiling}.jpg``: a face id per person) goes
through our detector (MTCNN), alignment and the embedder, as in ``bench/identity.py``
(whose :func:`embed_photos` this reuses). Each photo's labels are the person's declared
ones (``london_info.csv``: self-reported age and gender): ``gender``, and ``age_band`` from
the age (one person's age is ``NA``: no age band). The expression (neutral or smiling, from
the file name) is trained too, as a check that the identity embedding carries little of
it.

The heads are trained and scored exactly as ``s2a labels train`` does
(:func:`trainer.labels.heads.train_heads`): cross-validated in folds *by person* (both
photos of a person on one side), temperature fitted on out-of-fold logits, calibration
measured out of fold. Reported per head and per seed (the seed deals people into folds):
accuracy, balanced accuracy, mean accuracy per person, chance (the majority value's share),
the expected calibration error, and at the pairing's confidence threshold
(``settings.pairing.min_model_confidence``) the share of guesses at or above it and their
accuracy, and for how many seeds the head would ship (``train_heads`` refuses a head whose
confident guesses are shown to be less accurate than the threshold). For contrast, the
same heads scored with folds *by photo* (each photo its own subject), which lets a person's
other photo sit on the training side.

Usage:  python bench/label_heads.py [--photos DIR] [--info CSV] [--embedder NAME]
                                    [--seeds 0,1,2,3,4] [--threshold P] [--json OUT]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.stages.embed import build_embedder  # noqa: E402
from bench.identity import embed_photos, london  # noqa: E402
from schemas.labels import age_band  # noqa: E402
from schemas.settings import ModelSettings, PairingSettings  # noqa: E402
from trainer.labels.heads import train_heads  # noqa: E402

HEADS = ("gender", "age_band", "expression")


def declared(info: Path) -> dict[str, dict[str, str | None]]:
    """``{face id: {"gender": ..., "age_band": ...}}`` from ``london_info.csv``."""
    with info.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, dict[str, str | None]] = {}
    for row in rows:
        age = row["face_age"].strip()
        out[row["face_id"].strip()] = {
            "gender": row["face_gender"].strip().lower() or None,
            "age_band": age_band(int(age)) if age.isdigit() else None,
        }
    return out


def run(
    vectors: np.ndarray,
    labels: dict[str, list[str | None]],
    people: list[str],
    seeds: list[int],
    threshold: float,
) -> dict[str, Any]:
    """Per head: the metrics of each seed, by person and by photo."""
    results: dict[str, Any] = {name: {"by_person": [], "by_photo": []} for name in labels}
    for seed in seeds:
        for key, subjects in (("by_person", people), ("by_photo", None)):
            heads = train_heads(vectors, labels, subjects=subjects, seed=seed, threshold=threshold)
            for name in labels:
                results[name][key].append(heads.metrics[name])
    return results


def _mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.3f}" if known else "—"


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ({min(values):.3f} to {max(values):.3f})"


def table(results: dict[str, Any], threshold: float) -> list[str]:
    lines = [
        f"| head | values (photos) | photos | people | folds | accuracy by person, mean "
        f"(min to max over seeds) | balanced | per person | chance | calibration error | "
        f"share ≥ {threshold} | accuracy ≥ {threshold} | shipped (seeds) | "
        "accuracy by photo (leaks identity) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        person, photo = runs["by_person"], runs["by_photo"]
        first = person[0]
        if "accuracy" not in first:
            lines.append(f"| {name} | skipped: {first['skipped']} |" + " |" * 12)
            continue
        counts = ", ".join(f"{v} {first['counts'][v]}" for v in first["classes"])
        dropped = first.get("dropped")
        if dropped:
            counts += "; left out: " + ", ".join(f"{v} {n}" for v, n in dropped.items())
        cells = [
            name,
            counts,
            str(first["held_out"]),
            str(first["subjects"]),
            str(first["folds"]),
            _spread([m["accuracy"] for m in person]),
            _mean([m["balanced_accuracy"] for m in person]),
            _mean([m["subject_accuracy"] for m in person]),
            f"{first['chance']:.3f}",
            _mean([m["calibration_error"] for m in person]),
            _mean([m["confident_share"] for m in person]),
            _mean([m["confident_accuracy"] for m in person]),
            f"{sum('skipped' not in m for m in person)} of {len(person)}",
            _spread([m["accuracy"] for m in photo]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=ROOT / "tests" / "data" / "real")
    parser.add_argument(
        "--info", type=Path, default=None, help="default: london_info.csv beside --photos"
    )
    parser.add_argument("--embedder", default="dlib-resnet")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated fold seeds")
    parser.add_argument(
        "--threshold",
        type=float,
        default=PairingSettings().min_model_confidence,
        help="confidence at which a guess counts (default: the pairing's)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    info = args.info or args.photos.parent / "london_info.csv"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    truth = declared(info)
    embedder = build_embedder(ModelSettings(embedder=args.embedder), batch_size=32)
    started = time.perf_counter()
    paths, vectors, _, expressions = embed_photos(london(args.photos), embedder)
    embed_s = time.perf_counter() - started
    people = [p.stem.split("_")[1] for p in paths]
    missing = sorted({p for p in people if p not in truth})
    if missing:
        parser.error(f"--info {info} has no row for face ids {', '.join(missing)}")
    labels: dict[str, list[str | None]] = {
        "gender": [truth[p]["gender"] for p in people],
        "age_band": [truth[p]["age_band"] for p in people],
        "expression": list(expressions),
    }
    started = time.perf_counter()
    results = run(vectors, labels, people, seeds, args.threshold)
    train_s = time.perf_counter() - started
    lines = [
        f"{embedder.name}: {len(paths)} photos of {len(set(people))} people "
        f"({len(london(args.photos)) - len(paths)} without a face); seeds {args.seeds}; "
        f"embedding {embed_s:.0f} s, training {train_s:.0f} s",
        "",
        *table(results, args.threshold),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "embedder": embedder.name,
                    "photos": len(paths),
                    "people": len(set(people)),
                    "threshold": args.threshold,
                    "seeds": seeds,
                    "heads": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
