"""Label heads: they learn what is learnable, report chance on noise, are scored on
subjects they never trained on, survive a save and load, and ``s2a labels train|stats``
run on a real SQLite file and Qdrant local store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cli_runner import run_s2a
from click.testing import CliRunner
from records import valid_upload
from sqlalchemy import insert

from agents.labelheads import (
    HeadsMissing,
    HeadsUnreadable,
    LabelHeads,
    heads_path,
    model_labels,
)
from agents.records import EmbeddingSpace, ValidUpload
from agents.stores.db import create_engine_for
from agents.stores.faces import FACE_VECTOR, FaceIndex
from agents.stores.repository import Repository
from infra.cli import cli
from schemas.labels import LEARNABLE, check
from schemas.migrate import upgrade
from schemas.settings import Settings
from schemas.tables import Face, Label
from trainer.errors import NotEnoughLabels
from trainer.labels.heads import FOLDS, MIN_EXAMPLES, _untrusted, subject_folds, train_heads

DIM = 512
AGES = ("18-29", "30-44", "45-59", "60+")


def _clusters(
    n: int, classes: Sequence[str], spread: float, seed: int
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Unit vectors around one random centre per class; ``spread`` is the noise's norm
    relative to the centre's (1.0: as much noise as signal)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, len(classes), n)
    x = centres[which] + spread * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [classes[i] for i in which]


@pytest.fixture(scope="module")
def ages() -> tuple[npt.NDArray[np.float32], list[str], LabelHeads]:
    x, y = _clusters(1200, AGES, spread=1.0, seed=1)
    return x, y, train_heads(x[:1000], {"age_band": y[:1000]}, seed=0)


def test_heads_learn_separable_classes(
    ages: tuple[npt.NDArray[np.float32], list[str], LabelHeads],
) -> None:
    x, y, heads = ages
    m = heads.metrics["age_band"]
    assert m["classes"] == list(AGES)
    # Every row scored once, out of fold; the shipped head learned all of them.
    assert (m["train"], m["held_out"], m["subjects"], m["folds"]) == (1000, 1000, 1000, FOLDS)
    assert m["accuracy"] >= 0.95
    assert m["subject_accuracy"] >= 0.95
    assert m["balanced_accuracy"] >= 0.95
    assert m["chance"] < 0.35
    # Faces the heads never saw, from the same clusters.
    guesses = [row["age_band"][0] for row in heads.predict(x[1000:])]
    assert np.mean([g == t for g, t in zip(guesses, y[1000:], strict=True)]) >= 0.95


def test_shuffled_labels_score_chance_and_are_not_shipped() -> None:
    x, y = _clusters(1000, ("female", "male"), spread=1.0, seed=2)
    shuffled = [{"female": "no", "male": "yes"}[v] for v in np.random.default_rng(3).permutation(y)]
    heads = train_heads(x, {"gender": y, "glasses": shuffled})
    m = heads.metrics["glasses"]
    # 1000 held-out rows: chance is 0.5 +- 0.016 (one standard error).
    assert 0.44 <= m["balanced_accuracy"] <= 0.56
    # Calibrated on held-out rows, the head knows it knows nothing: no guess would pass
    # the default min_model_confidence (0.85), so it is scored but not shipped.
    assert m["threshold"] == 0.85
    assert (m["confident_share"], m["confident_accuracy"]) == (0.0, None)
    assert m["skipped"].startswith("not shipped: out of fold, none of its guesses reached 0.85")
    assert heads.names == ("gender",)
    # The learnable head's confident guesses are shown right often enough to ship.
    g = heads.metrics["gender"]
    assert g["confident_accuracy"] >= 0.95
    assert "skipped" not in g


def test_a_head_whose_sure_guesses_are_not_shown_right_is_not_shipped() -> None:
    # Few confident guesses: 10 of 10 right cannot show 85 % (0.85**10 = 0.20 > 0.05).
    scores = {"held_out": 100, "confident_share": 0.1, "confident_accuracy": 1.0}
    assert "10 of its 10 guesses" in (_untrusted(scores, 0.85) or "")
    scores = {"held_out": 100, "confident_share": 0.19, "confident_accuracy": 1.0}
    assert _untrusted(scores, 0.85) is None  # 0.85**19 = 0.046
    scores = {"held_out": 1000, "confident_share": 0.5, "confident_accuracy": 0.86}
    assert "430 of its 500" in (_untrusted(scores, 0.85) or "")


def test_class_balance_keeps_a_rare_value_visible() -> None:
    # 1 in 10 wear glasses; an unweighted fit would lean on "no". Balanced accuracy
    # stays close to accuracy.
    rng = np.random.default_rng(4)
    x, y = _clusters(1000, ("no", "yes"), spread=1.5, seed=5)
    keep = [i for i, v in enumerate(y) if v == "no" or rng.random() < 0.1]
    heads = train_heads(x[keep], {"glasses": [y[i] for i in keep]})
    m = heads.metrics["glasses"]
    assert m["counts"]["yes"] < m["counts"]["no"] / 5
    assert m["balanced_accuracy"] >= 0.9


def test_subject_folds_keep_every_subject_on_one_side() -> None:
    # 60 subjects with 1 to 4 faces each, a value per subject (gender-like) on some and a
    # value per face (expression-like) on others: one subject's faces never straddle a fold.
    rng = np.random.default_rng(12)
    subjects = [f"s{i}" for i in range(60) for _ in range(int(rng.integers(1, 5)))]
    per_subject = {s: int(rng.integers(0, 3)) for s in set(subjects)}
    per_face = rng.integers(0, 3, len(subjects))
    for y in (np.array([per_subject[s] for s in subjects]), per_face):
        for seed in range(5):
            fold = subject_folds(y.astype(np.int64), subjects, FOLDS, seed)
            assert set(fold.tolist()) == set(range(FOLDS))
            for subject in set(subjects):
                mine = {int(f) for f, s in zip(fold, subjects, strict=True) if s == subject}
                assert len(mine) == 1, (subject, mine)
    # A value's subjects spread over the folds (dealt round-robin, rarest value first).
    y = np.array([0] * 3 + [1] * 40, dtype=np.int64)
    fold = subject_folds(y, [f"s{i}" for i in range(43)], FOLDS, seed=0)
    assert len(set(fold[:3].tolist())) == 3


def test_identity_does_not_leak_into_the_held_out_score() -> None:
    # 40 people, 6 photos each; gender is a coin toss per person, unrelated to the
    # embedding except through who the person is. Held out by face, a head would recognise
    # the person and score far above chance; held out by subject, it cannot. (Glasses, a
    # direction in the embedding, is learnable either way.)
    rng = np.random.default_rng(13)
    people = rng.normal(size=(40, DIM))
    people /= np.linalg.norm(people, axis=1, keepdims=True)
    who = np.repeat(np.arange(40), 6)
    glasses = rng.choice([-1.0, 1.0], 240)
    direction = rng.normal(size=DIM) / np.sqrt(DIM)
    x = people[who] + 0.3 * rng.normal(size=(240, DIM)) / np.sqrt(DIM)
    x = x + 0.5 * glasses[:, None] * direction
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    value = rng.permutation(["female"] * 20 + ["male"] * 20)
    labels = {
        "gender": [str(value[p]) for p in who],
        "glasses": ["yes" if g > 0 else "no" for g in glasses],
    }
    by_face = train_heads(x, labels)
    by_subject = train_heads(x, labels, subjects=[f"p{p}" for p in who])
    assert by_face.metrics["gender"]["accuracy"] >= 0.9  # the leak this guards against
    assert by_face.names == ("gender", "glasses")
    m = by_subject.metrics["gender"]
    assert m["subjects"] == 40
    assert m["accuracy"] <= 0.7
    assert m["chance"] == 0.5
    assert m["skipped"].startswith("not shipped")
    assert by_subject.names == ("glasses",)
    with pytest.raises(ValueError, match="one subject per vector"):
        train_heads(x, labels, subjects=["p"] * 10)


def test_a_value_needs_three_subjects_not_three_faces() -> None:
    x, y = _clusters(60, ("neutral", "smiling"), spread=1.0, seed=14)
    expression: list[str | None] = list(y)
    expression[:4] = ["other"] * 4  # four faces, but of two subjects
    subjects = ["a", "a", "b", "b"] + [f"s{i}" for i in range(56)]
    m = train_heads(x, {"expression": expression}, subjects=subjects).metrics["expression"]
    assert m["classes"] == ["neutral", "smiling"]
    assert m["dropped"] == {"other": 4}


def test_training_is_deterministic_per_seed() -> None:
    x, y = _clusters(300, AGES, spread=3.0, seed=6)
    a = train_heads(x, {"age_band": y}, seed=7).predict(x)
    b = train_heads(x, {"age_band": y}, seed=7).predict(x)
    assert a == b


def test_save_and_load_give_identical_predictions(
    ages: tuple[npt.NDArray[np.float32], list[str], LabelHeads], tmp_path: Path
) -> None:
    x, _, heads = ages
    path = tmp_path / "models" / "heads.pt"
    heads.save(path)
    loaded = LabelHeads.load(path)
    assert loaded.predict(x) == heads.predict(x)
    assert loaded.metrics == heads.metrics
    assert loaded.names == ("age_band",)
    assert [p.name for p in path.parent.iterdir()] == ["heads.pt"]  # no temp file left


def test_load_names_the_missing_file_and_how_to_make_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "heads.pt"
    with pytest.raises(HeadsMissing) as caught:
        LabelHeads.load(path)
    assert str(path) in str(caught.value)
    assert "s2a labels train" in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


def test_load_refuses_a_file_that_is_not_heads(tmp_path: Path) -> None:
    path = tmp_path / "heads.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(HeadsUnreadable, match="s2a labels train"):
        LabelHeads.load(path)


def test_labels_without_enough_values_are_skipped_with_the_reason() -> None:
    x, y = _clusters(100, ("female", "male"), spread=1.0, seed=8)
    glasses: list[str | None] = ["no"] * 100  # one value: nothing to learn
    hair: list[str | None] = [None] * 100
    hair[:12] = ["black"] * 6 + ["brown"] * 6  # two values, too few faces
    expression: list[str | None] = ["neutral"] * 50 + ["smiling"] * 48 + ["other"] * 2
    heads = train_heads(
        x, {"gender": y, "glasses": glasses, "hair_colour": hair, "expression": expression}
    )
    # Expression is unrelated to the vectors here: scored, not shipped.
    assert heads.names == ("gender",)
    assert heads.metrics["expression"]["skipped"].startswith("not shipped")
    assert "1 value(s)" in heads.metrics["glasses"]["skipped"]
    assert heads.metrics["glasses"]["counts"] == {"no": 100}
    assert f"needs {MIN_EXAMPLES}" in heads.metrics["hair_colour"]["skipped"]
    # A value too rare to split is left out of the head, and said so.
    assert heads.metrics["expression"]["classes"] == ["neutral", "smiling"]
    assert heads.metrics["expression"]["dropped"] == {"other": 2}


def test_no_trainable_label_names_the_counts_and_the_need() -> None:
    x, _ = _clusters(10, ("a",), spread=1.0, seed=9)
    with pytest.raises(NotEnoughLabels) as caught:
        train_heads(x, {"gender": ["female", "male"] * 5})
    message = str(caught.value)
    assert "gender: 10 over 2 value(s)" in message
    assert f"at least {MIN_EXAMPLES}" in message


def test_bad_inputs_are_refused_by_name() -> None:
    x, y = _clusters(40, ("female", "male"), spread=1.0, seed=10)
    with pytest.raises(ValueError, match="not learnable"):
        train_heads(x, {"pose_band": ["frontal"] * 40})
    with pytest.raises(ValueError, match="one value"):
        train_heads(x, {"gender": y[:-1]})
    with pytest.raises(ValueError, match="not a value of gender"):
        train_heads(x, {"gender": ["woman"] * 40})
    heads = train_heads(x, {"gender": y})
    with pytest.raises(ValueError, match="trained on 512"):
        heads.predict(np.ones((1, 128), np.float32))


def test_model_labels_are_vocabulary_rows(
    ages: tuple[npt.NDArray[np.float32], list[str], LabelHeads],
) -> None:
    x, _, heads = ages
    now = datetime(2026, 1, 2, tzinfo=UTC)
    rows = model_labels(heads, x[:3], ["f-1", "f-2", "f-3"], now)
    assert [(r.face_id, r.name) for r in rows] == [
        ("f-1", "age_band"),
        ("f-2", "age_band"),
        ("f-3", "age_band"),
    ]
    for row in rows:
        assert check(row.name, row.value) == (row.name, row.value)
        assert row.source == "model"
        assert 0.25 <= row.confidence <= 1.0
        assert row.created_at == now
    with pytest.raises(ValueError, match="one id per vector"):
        model_labels(heads, x[:3], ["f-1"], now)


# -- the command line -----------------------------------------------------------------------

EMBEDDER = "inception-resnet-v1/sha256=0123456789ab"
SPACE = EmbeddingSpace(EMBEDDER, 512)


def _upload(i: int, now: datetime) -> ValidUpload:
    return valid_upload(f"u-{i}", f"{i:064x}", consent_granted_at=now, submitted_at=now)


def _face(upload: ValidUpload, embedder: str, created_at: datetime) -> Face:
    return Face(
        face_id=f"00000000-0000-0000-0000-{int(upload.upload_id[2:]):012d}",
        upload_id=upload.upload_id,
        subject=upload.subject,
        source=upload.source.value,
        detector="mtcnn",
        detection_prob=0.999,
        box=[0.0, 0.0, 100.0, 100.0],
        landmarks=[[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]],
        quality={},
        crop_256="1" * 64,
        crop_512="2" * 64,
        align={},
        embedder=embedder,
        embedder_random_init=False,
        image_width=100,
        image_height=100,
        created_at=created_at,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with 61 faces: 60 reviewed for gender (two clusters) and glasses
    (always "no"), plus an older one by another embedder; each face also has a declared
    and a measured label."""
    home = tmp_path_factory.mktemp("labels-home")
    settings = Settings(home=home)
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    repository = Repository(engine)
    index = FaceIndex.from_settings(settings, SPACE)
    x, y = _clusters(61, ("female", "male"), spread=1.0, seed=11)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    human = []
    for i in range(61):
        upload = _upload(i, start)
        embedder = "inception-resnet-v1/random-init/seed=0" if i == 0 else EMBEDDER
        face = _face(upload, embedder, start + timedelta(minutes=i))
        rows = [
            Label(
                face_id=face.face_id,
                name=name,
                value=value,
                source=source,
                confidence=confidence,
                created_at=start,
            )
            for name, value, source, confidence in (
                ("gender", y[i], "declared", 1.0),
                ("pose_band", "frontal", "measured", 0.9),
            )
        ]
        assert repository.record_accepted(upload, face, rows)
        index.upsert(face.face_id, {FACE_VECTOR: x[i], "appearance": x[i][:256]}, {})
        for name, value in (("gender", y[i]), ("glasses", "no")):
            human.append(
                {
                    "face_id": face.face_id,
                    "name": name,
                    "value": value,
                    "source": "human",
                    "confidence": 1.0,
                    "created_at": start,
                }
            )
    with engine.begin() as connection:
        connection.execute(insert(Label), human)
    index.close()
    engine.dispose()
    return home


