"""The review store on a migrated SQLite file: queue order, items, and every decision."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from agents.errors import Conflict, InvalidDecision, NotFound, ReviewError, StorageError
from agents.review.store import ReviewStore
from agents.stores import outbox
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from schemas.migrate import upgrade
from schemas.pairs import PairRecord
from schemas.reasons import UploadState
from schemas.tables import (
    AnimeRef,
    Face,
    Label,
    LibraryVersion,
    Pair,
    ReviewDecision,
    Subject,
    Upload,
)

DATA = Path(__file__).parents[3] / "data"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
STYLE = "renpy"
SELFIES = ("london_001_neutral.jpg", "london_004_neutral.jpg", "london_007_neutral.jpg")
REFS = (
    ("renpy_eileen_happy_face.png", STYLE, "active"),
    ("renpy_sylvie_blue_smile_face.png", STYLE, "active"),
    ("renpy_sylvie_green_normal_face.png", STYLE, "quarantined"),
    ("renpy_eileen_concerned_face.png", STYLE, "active"),  # active, but never a candidate
    ("pc_chaosah_pepper_face.jpg", "pepper", "active"),
)


@functools.cache
def _png(path: Path, side: int) -> bytes:
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


def _sources() -> dict[str, dict[str, str]]:
    with (DATA / "SOURCES.csv").open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


@dataclass
class Seeded:
    engine: Engine
    faces: list[Face]
    refs: list[str]
    """ref ids in REFS order"""
    pending: list[str]
    """pending pair ids, oldest first"""
    approved: str
    unmatched: str


def seed(home: Path) -> Seeded:
    """Three faces with labels, a library of five references, three pending pairs (inserted
    newest first), one auto-approved and one unmatched pair."""
    url = f"sqlite:///{home / 's2a.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    blobs = BlobStore(home / "blobs")
    sources = _sources()
    rows: list[Any] = [LibraryVersion(version=1, created_at=T0, added=len(REFS))]
    refs = []
    for i, (name, style, status) in enumerate(REFS):
        source = sources[name]
        ref_id = f"ref-{i}"
        refs.append(ref_id)
        rows.append(
            AnimeRef(
                ref_id=ref_id,
                style=style,
                status=status,
                reason="outlier" if status == "quarantined" else None,
                original=blobs.put((DATA / "anime" / name).read_bytes()),
                training=blobs.put(_png(DATA / "anime" / name, 256)),
                region="whole",
                box=[0.0, 0.0, 1.0, 1.0],
                width=int(source["width"]),
                height=int(source["height"]),
                license=source["license"].split(" ")[0],
                source=source["source"],
                author=source["author"],
                tags=[],
                stats={},
                embedder="test",
                library_version=1,
                added_at=T0,
            )
        )
    faces = []
    for i, name in enumerate(SELFIES):
        subject = hashlib.sha256(f"subject-{i}".encode()).hexdigest()
        rows.append(
            Subject(
                pseudonym=subject,
                first_seen_at=T0,
                consent_version="test-1",
                consent_scopes=["training"],
                consent_granted_at=T0,
            )
        )
        rows.append(
            Upload(
                upload_id=f"up-{i}",
                subject=subject,
                state=UploadState.ACCEPTED,
                source="selfie",
                finished_at=T0,
            )
        )
        face = Face(
            face_id=f"face-{i}",
            upload_id=f"up-{i}",
            subject=subject,
            source="selfie",
            detector="mtcnn",
            detection_prob=0.99,
            box=[0.0, 0.0, 512.0, 512.0],
            landmarks=[[0.0, 0.0]] * 5,
            quality={},
            crop_256=blobs.put(_png(DATA / "real" / name, 256)),
            crop_512=blobs.put(_png(DATA / "real" / name, 512)),
            align={},
            embedder="test",
            embedder_random_init=True,
            image_width=512,
            image_height=512,
            created_at=T0,
            flag="identity_mismatch" if i == 1 else None,
            flag_detail="identity distance 0.61 to the nearest" if i == 1 else None,
        )
        faces.append(face)
        rows.append(face)
        rows += [
            Label(face_id=face.face_id, name=n, value=v, source=s, confidence=c, created_at=T0)
            for n, v, s, c in (
                ("gender", "female", "declared", 1.0),
                ("gender", "male", "model", 0.99),
                ("age_band", "30-44", "model", 0.5),  # too unsure to count: stays missing
                ("pose_band", "frontal", "measured", 1.0),
            )
        ]
    candidates = [
        {"ref_id": refs[0], "score": 0.72, "similarity": 0.8, "label_agreement": 0.5},
        {"ref_id": refs[1], "score": 0.65, "similarity": 0.7, "label_agreement": 1.0},
        {"ref_id": refs[2], "score": 0.60, "similarity": 0.6, "label_agreement": 1.0},
    ]

    def pair(pair_id: str, face: Face, style: str, status: str, minutes: int, **kw: Any) -> Pair:
        at = T0 + timedelta(minutes=minutes)
        return Pair(
            pair_id=pair_id,
            face_id=face.face_id,
            subject=face.subject,
            style=style,
            status=status,
            candidates=kw.pop("candidates", candidates),
            library_version=1,
            created_at=at,
            updated_at=at,
            **kw,
        )

    rows += [
        pair("p-new", faces[2], STYLE, "pending", 30),
        pair("p-mid", faces[1], STYLE, "pending", 20),
        pair("p-old", faces[0], STYLE, "pending", 10),
        pair("p-unmatched", faces[0], "pepper", "unmatched", 15, candidates=[]),
        pair(
            "p-auto",
            faces[1],
            "pepper",
            "approved",
            5,
            candidates=[],
            ref_id=refs[4],
            score=0.9,
            decided_by="auto",
            decided_at=T0,
        ),
    ]
    with Session(engine, expire_on_commit=False) as session:
        for row in rows:  # one by one: parents before children, whatever the mapper's order
            session.add(row)
            session.flush()
        session.commit()
    return Seeded(engine, faces, refs, ["p-old", "p-mid", "p-new"], "p-auto", "p-unmatched")


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Seeded]:
    data = seed(tmp_path)
    yield data
    data.engine.dispose()


@pytest.fixture
def store(seeded: Seeded) -> ReviewStore:
    return ReviewStore(seeded.engine, min_model_confidence=0.85)


def _pair(engine: Engine, pair_id: str) -> Pair:
    with Session(engine) as session:
        row = session.get(Pair, pair_id)
        if row is None:
            raise LookupError(pair_id)
        return row


def _decisions(engine: Engine, pair_id: str | None = None) -> list[ReviewDecision]:
    statement = select(ReviewDecision).order_by(col(ReviewDecision.id))
    if pair_id is not None:
        statement = statement.where(col(ReviewDecision.pair_id) == pair_id)
    with Session(engine) as session:
        return list(session.exec(statement).all())


def _human_labels(engine: Engine, face_id: str) -> dict[str, tuple[str, float]]:
    statement = select(Label).where(col(Label.face_id) == face_id, col(Label.source) == "human")
    with Session(engine) as session:
        return {row.name: (row.value, row.confidence) for row in session.exec(statement)}


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=value.tzinfo or UTC)


# -- reads --------------------------------------------------------------------------------


def test_queue_lists_pending_pairs_oldest_first(store: ReviewStore, seeded: Seeded) -> None:
    queue = store.queue()
    assert [item.pair_id for item in queue] == seeded.pending
    assert {item.status for item in queue} == {"pending"}
    assert [item.candidates for item in queue] == [3, 3, 3]
    assert [item.pair_id for item in store.queue(limit=2)] == seeded.pending[:2]
    assert store.waiting() == 3


def test_queue_takes_unmatched_pairs_only_when_asked(store: ReviewStore, seeded: Seeded) -> None:
    queue = [item.pair_id for item in store.queue(include_unmatched=True)]
    assert queue == ["p-old", seeded.unmatched, "p-mid", "p-new"]
    assert seeded.approved not in queue
    assert store.waiting(include_unmatched=True) == 4


def test_item_shows_crop_resolved_labels_and_attributed_candidates(
    store: ReviewStore, seeded: Seeded
) -> None:
    item = store.item("p-old")
    assert item.crop == seeded.faces[0].crop_256
    assert item.suggested_ref_id == seeded.refs[0]
    labels = {label.name: label for label in item.labels}
    # A declared value outranks a confident model guess; an unsure guess leaves a gap.
    assert (labels["gender"].value, labels["gender"].source) == ("female", "declared")
    assert [s[0] for s in labels["gender"].sources] == ["declared", "model"]
    assert labels["age_band"].missing
    assert labels["age_band"].learnable
    assert labels["pose_band"].value == "frontal"
    assert not labels["pose_band"].learnable
    assert labels["glasses"].allowed == ("no", "yes")

    assert [c.ref_id for c in item.candidates] == seeded.refs[:3]
    assert [c.rank for c in item.candidates] == [1, 2, 3]
    second = item.candidates[1]
    assert second.ref is not None
    assert second.ref.author.startswith("Deji")
    assert second.ref.license == "MIT/Expat"
    assert [c.approvable(item.style) for c in item.candidates] == [True, True, False]
    payload = item.to_json()
    assert payload["candidates"][1]["ref"]["author"] == second.ref.author
    assert payload["labels"][0]["name"] == "age_band"
    assert (payload["face"]["flag"], payload["face"]["flag_detail"]) == (None, None)


def test_item_shows_why_a_face_is_flagged(store: ReviewStore, seeded: Seeded) -> None:
    face = store.item("p-mid").to_json()["face"]  # the pair of faces[1]
    assert face["flag"] == "identity_mismatch"
    assert face["flag_detail"].startswith("identity distance 0.61")


def test_missing_pair_is_not_found(store: ReviewStore) -> None:
    with pytest.raises(NotFound, match="no pair 'nope'"):
        store.item("nope")
    with pytest.raises(NotFound):
        store.decide("nope", "alice", "reject")


def test_blob_known_only_for_crops_and_reference_images(store: ReviewStore, seeded: Seeded) -> None:
    assert store.blob_known(seeded.faces[1].crop_256)
    assert store.blob_known(store.item("p-old").candidates[0].ref.training)  # type: ignore[union-attr]
    assert not store.blob_known("0" * 64)


# -- decisions ----------------------------------------------------------------------------


def test_pick_approves_the_chosen_candidate_and_records_who(
    store: ReviewStore, seeded: Seeded
) -> None:
    seen = store.item("p-old").updated_at
    pair = store.decide("p-old", "alice", "pick", ref_id=seeded.refs[1], seen_updated_at=seen)
    stored = _pair(seeded.engine, "p-old")
    for row in (pair, stored):
        assert (row.status, row.ref_id, row.score) == ("approved", seeded.refs[1], 0.65)
        assert row.decided_by == "human:alice"
    assert _utc(stored.decided_at) == _utc(stored.updated_at) == pair.updated_at
    assert pair.updated_at > seen

    [decision] = _decisions(seeded.engine, "p-old")
    assert (decision.actor, decision.action, decision.ref_id) == ("alice", "pick", seeded.refs[1])
    assert decision.face_id == seeded.faces[0].face_id
    assert decision.detail["previous"]["status"] == "pending"
    assert _utc(decision.decided_at) == pair.updated_at


def test_approve_without_a_reference_takes_the_suggestion(
    store: ReviewStore, seeded: Seeded
) -> None:
    store.decide("p-mid", "bob", "approve")
    stored = _pair(seeded.engine, "p-mid")
    assert (stored.status, stored.ref_id, stored.score) == ("approved", seeded.refs[0], 0.72)
    assert _decisions(seeded.engine, "p-mid")[0].ref_id == seeded.refs[0]
    assert [item.pair_id for item in store.queue()] == ["p-old", "p-new"]


def test_reject_leaves_the_pair_without_a_reference(store: ReviewStore, seeded: Seeded) -> None:
    store.decide("p-new", "alice", "reject")
    stored = _pair(seeded.engine, "p-new")
    assert (stored.status, stored.ref_id, stored.score) == ("rejected", None, None)
    assert stored.decided_by == "human:alice"
    [decision] = _decisions(seeded.engine, "p-new")
    assert (decision.action, decision.ref_id) == ("reject", None)
    assert decision.detail["previous"] == {
        "status": "pending",
        "ref_id": None,
        "score": None,
        "decided_by": None,
    }


def test_relabel_upserts_one_human_label_and_keeps_the_pair(
    store: ReviewStore, seeded: Seeded
) -> None:
    face = seeded.faces[0].face_id
    before = _pair(seeded.engine, "p-old")
    store.decide("p-old", "alice", "relabel", labels={"glasses": "Yes", "age_band": "18-29"})
    store.decide("p-old", "bob", "relabel", labels={"glasses": "no"})
    assert _human_labels(seeded.engine, face) == {
        "glasses": ("no", 1.0),
        "age_band": ("18-29", 1.0),
    }
    after = _pair(seeded.engine, "p-old")
    assert (after.status, after.decided_by, after.updated_at) == (
        "pending",
        None,
        before.updated_at,
    )

    labels = {label.name: label for label in store.item("p-old").labels}
    assert (labels["glasses"].value, labels["glasses"].source) == ("no", "human")
    assert not labels["age_band"].missing
    first, second = _decisions(seeded.engine, "p-old")
    assert first.action == second.action == "relabel"
    assert first.detail["labels"]["age_band"] == {"from": None, "from_source": None, "to": "18-29"}
    assert second.detail["labels"]["glasses"] == {"from": "yes", "from_source": "human", "to": "no"}


def test_labels_ride_along_with_a_decision_in_one_transaction(
    store: ReviewStore, seeded: Seeded
) -> None:
    with pytest.raises(InvalidDecision, match="not a value of glasses"):
        store.decide("p-old", "alice", "approve", labels={"gender": "male", "glasses": "maybe"})
    assert _pair(seeded.engine, "p-old").status == "pending"
    assert _human_labels(seeded.engine, seeded.faces[0].face_id) == {}
    assert _decisions(seeded.engine) == []

    store.decide("p-old", "alice", "reject", labels={"gender": "male"})
    assert _pair(seeded.engine, "p-old").status == "rejected"
    assert _human_labels(seeded.engine, seeded.faces[0].face_id) == {"gender": ("male", 1.0)}
    labels = {label.name: label for label in store.item("p-old").labels}
    assert (labels["gender"].value, labels["gender"].source) == ("male", "human")


def test_a_stale_decision_conflicts_and_names_who_decided(
    store: ReviewStore, seeded: Seeded
) -> None:
    seen = store.item("p-old").updated_at
    store.decide("p-old", "bob", "approve", seen_updated_at=seen)
    with pytest.raises(Conflict, match=r"approved by human:bob") as caught:
        store.decide("p-old", "alice", "reject", seen_updated_at=seen)
    assert isinstance(caught.value, ReviewError)
    stored = _pair(seeded.engine, "p-old")
    assert (stored.status, stored.decided_by) == ("approved", "human:bob")
    assert [d.actor for d in _decisions(seeded.engine, "p-old")] == ["bob"]

    # With what the page shows now, the reviewer may change the decision.
    fresh = store.item("p-old").updated_at
    store.decide("p-old", "alice", "reject", seen_updated_at=fresh)
    assert _pair(seeded.engine, "p-old").decided_by == "human:alice"


def test_references_outside_the_candidates_are_refused_unless_active_of_the_style(
    store: ReviewStore, seeded: Seeded
) -> None:
    refs = seeded.refs
    with pytest.raises(InvalidDecision, match="is of style 'pepper'"):
        store.decide("p-old", "alice", "pick", ref_id=refs[4])
    with pytest.raises(InvalidDecision, match="does not exist"):
        store.decide("p-old", "alice", "pick", ref_id="ref-none")
    with pytest.raises(InvalidDecision, match="quarantined"):
        store.decide("p-old", "alice", "pick", ref_id=refs[2])
    assert _decisions(seeded.engine) == []

    store.decide("p-old", "alice", "pick", ref_id=refs[3])
    stored = _pair(seeded.engine, "p-old")
    assert (stored.status, stored.ref_id, stored.score) == ("approved", refs[3], None)
    # The chosen reference is shown with the candidates from now on.
    assert store.item("p-old").candidates[-1].ref_id == refs[3]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"hair": "red"}, "unknown label 'hair'"),
        ({"glasses": "maybe"}, "not a value of glasses"),
        ({"age_band": "unknown"}, "not a value of age_band"),
        ({"gender": 1}, "string values"),
    ],
)
def test_labels_outside_the_vocabulary_are_refused(
    store: ReviewStore, seeded: Seeded, labels: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidDecision, match=message):
        store.decide("p-old", "alice", "relabel", labels=labels)
    assert _human_labels(seeded.engine, seeded.faces[0].face_id) == {}


@pytest.mark.parametrize(
    ("action", "kwargs", "message"),
    [
        ("merge", {}, "unknown action 'merge'"),
        ("pick", {}, "pick needs the ref_id"),
        ("reject", {"ref_id": "ref-0"}, "reject takes no ref_id"),
        ("relabel", {}, "relabel needs labels"),
    ],
)
def test_malformed_decisions_are_refused(
    store: ReviewStore, seeded: Seeded, action: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidDecision, match=message):
        store.decide("p-old", "alice", action, **kwargs)
    assert _decisions(seeded.engine) == []


def test_a_reviewer_needs_a_name(store: ReviewStore) -> None:
    with pytest.raises(InvalidDecision, match="reviewer name"):
        store.decide("p-old", "  ", "reject")


def test_an_unmatched_pair_has_nothing_to_approve_by_default(
    store: ReviewStore, seeded: Seeded
) -> None:
    with pytest.raises(InvalidDecision, match="no candidate to approve"):
        store.decide(seeded.unmatched, "alice", "approve")
    store.decide(seeded.unmatched, "alice", "approve", ref_id=seeded.refs[4])
    assert _pair(seeded.engine, seeded.unmatched).status == "approved"


# -- announcements (the outbox) -----------------------------------------------------------


def _queued(engine: Engine) -> list[tuple[str, bytes | None, PairRecord]]:
    return [
        (row.topic, row.key, PairRecord.from_bytes(row.value)) for row in outbox.pending(engine)
    ]


def test_each_decision_that_changes_a_pair_queues_exactly_one_pairs_record(
    store: ReviewStore, seeded: Seeded
) -> None:
    from agents.pairing.store import record_of

    picked = store.decide("p-old", "alice", "pick", ref_id=seeded.refs[1])
    store.decide("p-old", "alice", "relabel", labels={"glasses": "yes"})  # pair unchanged
    rejected = store.decide("p-mid", "bob", "reject")

    queued = _queued(seeded.engine)
    assert [(topic, key) for topic, key, _ in queued] == [
        ("pairs", seeded.faces[0].subject.encode()),
        ("pairs", seeded.faces[1].subject.encode()),
    ]
    # The record the pairs agent would publish for the pair as committed.
    assert [record for _, _, record in queued] == [record_of(picked), record_of(rejected)]
    assert queued[0][2].status == "approved"
    assert queued[0][2].at == _utc(_pair(seeded.engine, "p-old").updated_at)


def test_a_refused_decision_queues_nothing(store: ReviewStore, seeded: Seeded) -> None:
    seen = store.item("p-old").updated_at
    store.decide("p-old", "bob", "approve", seen_updated_at=seen)
    with pytest.raises(Conflict):
        store.decide("p-old", "alice", "reject", seen_updated_at=seen)
    with pytest.raises(InvalidDecision):
        store.decide("p-mid", "alice", "pick", ref_id=seeded.refs[2])  # quarantined

    assert [record.decided_by for _, _, record in _queued(seeded.engine)] == ["human:bob"]


def test_a_crash_inside_the_decision_leaves_neither_the_decision_nor_its_record(
    store: ReviewStore, seeded: Seeded
) -> None:
    """The outbox row is the transaction's last write: when it fails (here a trigger
    aborts it, as a full disk or a lost connection would), the whole decision is undone."""
    with seeded.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER no_outbox BEFORE INSERT ON outbox "
            "BEGIN SELECT RAISE(ABORT, 'outbox write failed'); END"
        )
    before = _pair(seeded.engine, "p-old")

    with pytest.raises(StorageError, match="outbox write failed"):
        store.decide("p-old", "alice", "approve", labels={"glasses": "yes"})

    after = _pair(seeded.engine, "p-old")
    assert (after.status, after.decided_by, after.updated_at) == (
        before.status,
        before.decided_by,
        before.updated_at,
    )
    assert _decisions(seeded.engine, "p-old") == []
    assert _human_labels(seeded.engine, seeded.faces[0].face_id) == {}
    assert outbox.pending(seeded.engine) == []
