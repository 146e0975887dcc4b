"""Dataset snapshots, exports and reports: approved pairs become training data.

    policy     split by subject, per-subject cap, sampling weights, captions (pure)
    state      SQL -> approved pairs with their lineage; the ``snapshots`` table
    snapshot   state -> immutable manifest ``dataset_dir/<ds-id>/manifest.json``
               (typed: ``schemas.manifest.DatasetManifest``)
    export     manifest + blobs -> imagefolder | instructpix2pix | webdataset folder
    report     manifest (+ blobs, quarantined references) -> one self-contained HTML page
    sheet      the report's thumbnails: pair contact sheets, quarantined references

Example::

    from trainer.dataset import create_snapshot, export_snapshot, read_manifest

    result = create_snapshot(create_engine_for(settings.sql_url), settings)
    manifest = read_manifest(settings.dataset_dir, result.snapshot_id)
    export_snapshot(manifest, open_blobs(settings), Path("out"), "webdataset")
"""

from trainer.dataset.export import ExportFormat, ExportResult, export_snapshot, licenses_markdown
from trainer.dataset.policy import (
    SPLITS,
    TRAIN,
    VALIDATION,
    SnapshotParams,
    SplitPlan,
    assign_splits,
    cap_per_subject,
    caption,
    identity_groups,
    sampling_weights,
    subject_draw,
)
from trainer.dataset.report import (
    CoverageRow,
    ReferenceUse,
    coverage,
    reference_use,
    render_report,
    write_report,
)
from trainer.dataset.snapshot import (
    Manifest,
    SnapshotResult,
    build_manifest,
    canonical_json,
    create_snapshot,
    read_manifest,
    snapshot_id_of,
)
from trainer.dataset.state import (
    ApprovedPair,
    DatasetState,
    find_snapshot,
    list_snapshots,
    load_state,
)

__all__ = [
    "SPLITS",
    "TRAIN",
    "VALIDATION",
    "ApprovedPair",
    "CoverageRow",
    "DatasetState",
    "ExportFormat",
    "ExportResult",
    "Manifest",
    "ReferenceUse",
    "SnapshotParams",
    "SnapshotResult",
    "SplitPlan",
    "assign_splits",
    "build_manifest",
    "canonical_json",
    "cap_per_subject",
    "caption",
    "coverage",
    "create_snapshot",
    "export_snapshot",
    "find_snapshot",
    "identity_groups",
    "licenses_markdown",
    "list_snapshots",
    "load_state",
    "read_manifest",
    "reference_use",
    "render_report",
    "sampling_weights",
    "snapshot_id_of",
    "subject_draw",
    "write_report",
]
