"""Ingestion throughput, all measured on the same images in one run.

(a)  bare facenet-pytorch, called the way its README shows (one image at a time)
(a') the same library calls batched (detect 16, embed 32)
(b)  our whole stage chain in process, from encoded bytes to stored face
(c)  the full stream: publish to the embedded broker, a Faust worker ingests

(b) and (c) embed with the configured embedder (the default: dlib's descriptor); (a) and
(a') with InceptionResnetV1, facenet-pytorch's own. Each embedder's cost per face is also
measured on the same detected faces, in the same run: InceptionResnetV1 (random weights: the
cost does not depend on them), dlib's descriptor as the pipeline runs it (5-point predictor,
dlib's chip, the ResNet in PyTorch) and dlib's own ``compute_face_descriptor`` on the same
chips, the path the PyTorch port replaces.

Usage:  python bench/ingest.py [--images N] [--repeats R] [--skip-stream] [--json OUT]
Prints a Markdown table (images/s, ratios against (a')) and per-stage milliseconds.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.pipeline import Incoming, IngestPipeline  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from schemas.uploads import Consent, ImagePayload, UploadEvent  # noqa: E402

POLL_S = 0.05
PHOTOS = sorted((ROOT / "tests" / "data" / "real").glob("london_*.jpg"))


def images(n: int) -> list[bytes]:
    """n encoded photos, cycling through the bundled London set (all 512 x 512)."""
    data = [p.read_bytes() for p in PHOTOS]
    return [data[i % len(data)] for i in range(n)]


def events(blobs: list[bytes], subject_prefix: str = "bench-subject") -> list[bytes]:
    now = datetime.now(UTC)
    consent = Consent(version="bench", scopes=["training"], granted_at=now)
    # A subject per upload: repeated photos must not be rejected as duplicates.
    return [
        UploadEvent(
            upload_id=f"bench-{uuid.uuid4().hex}",
            subject_id=f"{subject_prefix}-{i}",
            consent=consent,
            image=ImagePayload(data=blob),
            submitted_at=now,
        ).to_bytes()
        for i, blob in enumerate(blobs)
    ]


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` runs after one warm-up run (the same statistic as
    the stream's, so the ratios compare like with like)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_readme(blobs: list[bytes]) -> Callable[[], None]:
    from facenet_pytorch import MTCNN, InceptionResnetV1

    mtcnn = MTCNN(image_size=160, margin=0)
    resnet = InceptionResnetV1(pretrained=None).eval()

    def run() -> None:
        for blob in blobs:
            img = Image.open(io.BytesIO(blob)).convert("RGB")
            img_cropped = mtcnn(img)
            if img_cropped is not None:
                with torch.no_grad():
                    resnet(img_cropped.unsqueeze(0))

    return run


def bare_batched(blobs: list[bytes], min_face_size: int = 20) -> Callable[[], None]:
    """The library's own calls, batched: MTCNN on lists of 16 images, the embedder on 32."""
    from facenet_pytorch import MTCNN, InceptionResnetV1

    mtcnn = MTCNN(image_size=160, margin=0, min_face_size=min_face_size)
    resnet = InceptionResnetV1(pretrained=None).eval()

    def run() -> None:
        crops = []
        for start in range(0, len(blobs), 16):
            batch = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs[start : start + 16]]
            crops.extend(c for c in mtcnn(batch) if c is not None)
        with torch.inference_mode():
            for start in range(0, len(crops), 32):
                resnet(torch.stack(crops[start : start + 32]))

    return run


def embedder_costs(blobs: list[bytes], repeats: int) -> dict[str, float]:
    """Milliseconds per face of each embedder, batches of 32, on the same detected faces."""
    import dlib
    import numpy as np

    from agents.records import CleanImage, EmbedInput
    from agents.stages.align import align
    from agents.stages.detect import MtcnnDetector
    from agents.stages.embed import DlibResnetEmbedder, InceptionEmbedder
    from agents.stages.embed.dlib_resnet import model_files

    detector = MtcnnDetector(max_side=640)
    faces = []
    for blob in blobs[:32]:
        pixels = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.uint8)
        image = CleanImage(pixels, "JPEG")
        [face, *_] = detector.detect([image])[0]
        crop = align(image, face.landmarks, sizes=(160,)).crops[160]
        faces.append(EmbedInput(pixels, face.box, crop))
    ours = DlibResnetEmbedder(batch_size=32)
    inception = InceptionEmbedder.seeded(0, batch_size=32)
    chips = [ours.chip(face) for face in faces]
    own = dlib.face_recognition_model_v1(str(model_files()[1]))
    n = len(faces)
    return {
        "inception_resnet_v1": 1000 * timed(lambda: inception.embed(faces), repeats) / n,
        "dlib_resnet": 1000 * timed(lambda: ours.embed(faces), repeats) / n,
        "dlib_compute_face_descriptor": 1000
        * timed(lambda: own.compute_face_descriptor(chips), repeats)
        / n,
    }


