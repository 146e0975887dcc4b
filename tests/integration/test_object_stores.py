"""Blobs and model artifacts on both storage backends: the local folder and a real S3 API
(moto's server on a loopback port, started here, a fresh bucket per test).

The same contract runs against both: objects, content-addressed blobs, the registry's copy
of a version and serving's fetch of it with every hash checked. Then the ingest pipeline,
erasure and a Convert server configured for S3 only through the settings.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from unit.serving.serving_fixture import export_tiny

from agents.erasure import Eraser
from agents.errors import ObjectMissing, StorageError
from agents.objects import (
    LocalObjects,
    ObjectStore,
    S3Objects,
    artifact_store,
    cache_dir,
    open_objects,
    s3_client,
)
from agents.stores.blobs import BlobStore, open_blobs
from agents.stores.db import create_engine_for
from schemas.migrate import upgrade
from schemas.model_updates import ModelUpdate, VersionStatus
from schemas.settings import ServingSettings, Settings, StorageSettings
from serving.errors import ArtifactMismatch, ModelLoadError
from serving.version import fetch_version, latest_stored_version, read_version
from trainer.errors import StorageError as TrainerStorageError
from trainer.registry import Registry, hash_tree

BACKENDS = ("local", "s3")


# -- the S3 server and settings ------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with dummy credentials in the
    environment (boto3's standard chain reads them; moto accepts any)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test")
        env.delenv("AWS_PROFILE", raising=False)
        yield f"http://{host}:{port}"
    server.stop()


def _s3_settings(home: Path, endpoint: str, bucket: str, prefix: str = "team/s2a") -> Settings:
    return Settings(
        home=home,
        storage=StorageSettings(
            backend="s3",
            s3_endpoint=endpoint,
            s3_bucket=bucket,
            s3_prefix=prefix,
            s3_region="us-east-1",
        ),
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"s2a-test-{uuid.uuid4().hex[:10]}"
    client = s3_client(StorageSettings(backend="s3", s3_endpoint=s3_endpoint, s3_bucket=name))
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """A home on the local backend, or on S3 (the bucket's ``team/s2a/`` prefix)."""
    home = tmp_path / "home"
    if request.param == "local":
        return Settings(home=home)
    return _s3_settings(
        home, request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    )


def _bucket_keys(settings: Settings) -> list[str]:
    """Every key of the settings' bucket, read with a client of its own."""
    storage = settings.storage
    client = s3_client(storage)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=storage.s3_bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))


# -- the object contract -------------------------------------------------------------------