def _invoke(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"S2A_HOME": str(home)})
    return result.exit_code, result.output


def test_cli_train_saves_heads_the_worker_can_load(home: Path) -> None:
    code, output = _invoke(home, "labels", "train", "--json")
    assert code == 0, output
    report = json.loads(output)
    path = heads_path(Settings(home=home))
    assert report["path"] == str(path)
    assert (report["faces"], report["other_embedder"], report["embedder"]) == (60, 1, EMBEDDER)
    assert report["heads"]["gender"]["accuracy"] >= 0.9
    assert "skipped" in report["heads"]["glasses"]
    heads = LabelHeads.load(path)
    assert heads.names == ("gender",)
    assert heads.embedder == EMBEDDER
    # Each face is its own subject here: 60 subjects, scored out of fold.
    assert (report["heads"]["gender"]["subjects"], report["heads"]["gender"]["folds"]) == (60, 5)
    code, output = _invoke(home, "labels", "train")
    assert code == 0, output
    assert "60 reviewed faces of 60 subjects" in output
    assert "scored out of fold, by subject" in output
    assert "skipped: 1 value(s)" in output  # glasses: always "no"


def test_cli_stats_counts_by_name_value_and_source(home: Path) -> None:
    code, output = _invoke(home, "labels", "stats", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["faces"] == 61
    counts = {(r["name"], r["value"], r["source"]): r["faces"] for r in report["labels"]}
    assert counts[("glasses", "no", "human")] == 61
    assert counts[("pose_band", "frontal", "measured")] == 61
    assert counts[("gender", "female", "declared")] + counts[("gender", "male", "declared")] == 61
    assert counts[("gender", "female", "human")] == counts[("gender", "female", "declared")]
    assert {name for name, _, _ in counts} <= {n.value for n in LEARNABLE} | {"pose_band"}


def test_cli_train_while_the_store_is_held_says_to_stop_the_worker(home: Path) -> None:
    # The worker holds the Qdrant local store; here the test process does.
    index = FaceIndex.from_settings(Settings(home=home), SPACE)
    try:
        result = run_s2a("labels", "train", home=home)
    finally:
        index.close()
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "in use by a running worker" in last
    assert "S2A_QDRANT_URL" in last


def test_cli_train_without_reviewed_faces_says_how_many_are_needed(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["labels", "train"], env={"S2A_HOME": str(tmp_path)})
    # infra.cli.main prints a TrainerError as its one line (tests/unit/infra/test_cli.py).
    assert isinstance(result.exception, NotEnoughLabels)
    assert result.output == ""
    message = str(result.exception)
    assert message.startswith("too few human labels to train any label head (no reviewed")
    assert f"at least {MIN_EXAMPLES}" in message
    assert not heads_path(Settings(home=tmp_path)).exists()
