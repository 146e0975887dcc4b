"""Pairing on real parts: faces ingested by the real pipeline, a real reference library
(edge index versions), SQL on SQLite and PostgreSQL.

The faces are London-set photos published with their subjects' declared age and gender
(``tests/data/london_info.csv``). The anime references carry human labels given when they
are added; two Pepper&Carrot references are labelled ``glasses=yes`` only so that the
glasses filter has something to select.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, col, select, update

from agents.pairing.imports import ImportRefused, import_pairs
from agents.pairing.pairer import Pairer
from agents.pairing.store import PairStore, pair_id_for
from agents.pipeline import Incoming, IngestPipeline
from agents.references.geometry import parse_landmarks
from agents.references.library import RefLibrary, read_sources
from agents.review.store import ReviewStore
from agents.stages.detect import MtcnnDetector
from agents.stages.embed import InceptionEmbedder
from agents.stores.db import create_engine_for
from schemas.pairs import FaceAccepted, PairStatus
from schemas.settings import Settings
from schemas.tables import Face, Label, Pair
from schemas.uploads import Consent, DeclaredAttributes, ImagePayload, UploadEvent

DATA = Path(__file__).parents[1] / "data"
ANIME = DATA / "anime"
REAL = DATA / "real"

#: photo, declared age, gender, glasses
FACES = {
    "london_001_neutral.jpg": (24, "female", False),
    "london_004_neutral.jpg": (30, "male", False),
    "london_013_neutral.jpg": (26, "female", True),
    "london_007_neutral.jpg": (21, "female", None),
}
RENPY = sorted(ANIME.glob("renpy_*_face.png"))
PC_GLASSES = [ANIME / "pc_chaosah_pepper_face.jpg", ANIME / "pc_pepper2015_face.jpg"]
PC_OTHERS = [
    ANIME / "pc_modelsheet_front_face.jpg",
    ANIME / "pc_modelsheet_threequarter_face.jpg",
    ANIME / "pc_modelsheet_closeup_happy_face.jpg",
    ANIME / "pc_chaosah_cayenne_face.jpg",
]


@dataclass
class World:
    settings: Settings
    pipeline: IngestPipeline
    library: RefLibrary
    store: PairStore
    pairer: Pairer
    faces: dict[str, FaceAccepted]
    """photo name -> its face event"""

    def pair(self, photo: str, style: str) -> Pair:
        with Session(create_engine_for(self.settings.sql_url)) as session:
            pair = session.get(Pair, pair_id_for(self.faces[photo].face_id, style))
        assert pair is not None, f"no {style} pair for {photo}"
        return pair


def _event(name: str, subject: str, age: int, gender: str, glasses: bool | None) -> UploadEvent:
    now = datetime.now(UTC)
    return UploadEvent(
        upload_id=f"u-{uuid.uuid4().hex[:12]}",
        subject_id=subject,
        consent=Consent(version="1", scopes=["training"], granted_at=now - timedelta(days=1)),
        image=ImagePayload(data=(REAL / name).read_bytes()),
        attributes=DeclaredAttributes(age=age, gender=gender, glasses=glasses),
        submitted_at=now,
    )


@pytest.fixture
def world(
    sql_url: str, tmp_path: Path, detector: MtcnnDetector, embedder: InceptionEmbedder
) -> Iterator[World]:
    settings = Settings(home=tmp_path / "home", database_url=sql_url)
    # The session's models: loading them again for every test would only cost time.
    pipeline = IngestPipeline.build(settings, detector=detector, embedder=embedder)
    events = {
        name: _event(name, f"subject-{i}", *attributes)
        for i, (name, attributes) in enumerate(FACES.items())
    }
    outcomes = pipeline.run([Incoming(event.to_bytes()) for event in events.values()])
    faces = {}
    for name, outcome in zip(events, outcomes, strict=True):
        assert outcome.face is not None, f"{name} was not accepted: {outcome.rejection}"
        faces[name] = FaceAccepted(
            face_id=outcome.face.face_id,
            upload_id=outcome.upload_id,
            subject=outcome.face.subject,
            accepted_at=outcome.face.created_at,
        )
    library = RefLibrary(settings, embedder=embedder)
    sources = read_sources(DATA / "SOURCES.csv")
    young = {"gender": "female", "age_band": "18-29"}
    library.add(RENPY, style="renpy", labels=young, sources=sources)
    library.add(PC_OTHERS, style="pc", labels={"gender": "female"}, sources=sources)
    library.add(PC_GLASSES, style="pc", labels={"glasses": "yes"}, sources=sources)
    store = PairStore(create_engine_for(settings.sql_url))
    pairer = Pairer(settings, store, pipeline.store.index)
    yield World(settings, pipeline, library, store, pairer, faces)
    pairer.close()
    pipeline.close()


def test_every_face_gets_a_pair_per_style_that_obeys_the_filters(world: World) -> None:
    records = world.pairer.run(list(world.faces.values()))

    assert len(records) == len(world.faces) * 2
    version = world.library.current_version()
    glasses_refs = {
        ref.ref_id
        for ref in world.library.list(style="pc", status="active")
        if any(label.name == "glasses" for label in world.library.labels_of(ref.ref_id))
    }
    assert len(glasses_refs) == len(PC_GLASSES)
    for photo, (_, _, glasses) in FACES.items():
        for style in ("renpy", "pc"):
            pair = world.pair(photo, style)
            assert pair.library_version == version
            if style == "renpy" and glasses is True:
                # No renpy reference is drawn with glasses: the face waits, unmatched, for
                # the library to grow rather than being paired with a glasses-free drawing.
                assert pair.status == PairStatus.UNMATCHED
                assert pair.candidates == []
                continue
            assert pair.candidates, f"{photo} has no {style} candidates"
            refs = {ref.ref_id: ref for ref in world.library.list(style=style)}
            # Every candidate is an active reference of the pair's style...
            assert all(refs[c["ref_id"]].status == "active" for c in pair.candidates)
            if style == "pc" and glasses is True:
                # ...and a face with glasses only meets references drawn with glasses.
                assert {c["ref_id"] for c in pair.candidates} <= glasses_refs
            if style == "pc" and glasses is False:
                assert not {c["ref_id"] for c in pair.candidates} & glasses_refs


def test_confident_pairs_are_approved_and_the_rest_wait_for_review(world: World) -> None:
    world.pairer.run(list(world.faces.values()))

    # A young woman and the young-woman renpy references agree on every shared label.
    young = world.pair("london_001_neutral.jpg", "renpy")
    assert young.status == PairStatus.APPROVED
    assert young.decided_by == "auto"
    assert young.score is not None
    assert young.score >= world.settings.pairing.auto_approve
    # A man does not: his pair waits for a person, with its candidates.
    man = world.pair("london_004_neutral.jpg", "renpy")
    assert man.status == PairStatus.PENDING
    assert man.decided_by is None
    assert man.ref_id == man.candidates[0]["ref_id"]
    queue = ReviewStore(create_engine_for(world.settings.sql_url)).queue()
    assert man.pair_id in {item.pair_id for item in queue}
    assert young.pair_id not in {item.pair_id for item in queue}


def test_a_flagged_face_waits_for_review_even_when_it_matches_well(world: World) -> None:
    # london_001 pairs automatically when unflagged (the test above); flag it as ingestion
    # does for a face that is not the person of the subject's earlier faces.
    face = world.faces["london_001_neutral.jpg"]
    with create_engine_for(world.settings.sql_url).begin() as connection:
        connection.execute(
            update(Face)
            .where(col(Face.face_id) == face.face_id)
            .values(flag="identity_mismatch", flag_detail="identity distance 0.52")
        )
    world.pairer.run([face])

    pair = world.pair("london_001_neutral.jpg", "renpy")
    assert pair.status == PairStatus.PENDING
    assert pair.score is not None
    assert pair.score >= world.settings.pairing.auto_approve
    item = ReviewStore(create_engine_for(world.settings.sql_url)).item(pair.pair_id)
    assert item.to_json()["face"]["flag"] == "identity_mismatch"


def test_redelivery_changes_nothing_and_resends_the_records(world: World) -> None:
    first = world.pairer.run(list(world.faces.values()))
    before = {p.pair_id: p.model_dump() for p in world.store.list_pairs()}

    again = world.pairer.run(list(world.faces.values()))

    after = {p.pair_id: p.model_dump() for p in world.store.list_pairs()}
    assert after == before
    assert sorted(r.pair_id for r in again) == sorted(r.pair_id for r in first)


def test_a_new_library_version_rematches_but_never_overrides_a_person(world: World) -> None:
    world.pairer.run(list(world.faces.values()))
    man = world.pair("london_004_neutral.jpg", "renpy")
    reviewer = ReviewStore(create_engine_for(world.settings.sql_url))
    chosen = man.candidates[-1]["ref_id"]
    reviewer.decide(man.pair_id, "alice", "pick", ref_id=chosen, seen_updated_at=man.updated_at)
    old_version = world.library.current_version()
    outcomes = world.library.add(
        [ANIME / "pc_modelsheet_closeup_surprised_face.jpg"],
        style="pc",
        labels={"gender": "female"},
        sources=read_sources(DATA / "SOURCES.csv"),
    )
    assert outcomes[0].outcome in ("added", "quarantined")
    new_version = world.library.current_version()
    assert new_version is not None
    assert old_version is not None
    assert new_version > old_version

    world.pairer.run(list(world.faces.values()))

    decided = world.pair("london_004_neutral.jpg", "renpy")
    assert decided.decided_by == "human:alice"
    assert decided.ref_id == chosen
    assert decided.library_version == old_version
    rematched = world.pair("london_001_neutral.jpg", "pc")
    assert rematched.library_version == new_version


def test_import_writes_hand_made_pairs_and_refuses_a_bad_file_whole(
    world: World, tmp_path: Path
) -> None:
    world.pairer.run(list(world.faces.values()))
    ref = world.library.list(style="pc", status="active")[0]
    face = world.faces["london_007_neutral.jpg"]
    good = tmp_path / "good.csv"
    good.write_text(f"upload_id,ref_id\n{face.upload_id},{ref.ref_id}\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"face_id,ref_id\n{face.face_id},{ref.ref_id}\nno-such-face,{ref.ref_id}\n")

    with pytest.raises(ImportRefused, match="line 3: no stored face"):
        import_pairs(world.store, bad)
    assert world.pair("london_007_neutral.jpg", "pc").decided_by in (None, "auto")

    result = import_pairs(world.store, good)

    assert result.written == 1
    pair = world.pair("london_007_neutral.jpg", "pc")
    assert (pair.status, pair.ref_id, pair.decided_by) == (
        "approved",
        ref.ref_id,
        "import:good.csv",
    )
    assert import_pairs(world.store, good).written == 0  # the same file again: no change


def test_pairs_carry_no_raw_subject_id(world: World) -> None:
    world.pairer.run(list(world.faces.values()))
    with Session(create_engine_for(world.settings.sql_url)) as session:
        subjects = {pair.subject for pair in session.exec(select(Pair)).all()}
        faces = {face.subject for face in session.exec(select(Face)).all()}
        labels = session.exec(select(Label)).all()
    assert subjects == faces
    assert not any(subject.startswith("subject-") for subject in subjects)
    assert labels  # declared and measured labels arrived with the faces


def test_faces_with_equal_labels_spread_over_equally_good_references(world: World) -> None:
    world.pairer.run(list(world.faces.values()))

    # Both young women agree on every shared label with every renpy reference (all are
    # labelled young women, none with an expression or hair colour): equally good, so the
    # usage penalty sends the second to another reference than the first.
    first = world.pair("london_001_neutral.jpg", "renpy")
    second = world.pair("london_007_neutral.jpg", "renpy")
    assert first.status == second.status == PairStatus.APPROVED
    assert first.ref_id is not None
    assert second.ref_id is not None
    assert first.ref_id != second.ref_id
    # Every renpy pair (the man's pending one too) uses a reference of its own.
    usage = world.store.usage(["renpy"])
    assert {("renpy", first.ref_id), ("renpy", second.ref_id)} <= set(usage)
    assert set(usage.values()) == {1}


def test_faces_carry_measured_expression_and_hair_colour(world: World) -> None:
    with Session(create_engine_for(world.settings.sql_url)) as session:
        labels = session.exec(select(Label).where(Label.source == "measured")).all()
    names = {(label.face_id, label.name): label.value for label in labels}
    face = world.faces["london_001_neutral.jpg"].face_id
    assert names[(face, "expression")] == "neutral"
    assert names[(face, "hair_colour")] == "brown"


def test_painted_references_are_aligned_and_cel_ones_keep_their_square(world: World) -> None:
    pc = world.library.list(style="pc")
    renpy = world.library.list(style="renpy")
    # MTCNN finds the painted faces (the pairs then train on the selfies' geometry)...
    assert {r.landmarks_source for r in pc} == {"mtcnn"}
    assert all(r.landmarks is not None and len(r.landmarks) == 5 for r in pc)
    # ...and none of the cel-style ones: they keep today's padded square.
    assert {r.landmarks_source for r in renpy} == {None}


def test_a_person_may_give_a_references_landmarks(world: World) -> None:
    points = "120,140,200,138,160,190,130,230,192,228"
    outcomes = world.library.add(
        [ANIME / "renpy_eileen_happy_sprite_rgba.png"],
        style="renpy",
        sources=read_sources(DATA / "SOURCES.csv"),
        landmarks=parse_landmarks(points),
    )
    assert outcomes[0].ref_id is not None
    ref = world.library.get(outcomes[0].ref_id)
    assert ref is not None
    assert ref.landmarks_source == "human"
    assert ref.landmarks == [
        [120.0, 140.0],
        [200.0, 138.0],
        [160.0, 190.0],
        [130.0, 230.0],
        [192.0, 228.0],
    ]