def test_objects_keep_the_same_contract_on_both_backends(
    settings: Settings, tmp_path: Path
) -> None:
    objects = open_objects(settings, "models")
    assert isinstance(objects, ObjectStore)

    objects.put("converter/1/config.json", b'{"a": 1}')
    objects.put("converter/1/config.json", b'{"a": 2}')  # replaces
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x00\x01" * 5000)
    objects.put_file("converter/1/adapter/weights.bin", source)
    objects.put("converter/10/export.json", b"{}")
    objects.put("labels/heads.json", b"{}")

    assert objects.get("converter/1/config.json") == b'{"a": 2}'
    assert objects.exists("converter/1/adapter/weights.bin")
    assert not objects.exists("converter/2/config.json")
    assert objects.list_keys("converter/1/") == [
        "converter/1/adapter/weights.bin",
        "converter/1/config.json",
    ]
    assert objects.list_keys("converter/1") == [  # a prefix, not a folder
        "converter/1/adapter/weights.bin",
        "converter/1/config.json",
        "converter/10/export.json",
    ]
    assert len(objects.list_keys()) == 4
    target = tmp_path / "fetched" / "deep" / "weights.bin"
    objects.get_file("converter/1/adapter/weights.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["weights.bin"]  # no temporary left

    with pytest.raises(ObjectMissing) as missing:
        objects.get("converter/2/config.json")
    assert isinstance(missing.value, FileNotFoundError)
    assert "converter/2/config.json" in str(missing.value)
    assert objects.where in str(missing.value)
    with pytest.raises(FileNotFoundError):
        objects.get_file("converter/2/model.onnx", tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()

    assert objects.delete("converter/1/config.json")
    assert not objects.delete("converter/1/config.json")
    assert not objects.exists("converter/1/config.json")
    for bad in ("", "/abs", "a/../b", "a//b", ".hidden", "a/.tmp"):
        with pytest.raises(StorageError, match="not a relative path"):
            objects.put(bad, b"x")


def test_where_things_go_on_each_backend(settings: Settings) -> None:
    blobs = open_objects(settings, "blobs")
    if settings.storage.backend == "local":
        assert isinstance(blobs, LocalObjects)
        assert blobs.root == settings.blob_dir
        assert artifact_store(settings) is None  # home/models is the only copy
        return
    assert isinstance(blobs, S3Objects)
    blobs.put("ab/cd/x.png", b"x")
    models = artifact_store(settings)
    assert models is not None
    models.put("converter/1/export.json", b"{}")
    assert _bucket_keys(settings) == [
        "team/s2a/blobs/ab/cd/x.png",
        "team/s2a/models/converter/1/export.json",
    ]
    assert models.where == f"s3://{settings.storage.s3_bucket}/team/s2a/models/"


def test_s3_settings_are_checked_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="S2A_STORAGE__S3_BUCKET"):
        Settings(home=tmp_path, storage={"backend": "s3"})
    with pytest.raises(ValidationError, match="S2A_STORAGE__S3_ENDPOINT"):
        Settings(
            home=tmp_path, storage={"backend": "s3", "s3_bucket": "b", "s3_endpoint": "minio:9000"}
        )
    monkeypatch.setenv("S2A_STORAGE__BACKEND", "s3")
    monkeypatch.setenv("S2A_STORAGE__S3_BUCKET", "s2a-prod")
    monkeypatch.setenv("S2A_STORAGE__S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("S2A_STORAGE__S3_PREFIX", "/eu/")
    storage = Settings(home=tmp_path).storage
    assert (storage.backend, storage.s3_bucket, storage.s3_endpoint) == (
        "s3",
        "s2a-prod",
        "http://minio:9000",
    )


def test_a_missing_bucket_is_a_storage_error_naming_it(s3_endpoint: str, tmp_path: Path) -> None:
    settings = _s3_settings(tmp_path, s3_endpoint, "no-such-bucket-here")
    blobs = open_blobs(settings)
    with pytest.raises(StorageError, match="no-such-bucket-here") as failed:
        blobs.put(b"crop")
    assert "S2A_STORAGE__S3_BUCKET" in str(failed.value)
    assert not isinstance(failed.value, FileNotFoundError)


# -- blobs ---------------------------------------------------------------------------------


def test_blobs_round_trip_on_both_backends(settings: Settings) -> None:
    blobs = open_blobs(settings)
    crop = b"\x89PNG fake crop " + uuid.uuid4().bytes
    digest = blobs.put(crop)
    assert digest == hashlib.sha256(crop).hexdigest()
    assert blobs.put(crop) == digest  # idempotent: one object, same name
    assert blobs.read(digest) == crop
    assert blobs.exists(digest)
    other = blobs.put(b"another crop")
    assert blobs.digests() == sorted([digest, other])
    if settings.storage.backend == "s3":
        assert not settings.blob_dir.exists()  # nothing on the local disk
        assert f"team/s2a/blobs/{digest[:2]}/{digest[2:4]}/{digest}.png" in _bucket_keys(settings)
        with pytest.raises(StorageError, match="no local folder"):
            blobs.path(digest)
    else:
        assert blobs.path(digest).read_bytes() == crop

    # A training script reads files: stage() gives a folder in the store's layout.
    folder = blobs.stage([digest, "0" * 64])
    assert BlobStore(folder).read(digest) == crop
    if settings.storage.backend == "s3":
        assert folder == cache_dir(settings, "blobs")
        assert BlobStore(folder).digests() == [digest]  # only what was asked for
    else:
        assert folder == settings.blob_dir

    assert blobs.delete(digest)
    assert not blobs.delete(digest)
    assert not blobs.exists(digest)
    assert not BlobStore(folder).exists(digest)  # the staged copy goes with it
    with pytest.raises(ObjectMissing) as missing:
        blobs.read(digest)
    assert isinstance(missing.value, FileNotFoundError)  # readers catch it as before
    assert digest in str(missing.value)
    assert blobs.where in str(missing.value)


# -- model artifacts: the registry's copy, serving's fetch --------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()


def _trained_version(
    registry: Registry, settings: Settings, shift: float
) -> tuple[int, dict[str, str]]:
    """Register a version, export a tiny model into its directory and record its files
    (what the retrain cycle does); returns its number and artifacts."""
    row = registry.register(
        "converter",
        family="pix2pix-lora",
        snapshot_id="ds-0123456789abcdef",
        parent_version=None,
        config={},
        subjects=["p-1"],
        runs_dir=settings.train_dir,
    )
    folder = export_tiny(settings.models_dir, row.version, shift=shift)
    artifacts = hash_tree(folder)
    registry.update("converter", row.version, status=VersionStatus.TRAINED, artifacts=artifacts)
    return row.version, artifacts


def test_the_registry_copies_versions_only_to_s3(settings: Settings, engine: Engine) -> None:
    registry = Registry.from_settings(settings, engine)
    version, artifacts = _trained_version(registry, settings, 0.2)
    assert {"export.json", "model.onnx", "config.json"} <= set(artifacts)
    if settings.storage.backend == "local":
        assert registry.artifacts is None
        assert not (settings.home / "cache").exists()
        return
    stored = registry.artifacts
    assert stored is not None
    assert stored.list_keys("converter/1/") == sorted(f"converter/1/{name}" for name in artifacts)
    assert latest_stored_version(stored, "converter") == 1
    # A re-export's leftovers go, and an unfinished upload (no export.json) is not a version.
    stored.put("converter/1/model.int8.onnx", b"stale")
    stored.put("converter/5/model.onnx", b"half uploaded")
    registry.update("converter", version, artifacts=artifacts)
    assert not stored.exists("converter/1/model.int8.onnx")
    assert latest_stored_version(stored, "converter") == 1


def test_serving_fetches_a_version_and_checks_every_hash(
    s3_endpoint: str, bucket: str, engine: Engine, tmp_path: Path
) -> None:
    trainer = _s3_settings(tmp_path / "trainer", s3_endpoint, bucket)
    registry = Registry.from_settings(trainer, engine)
    version, artifacts = _trained_version(registry, trainer, 0.2)
    server = _s3_settings(tmp_path / "server", s3_endpoint, bucket)
    objects = artifact_store(server)
    assert objects is not None
    cache = cache_dir(server, "models")

    fetched = fetch_version(objects, "converter", version, cache, artifacts)

    assert fetched == tmp_path / "server" / "cache" / "models" / "converter" / "1"
    assert hash_tree(fetched) == artifacts
    assert (
        read_version(fetched).resolution
        == read_version(registry.version_dir("converter", 1)).resolution
    )
    assert [p.name for p in fetched.parent.iterdir()] == ["1"]  # no staging folder left
    # Fetched again: the verified copy is reused.
    before = (fetched / "model.onnx").stat().st_mtime_ns
    assert fetch_version(objects, "converter", version, cache, artifacts) == fetched
    assert (fetched / "model.onnx").stat().st_mtime_ns == before

    # A stored file that no longer matches its hash is refused, naming the stored file.
    objects.put("converter/1/model.onnx", b"tampered")
    fresh = tmp_path / "other-cache"
    with pytest.raises(ArtifactMismatch, match=r"s3://.*/models/converter/1/model\.onnx"):
        fetch_version(objects, "converter", version, fresh, artifacts)
    assert not (fresh / "converter" / "1").exists()
    assert list((fresh / "converter").iterdir()) == []
    # The copy this machine verified before is still good, and still served from.
    assert fetch_version(objects, "converter", version, cache, artifacts) == fetched
    # An announcement that disagrees with the stored files is refused too.
    with pytest.raises(ArtifactMismatch, match=r"config\.json"):
        fetch_version(objects, "converter", version, fresh, {**artifacts, "config.json": "0" * 64})
    with pytest.raises(ModelLoadError, match="converter v7 is not in"):
        fetch_version(objects, "converter", 7, fresh)


def test_a_convert_server_on_s3_loads_stored_versions_and_refuses_a_tampered_one(
    s3_endpoint: str, bucket: str, engine: Engine, tmp_path: Path, detector: Any
) -> None:
    from serving.server import create_server

    trainer = _s3_settings(tmp_path / "trainer", s3_endpoint, bucket)
    registry = Registry.from_settings(trainer, engine)
    _trained_version(registry, trainer, 0.2)
    home = tmp_path / "server"
    settings = _s3_settings(home, s3_endpoint, bucket).model_copy(
        update={
            "serving": ServingSettings(
                port=0, engine="onnxruntime", warmup_runs=1, handler_threads=2
            )
        }
    )
    server, _port = create_server(settings, detector=detector, updates=None)
    server.start()
    try:
        assert server.wait_until_serving(timeout_s=60)
        current = server.holder.current
        assert current is not None
        assert (current.version.version, current.version.path) == (
            1,
            home / "cache" / "models" / "converter" / "1",
        )

        version, artifacts = _trained_version(registry, trainer, -0.2)
        row = registry.get("converter", version)
        update = ModelUpdate(
            name="converter",
            version=version,
            previous_version=1,
            action="promote",
            family=row.family,
            snapshot_id=row.snapshot_id,
            path=row.path,  # the trainer's directory: not on this machine
            artifacts=artifacts,
            metrics={},
            reason="test",
            actor="test",
            at=datetime.now(UTC),
        )
        assert not Path(update.path).is_relative_to(home)
        server.apply_update(update)
        current = server.holder.current
        assert current is not None
        assert current.version.version == 2

        third, artifacts = _trained_version(registry, trainer, 0.5)
        stored = artifact_store(trainer)
        assert stored is not None
        stored.put(f"converter/{third}/model.onnx", b"tampered")
        with pytest.raises(ArtifactMismatch, match=r"model\.onnx"):
            server.apply_update(
                update.model_copy(update={"version": third, "artifacts": artifacts})
            )
        current = server.holder.current
        assert current is not None
        assert current.version.version == 2  # the old model keeps serving
        assert server.swapper.failed_swaps == 1
    finally:
        server.stop(grace_s=0)


# -- ingestion and erasure through the settings --------------------------------------------


def test_ingestion_and_erasure_keep_crops_in_the_bucket(
    s3_endpoint: str, bucket: str, tmp_path: Path, detector: Any, dlib_embedder: Any
) -> None:
    from agents.pipeline import Incoming, IngestPipeline
    from schemas.uploads import Consent, ImagePayload, UploadEvent

    settings = _s3_settings(tmp_path / "home", s3_endpoint, bucket, prefix="")
    photo = (Path(__file__).parents[1] / "data" / "real" / "london_001_neutral.jpg").read_bytes()
    now = datetime.now(UTC)

    def event(upload_id: str) -> Incoming:
        return Incoming(
            UploadEvent(
                upload_id=upload_id,
                subject_id="app-user-1",
                consent=Consent(
                    version="1", scopes=["training"], granted_at=now - timedelta(days=1)
                ),
                image=ImagePayload(data=photo),
                submitted_at=now,
            ).to_bytes()
        )

    pipeline = IngestPipeline.build(settings, detector=detector, embedder=dlib_embedder)
    try:
        first, copy = pipeline.run([event("u-1")]) + pipeline.run([event("u-2")])
        assert first.face is not None
        # The second photo is the same face: the duplicate check read the first crop back
        # from the bucket.
        assert copy.rejection is not None
        assert copy.rejection.reason.value == "duplicate"
        face = first.face
        crops = {face.crop_256, face.crop_512}
        keys = _bucket_keys(settings)
        assert {f"blobs/{d[:2]}/{d[2:4]}/{d}.png" for d in crops} <= set(keys)
        assert not settings.blob_dir.exists()

        eraser = Eraser.from_settings(
            settings, create_engine_for(settings.sql_url), pipeline.store.index.client
        )
        result = eraser.erase(
            face.subject, request_id="er-1", requested_by="test", requested_at=datetime.now(UTC)
        )
        assert (result.outcome, result.counts["crops"]) == ("erased", 2)
        assert not any(key.startswith("blobs/") for key in _bucket_keys(settings))
    finally:
        pipeline.close()


def test_a_failed_upload_records_nothing(s3_endpoint: str, engine: Engine, tmp_path: Path) -> None:
    settings = _s3_settings(tmp_path / "trainer", s3_endpoint, "bucket-that-is-not-there")
    registry = Registry.from_settings(settings, engine)
    row = registry.register(
        "converter",
        family="pix2pix-lora",
        snapshot_id="ds-0123456789abcdef",
        parent_version=None,
        config={},
        subjects=[],
    )
    folder = export_tiny(settings.models_dir, row.version)
    with pytest.raises(TrainerStorageError, match="bucket-that-is-not-there"):
        registry.update("converter", 1, status=VersionStatus.TRAINED, artifacts=hash_tree(folder))
    assert registry.get("converter", 1).artifacts == {}
    assert registry.get("converter", 1).status is VersionStatus.TRAINING


def test_erasure_removes_stored_sample_grids_of_a_run_inside_its_version(
    s3_endpoint: str, bucket: str, engine: Engine, tmp_path: Path
) -> None:
    from qdrant_client import QdrantClient

    settings = _s3_settings(tmp_path / "home", s3_endpoint, bucket)
    registry = Registry.from_settings(settings, engine)
    subject = "a" * 64
    row = registry.register(
        "converter",
        family="pix2pix-lora",
        snapshot_id="ds-0123456789abcdef",
        parent_version=None,
        config={},
        subjects=[subject],
    )  # no runs_dir: the run lives in <version>/run, and is copied with it
    folder = export_tiny(settings.models_dir, row.version)
    (folder / "run" / "samples").mkdir(parents=True)
    (folder / "run" / "samples" / "final.png").write_bytes(b"validation selfies")
    registry.update("converter", row.version, artifacts=hash_tree(folder))
    stored = registry.artifacts
    assert stored is not None
    assert stored.exists("converter/1/run/samples/final.png")

    eraser = Eraser.from_settings(settings, engine, QdrantClient(":memory:"))
    result = eraser.erase(
        subject, request_id="er-1", requested_by="test", requested_at=datetime.now(UTC)
    )

    assert result.counts["sample_grids"] == 1
    assert not (folder / "run" / "samples").exists()
    assert stored.list_keys("converter/1/run/") == []
    assert stored.exists("converter/1/model.onnx")  # the model itself stays