def chain(blobs: list[bytes], home: Path) -> tuple[Callable[[], None], IngestPipeline]:
    settings = Settings(home=home)
    pipeline = IngestPipeline.build(settings)
    size = settings.worker.batch_size

    def run() -> None:
        # Fresh upload ids and subjects: every run stores every face again, none of them a
        # duplicate of an earlier run's.
        records = events(blobs, subject_prefix=f"chain-{uuid.uuid4().hex[:8]}")
        for start in range(0, len(records), size):
            pipeline.run([Incoming(raw) for raw in records[start : start + size]])

    return run, pipeline


def stream(blobs: list[bytes], home: Path) -> float:
    """Images/s from the first publish to the last terminal state, worker already warm."""
    from agents.stores.db import create_engine_for
    from agents.stores.repository import Repository
    from infra.broker import free_port
    from infra.kafka import UploadPublisher
    from infra.runtime import Stack

    settings = Settings(home=home, broker_port=free_port(), log_level="WARNING")
    with Stack(settings), UploadPublisher(settings) as publisher:
        repository = Repository(create_engine_for(settings.sql_url))
        warm = events(blobs[:1], subject_prefix="bench-warm")
        publisher.publish_raw(b"warm", warm[0])
        wait_for(repository, {UploadEvent.from_bytes(warm[0]).upload_id})
        records = events(blobs, subject_prefix="stream")
        ids = {UploadEvent.from_bytes(r).upload_id for r in records}
        start = time.perf_counter()
        for i, raw in enumerate(records):
            publisher.producer.send(publisher.topic, key=f"s{i}".encode(), value=raw)
        publisher.producer.flush()
        wait_for(repository, ids)
        return len(records) / (time.perf_counter() - start)


def wait_for(repository: Any, ids: set[str], deadline_s: float = 900) -> None:
    from infra.waiting import wait_until

    wait_until(
        lambda: len(repository.finished(ids)) == len(ids),
        deadline_s=deadline_s,
        what=f"{len(ids)} bench uploads",
        poll_s=POLL_S,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    blobs = images(args.images)
    results: dict[str, Any] = {"images": len(blobs), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        results["a_readme"] = len(blobs) / timed(bare_readme(blobs), args.repeats)
        results["a_batched"] = len(blobs) / timed(bare_batched(blobs), args.repeats)
        # The same, with the smallest face our detector looks for (40 px): isolates what
        # the search floor buys from what the rest of our chain does.
        results["a_batched_40"] = len(blobs) / timed(bare_batched(blobs, 40), args.repeats)
        results["embed_ms"] = {
            k: round(v, 1) for k, v in embedder_costs(blobs, args.repeats).items()
        }
        run, pipeline = chain(blobs, Path(tmp) / "chain")
        pipeline.times.seconds.clear()
        pipeline.times.uploads = 0
        results["b_chain"] = len(blobs) / timed(run, args.repeats)
        results["stage_ms"] = {k: round(v, 2) for k, v in pipeline.times.per_upload_ms().items()}
        pipeline.close()
        if not args.skip_stream:
            results["c_stream"] = statistics.median(
                stream(blobs, Path(tmp) / f"stream{i}") for i in range(args.repeats)
            )
    base = results["a_batched"]
    lines = [
        f"{len(blobs)} images, torch threads {results['torch_threads']}",
        "",
        "| path | images/s | vs (a') |",
        "|---|---|---|",
    ]
    for key, label in (
        ("a_readme", "(a) facenet-pytorch, README way"),
        ("a_batched", "(a') facenet-pytorch, batched 16/32"),
        ("a_batched_40", "(a'') as (a'), min_face_size 40 like ours"),
        ("b_chain", "(b) our stage chain, in process, stored"),
        ("c_stream", "(c) full stream: broker + Faust worker"),
    ):
        if key in results:
            lines.append(f"| {label} | {results[key]:.1f} | {results[key] / base:.2f} |")
    if "c_stream" in results:
        lines.append("")
        lines.append(f"(c)/(b) = {results['c_stream'] / results['b_chain']:.2f}")
    lines.append("")
    lines.append(
        "per-upload ms in (b): " + ", ".join(f"{k} {v}" for k, v in results["stage_ms"].items())
    )
    lines.append(
        "embedder ms a face (batch 32): "
        + ", ".join(f"{k} {v}" for k, v in results["embed_ms"].items())
    )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
