"""End to end through the real Tansu broker and a real Faust worker process.

One scenario publishes real selfies and bad inputs of many kinds, then checks the terminal
state and reason of each, the dead letters, the stores' privacy and idempotency.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import run_s2a
from PIL import Image

from agents.pairing.store import PairStore
from agents.stages.prepare import face_id_for
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from agents.stores.repository import Repository
from infra.broker import free_port
from infra.kafka import UploadPublisher, consumer_lag, read_pairs, read_rejections
from infra.runtime import Stack, settings_env
from infra.waiting import wait_until
from schemas.reasons import UploadState
from schemas.settings import LimitSettings, Settings
from schemas.uploads import Consent, DeclaredAttributes, ImagePayload, UploadEvent

pytestmark = pytest.mark.integration
DATA = Path(__file__).parents[1] / "data"
REAL = DATA / "real"
ANIME = DATA / "anime"
DEADLINE_S = 300.0


def _jpeg(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **params)
    return out.getvalue()


def _declared(face_id: str) -> DeclaredAttributes:
    """True age and gender of a London face, as its subject would declare them."""
    with (DATA / "london_info.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["face_id"] == face_id)
    return DeclaredAttributes(age=int(row["face_age"]), gender=row["face_gender"])


@dataclass
class Case:
    event: UploadEvent | None
    raw: bytes | None
    expect: str
    """'accepted' or a reason code"""


class Scenario:
    def __init__(self, uri_root: Path) -> None:
        self.now = datetime.now(UTC)
        self.uri_root = uri_root
        self.cases: dict[str, Case] = {}
        self.raw_subjects: list[str] = []

    def add(
        self,
        name: str,
        expect: str,
        *,
        data: bytes | None = None,
        uri: str | None = None,
        subject: str | None = None,
        scopes: tuple[str, ...] = ("training",),
        expires_at: datetime | None = None,
        attributes: DeclaredAttributes | None = None,
    ) -> UploadEvent:
        subject = subject or f"person-{name}@example.com"
        self.raw_subjects.append(subject)
        event = UploadEvent(
            upload_id=f"{name}-{uuid.uuid4().hex[:8]}",
            subject_id=subject,
            consent=Consent(
                version="t-1",
                scopes=list(scopes),
                granted_at=self.now - timedelta(days=2),
                expires_at=expires_at,
            ),
            image=ImagePayload(data=data, uri=uri),
            attributes=attributes or DeclaredAttributes(),
            submitted_at=self.now,
        )
        self.cases[event.upload_id] = Case(event, None, expect)
        return event

    def add_raw(self, upload_id: str, raw: bytes, expect: str) -> None:
        self.cases[upload_id] = Case(None, raw, expect)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("s2a-home")
    (home / "incoming").mkdir()
    return Settings(
        home=home,
        broker_port=free_port(),
        topic_prefix=f"it{uuid.uuid4().hex[:6]}.",
        uri_roots=(home / "incoming",),
        # A small inline limit, so the too-large path is exercised with small files.
        limits=LimitSettings(max_inline_bytes=400_000, max_upload_bytes=600_000),
        log_level="INFO",
    )


@pytest.fixture(scope="module")
def outcome(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    scenario = build_scenario(settings, tmp_path_factory.mktemp("outside"))
    # The reference library comes first, through the command line: every accepted face
    # is then paired against it by the worker's pairs agent.
    references = _s2a(
        settings,
        "refs",
        "add",
        *(str(path) for path in sorted(ANIME.glob("renpy_*_face.png"))),
        "--style",
        "renpy",
        "--sources",
        str(DATA / "SOURCES.csv"),
        "--label",
        "gender=female",
        "--label",
        "age_band=18-29",
        "--json",
    )
    repository = Repository(create_engine_for(settings.sql_url))
    pair_store = PairStore(create_engine_for(settings.sql_url))
    with Stack(settings) as stack, UploadPublisher(settings) as publisher:
        for upload_id, case in scenario.cases.items():
            if case.event is not None:
                publisher.publish(case.event)
            else:
                publisher.publish_raw(upload_id.encode(), case.raw or b"")
        # One upload through the command line, as an operator would publish it.
        published = _s2a(
            settings,
            "publish",
            str(REAL / "london_013_neutral.jpg"),
            "--subject",
            "cli-person@example.com",
            "--json",
        )
        scenario.raw_subjects.append("cli-person@example.com")
        # A public-dataset folder: one subject per file, the license on every face.
        dataset = settings.home.parent / "celeba-like"
        dataset.mkdir()
        for name in ("london_007_neutral.jpg", "selfie_lisa1.jpg"):
            (dataset / name).write_bytes((REAL / name).read_bytes())
        imported = _s2a(
            settings,
            "publish",
            str(dataset),
            "--source",
            "public-dataset",
            "--license",
            "CC-BY-4.0",
            "--attribution",
            "Test Set",
            "--json",
        )
        for line in (published.stdout + imported.stdout).splitlines():
            scenario.cases[json.loads(line)["upload_id"]] = Case(None, None, "accepted")
        # The same event again: a re-delivery must change nothing.
        redelivered = next(c.event for c in scenario.cases.values() if c.expect == "accepted")
        publisher.publish(redelivered)
        ids = {_expected_id(upload_id, case) for upload_id, case in scenario.cases.items()}
        # Finished: every upload has its terminal state and the worker has committed past
        # the last record (the re-delivery).
        wait_until(
            lambda: (
                len(repository.finished(ids)) == len(ids) and consumer_lag(settings).behind == 0
            ),
            deadline_s=DEADLINE_S,
            what="every upload's terminal state",
            alive=stack.check_worker,
        )
        rejected = repository.counts().get("rejected", 0)
        dead_letters = read_rejections(settings, expect=rejected)
        # Pairing follows ingestion: one pair per accepted face (one style here).
        wait_until(
            lambda: sum(pair_store.status_counts().values()) == repository.counts()["accepted"],
            deadline_s=DEADLINE_S,
            what="a pair for every accepted face",
            alive=stack.check_worker,
        )
        pair_records = read_pairs(settings, expect=repository.counts()["accepted"])
    # The worker has stopped here, so the Qdrant local store can be opened.
    return {
        "scenario": scenario,
        "repository": repository,
        "dead_letters": dead_letters,
        "redelivered": redelivered,
        "worker_log": (settings.run_dir / "worker.log").read_text(),
        "published_stdout": published.stdout,
        "references_stdout": references.stdout,
        "pair_store": pair_store,
        "pair_records": pair_records,
        "imported_stdout": imported.stdout,
    }


def _s2a(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line, as an operator runs it, against this test's settings."""
    return run_s2a(*args, env=settings_env(settings), check=True)


