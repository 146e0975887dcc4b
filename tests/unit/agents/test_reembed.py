"""``s2a faces reembed``: a small real store (SQLite, Qdrant local store, blobs) made by the
ingest pipeline with the seeded random-init embedder, moved to dlib's descriptor."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from sqlmodel import Session, select

from agents.pipeline import Incoming, IngestPipeline
from agents.records import CleanImage, EmbeddingSpace, EmbedInput
from agents.reembed import Reembedder
from agents.stages.align import align
from agents.stages.detect import MtcnnDetector
from agents.stages.embed import DlibResnetEmbedder, Embedder, InceptionEmbedder
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from agents.stores.faces import APPEARANCE_VECTOR, FACE_VECTOR, FaceIndex
from infra.cli import cli
from schemas.settings import Settings
from schemas.tables import Face
from schemas.uploads import Consent, ImagePayload, UploadEvent

REAL = Path(__file__).parents[2] / "data" / "real"
PHOTOS = (
    "london_001_neutral.jpg",
    "london_004_neutral.jpg",
    "london_007_neutral.jpg",
    "london_013_neutral.jpg",
)


@dataclass
class Store:
    settings: Settings
    pipeline: IngestPipeline
    faces: dict[str, str]
    """photo name -> face id"""


@pytest.fixture
def store(tmp_path: Path, detector: MtcnnDetector, embedder: InceptionEmbedder) -> Iterator[Store]:
    settings = Settings(home=tmp_path / "home")
    pipeline = IngestPipeline.build(settings, detector=detector, embedder=embedder)
    now = datetime.now(UTC)
    events = [
        UploadEvent(
            upload_id=f"u-{uuid.uuid4().hex[:12]}",
            subject_id=f"subject-{i}",
            consent=Consent(version="1", scopes=["training"], granted_at=now - timedelta(days=1)),
            image=ImagePayload(data=(REAL / name).read_bytes()),
            submitted_at=now,
        )
        for i, name in enumerate(PHOTOS)
    ]
    outcomes = pipeline.run([Incoming(event.to_bytes()) for event in events])
    faces = {}
    for name, outcome in zip(PHOTOS, outcomes, strict=True):
        assert outcome.face is not None, outcome.rejection
        faces[name] = outcome.face.face_id
    yield Store(settings, pipeline, faces)
    pipeline.close()


class _Counting:
    """The embedder seam: a real embedder that remembers how many faces it embedded."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name, self.dim = inner.name, inner.dim
        self.weights_sha256, self.random_init = inner.weights_sha256, inner.random_init
        self.batch_size = 1
        self.embedded = 0

    @property
    def space(self) -> EmbeddingSpace:
        return self.inner.space

    def embed(self, faces: Sequence[EmbedInput]) -> npt.NDArray[np.float32]:
        self.embedded += len(faces)
        return self.inner.embed(faces)


class _Crash(Exception):
    pass


def _crash_after(k: int) -> Callable[[int], None]:
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] >= k:
            raise _Crash(f"stopped after {done[0]} faces")

    return progress


def _rows(settings: Settings) -> dict[str, Face]:
    with Session(create_engine_for(settings.sql_url)) as session:
        return {face.face_id: face for face in session.exec(select(Face))}


