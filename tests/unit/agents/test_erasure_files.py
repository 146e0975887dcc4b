"""The eraser's file side without models: snapshots known only by their manifest's bytes
(recorded before ``snapshot_subjects`` existed, or never recorded), and exports found under
the export roots, a root that is itself an export included."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from qdrant_client import QdrantClient

from agents.erasure import Eraser
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from schemas.migrate import upgrade

SUBJECT = "a" * 64
OTHER = "b" * 64


def _snapshot(dataset_dir: Path, snapshot_id: str, subject: str) -> None:
    folder = dataset_dir / snapshot_id
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"records": [{"subject": subject}]}))
    (folder / "report.html").write_text("<img>")


def _export(folder: Path, snapshot_id: str) -> None:
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "metadata.jsonl").write_text("{}\n")
    (folder / "export.json").write_text(json.dumps({"snapshot_id": snapshot_id}))


def test_unrecorded_snapshots_and_their_exports_are_found_on_disk(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's2a.db'}"
    upgrade(url)
    dataset_dir = tmp_path / "datasets"
    _snapshot(dataset_dir, "ds-00000000000000aa", SUBJECT)
    _snapshot(dataset_dir, "ds-00000000000000bb", OTHER)
    _export(dataset_dir / "exports" / "holds", "ds-00000000000000aa")
    _export(dataset_dir / "exports" / "keeps", "ds-00000000000000bb")
    root_is_export = tmp_path / "mounted-export"
    _export(root_is_export, "ds-00000000000000aa")
    engine = create_engine_for(url)
    client = QdrantClient(":memory:")
    eraser = Eraser(
        engine,
        client,
        BlobStore(tmp_path / "blobs"),
        dataset_dir,
        (root_is_export,),
        key=b"pseudonym-key",
    )

    result = eraser.erase(
        SUBJECT, request_id="er-1", requested_by="test", requested_at=datetime.now(UTC)
    )

    assert result.outcome == "erased"
    assert result.snapshots == ("ds-00000000000000aa",)
    assert (result.counts["snapshots"], result.counts["exports"]) == (1, 2)
    assert not (dataset_dir / "ds-00000000000000aa").exists()
    assert not (dataset_dir / "exports" / "holds").exists()
    assert root_is_export.is_dir()
    assert list(root_is_export.iterdir()) == []
    assert (dataset_dir / "ds-00000000000000bb" / "manifest.json").exists()
    assert (dataset_dir / "exports" / "keeps" / "export.json").exists()
    client.close()
    engine.dispose()
