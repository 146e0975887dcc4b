"""The dataset manifest: what a frozen snapshot holds, as training tools read it.

One file per snapshot, ``<dataset_dir>/ds-<sha256[:16]>/manifest.json``, written once by
``s2a dataset snapshot`` and named by the SHA-256 of its bytes. The bytes are the
canonical JSON (sorted keys, no spaces, UTF-8, final LF) of :meth:`DatasetManifest.as_json`:
every field is written, ``null`` included, so the same data always gives the same name.
Unknown fields are refused when a manifest is read back.

Example::

    manifest = DatasetManifest.model_validate(json.loads(path.read_bytes()))
    [r.caption for r in manifest.records if r.split == "train"]
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.labels import LabelSource

MANIFEST_FORMAT: Final = "s2a-dataset-manifest"
FORMAT_VERSION: Final = 2
"""2 (issue 8): records name their identity group, the summary counts groups and merges;
version 1 manifests still read, those fields empty."""

#: The two splits a record can belong to; a person (identity group) is wholly in one.
Split = Literal["train", "validation"]


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ManifestParams(_Part):
    """The settings the snapshot was built with (also stored in its ``snapshots`` row)."""

    seed: int = Field(description="keys the subject split: a new seed gives another split")
    validation_fraction: float = Field(description="share of subjects sent to validation")
    max_per_subject: int = Field(description="pairs kept per subject and style")
    target_coverage: dict[str, list[str]] = Field(
        description="label name -> the values whose coverage is balanced and reported"
    )
    min_model_confidence: float = Field(description="a model label counts at or above this")
    style: str | None = Field(description="the one style snapshotted, or null for every style")


class SplitCounts(_Part):
    """Records and subjects of one split."""

    records: int
    subjects: int


class ManifestSummary(_Part):
    """Counts about the snapshot, for reports and the ``snapshots`` row."""

    records: int
    subjects: int
    splits: dict[str, SplitCounts] = Field(description="train and validation")
    styles: dict[str, int] = Field(description="records per style")
    dropped_by_cap: int = Field(description="approved pairs over max_per_subject, left out")
    split_fallback: list[str] = Field(description="identity groups the split fallback moved")
    queue: dict[str, int] = Field(
        description="pairs not approved, per status: pending, unmatched, rejected"
    )
    decided_by: dict[str, int] = Field(
        description="records per decider: auto, human, import, other"
    )
    duplicate_uploads: int = Field(description="uploads rejected as duplicate")
    quarantined_refs: int = Field(
        description="approved pairs left out because their reference was quarantined since"
    )
    identity_groups: int = Field(
        0, description="people in the records: subjects linked as one person count once"
    )
    merged_subjects: int = Field(
        0,
        description="subjects that share their identity group with another subject (one "
        "person under several subject ids, kept in one split)",
    )


class SelfieCrops(_Part):
    """The selfie's aligned crops, as SHA-256 digests of blobs in the blob store."""

    crop_256: str
    crop_512: str

    def of_size(self, size: int) -> str:
        """The digest of the ``size`` px crop (256 or 512)."""
        digest: str = getattr(self, f"crop_{size}")
        return digest


class AnimeImages(_Part):
    """The anime reference, as SHA-256 digests of blobs in the blob store."""

    training: str = Field(description="the image trained on")
    original: str = Field(description="the metadata-free original")


class RecordLabel(_Part):
    """One label as it counts (the most trusted source wins)."""

    value: str
    source: LabelSource
    confidence: float


class Lineage(_Part):
    """Where a record came from: its reference, who approved it, and the licenses."""

    ref_id: str
    library_version: int = Field(description="reference library version the pair was made at")
    ref_library_version: int = Field(description="library version the reference was added in")
    decided_by: str | None = Field(description="auto | human:<name> | import:<file>")
    score: float | None
    ref_license: str
    ref_author: str
    ref_source: str
    ref_tags: list[str]
    face_source: str = Field(description="selfie or public-dataset")
    face_license: str | None = Field(description="set for public-dataset faces only")
    face_attribution: str | None = Field(description="set for public-dataset faces only")


class ManifestRecord(_Part):
    """One approved pair: the selfie, its anime target, caption, labels and lineage."""

    pair_id: str
    face_id: str
    upload_id: str
    subject: str = Field(description="subject pseudonym")
    identity: str | None = Field(
        None,
        description="identity group: the smallest pseudonym of the subjects linked as one "
        "person (the subject itself when alone); one group is wholly in one split",
    )
    style: str
    split: Split
    weight: float = Field(description="sampling weight; averages 1 over the split")
    caption: str
    selfie: SelfieCrops
    anime: AnimeImages
    labels: dict[str, RecordLabel] = Field(description="the face's labels")
    ref_labels: dict[str, RecordLabel] = Field(description="the reference's labels")
    quality: dict[str, float] = Field(description="the face's quality measures")
    lineage: Lineage


class DatasetManifest(_Part):
    """A snapshot's manifest (format ``s2a-dataset-manifest``)."""

    format: Literal["s2a-dataset-manifest"] = MANIFEST_FORMAT
    format_version: Literal[1, 2] = FORMAT_VERSION
    library_version: int | None = Field(description="the highest over the records")
    params: ManifestParams
    summary: ManifestSummary
    records: list[ManifestRecord] = Field(description="sorted by split, style, subject and pair_id")

    def as_json(self) -> dict[str, Any]:
        """The JSON value written to ``manifest.json``: every field, ``null`` included."""
        return self.model_dump(mode="json")

    def split(self, name: str) -> list[ManifestRecord]:
        """The records of split ``name``, in manifest order."""
        return [r for r in self.records if r.split == name]
