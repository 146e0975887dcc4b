"""The demo's bundled inputs: sample uploads (each with the outcome the demo expects),
anime references with their licenses, and which demo subject is erased at the end.

Every file under ``infra/samples`` has a row in its ``SOURCES.csv`` (source, license,
author, what was changed); ``README.md`` there carries the attribution.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.settings import Settings

#: A record that is not an UploadEvent at all: it must end as ``bad_schema``, not vanish.
BAD_SCHEMA_RECORD = b'{"schema_version": 1, "upload_id": "demo-broken-record", "consent": "yes"}'
BAD_SCHEMA_UPLOAD = "demo-broken-record"


@dataclass(frozen=True, slots=True)
class Sample:
    """One bundled upload and what the demo expects to become of it."""

    file: str
    subject: str
    expect: str
    """'accepted' or the reason code the demo expects"""
    scopes: tuple[str, ...] = ("training",)
    consent_expired: bool = False
    age: int | None = None
    gender: str | None = None
    """self-declared, as the London set's subjects reported them (london_info.csv)"""


SAMPLES = (
    Sample("london_001_neutral.jpg", "demo-user-1", "accepted", age=24, gender="female"),
    Sample("london_001_smiling.jpg", "demo-user-1", "accepted", age=24, gender="female"),
    Sample("dup_london_001_neutral_q75.jpg", "demo-user-1", "duplicate"),
    Sample("london_004_neutral.jpg", "demo-user-2", "accepted", age=30, gender="male"),
    Sample("london_013_smiling.jpg", "demo-user-3", "accepted", age=26, gender="female"),
    Sample("selfie_lisa1.jpg", "demo-user-4", "accepted"),
    Sample("selfie_lisa2.jpg", "demo-user-4", "accepted"),
    Sample("selfie_zoom_30cm.jpg", "demo-user-4", "accepted"),
    Sample("tilted_london_014.jpg", "demo-user-5", "accepted", age=23, gender="female"),
    Sample("london_002_neutral.jpg", "demo-user-15", "accepted", age=24, gender="female"),
    Sample("london_003_neutral.jpg", "demo-user-16", "accepted", age=38, gender="female"),
    Sample("london_006_neutral.jpg", "demo-user-17", "accepted", age=31, gender="female"),
    Sample("london_008_neutral.jpg", "demo-user-18", "accepted", age=25, gender="male"),
    Sample("two_faces.jpg", "demo-user-6", "multiple_faces"),
    Sample("blurry.jpg", "demo-user-7", "blurry"),
    Sample("dark.jpg", "demo-user-8", "bad_exposure"),
    Sample("small_face.jpg", "demo-user-9", "face_too_small"),
    Sample("forest_no_face.jpg", "demo-user-10", "no_face"),
    Sample("truncated.jpg", "demo-user-11", "decode_error"),
    Sample("not_an_image.jpg", "demo-user-12", "decode_error"),
    Sample("london_011_neutral.jpg", "demo-user-13", "consent_expired", consent_expired=True),
    Sample("london_012_neutral.jpg", "demo-user-14", "no_consent", scopes=("analytics",)),
)

#: Never uploaded: people the models never saw, converted over gRPC next to the
#: validation split's selfies.
HELD_OUT = ("london_009_neutral.jpg", "london_017_neutral.jpg")

#: The subject who asks to be erased once a model has been trained on them.
ERASED_SUBJECT = "demo-user-5"

#: Not anime: added to a style last, so the style check has references to judge it by.
STYLE_OUTLIER = ("london_012_neutral.jpg", "renpy")


def samples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "samples"


def anime_dir() -> Path:
    return samples_dir() / "anime"


def load_references(settings: Settings) -> list[dict[str, Any]]:
    """Add the bundled anime references (with their licenses and labels, in label groups)
    to the library, then the style outlier; return each file's outcome
    (:meth:`agents.references.admission.RefOutcome.as_dict`)."""
    from agents.references.library import RefLibrary, read_sources

    folder = anime_dir()
    sources = read_sources(folder / "SOURCES.csv")
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Path]] = {}
    with (folder / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            labels = tuple(sorted((k, v) for k, v in row.items() if k not in ("file", "style")))
            groups.setdefault((row["style"], labels), []).append(folder / row["file"])
    library = RefLibrary(settings)
    outcomes = []
    for (style, labels), paths in sorted(groups.items()):
        outcomes += library.add(paths, style=style, labels=dict(labels), sources=sources)
    outlier, style = STYLE_OUTLIER
    outcomes += library.add(
        [samples_dir() / outlier],
        style=style,
        license="CC-BY-4.0",
        source="Face Research Lab London Set",
        author="DeBruine, L. & Jones, B. (2017)",
    )
    return [outcome.as_dict() for outcome in outcomes]
