"""Identity: how far apart an embedder puts photos of one person and of two people.

On the London set (``london_<id>_{neutral,smiling}.jpg``: a face id per person), each photo
goes through our detector (MTCNN), alignment and the embedder, and the Euclidean distance of
every pair of unit vectors is sorted into same-person and different-person pairs. Also:

- **crop gap**: each face embedded again from its stored 512 px aligned crop, the way
  ``s2a faces reembed`` does (:func:`agents.reembed.embed_input`), against its vector from
  the photo;
- **cross-domain**: every photo against every anime face reference, embedded the way
  ``s2a refs add`` does (the square face region is the box). Whether that similarity says
  anything is tested where the data can: the references' labelled expression (smiling or
  neutral) against the photo's (the London set has both of each person), as the chance that
  a reference of the photo's expression scores above one of the other (AUC, 0.5 = none).

Usage:  python bench/identity.py [--photos DIR] [--anime DIR] [--embedder NAME] [--json OUT]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.records import CleanImage, Detection, EmbedInput  # noqa: E402
from agents.reembed import StoredFace, embed_input  # noqa: E402
from agents.references.palette import square_pad  # noqa: E402
from agents.references.style import resize_square  # noqa: E402
from agents.stages.align import align  # noqa: E402
from agents.stages.detect import MtcnnDetector  # noqa: E402
from agents.stages.embed import build_embedder  # noqa: E402
from schemas.settings import ModelSettings  # noqa: E402

THRESHOLDS = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
STATS = ("min", "p1", "p5", "median", "p95", "p99", "max")
Vectors = npt.NDArray[np.float32]


def load(path: Path) -> CleanImage:
    with Image.open(path) as img:
        pixels = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)
    return CleanImage(np.ascontiguousarray(pixels), img.format or "JPEG")


def london(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.glob("london_*_*.jpg")
        if p.stem.split("_")[-1] in ("neutral", "smiling") and p.stem.split("_")[1].isdigit()
    )


def embed_photos(
    paths: list[Path], embedder: Any
) -> tuple[list[Path], Vectors, Vectors, list[str]]:
    """Vectors from the photos and from their 512 px aligned crops; the paths with a face."""
    detector = MtcnnDetector(max_side=640)
    images = [load(p) for p in paths]
    found: list[list[Detection]] = []
    for start in range(0, len(images), 16):
        found += detector.detect(images[start : start + 16])
    kept, direct, from_crop, expressions = [], [], [], []
    for path, image, faces in zip(paths, images, found, strict=True):
        if not faces:
            continue
        face = max(faces, key=lambda f: f.size)
        aligned = align(image, face.landmarks)
        stored = StoredFace(
            face_id=path.stem,
            subject="",
            source="selfie",
            license=None,
            embedder="",
            box=face.box,
            landmarks=face.landmarks.astype(np.float64),
            transform=np.asarray(aligned.transforms[512], dtype=np.float64),
            crop="",
        )
        kept.append(path)
        direct.append(EmbedInput(image.pixels, face.box, aligned.crops[160]))
        from_crop.append(embed_input(aligned.crops[512], stored))
        expressions.append(path.stem.split("_")[-1])
    return kept, embedder.embed(direct), embedder.embed(from_crop), expressions


def embed_references(folder: Path, embedder: Any) -> tuple[list[str], Vectors, dict[str, str]]:
    """Every ``*_face.*`` reference as ``s2a refs add`` embeds it, and labelled expressions."""
    files = sorted(p for p in folder.iterdir() if "_face." in p.name)
    faces = []
    for path in files:
        square = square_pad(load(path).pixels)
        side = float(square.shape[0])
        faces.append(EmbedInput(square, (0.0, 0.0, side, side), resize_square(square, 160)))
    labels: dict[str, str] = {}
    for candidate in (folder / "labels.csv", ROOT / "infra" / "samples" / "anime" / "labels.csv"):
        if candidate.is_file():
            with candidate.open() as fh:
                labels = {row["file"]: row["expression"] for row in csv.DictReader(fh)}
            break
    return [p.name for p in files], embedder.embed(faces), labels


def distances(paths: list[Path], vectors: Vectors) -> tuple[list[float], list[float]]:
    person = [p.stem.split("_")[1] for p in paths]
    same, other = [], []
    for i, j in itertools.combinations(range(len(paths)), 2):
        d = float(np.linalg.norm(vectors[i] - vectors[j]))
        (same if person[i] == person[j] else other).append(d)
    return same, other


def summary(values: list[float]) -> dict[str, float]:
    x = np.asarray(values)
    return {
        "n": len(values),
        "min": float(x.min()),
        "p1": float(np.percentile(x, 1)),
        "p5": float(np.percentile(x, 5)),
        "median": float(np.median(x)),
        "p95": float(np.percentile(x, 95)),
        "p99": float(np.percentile(x, 99)),
        "max": float(x.max()),
    }


def expression_auc(
    photos: Vectors, expressions: list[str], refs: Vectors, names: list[str], labels: dict[str, str]
) -> dict[str, float] | None:
    """P(a reference of the photo's expression is more similar than one of the other)."""
    usable = [i for i, n in enumerate(names) if labels.get(n) in ("smiling", "neutral")]
    expression_of = np.array([labels[names[i]] for i in usable])
    wins = pairs = 0.0
    for vector, expression in zip(photos, expressions, strict=True):
        sims = refs[usable] @ vector
        agree = expression_of == expression
        a, b = sims[agree][:, None], sims[~agree][None, :]
        wins += float((a > b).sum()) + 0.5 * float((a == b).sum())
        pairs += a.size * b.size
    return {"auc": wins / pairs, "pairs": pairs} if pairs else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=ROOT / "tests" / "data" / "real")
    parser.add_argument("--anime", type=Path, default=ROOT / "tests" / "data" / "anime")
    parser.add_argument("--embedder", default="dlib-resnet")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    embedder = build_embedder(ModelSettings(embedder=args.embedder), batch_size=32)
    paths, direct, from_crop, expressions = embed_photos(london(args.photos), embedder)
    same, other = distances(paths, direct)
    gap = np.linalg.norm(direct - from_crop, axis=1).tolist()
    names, refs, labels = embed_references(args.anime, embedder)
    cross = (1.0 - (direct @ refs.T)) * 2.0  # squared distance of unit vectors
    cross_d = np.sqrt(np.clip(cross, 0.0, None)).ravel().tolist()
    results: dict[str, Any] = {
        "embedder": embedder.name,
        "photos": len(paths),
        "people": len({p.stem.split("_")[1] for p in paths}),
        "same": summary(same),
        "different": summary(other),
        "thresholds": {
            str(t): {
                "same_under": float(np.mean(np.asarray(same) < t)),
                "different_under": float(np.mean(np.asarray(other) < t)),
            }
            for t in THRESHOLDS
        },
        "crop_gap": summary(gap),
        "references": len(names),
        "photo_to_reference": summary(cross_d),
        "expression": expression_auc(direct, expressions, refs, names, labels),
    }
    lines = [
        f"{embedder.name}: {results['photos']} photos of {results['people']} people, "
        f"{len(names)} anime references",
        "",
        "| Euclidean distance (unit vectors) | n | min | p1 | p5 | median | p95 | p99 | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("same", "same person"),
        ("different", "different people"),
        ("crop_gap", "photo vs its 512 px crop (reembed)"),
        ("photo_to_reference", "photo vs anime reference"),
    ):
        s = results[key]
        cells = " | ".join(f"{s[k]:.3f}" for k in STATS)
        lines.append(f"| {label} | {s['n']} | {cells} |")
    lines += ["", "| threshold | same person under | different people under |", "|---|---|---|"]
    for t, row in results["thresholds"].items():
        lines.append(f"| {t} | {row['same_under']:.3f} | {row['different_under']:.4f} |")
    if results["expression"]:
        e = results["expression"]
        auc = f"expression AUC photo->reference: {e['auc']:.3f} over {e['pairs']:.0f} pairs"
        lines += ["", auc]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
