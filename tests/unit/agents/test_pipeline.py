"""The stage chain in process (no broker): outcomes, idempotency, error isolation.

Uses the real models and stores (SQLite, Qdrant local store, blobs) under a temp home;
only the detector is wrapped at its seam where a test needs it to fail.
"""

from __future__ import annotations

import gc
import io
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import run_s2a
from PIL import Image

from agents.errors import StorageError
from agents.pipeline import Incoming, IngestPipeline, Outcome
from agents.records import CleanImage, Detection
from agents.stages.detect import FaceDetector
from schemas.reasons import ReasonCode, Stage, UploadState
from schemas.settings import Settings
from schemas.uploads import Consent, ImagePayload, UploadEvent

REAL = Path(__file__).parents[2] / "data" / "real"


def _event(photo: bytes, subject: str, **consent: object) -> UploadEvent:
    now = datetime.now(UTC)
    return UploadEvent(
        upload_id=f"u-{uuid.uuid4().hex[:12]}",
        subject_id=subject,
        consent=Consent(
            version="1", scopes=["training"], granted_at=now - timedelta(days=1), **consent
        ),
        image=ImagePayload(data=photo),
        submitted_at=now,
    )


def _photo(name: str) -> bytes:
    return (REAL / name).read_bytes()


def _reencoded(name: str, *, scale: float = 1.0, quality: int = 80) -> bytes:
    image = Image.open(REAL / name).convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestPipeline]:
    settings = Settings(home=tmp_path_factory.mktemp("pipeline"))
    pipe = IngestPipeline.build(settings)
    yield pipe
    pipe.close()


def _states(outcomes: Sequence[Outcome]) -> list[str | None]:
    return [
        (o.rejection.reason.value if o.rejection else o.state.value if o.state else None)
        for o in outcomes
    ]


def test_batch_outcomes_and_redelivery(pipeline: IngestPipeline) -> None:
    a = _event(_photo("london_002_neutral.jpg"), "subject-a")
    a_other_photo = _event(_photo("london_004_smiling.jpg"), "subject-b")
    b = _event(_photo("london_004_neutral.jpg"), "subject-b")
    b_again = _event(_reencoded("london_004_neutral.jpg"), "subject-b")
    expired = _event(
        _photo("london_003_neutral.jpg"),
        "subject-c",
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    batch = [Incoming(e.to_bytes()) for e in (a, a_other_photo, b, b_again, expired)]
    batch.append(Incoming(f"{{not json {uuid.uuid4().hex}".encode()))
    batch.append(Incoming(a.to_bytes()))  # the same upload twice in one batch

    outcomes = pipeline.run(batch)

    assert _states(outcomes) == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate",
        "consent_expired",
        "bad_schema",
        None,
    ]
    dup = outcomes[3].rejection
    assert dup is not None
    assert dup.stage is Stage.STORE
    assert dup.subject is not None
    assert outcomes[0].face is not None
    assert outcomes[0].face.subject != "subject-a"
    # Every accepted face is stored with its measured labels (expression and hair colour:
    # agents.stages.appearance; she is blond, her face at rest).
    labels = pipeline.repository.labels_of_face(outcomes[0].face.face_id)
    assert {(label.source, label.name, label.value) for label in labels} == {
        ("measured", "pose_band", "frontal"),
        ("measured", "lighting_band", "normal"),
        ("measured", "blur", "sharp"),
        ("measured", "expression", "neutral"),
        ("measured", "hair_colour", "blond"),
    }
    # Re-delivery of the whole batch changes nothing: every upload is already finished.
    before = pipeline.repository.counts()
    again = pipeline.run(batch)
    assert [o.state for o in again] == [None] * len(batch)
    assert pipeline.repository.counts() == before
    assert pipeline.store.index.count() == 3


def test_a_rescaled_copy_is_a_duplicate_and_a_smile_is_not(pipeline: IngestPipeline) -> None:
    neutral = _event(_photo("london_016_neutral.jpg"), "subject-g")
    smiling = _event(_photo("london_016_smiling.jpg"), "subject-g")
    copy = _event(_reencoded("london_016_neutral.jpg", scale=0.6, quality=60), "subject-g")

    outcomes = pipeline.run([Incoming(e.to_bytes()) for e in (neutral, smiling, copy)])

    assert _states(outcomes) == ["accepted", "accepted", "duplicate"]
    detail = outcomes[2].rejection.detail if outcomes[2].rejection else ""
    assert outcomes[0].face is not None
    assert f"a copy of face {outcomes[0].face.face_id}" in detail
    assert "S2A_WORKER__DUPLICATE_SIMILARITY" in detail
    # One person's two photos are not a mismatch either.
    assert outcomes[1].face is not None
    assert outcomes[1].face.flag is None


def test_another_person_under_a_subject_id_is_flagged_not_dropped(
    pipeline: IngestPipeline,
) -> None:
    first = _event(_photo("london_017_neutral.jpg"), "subject-h")
    someone_else = _event(_photo("london_018_neutral.jpg"), "subject-h")

    outcomes = pipeline.run([Incoming(e.to_bytes()) for e in (first, someone_else)])

    assert _states(outcomes) == ["accepted", "accepted"]
    assert outcomes[0].face is not None
    assert outcomes[0].face.flag is None
    assert outcomes[1].face is not None
    stored = pipeline.repository.get_face(outcomes[1].face.face_id)
    assert stored is not None
    assert stored.flag == "identity_mismatch"
    assert stored.flag_detail is not None
    assert "S2A_WORKER__IDENTITY_MISMATCH_DISTANCE" in stored.flag_detail
    # The operator sees it in `s2a uploads`.
    listed = run_s2a("uploads", "--flagged", "--json", home=pipeline.settings.home, check=True)
    assert [(u["upload_id"], u["flag"]) for u in json.loads(listed.stdout)] == [
        (someone_else.upload_id, "identity_mismatch")
    ]


