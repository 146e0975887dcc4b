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
from typing import Literal

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
    max_side_px: int = Field(12_000, gt=0)

    @property
    def max_record_bytes(self) -> int:
        """Largest upload record a producer may send: base64 image plus the JSON envelope."""
        return 4 * ((self.max_inline_bytes + 2) // 3) + 64 * 1024


class QualitySettings(_Group):
    """Thresholds of the quality stage; every score is stored, these only decide pass/fail."""

    min_detection_prob: float = Field(0.95, ge=0, le=1)
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
    min_brightness: float = Field(40.0, ge=0, le=255)
    max_brightness: float = Field(220.0, ge=0, le=255)
    max_clipped_fraction: float = Field(0.35, ge=0, le=1)
    max_yaw_deg: float = Field(35.0, gt=0)
    max_pitch_deg: float = Field(30.0, gt=0)
    max_roll_deg: float = Field(45.0, gt=0)


class ModelSettings(_Group):
    """Where model weights come from. Nothing is ever downloaded."""

    detector: Literal["mtcnn", "retinaface"] = "mtcnn"
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
    torch_threads: int | None = Field(None, ge=1)


class WorkerSettings(_Group):
    """Batching and Kafka consumer behaviour of the Faust worker."""

    batch_size: int = Field(16, ge=1, description="uploads detected together")
    embed_batch_size: int = Field(32, ge=1)
    batch_within_s: float = Field(0.05, gt=0, description="longest wait to fill a batch")
    topic_partitions: int = Field(4, ge=1)
    rebalance_timeout_s: float | None = Field(
        None,
        gt=0,
        description="consumer-group rebalance timeout; unset = 3 s on the embedded broker "
        "(Tansu waits the full timeout before every join) and 60 s on a Kafka cluster",
    )
    session_timeout_s: float | None = Field(None, gt=0, description="unset = as rebalance")
    duplicate_similarity: float = Field(
        0.985,
        gt=0,
        le=1,
        description="appearance similarity (normalised cross-correlation of the aligned "
        "crops) at which a face duplicates one already stored for the same subject",
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


class DatasetSettings(_Group):
    """How approved pairs become a snapshot."""

    validation_fraction: float = Field(0.2, ge=0, lt=1, description="share of subjects")
    max_per_subject: int = Field(20, ge=1, description="pairs kept per subject and style")
    seed: int = 0
    target_coverage: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {
            "age_band": ("18-29", "30-44", "45-59", "60+"),
            "gender": ("female", "male"),
            "pose_band": ("frontal", "slight", "turned"),
            "glasses": ("no", "yes"),
        },
        description="label values a balanced dataset should hold; the report shows the gaps",
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


class ReviewSettings(_Group):
    """The review web page."""

    host: str = "127.0.0.1"
    port: int = Field(8470, ge=0, le=65535)


class Settings(BaseSettings):
    """Everything a process needs, from one place."""

    model_config = SettingsConfigDict(
        env_prefix="S2A_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    home: Path = Field(Path.home() / ".selfie2anime", description="all local state lives here")
    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port] of a Kafka cluster; unset = embedded broker"
    )
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(9092, ge=1, le=65535, description="embedded broker port")
    topic_prefix: str = "s2a."
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite in home")
    qdrant_url: str | None = Field(None, description="Qdrant server; unset = local store in home")
    qdrant_api_key: SecretStr | None = None
    pseudonym_key: SecretStr | None = Field(
        None,
        description="HMAC key for subject pseudonyms (base64 or text); unset = generated once "
        "and kept in home/pseudonym.key",
    )
    uri_roots: tuple[Path, ...] = Field(
        (), description="directories a worker may read file:// upload URIs from"
    )
    log_level: str = "INFO"

    limits: LimitSettings = LimitSettings()
    quality: QualitySettings = QualitySettings()
    models: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    refs: RefSettings = RefSettings()
    pairing: PairingSettings = PairingSettings()
    dataset: DatasetSettings = DatasetSettings()
    review: ReviewSettings = ReviewSettings()
    train: TrainSettings = TrainSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.limits.max_inline_bytes > self.limits.max_upload_bytes:
            raise ConfigError(
                f"limits.max_inline_bytes ({self.limits.max_inline_bytes}) exceeds "
                f"limits.max_upload_bytes ({self.limits.max_upload_bytes}); lower the first"
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

    def resolve_pseudonym_key(self) -> bytes:
        """The HMAC key: from settings, else from ``home/pseudonym.key``, created on first use.

        The generated key never leaves the data directory; losing it means new pseudonyms
        for returning subjects, so production sets ``S2A_PSEUDONYM_KEY`` from a secret store.
        """
        if self.pseudonym_key is not None:
            raw = self.pseudonym_key.get_secret_value()
            if len(raw) < 16:
                raise ConfigError("S2A_PSEUDONYM_KEY must hold at least 16 characters")
            return raw.encode()
        path = self.home / "pseudonym.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".pseudonym.key.{os.getpid()}")
            tmp.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
            tmp.chmod(0o600)
            # link() fails when another process won the race: every process then reads the
            # same key, so one subject never gets two pseudonyms.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        return base64.b64decode(path.read_text().strip())