def test_reembed_moves_the_store_and_a_rerun_finishes_what_a_crash_left(
    store: Store, dlib_embedder: DlibResnetEmbedder, photo: Callable[[str], CleanImage]
) -> None:
    client = store.pipeline.store.index.client
    old = store.pipeline.store.index
    engine = create_engine_for(store.settings.sql_url)
    counting = _Counting(dlib_embedder)
    mover = Reembedder(engine, BlobStore(store.settings.blob_dir), client, counting)

    with pytest.raises(_Crash):
        mover.run(progress=_crash_after(2))
    rows = _rows(store.settings)
    moved = {i for i, face in rows.items() if face.embedder == dlib_embedder.name}
    assert len(moved) == 2
    assert counting.embedded == 2

    report = mover.run()
    assert (report.total, report.already, report.moved, report.unreadable) == (4, 2, 2, [])
    assert counting.embedded == 4  # the two done before the crash were not redone
    assert mover.run().moved == 0

    rows = _rows(store.settings)
    assert {(f.embedder, f.embedder_sha256, f.embedder_random_init) for f in rows.values()} == {
        (dlib_embedder.name, dlib_embedder.weights_sha256, False)
    }
    target = FaceIndex(client, dlib_embedder.space)
    ids = list(store.faces.values())
    vectors = target.vectors(ids, FACE_VECTOR)
    assert {v.shape for v in vectors.values()} == {(128,)}
    # The appearance signature moved as it was; the old collection is left untouched.
    old_signatures = old.vectors(ids, APPEARANCE_VECTOR)
    for face_id, signature in target.vectors(ids, APPEARANCE_VECTOR).items():
        np.testing.assert_allclose(signature, old_signatures[face_id], atol=1e-6)
    assert old.count() == 4
    assert {p["embedder"] for p in target.payloads(ids).values()} == {dlib_embedder.name}
    # From the stored 512 px crop, close to what the photo itself gives (measured 0.03-0.07;
    # the same person's two photos are 0.08 and more apart).
    image = photo("london_001_neutral.jpg")
    [[face]] = store.pipeline.detector.detect([image])
    crop = align(image, face.landmarks, sizes=(160,)).crops[160]
    [direct] = dlib_embedder.embed([EmbedInput(image.pixels, face.box, crop)])
    assert float(np.linalg.norm(direct - vectors[store.faces["london_001_neutral.jpg"]])) < 0.08


def test_reembedding_links_one_person_under_two_subject_ids(
    store: Store, dlib_embedder: DlibResnetEmbedder
) -> None:
    # Ingested with the random-init embedder, which links no one: the smiling photo of
    # london_001 under another subject id has no link yet.
    now = datetime.now(UTC)
    second = UploadEvent(
        upload_id=f"u-{uuid.uuid4().hex[:12]}",
        subject_id="subject-second-account",
        consent=Consent(version="1", scopes=["training"], granted_at=now - timedelta(days=1)),
        image=ImagePayload(data=(REAL / "london_001_smiling.jpg").read_bytes()),
        submitted_at=now,
    )
    [outcome] = store.pipeline.run([Incoming(second.to_bytes())])
    assert outcome.face is not None
    repository = store.pipeline.repository
    first = store.faces["london_001_neutral.jpg"]
    assert repository.identity_links([first, outcome.face.face_id]) == []

    Reembedder(
        create_engine_for(store.settings.sql_url),
        BlobStore(store.settings.blob_dir),
        store.pipeline.store.index.client,
        dlib_embedder,
        link_distance=store.settings.worker.identity_link_distance,
    ).run()

    links = repository.identity_links([*store.faces.values(), outcome.face.face_id])
    assert {frozenset((link.face_id, link.other_face_id)) for link in links} == {
        frozenset((first, outcome.face.face_id))
    }
    assert {link.embedder for link in links} == {dlib_embedder.name}


def test_a_missing_crop_leaves_that_face_and_moves_the_rest(
    store: Store, dlib_embedder: DlibResnetEmbedder
) -> None:
    lost = store.faces["london_007_neutral.jpg"]
    blobs = BlobStore(store.settings.blob_dir)
    assert blobs.delete(_rows(store.settings)[lost].crop_512)
    mover = Reembedder(
        create_engine_for(store.settings.sql_url),
        blobs,
        store.pipeline.store.index.client,
        dlib_embedder,
    )
    report = mover.run()
    assert (report.moved, report.unreadable) == (3, [lost])
    assert _rows(store.settings)[lost].embedder == store.pipeline.embedder.name


def test_the_command_moves_the_store_and_prints_json(store: Store) -> None:
    store.pipeline.close()  # the Qdrant local store opens in one process at a time
    env = {"S2A_HOME": str(store.settings.home)}
    runner = CliRunner()

    first = runner.invoke(cli, ["faces", "reembed", "--json"], env=env)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert (report["total"], report["moved"], report["already"]) == (4, 4, 0)
    assert report["target"].startswith("dlib-resnet/sha256=")

    back = runner.invoke(cli, ["faces", "reembed", "--embedder", "random-init", "--json"], env=env)
    assert json.loads(back.stdout)["moved"] == 4
    again = runner.invoke(cli, ["faces", "reembed", "--embedder", "random-init"], env=env)
    assert again.exit_code == 0
    assert again.stdout.startswith("0 faces re-embedded with inception-resnet-v1/random-init")
