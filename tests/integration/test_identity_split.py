"""One person under two subject ids lands in one split: real London photos through the real
pipeline (dlib's descriptor links the two ids), the real reference library and pairer, and
the real snapshot, for every split seed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agents.pairing.pairer import Pairer
from agents.pairing.store import PairStore
from agents.pipeline import Incoming, IngestPipeline
from agents.references.library import RefLibrary, read_sources
from agents.stores.db import create_engine_for
from schemas.pairs import FaceAccepted, PairStatus
from schemas.settings import Settings
from schemas.uploads import Consent, ImagePayload, UploadEvent
from trainer.dataset import create_snapshot, read_manifest

DATA = Path(__file__).parents[1] / "data"
REAL = DATA / "real"

#: photo -> subject id: london_001's neutral and smiling photos under two ids (an app
#: account and a second one), four other people under their own.
SUBJECTS = {
    "london_001_neutral.jpg": "app-account-1",
    "london_001_smiling.jpg": "second-account-1",
    "london_004_neutral.jpg": "person-4",
    "london_007_neutral.jpg": "person-7",
    "london_013_neutral.jpg": "person-13",
    "london_016_neutral.jpg": "person-16",
}


def _event(photo: str, subject: str) -> UploadEvent:
    now = datetime.now(UTC)
    return UploadEvent(
        upload_id=f"u-{uuid.uuid4().hex[:12]}",
        subject_id=subject,
        consent=Consent(version="1", scopes=["training"], granted_at=now - timedelta(days=1)),
        image=ImagePayload(data=(REAL / photo).read_bytes()),
        submitted_at=now,
    )


def test_one_person_under_two_subject_ids_lands_in_one_split(tmp_path: Path) -> None:
    # Every pair approved, half the people to validation: a split that ignored identity
    # would part the two ids for some seeds.
    settings = Settings(
        home=tmp_path / "home",
        pairing={"auto_approve": 0.0},
        dataset={"validation_fraction": 0.5},
    )
    pipeline = IngestPipeline.build(settings)
    try:
        outcomes = pipeline.run([Incoming(_event(p, s).to_bytes()) for p, s in SUBJECTS.items()])
        faces = {}
        for photo, outcome in zip(SUBJECTS, outcomes, strict=True):
            assert outcome.face is not None, f"{photo}: {outcome.rejection}"
            faces[photo] = outcome.face
        library = RefLibrary(settings, embedder=pipeline.embedder)
        library.add(
            sorted((DATA / "anime").glob("renpy_*_face.png")),
            style="renpy",
            sources=read_sources(DATA / "SOURCES.csv"),
        )
        pairer = Pairer(
            settings, PairStore(create_engine_for(settings.sql_url)), pipeline.store.index
        )
        try:
            records = pairer.run(
                [
                    FaceAccepted(
                        face_id=face.face_id,
                        upload_id=face.upload_id,
                        subject=face.subject,
                        accepted_at=face.created_at,
                    )
                    for face in faces.values()
                ]
            )
        finally:
            pairer.close()
    finally:
        pipeline.close()
    assert {r.status for r in records} == {PairStatus.APPROVED}

    first, second = faces["london_001_neutral.jpg"], faces["london_001_smiling.jpg"]
    assert first.subject != second.subject  # two pseudonyms...
    engine = create_engine_for(settings.sql_url)
    splits_seen = set()
    for seed in range(6):
        seeded = settings.model_copy(
            update={"dataset": settings.dataset.model_copy(update={"seed": seed})}
        )
        manifest = read_manifest(settings.dataset_dir, create_snapshot(engine, seeded).snapshot_id)
        by_subject = {r.subject: r for r in manifest.records}
        # ...one person: one identity group, one split, whatever the seed.
        assert by_subject[first.subject].identity == by_subject[second.subject].identity
        assert by_subject[first.subject].split == by_subject[second.subject].split
        assert manifest.summary.merged_subjects == 2
        assert manifest.summary.identity_groups == len(SUBJECTS) - 1
        splits_seen.add(by_subject[first.subject].split)
    # The seeds did move the pair between splits: the test could have caught a leak.
    assert splits_seen == {"train", "validation"}