def test_one_person_under_two_subject_ids_is_linked(pipeline: IngestPipeline) -> None:
    # A selfie and a public-dataset-like second account of one person, and a stranger.
    neutral = _event(_photo("london_001_neutral.jpg"), "subject-p")
    smiling = _event(_photo("london_001_smiling.jpg"), "subject-q")
    stranger = _event(_photo("london_011_neutral.jpg"), "subject-r")

    outcomes = pipeline.run([Incoming(e.to_bytes()) for e in (neutral, smiling, stranger)])

    assert _states(outcomes) == ["accepted", "accepted", "accepted"]
    faces = [o.face.face_id for o in outcomes if o.face is not None]
    links = pipeline.repository.identity_links(faces)
    # The later face links to the earlier one; the stranger links to no one.
    assert [(link.face_id, link.other_face_id) for link in links] == [(faces[1], faces[0])]
    assert 0 < links[0].distance <= pipeline.settings.worker.identity_link_distance
    assert links[0].embedder == pipeline.embedder.name


def test_faces_record_their_embedder_and_land_in_its_collection(
    pipeline: IngestPipeline,
) -> None:
    # The default embedder: dlib's descriptor, named with the hash of its two files.
    embedder = pipeline.embedder
    assert embedder.name.startswith("dlib-resnet/sha256=")
    outcome = pipeline.run(
        [Incoming(_event(_photo("london_012_neutral.jpg"), "subject-f").to_bytes())]
    )
    face = outcome[0].face
    assert face is not None
    stored = pipeline.repository.get_face(face.face_id)
    assert stored is not None
    assert (stored.embedder, stored.embedder_sha256, stored.embedder_random_init) == (
        embedder.name,
        embedder.weights_sha256,
        False,
    )
    index = pipeline.store.index
    assert index.collection == f"faces-{embedder.space.slug}"
    [vector] = index.vectors([face.face_id], "face").values()
    assert vector.shape == (128,)
    assert index.payloads([face.face_id])[face.face_id]["embedder"] == embedder.name


class _FailsOn:
    """A real detector that breaks on images of one width: the batched call then fails."""

    def __init__(self, inner: FaceDetector, width: int) -> None:
        self.inner = inner
        self.width = width
        self.name = inner.name

    def detect(self, images: Sequence[CleanImage]) -> list[list[Detection]]:
        if any(image.width == self.width for image in images):
            raise RuntimeError("detector blew up")
        return self.inner.detect(images)


def test_one_broken_image_does_not_fail_its_batch(pipeline: IngestPipeline) -> None:
    odd = io.BytesIO()
    Image.open(REAL / "london_013_neutral.jpg").resize((333, 333)).save(odd, "JPEG")
    good = _event(_photo("london_001_neutral.jpg"), "subject-d")
    bad = _event(odd.getvalue(), "subject-e")
    original = pipeline.detector
    pipeline.detector = _FailsOn(original, 333)
    try:
        outcomes = pipeline.run([Incoming(good.to_bytes()), Incoming(bad.to_bytes())])
    finally:
        pipeline.detector = original
    assert outcomes[0].state is UploadState.ACCEPTED
    rejection = outcomes[1].rejection
    assert rejection is not None
    assert (rejection.reason, rejection.stage) == (ReasonCode.INTERNAL_ERROR, Stage.DETECT)
    assert "detector blew up" in rejection.detail


class _BrokenIndex:
    def __init__(self, space: object) -> None:
        self.space = space

    def named_vectors(self, *args: object, **kwargs: object) -> dict[str, object]:
        raise StorageError("qdrant is down")


def test_storage_failure_stops_the_batch_and_records_nothing(pipeline: IngestPipeline) -> None:
    # subject-b has faces already, so the duplicate check reads Qdrant and meets the failure.
    event = _event(_photo("london_003_neutral.jpg"), "subject-b")
    index = pipeline.store.index
    pipeline.store.index = _BrokenIndex(index.space)  # type: ignore[assignment]
    try:
        with pytest.raises(StorageError):
            pipeline.process([Incoming(event.to_bytes())])
    finally:
        pipeline.store.index = index
    assert pipeline.repository.finished([event.upload_id]) == set()
    # Once the store is back, the re-delivered record is accepted.
    assert pipeline.run([Incoming(event.to_bytes())])[0].state is UploadState.ACCEPTED


def test_a_rejection_leaves_no_reference_cycle_holding_the_batch(
    pipeline: IngestPipeline,
) -> None:
    # A rejection caught with its traceback kept the frames of the batch (and with them its
    # images) alive until a full collection: ~250 MiB per 1,000 uploads in the soak.
    blank = io.BytesIO()
    Image.new("RGB", (400, 400), (90, 140, 200)).save(blank, "PNG")
    batch = [
        Incoming(
            _event(_photo("london_004_neutral.jpg"), f"subject-{uuid.uuid4().hex}").to_bytes()
        ),
        Incoming(_event(blank.getvalue(), f"subject-{uuid.uuid4().hex}").to_bytes()),  # no face
        Incoming(f"{{not json {uuid.uuid4().hex}".encode()),
    ]
    gc.collect()
    gc.disable()
    try:
        outcomes = pipeline.run(batch)
        assert [o.state for o in outcomes] == [
            UploadState.ACCEPTED,
            UploadState.REJECTED,
            UploadState.REJECTED,
        ]
        del outcomes
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = {
            type(o).__qualname__ for o in gc.garbage if type(o).__module__ == "agents.pipeline"
        }
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == set()