def build_scenario(settings: Settings, outside: Path) -> Scenario:
    s = Scenario(settings.uri_roots[0])
    photo = {
        n: (REAL / f"london_{n}.jpg").read_bytes()
        for n in (
            "001_neutral",
            "002_neutral",
            "003_neutral",
            "004_neutral",
            "004_smiling",
            "013_neutral",
        )
    }
    s.add("plain", "accepted", data=photo["002_neutral"], attributes=_declared("002"))
    # EXIF with GPS and a comment: accepted, and nothing of it may be stored.
    exif = Image.Exif()
    exif[0x010E] = "SECRET-DESCRIPTION"  # ImageDescription
    gps = exif.get_ifd(0x8825)
    gps[2] = (51.0, 30.0, 0.0)
    gps[1] = "N"
    with_meta = _jpeg(
        Image.open(io.BytesIO(photo["003_neutral"])), exif=exif.tobytes(), comment=b"SECRET-COMMENT"
    )
    s.add("exif", "accepted", data=with_meta, attributes=_declared("003"))
    s.add(
        "smiling",
        "accepted",
        data=photo["004_smiling"],
        subject="same-person-4",
        attributes=_declared("004"),
    )
    s.add("neutral", "accepted", data=photo["004_neutral"], subject="same-person-4")
    # The same photo again, re-encoded, for the same subject.
    again = _jpeg(Image.open(io.BytesIO(photo["004_neutral"])).convert("RGB"))
    s.add("dup", "duplicate", data=again, subject="same-person-4")
    # By URI: inside the worker's root, and outside it.
    inside = settings.uri_roots[0] / "by_uri.jpg"
    inside.write_bytes(photo["013_neutral"])
    s.add("uri", "accepted", uri=inside.as_uri())
    (outside / "x.jpg").write_bytes(photo["013_neutral"])
    s.add("uri-outside", "bad_uri", uri=(outside / "x.jpg").as_uri())
    # Larger than the inline limit.
    s.add("big", "too_large", data=os.urandom(440_000))
    # Decompression bomb: a small PNG that declares a huge canvas.
    bomb = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(bomb, "PNG", optimize=True)
    s.add("bomb", "too_large", data=bomb.getvalue())
    s.add("truncated", "decode_error", data=photo["001_neutral"][:9000])
    s.add("noise", "decode_error", data=bytes(range(256)) * 40)
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    s.add("animated", "animated", data=gif.getvalue())
    blank = io.BytesIO()
    Image.new("RGB", (400, 400), (90, 140, 200)).save(blank, "PNG")
    s.add("blank", "no_face", data=blank.getvalue())
    pair = Image.new("RGB", (1024, 512))
    pair.paste(Image.open(io.BytesIO(photo["001_neutral"])), (0, 0))
    pair.paste(Image.open(io.BytesIO(photo["002_neutral"])), (512, 0))
    s.add("pair", "multiple_faces", data=_jpeg(pair))
    s.add("no-scope", "no_consent", data=photo["001_neutral"], scopes=("analytics",))
    s.add(
        "expired",
        "consent_expired",
        data=photo["001_neutral"],
        expires_at=s.now - timedelta(hours=1),
    )
    s.add_raw("not-json", b"\x00\x01 definitely not json", "bad_schema")
    s.add_raw(
        "wrong-shape",
        json.dumps(
            {"upload_id": "wrong-shape", "subject_id": "raw-id-in-bad-record", "consent": "yes"}
        ).encode(),
        "bad_schema",
    )
    return s


