"""A dataset database seeded by hand: faces, labels, approved and waiting pairs, a small
reference library (one reference quarantined) and two duplicate uploads, with real PNG blobs.
Shared by the dataset, scheduler and erasure tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, Table
from sqlmodel import SQLModel

from agents.stages.imageio import encode_png
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from schemas.migrate import upgrade
from schemas.settings import Settings
from schemas.tables import (
    AnimeRef,
    Face,
    Label,
    LibraryVersion,
    Pair,
    RefLabel,
    Subject,
    Upload,
)

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _table(model: type[SQLModel]) -> Table:
    return SQLModel.metadata.tables[str(model.__tablename__)]


def _png(seed: int, side: int) -> bytes:
    """A small real PNG whose pixels (and so digest) depend on ``seed``."""
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))


def _id(n: int) -> str:
    return str(uuid.UUID(int=n))


@dataclass
class FaceSpec:
    """One accepted face, its labels and its pair (``status`` None: no pair)."""

    subject: str
    labels: list[tuple[str, str, str, float]]
    status: str | None = "approved"
    decided_by: str | None = "auto"
    score: float | None = 0.9
    ref: str | None = "r-ghibli-1"
    style: str = "ghibli"
    source: str = "selfie"
    license: str | None = None
    attribution: str | None = None


@dataclass
class Seeded:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    faces: dict[str, str] = field(default_factory=dict)
    """spec name -> face_id"""
    refs: dict[str, str] = field(default_factory=dict)
    """ref key -> ref_id"""


REFS: dict[str, dict[str, Any]] = {
    "r-ghibli-1": {"style": "ghibli", "license": "CC-BY-4.0", "author": "Astrid | Graeber"},
    "r-ghibli-2": {"style": "ghibli", "license": "CC0-1.0", "author": "Dirk Struve"},
    "r-ghibli-q": {"style": "ghibli", "license": "MIT", "author": "quarantined one", "q": True},
    "r-cel-1": {"style": "cel", "license": "CC-BY-SA-4.0", "author": "David Revoy"},
}

FEMALE_YOUNG = [
    ("gender", "female", "declared", 1.0),
    ("age_band", "18-29", "declared", 1.0),
    ("pose_band", "frontal", "measured", 0.97),
]

SPECS: dict[str, FaceSpec] = {
    # Subject A: three approved pairs of one style; max_per_subject=2 drops the 0.80 one.
    "a1": FaceSpec("subject-a", [*FEMALE_YOUNG, ("glasses", "yes", "model", 0.9)], score=0.95),
    "a2": FaceSpec("subject-a", FEMALE_YOUNG, score=0.90, ref="r-ghibli-2"),
    "a3": FaceSpec("subject-a", FEMALE_YOUNG, score=0.80),
    # B: a model guess below pairing.min_model_confidence does not count.
    "b1": FaceSpec(
        "subject-b",
        [
            ("gender", "male", "declared", 1.0),
            ("age_band", "30-44", "declared", 1.0),
            ("pose_band", "slight", "measured", 0.9),
            ("glasses", "yes", "model", 0.5),
            ("expression", "smiling", "model", 0.99),
        ],
        decided_by="human:alice",
        score=0.7,
    ),
    "c1": FaceSpec(
        "subject-c",
        [("gender", "female", "declared", 1.0), ("age_band", "45-59", "declared", 1.0)],
        decided_by="import:seed.csv",
        ref="r-ghibli-2",
    ),
    # D: a public-dataset face; a human label overrides the declared one.
    "d1": FaceSpec(
        "subject-d",
        [
            ("gender", "female", "declared", 1.0),
            ("gender", "male", "human", 1.0),
            ("pose_band", "turned", "measured", 0.8),
        ],
        source="public-dataset",
        license="CC-BY-4.0",
        attribution="Face Research Lab London Set",
    ),
    # E: its reference has been quarantined since approval: left out.
    "e1": FaceSpec("subject-e", FEMALE_YOUNG, ref="r-ghibli-q"),
    "f1": FaceSpec("subject-f", FEMALE_YOUNG, ref="r-cel-1", style="cel"),
    "g1": FaceSpec("subject-g", [("gender", "male", "declared", 1.0)]),
    "h1": FaceSpec("subject-h", [("gender", "female", "declared", 1.0)], score=0.85),
    # The review queue and what did not make it.
    "p1": FaceSpec("subject-p", FEMALE_YOUNG, status="pending", decided_by=None, score=0.5),
    "p2": FaceSpec("subject-p", FEMALE_YOUNG, status="pending", decided_by=None, score=0.4),
    "u1": FaceSpec("subject-u", FEMALE_YOUNG, status="unmatched", decided_by=None, ref=None),
    "x1": FaceSpec("subject-x", FEMALE_YOUNG, status="rejected", decided_by="human:bob", ref=None),
}

APPROVED_IN_SNAPSHOT = 9  # a1, a2, b1, c1, d1, f1, g1, h1 ... minus a3 (cap) and e1 (quarantine)


def seed(home: Path, sql_url: str, specs: dict[str, FaceSpec] = SPECS) -> Seeded:
    """A database and blob store holding ``specs`` (faces, labels, pairs), the reference
    library in ``REFS`` and two uploads rejected as duplicates."""
    upgrade(sql_url)
    settings = Settings(
        home=home,
        database_url=sql_url,
        dataset={
            "max_per_subject": 2,
            "validation_fraction": 0.3,
            "seed": 0,
            "target_coverage": {
                "gender": ("female", "male"),
                "age_band": ("18-29", "30-44", "45-59", "60+"),
            },
        },
    )
    engine = create_engine_for(sql_url)
    blobs = BlobStore(settings.blob_dir)
    seeded = Seeded(settings, engine, blobs)
    n = 0

    def next_id() -> str:
        nonlocal n
        n += 1
        return _id(n)

    with engine.begin() as connection:
        connection.execute(
            _table(LibraryVersion).insert(),
            [{"version": v, "created_at": T0, "added": 2} for v in (1, 2)],
        )
        for i, (key, ref) in enumerate(REFS.items()):
            ref_id = next_id()
            seeded.refs[key] = ref_id
            connection.execute(
                _table(AnimeRef).insert(),
                {
                    "ref_id": ref_id,
                    "style": ref["style"],
                    "status": "quarantined" if ref.get("q") else "active",
                    "original": blobs.put(_png(1000 + i, 64)),
                    "training": blobs.put(_png(2000 + i, 48)),
                    "region": "whole",
                    "box": [0, 0, 64, 64],
                    "width": 64,
                    "height": 64,
                    "license": ref["license"],
                    "source": f"https://example.org/{key}",
                    "author": ref["author"],
                    "tags": ["face", key],
                    "stats": {"hue": 0.1},
                    "embedder": "test",
                    "library_version": 2 if key == "r-ghibli-2" else 1,
                    "added_at": T0,
                },
            )
            connection.execute(
                _table(RefLabel).insert(),
                {
                    "ref_id": ref_id,
                    "name": "hair_colour",
                    "value": "black",
                    "source": "human",
                    "confidence": 1.0,
                    "created_at": T0,
                },
            )
        subjects = sorted({spec.subject for spec in specs.values()} | {"subject-dup"})
        connection.execute(
            _table(Subject).insert(),
            [
                {
                    "pseudonym": s,
                    "first_seen_at": T0,
                    "consent_version": "v1",
                    "consent_scopes": ["training"],
                    "consent_granted_at": T0,
                }
                for s in subjects
            ],
        )
        for k in range(2):
            connection.execute(
                _table(Upload).insert(),
                {
                    "upload_id": f"dup-{k}",
                    "subject": "subject-dup",
                    "state": "rejected",
                    "reason": "duplicate",
                    "stage": "store",
                    "finished_at": T0,
                },
            )
        for i, (name, spec) in enumerate(specs.items()):
            face_id, upload_id = next_id(), f"upload-{name}"
            seeded.faces[name] = face_id
            connection.execute(
                _table(Upload).insert(),
                {
                    "upload_id": upload_id,
                    "subject": spec.subject,
                    "state": "accepted",
                    "source": spec.source,
                    "license": spec.license,
                    "consent_version": "v1",
                    "submitted_at": T0,
                    "finished_at": T0,
                },
            )
            connection.execute(
                _table(Face).insert(),
                {
                    "face_id": face_id,
                    "upload_id": upload_id,
                    "subject": spec.subject,
                    "source": spec.source,
                    "license": spec.license,
                    "attribution": spec.attribution,
                    "detector": "mtcnn",
                    "detection_prob": 0.99,
                    "box": [0, 0, 10, 10],
                    "landmarks": [[1, 1]] * 5,
                    "quality": {"sharpness": 120.5 + i, "brightness": 110.0},
                    "crop_256": blobs.put(_png(i, 32)),
                    "crop_512": blobs.put(_png(500 + i, 64)),
                    "align": {"scale": 1.0},
                    "embedder": "test",
                    "embedder_random_init": True,
                    "image_width": 512,
                    "image_height": 512,
                    "created_at": T0,
                },
            )
            if spec.labels:
                connection.execute(
                    _table(Label).insert(),
                    [
                        {
                            "face_id": face_id,
                            "name": label,
                            "value": value,
                            "source": source,
                            "confidence": confidence,
                            "created_at": T0,
                        }
                        for label, value, source, confidence in spec.labels
                    ],
                )
            if spec.status is None:
                continue
            connection.execute(
                _table(Pair).insert(),
                {
                    "pair_id": next_id(),
                    "face_id": face_id,
                    "subject": spec.subject,
                    "style": spec.style,
                    "ref_id": seeded.refs[spec.ref] if spec.ref else None,
                    "score": spec.score,
                    "status": spec.status,
                    "decided_by": spec.decided_by,
                    "decided_at": T0 if spec.decided_by else None,
                    "candidates": [],
                    "library_version": 2 if spec.ref == "r-ghibli-2" else 1,
                    "created_at": T0,
                    "updated_at": T0,
                },
            )
    return seeded
