"""Erasure on real parts: faces through the real pipeline, real pairs, reviews, snapshots,
exports and registered model versions; SQL on SQLite and PostgreSQL.

After the erasure every store is scanned for the subject's pseudonym, raw id, face ids and
crop digests (SQL: every row of every table; Qdrant: every point's id and payload, and the
local store's files; the blob store; every file under the dataset directory, the export
roots and the training run, and any file that is a byte copy of a crop; the captured logs;
on SQLite the database file and its WAL) and nothing is found, while the other subjects
keep everything but their identity link to the erased one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient
from sqlalchemy import Engine, insert, select
from sqlmodel import SQLModel

from agents.erasure import Eraser, ErasureResult, erased_versions, find_audit
from agents.errors import StorageError
from agents.pairing.pairer import Pairer
from agents.pairing.store import PairStore, pair_id_for
from agents.pipeline import Incoming, IngestPipeline
from agents.references.library import RefLibrary, read_sources
from agents.review.store import ReviewStore
from agents.stages.anonymize import pseudonymize
from agents.stages.detect import MtcnnDetector
from agents.stages.embed import InceptionEmbedder
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from schemas.erasure import ErasureRequest
from schemas.pairs import FaceAccepted
from schemas.reasons import UploadState
from schemas.settings import DatasetSettings, Settings
from schemas.tables import (
    Face,
    IdentityLink,
    ModelVersion,
    Pair,
    Snapshot,
    SnapshotSubject,
    Upload,
    VersionSubject,
)
from schemas.uploads import Consent, DeclaredAttributes, ImagePayload, UploadEvent
from trainer.dataset import create_snapshot, export_snapshot, read_manifest

DATA = Path(__file__).parents[1] / "data"
REAL = DATA / "real"
ANIME = DATA / "anime"

ERASED = "person-erase@example.com"
TWIN = "person-twin@example.com"
KEEP = "person-keep@example.com"
NEVER = "person-never-seen@example.com"


def _table(model: type[SQLModel]) -> Any:
    return SQLModel.metadata.tables[str(model.__tablename__)]


def _event(photo: str | bytes, subject: str, gender: str) -> UploadEvent:
    now = datetime.now(UTC)
    data = photo if isinstance(photo, bytes) else (REAL / photo).read_bytes()
    return UploadEvent(
        upload_id=f"u-{uuid.uuid4().hex[:12]}",
        subject_id=subject,
        consent=Consent(version="1", scopes=["training"], granted_at=now - timedelta(days=1)),
        image=ImagePayload(data=data),
        attributes=DeclaredAttributes(age=24, gender=gender),
        submitted_at=now,
    )


@dataclass
class World:
    settings: Settings
    engine: Engine
    pipeline: IngestPipeline
    key: bytes
    faces: dict[str, list[str]]
    """raw subject id -> its face ids"""
    uploads: dict[str, list[str]]
    """raw subject id -> its upload ids (accepted and rejected)"""
    snapshots: dict[str, str]
    """'with' (holds the erased subject) and 'without' -> snapshot id"""
    exports: dict[str, Path]

    def pseudonym(self, raw: str) -> str:
        return pseudonymize(raw, self.key)

    @property
    def client(self) -> QdrantClient:
        return self.pipeline.store.index.client

    def eraser(self, client: Any = None) -> Eraser:
        return Eraser.from_settings(self.settings, self.engine, client or self.client)

    def crops(self, raw: str) -> set[str]:
        faces = _table(Face)
        query = select(faces.c.crop_256, faces.c.crop_512).where(
            faces.c.subject == self.pseudonym(raw)
        )
        with self.engine.connect() as connection:
            return {digest for row in connection.execute(query) for digest in row}


@pytest.fixture
def world(
    sql_url: str,
    tmp_path: Path,
    detector: MtcnnDetector,
    embedder: InceptionEmbedder,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[World]:
    caplog.set_level(logging.DEBUG)
    elsewhere = tmp_path / "elsewhere"
    settings = Settings(
        home=tmp_path / "home",
        database_url=sql_url,
        dataset=DatasetSettings(export_roots=(elsewhere,), validation_fraction=0.0),
    )
    pipeline = IngestPipeline.build(settings, detector=detector, embedder=embedder)
    engine = create_engine_for(settings.sql_url)
    events = [
        _event("london_001_neutral.jpg", ERASED, "female"),
        # Declared male against references drawn female: its pairs wait for review.
        _event("london_007_neutral.jpg", ERASED, "male"),
        _event("london_001_smiling.jpg", TWIN, "female"),
        _event("london_004_neutral.jpg", KEEP, "male"),
    ]
    outcomes = pipeline.run([Incoming(event.to_bytes()) for event in events])
    assert [o.state for o in outcomes] == [UploadState.ACCEPTED] * 4
    # A copy of the first photo: rejected as a duplicate, its subject (and, in its
    # detail, the face it copies) recorded.
    copy = _event((REAL / "london_001_neutral.jpg").read_bytes(), ERASED, "female")
    [rejected] = pipeline.run([Incoming(copy.to_bytes())])
    assert rejected.rejection is not None
    assert rejected.rejection.reason == "duplicate"
    faces: dict[str, list[str]] = {ERASED: [], TWIN: [], KEEP: []}
    uploads: dict[str, list[str]] = {ERASED: [copy.upload_id], TWIN: [], KEEP: []}
    accepted = []
    for event, outcome in zip(events, outcomes, strict=True):
        assert outcome.face is not None
        faces[event.subject_id].append(outcome.face.face_id)
        uploads[event.subject_id].append(event.upload_id)
        accepted.append(
            FaceAccepted(
                face_id=outcome.face.face_id,
                upload_id=event.upload_id,
                subject=outcome.face.subject,
                accepted_at=outcome.face.created_at,
            )
        )
    # The seeded embedder recognises nobody, so ingestion links no one: link the twin's
    # face to the erased subject's as ingestion does for one person under two ids.
    with engine.begin() as connection:
        connection.execute(
            insert(_table(IdentityLink)).values(
                face_id=faces[TWIN][0],
                other_face_id=faces[ERASED][0],
                distance=0.31,
                embedder=embedder.name,
                created_at=datetime.now(UTC),
            )
        )

    library = RefLibrary(settings, embedder=embedder)
    sources = read_sources(DATA / "SOURCES.csv")
    young = {"gender": "female", "age_band": "18-29"}
    library.add(
        sorted(ANIME.glob("renpy_*_face.png")), style="renpy", labels=young, sources=sources
    )
    pc = [ANIME / "pc_modelsheet_front_face.jpg", ANIME / "pc_chaosah_cayenne_face.jpg"]
    library.add(pc, style="pc", labels={"gender": "female"}, sources=sources)
    pairer = Pairer(settings, PairStore(engine), pipeline.store.index)
    pairer.run(accepted)
    pairer.close()

    review = ReviewStore(engine)
    for raw in (ERASED, TWIN, KEEP):
        review.decide(pair_id_for(faces[raw][0], "renpy"), "alice", "approve")
    review.decide(pair_id_for(faces[KEEP][0], "pc"), "alice", "approve")
    review.decide(pair_id_for(faces[ERASED][0], "pc"), "bob", "reject")
    review.decide(pair_id_for(faces[TWIN][0], "pc"), "bob", "reject")

    with_erased = create_snapshot(engine, settings, style="renpy").snapshot_id
    without = create_snapshot(engine, settings, style="pc").snapshot_id
    blobs = BlobStore(settings.blob_dir)
    exports = {
        "with-inside": settings.dataset_dir / "exports" / "renpy-imagefolder",
        "with-elsewhere": elsewhere / "renpy-webdataset",
        "without": settings.dataset_dir / "exports" / "pc-imagefolder",
    }
    export_snapshot(
        read_manifest(settings.dataset_dir, with_erased),
        blobs,
        exports["with-inside"],
        "imagefolder",
    )
    export_snapshot(
        read_manifest(settings.dataset_dir, with_erased),
        blobs,
        exports["with-elsewhere"],
        "webdataset",
    )
    export_snapshot(
        read_manifest(settings.dataset_dir, without), blobs, exports["without"], "imagefolder"
    )
    key = settings.resolve_pseudonym_key()
    _register_versions(settings, engine, {1: with_erased, 2: without}, key)

    yield World(
        settings,
        engine,
        pipeline,
        key,
        faces,
        uploads,
        {"with": with_erased, "without": without},
        exports,
    )
    pipeline.close()
    engine.dispose()


def _register_versions(
    settings: Settings, engine: Engine, snapshots: dict[int, str], key: bytes
) -> None:
    """Two converter versions, as the registry records them: v1 trained on the snapshot
    holding the erased subject, v2 on the other; each run with a sample grid (a stand-in
    holding the first selfie crop of its snapshot)."""
    now = datetime.now(UTC)
    trained = {1: (ERASED, TWIN, KEEP), 2: (KEEP,)}
    blobs = BlobStore(settings.blob_dir)
    with engine.begin() as connection:
        for number, snapshot_id in snapshots.items():
            run_dir = settings.train_dir / f"converter-{number}"
            (run_dir / "samples").mkdir(parents=True)
            first = read_manifest(settings.dataset_dir, snapshot_id).records[0]
            (run_dir / "samples" / "final.png").write_bytes(blobs.read(first.selfie.crop_256))
            version_id = connection.execute(
                insert(_table(ModelVersion))
                .values(
                    name="converter",
                    version=number,
                    snapshot_id=snapshot_id,
                    family="pix2pix-lora",
                    status="promoted",
                    config={},
                    metrics={},
                    artifacts={},
                    path=f"/models/converter/{number}",
                    run_dir=str(run_dir),
                    log_path=f"{run_dir}.log",
                    created_at=now,
                    updated_at=now,
                )
                .returning(_table(ModelVersion).c.id)
            ).scalar_one()
            connection.execute(
                insert(_table(VersionSubject)),
                [
                    {"version_id": version_id, "subject": pseudonymize(s, key)}
                    for s in trained[number]
                ],
            )


class _FailingDeletes:
    """A Qdrant client that goes away after its first delete: the erasure stops with the
    subject's points gone and its SQL rows, crops and snapshots still there (as a crash
    there would leave them)."""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._deletes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        self._deletes += 1
        if self._deletes > 1:
            raise ConnectionError("qdrant went away")
        return self._client.delete(*args, **kwargs)


# -- what the stores hold ---------------------------------------------------------------------


def _sql_text(engine: Engine) -> str:
    """Every value of every row of every table, as text."""
    parts = []
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                parts.append(json.dumps([str(v) if v is not None else None for v in row]))
                parts.extend(json.dumps(v) for v in row if isinstance(v, dict | list))
    return "\n".join(parts)


def _qdrant_text(client: QdrantClient) -> str:
    parts = []
    for collection in client.get_collections().collections:
        offset = None
        while True:
            points, offset = client.scroll(
                collection.name, limit=256, offset=offset, with_payload=True
            )
            parts.extend(f"{point.id} {json.dumps(point.payload)}" for point in points)
            if offset is None:
                break
    return "\n".join(parts)


def _files_bytes(*roots: Path) -> dict[Path, bytes]:
    return {
        path: path.read_bytes()
        for root in roots
        if root.exists()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _database_files(engine: Engine) -> dict[Path, bytes]:
    """The bytes of a SQLite database and its write-ahead log (none for PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return {}
    database = Path(engine.url.database or "")
    paths = (database, database.with_name(database.name + "-wal"))
    return {path: path.read_bytes() for path in paths if path.exists()}


def _rows(engine: Engine, model: type[SQLModel], column: str, values: list[str]) -> list[Any]:
    table = _table(model)
    with engine.connect() as connection:
        return [
            dict(row._mapping)
            for row in connection.execute(
                select(table).where(table.c[column].in_(values)).order_by(*table.primary_key)
            )
        ]


def _others(world: World) -> dict[str, Any]:
    """Everything of the subjects that stay, to compare before and after."""
    faces = world.faces[TWIN] + world.faces[KEEP]
    pairs = _rows(world.engine, Pair, "face_id", faces)
    blobs = BlobStore(world.settings.blob_dir)
    return {
        "faces": _rows(world.engine, Face, "face_id", faces),
        "uploads": _rows(
            world.engine, Upload, "upload_id", world.uploads[TWIN] + world.uploads[KEEP]
        ),
        "pairs": pairs,
        "points": world.pipeline.store.index.payloads(faces),
        "crops": {d: blobs.exists(d) for d in world.crops(TWIN) | world.crops(KEEP)},
        "snapshot": _files_bytes(world.settings.dataset_dir / world.snapshots["without"]),
        "export": _files_bytes(world.exports["without"]),
        "run": _files_bytes(world.settings.train_dir / "converter-2"),
    }


# -- the tests -----------------------------------------------------------------------------


def test_erasure_leaves_no_trace_and_touches_no_one_else(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    pseudonym = world.pseudonym(ERASED)
    crops = world.crops(ERASED)
    face_ids = world.faces[ERASED]
    assert len(crops) == 4
    # Before: the subject is everywhere the scan looks.
    assert pseudonym in _sql_text(world.engine)
    assert pseudonym in _qdrant_text(world.client)
    assert set(crops) <= set(BlobStore(world.settings.blob_dir).digests())
    exported = _files_bytes(world.exports["with-inside"])
    assert any(pseudonym.encode() in data for data in exported.values())
    assert {hashlib.sha256(data).hexdigest() for data in exported.values()} & crops
    with world.engine.connect() as connection:
        held = set(
            connection.scalars(
                select(_table(SnapshotSubject).c.snapshot_id).where(
                    _table(SnapshotSubject).c.subject == pseudonym
                )
            )
        )
    assert held == {world.snapshots["with"]}
    if world.settings.sql_url.startswith("sqlite"):
        assert pseudonym.encode() in b"".join(_database_files(world.engine).values())
    # The Qdrant local store's own files hold the payloads too.
    assert pseudonym.encode() in b"".join(_files_bytes(world.settings.qdrant_path).values())
    before = _others(world)
    request = ErasureRequest(
        subject_id=ERASED, requested_by="privacy-office", requested_at=datetime.now(UTC)
    )

    # A crash half-way: the points gone, everything else still there...
    with pytest.raises(StorageError, match="Qdrant"):
        world.eraser(_FailingDeletes(world.client)).erase_request(request, world.key)
    assert world.pipeline.store.index.payloads(face_ids) == {}
    assert find_audit(world.engine, request.request_id) is None
    assert pseudonym in _sql_text(world.engine)
    # ...and the same request again finishes the erasure.
    result = world.eraser().erase_request(request, world.key)

    assert result.outcome == "erased"
    assert not result.already
    assert result.counts == {
        "subjects": 1,
        "uploads": 3,
        "faces": 2,
        "crops": 4,
        "points": 2,
        "labels": result.counts["labels"],
        "identity_links": 1,
        "pairs": 4,
        "pending_reviews": result.counts["pending_reviews"],
        "review_decisions": 2,
        "review_decisions_approve": 1,
        "review_decisions_reject": 1,
        "snapshots": 1,
        "exports": 2,
        "model_versions": 1,
        "sample_grids": 1,
    }
    assert result.counts["labels"] >= 6
    assert result.counts["pending_reviews"] >= 1
    assert result.snapshots == (world.snapshots["with"],)
    assert result.model_versions == ("converter:1",)
    assert erased_versions(world.engine) == {("converter", 1): 1}

    # Nothing of the subject is left anywhere.
    needles = [pseudonym, ERASED, *crops, *face_ids]
    sql = _sql_text(world.engine)
    points = _qdrant_text(world.client)
    files = _files_bytes(
        world.settings.qdrant_path,
        world.settings.dataset_dir,
        world.settings.home.parent / "elsewhere",
        world.settings.train_dir / "converter-1",
    )
    for needle in needles:
        assert needle not in sql, f"{needle} is still in SQL"
        assert needle not in points, f"{needle} is still in Qdrant"
        for path, data in files.items():
            assert needle.encode() not in data, f"{needle} is still in {path}"
    # No file is a copy of a crop either (exports hold them byte for byte).
    assert not {hashlib.sha256(data).hexdigest() for data in files.values()} & crops
    assert not (world.settings.train_dir / "converter-1" / "samples").exists()
    logged = "\n".join(
        record.getMessage()
        for phase in ("setup", "call")
        for record in caplog.get_records(phase)  # type: ignore[arg-type]
    )
    assert "erasure " + request.request_id in logged
    for needle in (pseudonym, ERASED, *crops):
        assert needle not in logged, f"{needle} was logged"
    assert not set(crops) & set(BlobStore(world.settings.blob_dir).digests())
    for path, data in _database_files(world.engine).items():
        # secure_delete and the checkpoint leave no copy in free pages or the WAL.
        assert pseudonym.encode() not in data, f"{pseudonym} is still in {path}"
    for name in ("with-inside", "with-elsewhere"):
        assert not world.exports[name].exists()

    # The uploads stay, erased and unattributed, so a re-delivery stays erased too.
    erased = _rows(world.engine, Upload, "upload_id", world.uploads[ERASED])
    assert [(u["state"], u["subject"], u["detail"]) for u in erased] == [
        (UploadState.ERASED, None, None)
    ] * 3
    redelivered = _event("london_001_neutral.jpg", ERASED, "female").model_copy(
        update={"upload_id": world.uploads[ERASED][1]}
    )
    [outcome] = world.pipeline.run([Incoming(redelivered.to_bytes())])
    assert outcome.state is None
    assert world.pipeline.repository.faces_of_subject(pseudonym) == []

    # Everyone else keeps everything but the link to the erased subject's face.
    after = _others(world)
    assert after == before
    assert world.pipeline.repository.identity_links(world.faces[TWIN]) == []
    with world.engine.connect() as connection:
        snapshots = set(connection.scalars(select(_table(Snapshot).c.snapshot_id)))
    assert snapshots == {world.snapshots["without"]}
    # v1 keeps its other subjects, v2 all of its own.
    with world.engine.connect() as connection:
        left = sorted(connection.scalars(select(_table(VersionSubject).c.subject)))
    assert left == sorted([world.pseudonym(TWIN), world.pseudonym(KEEP), world.pseudonym(KEEP)])
    # No later snapshot can include the subject: it has no pairs left to freeze.
    later = create_snapshot(world.engine, world.settings, style="renpy")
    assert pseudonym.encode() not in later.manifest_path.read_bytes()
    assert later.summary.subjects == 2


def test_erasing_twice_or_a_stranger_is_a_no_op_with_an_answer(world: World) -> None:
    now = datetime.now(UTC)
    first = ErasureRequest(subject_id=ERASED, requested_by="app", requested_at=now)
    done = world.eraser().erase_request(first, world.key)
    sql = _sql_text(world.engine)

    # The same request again (a re-delivery): the first answer, nothing done.
    again = world.eraser().erase_request(first, world.key)
    # A new request for the same subject, and one for a subject never seen: nothing found.
    repeat = world.eraser().erase_request(
        ErasureRequest(subject_id=ERASED, requested_by="app", requested_at=now), world.key
    )
    stranger = world.eraser().erase_request(
        ErasureRequest(subject_id=NEVER, requested_by="app", requested_at=now), world.key
    )

    assert done.outcome == "erased"
    assert again == ErasureResult(**{**_fields(done), "already": True})
    for answer in (repeat, stranger):
        assert answer.outcome == "nothing_found"
        assert not answer.already
        assert set(answer.counts.values()) == {0}
        assert answer.snapshots == ()
        assert answer.model_versions == ()
    # Only the two new audit rows were added; no subject reference is in any of them.
    rows = _sql_text(world.engine)
    assert rows.count("nothing_found") == 2
    assert world.pseudonym(NEVER) not in rows
    assert NEVER not in rows
    assert len(rows) > len(sql)


def _fields(result: ErasureResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in ErasureResult.__slots__}
