"""Near-duplicates: identity plus appearance, measured on the London set.

Each London photo (``london_<id>_{neutral,smiling}.jpg``) goes through our detector, aligner
and the embedder, as ingestion runs them; so does a set of copies of each photo made the way
photos get re-shared: JPEG q70, 40 px cropped off every side, and rescaled to 0.6x then JPEG
q60. For every (photo, copy) pair and every (neutral, smiling) pair of one person, three
numbers are measured:

- **identity distance**: Euclidean distance of the unit-length face embeddings;
- **signature**: cosine of the 256-d appearance signatures (16 x 16 grey of the aligned
  crop, :func:`agents.stages.prepare.appearance_signature`), the rule before issue 8;
- **registered**: :func:`agents.stages.registration.registered_similarity` of the 256 px
  aligned crops, the rule now (:class:`agents.sink.DuplicateRule`).

Then each rule is scored by its catch rate on copies (should be 100 %) and its
false-duplicate rate on neutral/smiling pairs (should be 0 %), with the cost of one
registered comparison.

Usage:  python bench/duplicates.py [--photos DIR] [--embedder NAME] [--json OUT]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.records import CleanImage, EmbedInput  # noqa: E402
from agents.stages.align import align  # noqa: E402
from agents.stages.detect import MtcnnDetector  # noqa: E402
from agents.stages.embed import build_embedder  # noqa: E402
from agents.stages.prepare import appearance_signature  # noqa: E402
from agents.stages.registration import registered_similarity  # noqa: E402
from bench.identity import load, london  # noqa: E402
from schemas.settings import ModelSettings, WorkerSettings  # noqa: E402

#: The threshold on the signature before issue 8 (S2A_WORKER__DUPLICATE_SIMILARITY then).
SIGNATURE_BEFORE = 0.985


def jpeg(pixels: np.ndarray, quality: int, scale: float = 1.0, crop: int = 0) -> CleanImage:
    img = Image.fromarray(pixels)
    if crop:
        img = img.crop((crop, crop, img.width - crop, img.height - crop))
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return CleanImage(np.ascontiguousarray(np.asarray(out.convert("RGB"))), "JPEG")


COPIES = {
    "JPEG q70": lambda p: jpeg(p, 70),
    "cropped 40 px a side": lambda p: jpeg(p, 95, crop=40),
    "0.6x scale, JPEG q60": lambda p: jpeg(p, 60, scale=0.6),
}


def measure(images: list[CleanImage], embedder: Any, detector: MtcnnDetector) -> list[Any]:
    """(unit embedding, signature, 256 px crop) of the largest face of each image, or None."""
    found = []
    for start in range(0, len(images), 16):
        found += detector.detect(images[start : start + 16])
    inputs, signatures, crops, kept = [], [], [], []
    for i, (image, faces) in enumerate(zip(images, found, strict=True)):
        if not faces:
            continue
        face = max(faces, key=lambda f: f.size)
        aligned = align(image, face.landmarks)
        inputs.append(EmbedInput(image.pixels, face.box, aligned.crops[160]))
        signatures.append(appearance_signature(aligned.crops[160]))
        crops.append(aligned.crops[256])
        kept.append(i)
    vectors = embedder.embed(inputs)
    out: list[Any] = [None] * len(images)
    for i, vector, signature, crop in zip(kept, vectors, signatures, crops, strict=True):
        out[i] = (vector, signature, crop)
    return out


def pair_numbers(a: Any, b: Any) -> tuple[float, float, float]:
    """(identity distance, signature cosine, registered similarity) of two measured faces."""
    return (
        float(np.linalg.norm(a[0] - b[0])),
        float(a[1] @ b[1]),
        registered_similarity(a[2], b[2]),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=ROOT / "tests" / "data" / "real")
    parser.add_argument("--embedder", default="dlib-resnet")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    embedder = build_embedder(ModelSettings(embedder=args.embedder), batch_size=32)
    detector = MtcnnDetector(max_side=640)
    paths = london(args.photos)
    originals = [load(p) for p in paths]
    base = measure(originals, embedder, detector)
    numbers: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for name, make in COPIES.items():
        copies = measure([make(img.pixels) for img in originals], embedder, detector)
        for a, b in zip(base, copies, strict=True):
            if a is not None and b is not None:
                numbers[name].append(pair_numbers(a, b))
    by_person: dict[str, dict[str, Any]] = defaultdict(dict)
    for path, m in zip(paths, base, strict=True):
        if m is not None:
            by_person[path.stem.split("_")[1]][path.stem.split("_")[-1]] = m
    sessions = "neutral vs smiling, same session"
    for faces in by_person.values():
        if "neutral" in faces and "smiling" in faces:
            numbers[sessions].append(pair_numbers(faces["neutral"], faces["smiling"]))

    worker = WorkerSettings()
    gate, limit = worker.duplicate_identity_distance, worker.duplicate_similarity
    rules = {
        f"signature >= {SIGNATURE_BEFORE} (before)": lambda d, sig, reg: sig >= SIGNATURE_BEFORE,
        f"distance <= {gate} and registered >= {limit} (now)": (
            lambda d, sig, reg: d <= gate and reg >= limit
        ),
    }
    lines = [
        f"{embedder.name}: {len(paths)} London photos, {len(numbers[sessions])} "
        "neutral/smiling pairs",
        "",
        "| pair | n | identity distance | signature | registered |",
        "|---|---|---|---|---|",
    ]
    for name, rows in numbers.items():
        cells = []
        for column in range(3):
            x = np.array([r[column] for r in rows])
            cells.append(f"{x.min():.3f} - {x.max():.3f}")
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "| rule | " + " | ".join(numbers) + " |", "|---" * (len(numbers) + 1) + "|"]
    for label, rule in rules.items():
        cells = []
        for rows in numbers.values():
            caught = sum(bool(rule(*r)) for r in rows)
            cells.append(f"{caught}/{len(rows)} ({100 * caught / len(rows):.0f} %)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: pairs the rule calls duplicates (copies: want 100 %; sessions: want 0 %).")
    a, b = base[0], next(m for m in base[1:] if m is not None)
    start = time.perf_counter()
    for _ in range(50):
        registered_similarity(a[2], b[2])
    lines.append(f"One registered comparison: {(time.perf_counter() - start) / 50 * 1e3:.1f} ms.")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