def _expected_id(upload_id: str, case: Case) -> str:
    if case.raw is not None and upload_id == "not-json":
        from schemas.uploads import fallback_upload_id

        return fallback_upload_id(case.raw)
    return upload_id


def test_every_upload_ends_in_its_expected_state(outcome: dict) -> None:
    scenario: Scenario = outcome["scenario"]
    rows = {row.upload_id: row for row in outcome["repository"].list_uploads()}
    got = {}
    for upload_id, case in scenario.cases.items():
        row = rows[_expected_id(upload_id, case)]
        got[upload_id] = row.reason if row.state == "rejected" else str(row.state)
    assert got == {upload_id: case.expect for upload_id, case in scenario.cases.items()}
    assert all(row.stage for row in rows.values() if row.state == "rejected")


def test_one_dead_letter_per_rejection(outcome: dict) -> None:
    repository: Repository = outcome["repository"]
    rejected = {r.upload_id: r for r in repository.list_uploads() if r.state == "rejected"}
    letters = {}
    for letter in outcome["dead_letters"]:
        assert letter.upload_id not in letters, f"two dead letters for {letter.upload_id}"
        letters[letter.upload_id] = letter
    assert set(letters) == set(rejected)
    for upload_id, letter in letters.items():
        assert letter.reason.value == rejected[upload_id].reason
        assert letter.origin is not None
        assert letter.origin.topic.endswith("uploads")


def test_redelivered_event_changes_nothing(outcome: dict) -> None:
    repository: Repository = outcome["repository"]
    upload_id = outcome["redelivered"].upload_id
    row = next(r for r in repository.list_uploads() if r.upload_id == upload_id)
    assert row.state == "accepted"
    assert outcome["worker_log"].count(f"upload {upload_id} accepted") == 1
    assert not any(letter.upload_id == upload_id for letter in outcome["dead_letters"])


def test_declared_and_measured_labels_arrive(outcome: dict, settings: Settings) -> None:
    scenario: Scenario = outcome["scenario"]
    upload_id = next(u for u in scenario.cases if u.startswith("plain-"))
    truth = _declared("002")
    assert (truth.age, truth.gender) == (24, "female")  # london_info.csv
    with sqlite3.connect(settings.home / "s2a.db") as db:
        rows = db.execute(
            "select l.source, l.name, l.value from labels l join faces f "
            "on f.face_id = l.face_id where f.upload_id = ?",
            (upload_id,),
        ).fetchall()
    labels = {(source, name): value for source, name, value in rows}
    # Declared as the vocabulary: the age's band and the gender's value.
    assert {k[1]: v for k, v in labels.items() if k[0] == "declared"} == {
        "age_band": "18-29",
        "gender": "female",
    }
    # A studio portrait: measured in the same transaction as its face (her expression from
    # the landmarks, her hair colour from above the aligned face).
    assert {k[1]: v for k, v in labels.items() if k[0] == "measured"} == {
        "pose_band": "frontal",
        "lighting_band": "normal",
        "blur": "sharp",
        "expression": "neutral",
        "hair_colour": "blond",
    }


