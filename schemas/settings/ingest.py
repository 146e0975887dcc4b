"""Settings of the ingest stream: decode limits for untrusted images (``limits``),
quality thresholds (``quality``), where model weights come from (``models``), and the
Faust worker's batching and duplicate/identity distances (``worker``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from schemas.settings.base import Group, MiB


class LimitSettings(Group):
    """Decode limits for untrusted images."""

    max_upload_bytes: int = Field(12 * MiB, gt=0, description="encoded size, inline or by URI")
    max_inline_bytes: int = Field(
        6 * MiB,
        gt=0,
        description="inline image limit; larger uploads must come by URI. Every producer's "
        "max_request_size is derived from it",
    )
    max_pixels: int = Field(40_000_000, gt=0, description="width x height of the first frame")
    max_frames: int = Field(1, gt=0, description="animated images beyond this are refused")
    max_side_px: int = Field(
        12_000, gt=0, description="longest image side accepted, px (a decompression-bomb guard)"
    )

    @property
    def max_record_bytes(self) -> int:
        """Largest upload record a producer may send: base64 image plus the JSON envelope."""
        return 4 * ((self.max_inline_bytes + 2) // 3) + 64 * 1024


class QualitySettings(Group):
    """Thresholds of the quality stage; every score is stored, these only decide pass/fail."""

    min_detection_prob: float = Field(
        0.95, ge=0, le=1, description="face probability from the detector a face must reach"
    )
    min_face_px: int = Field(80, gt=0, description="shorter side of the face box, original pixels")
    second_face_ratio: float = Field(
        0.35,
        gt=0,
        le=1,
        description="another face at least this fraction of the main face's size is "
        "'multiple_faces'; smaller background faces are ignored",
    )
    max_outside_share: float = Field(
        0.15,
        ge=0,
        le=1,
        description="largest share of the face box's width (left/right) or height "
        "(top/bottom) that may lie beyond the image's edge; more, or any landmark outside, is "
        "'face_cut_off', since alignment would fill the missing part by mirroring the edge "
        "(half-faces, a second mouth). Not 0, because MTCNN's box reaches past brow and "
        "chin. On 8 real photos cropped on each side, 0.15 refused every face cut by 30% and "
        "passed every whole face 10% of its box from an edge; at the left edge MTCNN reads "
        "faces further out than they are (whole faces 5% from it read up to 0.20)",
    )
    min_sharpness: float = Field(40.0, ge=0, description="variance of the Laplacian, face at 128px")
    min_brightness: float = Field(
        40.0,
        ge=0,
        le=255,
        description="mean grey level (0-255) of the face box; below: bad_exposure",
    )
    max_brightness: float = Field(
        220.0,
        ge=0,
        le=255,
        description="mean grey level (0-255) of the face box; above: bad_exposure",
    )
    max_clipped_fraction: float = Field(
        0.35,
        ge=0,
        le=1,
        description="share of clipped black or white face pixels; above: bad_exposure",
    )
    max_yaw_deg: float = Field(
        35.0, gt=0, description="largest |yaw|, degrees, from the 5 landmarks"
    )
    max_pitch_deg: float = Field(
        30.0, gt=0, description="largest |pitch|, degrees, from the landmarks"
    )
    max_roll_deg: float = Field(45.0, gt=0, description="largest |roll| of the eye line, degrees")


class ModelSettings(Group):
    """Where model weights come from. Nothing is ever downloaded."""

    detector: Literal["mtcnn", "retinaface"] = Field(
        "mtcnn",
        description="mtcnn (weights ship in facenet-pytorch) or retinaface (RETINAFACE_WEIGHTS)",
    )
    retinaface_weights: Path | None = Field(
        None, description="retinaface.pth for the retina-face PyTorch backend"
    )
    embedder: Literal["dlib-resnet", "inception-resnet-v1", "random-init"] = Field(
        "dlib-resnet",
        description="face embedder: dlib's ResNet descriptor (128-d, from the installed "
        "face_recognition_models package), InceptionResnetV1 from embedder_weights (512-d), "
        "or a seeded random InceptionResnetV1 (512-d; tests and benchmarks only)",
    )
    embedder_weights: Path | None = Field(
        None, description="InceptionResnetV1 state dict (e.g. VGGFace2) for inception-resnet-v1"
    )
    embedder_seed: int = Field(0, description="initialisation seed of random-init")
    detect_max_side: int = Field(
        640,
        ge=160,
        description="images are downscaled to this longest side for detection; landmarks are "
        "mapped back to full resolution for alignment",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads of this process; unset = torch's default"
    )


class WorkerSettings(Group):
    """Batching and Kafka consumer behaviour of the Faust worker."""

    batch_size: int = Field(16, ge=1, description="uploads detected together")
    embed_batch_size: int = Field(32, ge=1, description="faces embedded together")
    batch_within_s: float = Field(0.05, gt=0, description="longest wait to fill a batch")
    topic_partitions: int = Field(
        4, ge=1, description="partitions of the topics created here; workers beyond this idle"
    )
    rebalance_timeout_s: float | None = Field(
        None,
        gt=0,
        description="consumer-group rebalance timeout; unset = 3 s on the embedded broker "
        "(Tansu waits the full timeout before every join) and 60 s on a Kafka cluster",
    )
    session_timeout_s: float | None = Field(None, gt=0, description="unset = as rebalance")
    store_retry_s: float = Field(
        300.0,
        ge=0,
        description="how long a batch that failed on a store (SQL, Qdrant, blobs) is run again "
        "in the worker, waiting 1, 2, 4 ... 30 s between runs, before the worker exits "
        "uncommitted for its supervisor to restart it; 0 = exit at the first failure",
    )
    duplicate_similarity: float = Field(
        0.985,
        gt=0,
        le=1,
        description="registered similarity (mean tile correlation after aligning one crop "
        "onto the other) at which a face is a copy of an earlier face of the same subject",
    )
    duplicate_identity_distance: float = Field(
        0.15,
        ge=0,
        le=2,
        description="identity distance (Euclidean, unit embeddings) within which an earlier "
        "face of the subject is compared for a copy; copies measure 0.11 or less",
    )
    identity_link_distance: float = Field(
        0.30,
        ge=0,
        le=2,
        description="identity distance (Euclidean, unit embeddings) under which faces of two "
        "subjects are linked as one person, so snapshots keep both subjects in one split",
    )
    identity_mismatch_distance: float = Field(
        0.40,
        gt=0,
        le=2,
        description="identity distance (Euclidean, unit embeddings) from every earlier face "
        "of the subject above which a new face is flagged identity_mismatch",
    )
