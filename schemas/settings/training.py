"""Settings of the retrain cycle: the dataset snapshot (``dataset``), converter
training (``train``), the evaluation gate (``gate``) and the retrain scheduler
(``schedule``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from schemas.settings.base import Group


class DatasetSettings(Group):
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


class TrainSettings(Group):
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
    keep_versions: int = Field(
        5,
        ge=1,
        description="model versions whose files the retrain cycle keeps (the newest); the "
        "champion, the candidate, the champions a rollback walks back to (as many) and the "
        "bases they are built on are kept too; older files go, their registry rows stay",
    )


class GateSettings(Group):
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


class ScheduleSettings(Group):
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