def test_no_raw_subject_id_or_metadata_is_stored(outcome: dict, settings: Settings) -> None:
    scenario: Scenario = outcome["scenario"]
    secrets = [s.encode() for s in scenario.raw_subjects] + [
        b"raw-id-in-bad-record",
        b"SECRET-DESCRIPTION",
        b"SECRET-COMMENT",
    ]
    # SQL: every byte of the database file (and its WAL).
    for path in settings.home.glob("s2a.db*"):
        content = path.read_bytes()
        assert not [s for s in secrets if s in content], path
    # Blobs: PNG crops with no metadata chunks at all.
    blobs = BlobStore(settings.blob_dir)
    digests = blobs.digests()
    assert digests
    for digest in digests:
        data = blobs.read(digest)
        assert not [s for s in secrets if s in data]
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            assert not image.info.get("exif")
            assert not image.getexif()
            assert not set(image.info) & {
                "comment",
                "icc_profile",
                "XML:com.adobe.xmp",
                "parameters",
            }
    # Qdrant: payloads hold pseudonyms only.
    from agents.stages.embed import embedder_space
    from agents.stores.faces import FaceIndex

    # The worker's embedder is the default one: its collection holds every face.
    index = FaceIndex.from_settings(settings, embedder_space(settings.models))
    try:
        payloads = index.payloads()
    finally:
        index.close()
    accepted = {r.upload_id for r in outcome["repository"].list_uploads() if r.state == "accepted"}
    assert len(payloads) == len(accepted)
    text = json.dumps(payloads).encode()
    assert not [s for s in secrets if s in text]
    for payload in payloads.values():
        assert len(payload["subject"]) == 64
    for path in settings.qdrant_path.rglob("*"):
        if path.is_file():
            assert not [s for s in secrets if s in path.read_bytes()], path
    # Logs.
    log = outcome["worker_log"].encode()
    assert not [s for s in secrets if s in log]


def test_cli_reports_print_json_only(outcome: dict, settings: Settings) -> None:
    lines = outcome["published_stdout"].splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["image"] == "inline"
    listed = _s2a(settings, "uploads", "--json")
    uploads = json.loads(listed.stdout)
    repository: Repository = outcome["repository"]
    assert {u["upload_id"] for u in uploads} == {r.upload_id for r in repository.list_uploads()}
    # The broker is gone now: status still reports from SQL, names the broker problem and
    # exits 0.
    status = _s2a(settings, "status", "--json")
    report = json.loads(status.stdout)
    assert report["states"] == repository.counts()
    assert report["lag"] is None
    assert report["broker_error"]


def test_public_dataset_license_is_on_every_face(outcome: dict) -> None:
    repository: Repository = outcome["repository"]
    ids = [json.loads(line)["upload_id"] for line in outcome["imported_stdout"].splitlines()]
    assert len(ids) == 2
    uploads = {r.upload_id: r for r in repository.list_uploads()}
    subjects = {uploads[i].subject for i in ids}
    assert len(subjects) == 2  # one subject per file
    for subject in subjects:
        assert subject is not None
        [face] = repository.faces_of_subject(subject)
        assert (face.source, face.license, face.attribution) == (
            "public-dataset",
            "CC-BY-4.0",
            "Test Set",
        )


def test_every_accepted_face_is_paired_and_announced(outcome: dict) -> None:
    references = [json.loads(line) for line in outcome["references_stdout"].splitlines()]
    assert references
    assert {r["outcome"] for r in references} <= {"added", "quarantined"}
    added = {r["ref_id"] for r in references if r["outcome"] == "added"}
    repository: Repository = outcome["repository"]
    pairs = outcome["pair_store"].list_pairs()
    faces = {
        face_id_for(upload.upload_id)
        for upload in repository.list_uploads(state=UploadState.ACCEPTED)
    }

    assert {pair.face_id for pair in pairs} == faces
    assert all(pair.style == "renpy" for pair in pairs)
    for pair in pairs:
        assert pair.status in ("approved", "pending")
        assert pair.ref_id in added
        assert {c["ref_id"] for c in pair.candidates} <= added
        assert pair.library_version == 1
    # The declared young women agree with the references on every shared label.
    assert any(pair.status == "approved" and pair.decided_by == "auto" for pair in pairs)
    # Every pair went out on the pairs topic, as stored.
    announced = {record.pair_id: record for record in outcome["pair_records"]}
    assert set(announced) == {pair.pair_id for pair in pairs}
    for pair in pairs:
        assert announced[pair.pair_id].status.value == pair.status
        assert announced[pair.pair_id].ref_id == pair.ref_id
