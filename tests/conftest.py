"""Fixtures shared by every test tier: real test photos and the real (offline) models.

The photos live in ``tests/data/real`` (sources and licences in ``tests/data/SOURCES.csv``);
tests never read anything outside the repository. The models are session-scoped because
building them costs seconds and they hold no state between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from agents.records import CleanImage, Detection
from agents.stages.detect import MtcnnDetector
from agents.stages.embed import DlibResnetEmbedder, InceptionEmbedder

DATA = Path(__file__).parent / "data"
REAL = DATA / "real"

#: Single-person portraits: studio (London set), webcam and phone selfies, an event photo.
PORTRAITS = (
    "london_001_neutral.jpg",
    "london_001_smiling.jpg",
    "london_004_neutral.jpg",
    "london_004_smiling.jpg",
    "london_007_neutral.jpg",
    "london_013_neutral.jpg",
    "selfie_lisa1.jpg",
    "selfie_zoom_30cm.jpg",
    "commons_chris_pratt_2018.jpg",
)


def load_photo(name: str) -> CleanImage:
    """A test photo decoded as the anonymize stage would hand it on (RGB, upright)."""
    with Image.open(REAL / name) as img:
        fmt = img.format or "JPEG"
        pixels = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)
    return CleanImage(pixels=np.ascontiguousarray(pixels), format=fmt)


@pytest.fixture(scope="session")
def photo() -> Callable[[str], CleanImage]:
    """``photo("london_001_neutral.jpg")`` -> CleanImage of a file in tests/data/real."""
    return load_photo


@pytest.fixture(scope="session")
def portraits() -> dict[str, CleanImage]:
    return {name: load_photo(name) for name in PORTRAITS}


@pytest.fixture(scope="session")
def detector() -> MtcnnDetector:
    return MtcnnDetector(max_side=640)


@pytest.fixture(scope="session")
def portrait_faces(
    detector: MtcnnDetector, portraits: dict[str, CleanImage]
) -> dict[str, list[Detection]]:
    """Every portrait's detections, from one batched call."""
    found = detector.detect(list(portraits.values()))
    return dict(zip(portraits, found, strict=True))


@pytest.fixture(scope="session")
def embedder() -> InceptionEmbedder:
    """The seeded random-init InceptionResnetV1: deterministic, recognizes nobody. Tests
    that rest on who a face is use :func:`dlib_embedder`."""
    return InceptionEmbedder.seeded(seed=0, batch_size=8)


@pytest.fixture(scope="session")
def dlib_embedder() -> DlibResnetEmbedder:
    """The default embedder, from the installed face_recognition_models package."""
    return DlibResnetEmbedder(batch_size=8)
