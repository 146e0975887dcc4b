"""The one settings object of a selfie2anime process.

Built once at the entry point (``Settings()`` reads ``S2A_*`` environment variables and a
``.env`` file) and passed down; nothing else reads the environment. Nested groups use a
double underscore: ``S2A_QUALITY__MIN_FACE_PX=96``.

Example::

    settings = Settings(home=tmp_path, kafka_bootstrap="kafka-1:9092")
    settings.database_url       # 'sqlite:///<tmp_path>/s2a.db' unless set
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError

MiB = 1024 * 1024


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LimitSettings(_Group):
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


class QualitySettings(_Group):
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


class ModelSettings(_Group):
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


class WorkerSettings(_Group):
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


class RefSettings(_Group):
    """The anime reference library: what it accepts and how it keeps styles consistent."""

    allowed_licenses: tuple[str, ...] = Field(
        ("CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-2.0", "MIT", "public-domain"),
        description="SPDX-style ids a reference may carry; anything else is refused",
    )
    min_side_px: int = Field(128, gt=0, description="shorter side of the face region")
    outlier_z: float = Field(
        3.5,
        gt=0,
        description="style check limit: a reference whose rendering composite z-score "
        "(looks photographed / sketched; agents/references/style.py) passes it is quarantined; "
        "one statistic alone needs 3x it, palette evidence only tips a composite within 1 of it",
    )
    min_style_size: int = Field(
        5, ge=2, description="references a style needs before outliers are judged against it"
    )
    index_backend: Literal["edge", "qdrant-local"] = Field(
        "edge",
        description="embedded reference index when no qdrant_url is set (BENCHMARKS.md: "
        "matching); with qdrant_url the server's anime_refs collection is used",
    )


class PairingSettings(_Group):
    """Matching accepted faces to anime references."""

    styles: tuple[str, ...] = Field(
        (), description="styles every face is paired for; empty = every style in the library"
    )
    candidates: int = Field(10, ge=1, le=100, description="references scored per face")
    auto_approve: float = Field(
        0.8, ge=0, le=1, description="pair score at or above which a pair is approved"
    )
    min_model_confidence: float = Field(
        0.85, ge=0, le=1, description="a label head's guess counts only at this confidence"
    )
    usage_penalty: float = Field(
        0.04,
        ge=0,
        le=1,
        description="most a reference's score is lowered for the pairs (approved or pending, "
        "in the style) already using it: usage_penalty * uses / (uses + 1); under 0.05 it "
        "only reorders references equally good on labels (see agents.pairing.match)",
    )


class DatasetSettings(_Group):
    """How approved pairs become a snapshot."""

    validation_fraction: float = Field(0.2, ge=0, lt=1, description="share of subjects")
    max_per_subject: int = Field(20, ge=1, description="pairs kept per subject and style")
    seed: int = Field(0, description="keys the subject split: a new seed gives another split")
    target_coverage: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {
            "age_band": ("18-29", "30-44", "45-59", "60+"),
            "gender": ("female", "male"),
            "pose_band": ("frontal", "slight", "turned"),
            "glasses": ("no", "yes"),
        },
        description="label values a balanced dataset should hold; the report shows the gaps",
    )
    export_roots: tuple[Path, ...] = Field(
        (),
        description="folders `s2a erase` searches for exports (export.json) of the snapshots "
        "it deletes, besides home/datasets; exports elsewhere are not found",
    )


class TrainSettings(_Group):
    """Converter training (``s2a train``): each value is the default of a training flag.

    Defaults fit the embedded family (pix2pix-lora) on a CPU; a GPU run raises steps,
    batch size and resolution. LoRA rank/alpha apply to new adapters only: a run that
    warm-starts from a parent adapter keeps the parent's.
    """

    family: str = Field("pix2pix-lora", description="model family trained by `s2a train`")
    steps: int = Field(2000, ge=1, description="optimizer steps of one run")
    batch_size: int = Field(4, ge=1, description="pairs per step (per process)")
    lr: float = Field(
        2e-4, gt=0, description="Adam learning rate of a base run (pix2pix's, Isola et al. 2017)"
    )
    lora_lr: float = Field(
        1e-3, gt=0, description="Adam learning rate of the LoRA adapters of a lora run"
    )
    resolution: int = Field(128, ge=32, le=512, description="training side in px")
    progressive: bool = Field(
        False, description="train the first half of the steps at half the resolution"
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank r of new adapters")
    lora_alpha: int = Field(8, ge=1, description="LoRA alpha (scale alpha / r)")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept per run")
    replay_fraction: float = Field(
        0.25, ge=0, lt=1, description="share of draws from replayed older pairs (lora runs)"
    )
    perceptual_weights: Path | None = Field(
        None,
        description="local torchvision VGG-16 state dict for a perceptual loss; unset = none "
        "(nothing is downloaded)",
    )
    runs_dir: Path | None = Field(None, description="where runs go; unset = home/runs")
    model_name: str = Field(
        "converter",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="registry name of the converter the retrain cycle trains and promotes "
        "(its versions live in home/models/<name>/<version>/); not 'labels', which holds "
        "the label heads",
    )


class GateSettings(_Group):
    """The evaluation gate (``trainer.evaluate``): how much worse than the champion a
    candidate may measure, on the same validation split, and still be promoted; and the
    absolute limits the first candidate (no champion yet) must meet.

    Units: L1 in [0, 1] per pixel and channel; SSIM in [-1, 1]; PSNR in dB; identity as
    the Euclidean distance of unit embeddings (0..2); style as the rendering composite
    z-score of ``agents.references.style`` against the style's references.
    """

    l1_tolerance: float = Field(0.02, ge=0, description="largest L1 increase allowed")
    ssim_tolerance: float = Field(0.02, ge=0, description="largest SSIM decrease allowed")
    psnr_tolerance: float = Field(0.5, ge=0, description="largest PSNR decrease, dB")
    identity_tolerance: float = Field(
        0.03, ge=0, description="largest increase of the mean identity distance"
    )
    style_tolerance: float = Field(0.5, ge=0, description="largest increase of the style z")
    max_l1: float = Field(0.45, gt=0, le=1, description="first candidate: L1 at most this")
    min_ssim: float = Field(0.0, ge=-1, le=1, description="first candidate: SSIM at least this")
    max_identity_distance: float = Field(
        0.8,
        gt=0,
        le=2,
        description="first candidate: mean identity distance input -> output at most this "
        "(two photos of one person measure 0.08-0.29; a stylisation moves further)",
    )
    max_style_z: float = Field(
        7.0, gt=0, description="first candidate: mean style composite z at most this"
    )
    embed_side: int = Field(
        256,
        gt=160,
        le=512,
        description="side (px) both crops are resized to for the embedder (above 160: the "
        "loose template's range)",
    )


class ScheduleSettings(_Group):
    """When the retrain scheduler (``s2a scheduler``, started by ``s2a up``) runs a cycle.

    A check runs every ``check_every_s``; a cycle starts when new data or an erasure calls for
    one (``trainer.scheduler``), and also on ``cron`` when set. One cycle at a time across
    every process and machine: they share a lease in SQL, held at most ``lease_s``.
    """

    check_every_s: float = Field(60.0, gt=0, description="seconds between trigger checks")
    min_new_pairs: int = Field(
        50,
        ge=1,
        description="data trigger: approved pairs decided since the newest version's snapshot",
    )
    cron: str | None = Field(
        None,
        description="standing retrain in crontab syntax ('0 3 * * *': 03:00 daily, in UTC); "
        "unset = only data and erasure triggers",
    )
    lease_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="longest a cycle may hold the retrain lease; a holder that died frees it "
        "after this",
    )


class ReviewSettings(_Group):
    """The review web page (``s2a review``): reviewers log in with accounts made by
    ``s2a reviewers add``; sessions are signed cookies.

    Security: on any address other than loopback the page refuses to start without TLS
    (``tls_cert`` + ``tls_key``). The session secret comes from ``session_secret`` or else
    from ``home/review-session.key``, made with the first reviewer account and never
    silently replaced (:meth:`resolve_session_secret`).
    """

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8470, ge=0, le=65535, description="listen port; 0 = any free port")
    session_secret: SecretStr | None = Field(
        None,
        description="key that signs session cookies (at least 32 characters); unset = "
        "generated with the first reviewer account and kept in home/review-session.key",
    )
    session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="a login lasts this long, then the page asks again"
    )
    tls_cert: Path | None = Field(None, description="server certificate chain (PEM)")
    tls_key: Path | None = Field(None, description="server private key (PEM)")

    @model_validator(mode="after")
    def _check_tls(self) -> ReviewSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "review.tls_cert and review.tls_key go together (S2A_REVIEW__TLS_CERT, "
                "S2A_REVIEW__TLS_KEY): set both, or neither"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @staticmethod
    def session_key_path(home: Path) -> Path:
        """Where the generated session secret lives."""
        return home / "review-session.key"

    def resolve_session_secret(self, home: Path, *, create: bool) -> bytes:
        """The key that signs session cookies: from settings, else from
        ``home/review-session.key``.

        The file is made only with ``create`` (the caller knows that no secret can have
        existed: no reviewer account yet, or an explicit new secret), owner-only, by an
        atomic link so racing processes share one. Without ``create`` a missing file is a
        lost secret and a :class:`ConfigError` that says how to restore or replace it; a
        file others may read is refused too.
        """
        if self.session_secret is not None:
            raw = self.session_secret.get_secret_value()
            if len(raw) < 32:
                raise ConfigError("S2A_REVIEW__SESSION_SECRET must hold at least 32 characters")
            return raw.encode()
        path = self.session_key_path(home)
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"the review session secret {path} is missing, but reviewer accounts "
                    "exist, so it was made before and is lost; restore it, or set "
                    "S2A_REVIEW__SESSION_SECRET, or make a new one with `s2a reviewers "
                    "new-secret` (every reviewer is signed out)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".review-session.key.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(secrets.token_bytes(32)).decode())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        if path.stat().st_mode & 0o077:
            raise ConfigError(
                f"the review session secret {path} may be read by other users; "
                f"`chmod 600 {path}`, or set S2A_REVIEW__SESSION_SECRET"
            )
        return base64.b64decode(path.read_text().strip())


class ServingSettings(_Group):
    """The Convert gRPC server (``s2a serve``) and its client (``s2a convert``).

    Security: on any address other than loopback the server refuses to start without a
    bearer ``token`` or mutual TLS (``tls_cert`` + ``tls_key`` + ``tls_client_ca``).
    Throughput: requests wait at most ``max_queue_delay_ms`` to share a batch of up to
    ``max_batch_size``; past ``max_queue`` waiting images the server answers
    RESOURCE_EXHAUSTED instead of queueing without bound.
    """

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8480, ge=0, le=65535, description="listen port; 0 = any free port")
    token: SecretStr | None = Field(
        None, description="bearer token clients send as 'authorization: Bearer <token>'"
    )
    admin_token: SecretStr | None = Field(
        None, description="token the Reload call needs; unset = the client token (or none)"
    )
    tls_cert: Path | None = Field(None, description="server certificate chain (PEM)")
    tls_key: Path | None = Field(None, description="server private key (PEM)")
    tls_client_ca: Path | None = Field(
        None, description="CA (PEM) client certificates must chain to: mutual TLS"
    )
    model_name: str | None = Field(
        None, description="registry name served; unset = train.model_name"
    )
    model_path: Path | None = Field(
        None,
        description="version directory loaded at start; unset = the highest-numbered "
        "complete version (with export.json) under home/models/<model_name>/",
    )
    engine: Literal["auto", "tensorrt", "onnxruntime", "torch"] = Field(
        "auto", description="auto = the best available: TensorRT, ONNX Runtime, PyTorch"
    )
    int8: bool = Field(
        False, description="run model.int8.onnx where the version has one (ONNX Runtime)"
    )
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        description="engine threads per inference worker; unset = the thread plan "
        "(min(cores, 4) workers side by side, cores // workers threads each); 2 on 2 cores "
        "gives one worker of two threads (lowest latency for a lone caller)",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="images run together")
    max_queue_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="longest wait for a batch to fill"
    )
    max_queue: int = Field(
        64, ge=1, description="images waiting for a batch; more = RESOURCE_EXHAUSTED"
    )
    max_concurrent_rpcs: int = Field(
        128, ge=1, description="calls in progress; gRPC answers RESOURCE_EXHAUSTED past it"
    )
    handler_threads: int = Field(16, ge=1, description="threads decoding and detecting")
    max_image_bytes: int | None = Field(
        None, gt=0, description="largest image in a request; unset = limits.max_upload_bytes"
    )
    max_output_side: int = Field(4096, ge=16, le=16384, description="largest size option")
    default_deadline_s: float = Field(30.0, gt=0, description="deadline of a call that sets none")
    grace_s: float = Field(10.0, ge=0, description="how long shutdown lets in-flight calls finish")
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="seconds between health NOT_SERVING and closing the port on shutdown, "
        "for load balancers to stop sending (Kubernetes: about the probe period)",
    )
    stream_window: int = Field(
        16, ge=1, description="images of one ConvertStream in the server at once"
    )
    warmup_runs: int = Field(2, ge=1, description="inferences a new model runs before a swap")
    follow_updates: bool = Field(
        True, description="load each model-updates record for model_name as it arrives"
    )
    server_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="names this server's own model-updates consumer group "
        "(<prefix>serve-<server_id>); unset = hostname and port",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset = not served"
    )
    server_address: str = Field(
        "127.0.0.1:8480", description="where `s2a convert` sends requests (host:port)"
    )
    client_retries: int = Field(4, ge=0, description="client retries on UNAVAILABLE")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls and self.tls_client_ca is not None

    def image_limit(self, limits: LimitSettings) -> int:
        """The largest image, in bytes, a request may carry."""
        return self.max_image_bytes or limits.max_upload_bytes

    def message_limit(self, limits: LimitSettings) -> int:
        """gRPC's max message size: twice the image limit plus room for the options, so
        that an image a little over the limit still arrives and is answered
        INVALID_ARGUMENT naming its size; only far larger messages are cut by gRPC."""
        return 2 * self.image_limit(limits) + 64 * 1024


class StorageSettings(_Group):
    """Where blobs (aligned crops, reference images) and model version directories live.

    ``local`` (the embedded default) keeps them under ``home`` (``blobs/``, ``models/``).
    ``s3`` keeps them in an S3-compatible bucket (AWS S3, MinIO, ...) under
    ``<s3_prefix>/blobs/`` and ``<s3_prefix>/models/<name>/<version>/``; the trainer still
    builds each version in ``home/models`` and the registry copies it up, and Convert
    servers fetch a version into ``home/cache/models`` before loading it. Credentials
    come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE``, an instance role), never from these settings.
    """

    backend: Literal["local", "s3"] = Field("local", description="local folder or S3 bucket")
    s3_endpoint: str | None = Field(
        None, description="S3 API URL (MinIO, a test server); unset = AWS's own endpoint"
    )
    s3_bucket: str | None = Field(None, description="bucket; required with backend s3")
    s3_prefix: str = Field("", description="key prefix inside the bucket, e.g. 'prod/s2a'")
    s3_region: str | None = Field(None, description="region; unset = boto3's default")

    @model_validator(mode="after")
    def _check_s3(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ConfigError(
                "storage.backend is s3 but no bucket is set: set S2A_STORAGE__S3_BUCKET "
                "(or S2A_STORAGE__BACKEND=local)"
            )
        endpoint = self.s3_endpoint
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"S2A_STORAGE__S3_ENDPOINT {endpoint!r} is not a URL; give "
                "http(s)://host:port (or leave it unset for AWS)"
            )
        return self


class Settings(BaseSettings):
    """Everything a process needs, from one place."""

    model_config = SettingsConfigDict(
        env_prefix="S2A_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    def __init__(self, **values: Any) -> None:
        """Raises :class:`~schemas.errors.ConfigError` for a keyword that is no field.

        ``extra="ignore"`` is for the environment (an ``S2A_*`` variable of another version
        must not stop a process); a keyword is a caller's typo, which would otherwise
        build the default silently (``Settings(sql_url=...)`` opening SQLite in home).
        Underscored keywords are pydantic-settings' own (``_env_file``).
        """
        fields = type(self).model_fields
        unknown = sorted(k for k in values if not k.startswith("_") and k not in fields)
        if unknown:
            raise ConfigError(f"no such setting {', '.join(unknown)}; SETTINGS.md lists them")
        super().__init__(**values)

    home: Path = Field(Path.home() / ".selfie2anime", description="all local state lives here")
    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port] of a Kafka cluster; unset = embedded broker"
    )
    broker_host: str = Field("127.0.0.1", description="embedded broker listen address")
    broker_port: int = Field(9092, ge=1, le=65535, description="embedded broker port")
    topic_prefix: str = Field("s2a.", description="prefix of every topic and consumer group")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite in home")
    qdrant_url: str | None = Field(None, description="Qdrant server; unset = local store in home")
    qdrant_api_key: SecretStr | None = Field(None, description="API key of the Qdrant server")
    pseudonym_key: SecretStr | None = Field(
        None,
        description="HMAC key for subject pseudonyms (base64 or text); unset = generated once "
        "and kept in home/pseudonym.key",
    )
    uri_roots: tuple[Path, ...] = Field(
        (), description="directories a worker may read file:// upload URIs from"
    )
    log_level: str = Field("INFO", description="Python logging level of every process")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="log lines of every process: text, or json (one object a line: time, "
        "level, logger, message and the record's fields, e.g. a Convert call's request_id)",
    )

    limits: LimitSettings = LimitSettings()
    quality: QualitySettings = QualitySettings()
    models: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    refs: RefSettings = RefSettings()
    pairing: PairingSettings = PairingSettings()
    dataset: DatasetSettings = DatasetSettings()
    review: ReviewSettings = ReviewSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    serving: ServingSettings = ServingSettings()
    storage: StorageSettings = StorageSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.limits.max_inline_bytes > self.limits.max_upload_bytes:
            raise ConfigError(
                f"limits.max_inline_bytes ({self.limits.max_inline_bytes}) exceeds "
                f"limits.max_upload_bytes ({self.limits.max_upload_bytes}); lower the first"
            )
        if self.train.model_name == "labels":
            raise ConfigError(
                "train.model_name 'labels' would share home/models/labels with the label "
                "heads; choose another name (default: converter)"
            )
        serving = self.serving
        if (serving.tls_cert is None) != (serving.tls_key is None):
            raise ConfigError(
                "serving.tls_cert and serving.tls_key go together (S2A_SERVING__TLS_CERT, "
                "S2A_SERVING__TLS_KEY): set both, or neither"
            )
        if serving.tls_client_ca is not None and not serving.tls:
            raise ConfigError(
                "serving.tls_client_ca (mutual TLS) needs serving.tls_cert and tls_key too"
            )
        if self.quality.min_brightness >= self.quality.max_brightness:
            raise ConfigError("quality.min_brightness must be below quality.max_brightness")
        return self

    # Derived locations: one data directory holds every piece of local state.
    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.broker_host}:{self.broker_port}"

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 's2a.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def qdrant_path(self) -> Path:
        return self.home / "qdrant"

    @property
    def ref_index_dir(self) -> Path:
        """Versions of the embedded anime-reference index (one folder per library version)."""
        return self.home / "anime_refs"

    @property
    def dataset_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def train_dir(self) -> Path:
        """Training runs: one folder per run (``s2a train``)."""
        return self.train.runs_dir or self.home / "runs"

    @property
    def models_dir(self) -> Path:
        """Registered model versions: ``models/<name>/<version>/`` (``trainer.registry``)."""
        return self.home / "models"

    @property
    def serving_model_name(self) -> str:
        """The registry name the Convert server serves."""
        return self.serving.model_name or self.train.model_name

    @property
    def label_model_dir(self) -> Path:
        return self.home / "models" / "labels"

    @property
    def faust_data_dir(self) -> Path:
        return self.home / "faust"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def rebalance_timeout_s(self) -> float:
        default = 3.0 if self.embedded_broker else 60.0
        return self.worker.rebalance_timeout_s or default

    @property
    def session_timeout_s(self) -> float:
        return self.worker.session_timeout_s or self.rebalance_timeout_s

    def topic(self, name: str) -> str:
        """The full topic name for a contract's base name (``uploads`` -> ``s2a.uploads``)."""
        return f"{self.topic_prefix}{name}"

    @property
    def pseudonym_key_path(self) -> Path:
        """Where the generated pseudonym key lives (read while ``pseudonym_key`` is unset)."""
        return self.home / "pseudonym.key"

    def resolve_pseudonym_key(self, *, create: bool = True) -> bytes:
        """The HMAC key: from settings, else from ``home/pseudonym.key``, made on first use.

        The file is made owner-only from its first byte (``O_CREAT | O_EXCL`` with mode
        0600, then an atomic link, so racing processes share one key), and only with
        ``create``: without it a missing file is a lost key, a :class:`ConfigError` saying
        how to restore it. A key file other users may read is refused, naming the ``chmod``.

        The generated key never leaves the data directory; losing it means new pseudonyms
        for returning subjects, so production sets ``S2A_PSEUDONYM_KEY`` from a secret store.
        Processes that pseudonymize raw ids take the key from
        ``agents.stores.keys.checked_pseudonym_key``, which refuses a key other than the one
        the database's subjects were pseudonymized under.
        """
        if self.pseudonym_key is not None:
            raw = self.pseudonym_key.get_secret_value()
            if len(raw) < 16:
                raise ConfigError("S2A_PSEUDONYM_KEY must hold at least 16 characters")
            return raw.encode()
        path = self.pseudonym_key_path
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"the pseudonym key {path} is missing, but subjects were pseudonymized "
                    "under it (the database holds them): restore the file from a backup; a "
                    "new key would give every returning subject a new pseudonym and hide "
                    "their data from `s2a erase`"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 under a name no other process uses: the key is never readable
            # by others, not even between its creation and a chmod.
            tmp = path.with_name(f".pseudonym.key.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(base64.b64encode(secrets.token_bytes(32)).decode())
                # link() fails when another process won the race: every process then reads
                # the same key, so one subject never gets two pseudonyms.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                tmp.unlink()
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"the pseudonym key {path} may be read by other users (mode {mode:o}); "
                f"`chmod 600 {path}`, or set S2A_PSEUDONYM_KEY"
            )
        try:
            key = base64.b64decode(path.read_text().strip(), validate=True)
        except ValueError:  # binascii.Error, UnicodeDecodeError
            key = b""
        if len(key) < 16:
            raise ConfigError(
                f"the pseudonym key {path} is not a base64 key of at least 16 bytes; restore "
                "it from a backup, or set S2A_PSEUDONYM_KEY"
            )
        return key
