"""``s2a publish`` without a broker: what a folder expands to, what is skipped and why,
the option checks, and events built with declared attributes (a list stands in for the
broker at the publisher seam)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import click
import pytest

from agents.stages.imageio import Skipped, image_files, scan_images
from infra.attributes import read_attributes
from infra.cli.uploads import IsoTime
from infra.errors import UsageError
from infra.publish import Published, UploadRequest, plan, publish_each
from schemas.settings import Settings
from schemas.uploads import DeclaredAttributes, Source, UploadEvent

REAL = Path(__file__).parents[2] / "data" / "real"


class ListPublisher:
    """The publisher seam, as a list."""

    def __init__(self) -> None:
        self.events: list[UploadEvent] = []

    def publish(self, event: UploadEvent) -> None:
        self.events.append(event)


def _request(**changes: object) -> UploadRequest:
    values: dict[str, object] = {
        "subject": None,
        "consent_version": "cli-1",
        "scopes": ("training",),
        "expires_at": None,
        "source": Source.PUBLIC_DATASET,
        "license": "CC-BY-4.0",
        "attribution": None,
    }
    return UploadRequest(**(values | changes))  # type: ignore[arg-type]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two photos, a note, a sub-folder named like an image (holding a photo) and a
    symbolic link named like an image whose target is gone."""
    root = tmp_path / "uploads"
    root.mkdir()
    for name in ("london_001_neutral.jpg", "london_004_neutral.jpg"):
        (root / name).write_bytes((REAL / name).read_bytes())
    (root / "notes.txt").write_text("not an image, not considered")
    (root / "x.jpg").mkdir()
    (root / "x.jpg" / "inner.jpeg").write_bytes((REAL / "london_007_neutral.jpg").read_bytes())
    (root / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    return root


def test_folder_scan_names_what_it_skips(folder: Path) -> None:
    files, skipped = scan_images([folder])
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "london_001_neutral.jpg",
        "london_004_neutral.jpg",
        "x.jpg/inner.jpeg",
    ]
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {"x.jpg", "gone.jpg"}  # notes.txt is not an image: not named
    assert reasons["x.jpg"] == "a folder, not an image file"
    assert reasons["gone.jpg"].startswith("broken symbolic link")
    assert "deleted.jpg" in reasons["gone.jpg"]
    # The references' expander is the same walk, files only.
    assert image_files([folder]) == files


def test_fifo_named_like_an_image_is_skipped_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    files, skipped = scan_images([tmp_path])
    assert files == []
    assert skipped == [
        Skipped(tmp_path / "pipe.png", "not a regular file (a FIFO, socket or device)")
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists every folder, whatever its mode")
def test_folder_that_cannot_be_listed_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes((REAL / "london_001_neutral.jpg").read_bytes())
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "b.jpg").write_bytes((REAL / "london_001_neutral.jpg").read_bytes())
    locked.chmod(0)
    try:
        files, skipped = scan_images([tmp_path])
    finally:
        locked.chmod(0o755)
    assert files == [tmp_path / "a.jpg"]
    assert skipped == [Skipped(locked, "a folder that cannot be read: Permission denied")]


def test_plan_counts_skipped_entries_in_the_total(folder: Path) -> None:
    batch = plan([folder, REAL / "london_013_neutral.jpg"])
    assert len(batch.files) == 4
    assert {s.path.name for s in batch.skipped} == {"x.jpg", "gone.jpg"}
    assert batch.total == 6
    # A file given directly has its own folder as root: its subject is its name there.
    assert batch.files[-1] == (REAL / "london_013_neutral.jpg", REAL)


def test_publish_each_skips_an_unreadable_file_and_publishes_the_rest(folder: Path) -> None:
    batch = plan([folder])
    # Gone between planning and reading, as when another process moves it.
    (folder / "london_004_neutral.jpg").unlink()
    publisher = ListPublisher()
    results = list(publish_each(batch.files, _request(), Settings(home=folder), publisher))
    assert [type(r) for r in results] == [Published, Skipped, Published]
    skipped = results[1]
    assert isinstance(skipped, Skipped)
    assert skipped.path.name == "london_004_neutral.jpg"
    assert skipped.reason.startswith("cannot be read: ")
    assert [e.upload_id for e in publisher.events] == [
        r.event.upload_id for r in results if isinstance(r, Published)
    ]
    assert [e.subject_id for e in publisher.events] == [
        "dataset:uploads/london_001_neutral",
        "dataset:uploads/x.jpg/inner",
    ]


def test_event_that_breaks_the_contract_is_skipped_with_the_reason(tmp_path: Path) -> None:
    # A public-dataset subject is derived from the path: a very deep one is over the
    # contract's 256 characters. That file is skipped, not the whole run.
    deep = tmp_path / "d"
    for _ in range(40):
        deep = deep / "folder"
    deep.mkdir(parents=True)
    (deep / "a.jpg").write_bytes((REAL / "london_001_neutral.jpg").read_bytes())
    (tmp_path / "d" / "b.jpg").write_bytes((REAL / "london_001_neutral.jpg").read_bytes())
    batch = plan([tmp_path / "d"])
    results = list(publish_each(batch.files, _request(), Settings(home=tmp_path), ListPublisher()))
    by_name = {r.path.name: r for r in results}
    assert isinstance(by_name["b.jpg"], Published)
    skipped = by_name["a.jpg"]
    assert isinstance(skipped, Skipped)
    assert "subject_id" in skipped.reason
    assert "256 characters" in skipped.reason


# --- options ---------------------------------------------------------------------------------


def test_over_long_subject_is_a_usage_error_naming_the_option() -> None:
    _request(subject="s" * 256, source=Source.SELFIE, license=None).check()
    with pytest.raises(UsageError) as caught:
        _request(subject="s" * 257, source=Source.SELFIE, license=None).check()
    message = str(caught.value)
    assert message.startswith("--subject: ")
    assert "at most 256 characters, given 257" in message
    assert "subject_id of the UploadEvent contract" in message


def test_other_option_limits_name_their_option() -> None:
    with pytest.raises(UsageError, match=r"^--consent-version: .*at most 64"):
        _request(consent_version="v" * 65).check()
    with pytest.raises(UsageError, match=r"^--license: .*at most 128"):
        _request(license="L" * 129).check()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T02:00:00+02:00", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T00:00:00", datetime(2030, 1, 1, tzinfo=UTC)),  # no zone: UTC
        ("2030-01-01", datetime(2030, 1, 1, tzinfo=UTC)),
    ],
)
def test_expires_reads_iso_8601_with_z_and_offsets(text: str, expected: datetime) -> None:
    parsed = IsoTime().convert(text, None, None)
    assert parsed == expected  # the same instant
    if text.endswith("+02:00"):
        assert parsed.utcoffset() == timedelta(hours=2)  # the offset given is kept
    event_expiry = _expiry_of_event(parsed)
    assert event_expiry == expected


def _expiry_of_event(expires: datetime) -> datetime | None:
    request = _request(expires_at=expires)
    request.check()
    [result] = publish_each(
        [(REAL / "london_001_neutral.jpg", REAL)], request, Settings(), ListPublisher()
    )
    assert isinstance(result, Published)
    return result.event.consent.expires_at


def test_malformed_expires_names_the_option() -> None:
    option = click.Option(["--expires"], type=IsoTime())
    with pytest.raises(click.BadParameter) as caught:
        IsoTime().convert("2030-13-01T00:00Z", option, None)
    assert "not an ISO 8601 time" in caught.value.format_message()
    assert "--expires" in caught.value.format_message()
    assert IsoTime().convert(datetime(2030, 1, 1), None, None).tzinfo is UTC
    offset = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5)))
    assert IsoTime().convert(offset, None, None) == offset


# --- declared attributes ---------------------------------------------------------------------


def test_csv_attributes_map_onto_declared_attributes(tmp_path: Path, folder: Path) -> None:
    table_file = tmp_path / "attrs.csv"
    table_file.write_text(
        "file,Gender,age,Glasses,hair-colour,mood,Smiling\n"
        "london_001_neutral.jpg,female,34,no,Brown,calm,1\n"
        "x.jpg/inner.jpeg,male,,yes,,,\n"
    )
    table = read_attributes(table_file)
    assert table.ignored == ("mood",)
    assert table.not_carried == ()
    batch = plan([folder])
    publisher = ListPublisher()
    list(publish_each(batch.files, _request(), Settings(), publisher, table))
    by_subject = {e.subject_id.rsplit("/", 1)[-1]: e.attributes for e in publisher.events}
    assert by_subject == {
        "london_001_neutral": DeclaredAttributes(
            gender="female", age=34, glasses=False, hair_colour="Brown", expression="smiling"
        ),
        "london_004_neutral": DeclaredAttributes(),  # no row: nothing declared
        "inner": DeclaredAttributes(gender="male", glasses=True),
    }


# CelebA's layout, with its real column names (a few of its 40) and its double spaces.
CELEBA = "\n".join(
    [
        "3",
        "5_o_Clock_Shadow Arched_Eyebrows Black_Hair Blond_Hair Brown_Hair Eyeglasses "
        "Gray_Hair Male Smiling Young ",
        "000001.jpg -1  1 -1  1 -1 -1 -1 -1  1  1",
        "000002.jpg  1 -1  1 -1 -1  1 -1  1 -1 -1",
        "000003.jpg -1 -1  1  1 -1 -1 -1  1 -1  1",
        "",
    ]
)


def test_celeba_layout_maps_its_columns(tmp_path: Path) -> None:
    table_file = tmp_path / "list_attr_celeba.txt"
    table_file.write_text(CELEBA)
    table = read_attributes(table_file)
    assert table.ignored == ("5_o_Clock_Shadow", "Arched_Eyebrows")
    # Young is no age in years and gives no age band: named, and ignored.
    assert table.not_carried == ("Young",)
    assert table.rows == {
        "000001.jpg": DeclaredAttributes(
            gender="female", glasses=False, hair_colour="blond", expression="smiling"
        ),
        "000002.jpg": DeclaredAttributes(
            gender="male", glasses=True, hair_colour="black", expression="neutral"
        ),
        # Two hair colours set: which one is unknown, so none is declared.
        "000003.jpg": DeclaredAttributes(gender="male", glasses=False, expression="neutral"),
    }
    images = tmp_path / "img_align_celeba"
    assert table.for_file(images / "000002.jpg", images) == table.rows["000002.jpg"]
    assert table.for_file(images / "000009.jpg", images) is None


def test_an_expression_column_wins_over_smiling(tmp_path: Path) -> None:
    table_file = tmp_path / "attrs.csv"
    table_file.write_text("file,Expression,smiling\na.jpg,Other,1\nb.jpg,,no\nc.jpg,,\n")
    rows = read_attributes(table_file).rows
    assert rows == {
        "a.jpg": DeclaredAttributes(expression="other"),
        "b.jpg": DeclaredAttributes(expression="neutral"),
        "c.jpg": DeclaredAttributes(),
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("5\n" + CELEBA.split("\n", 1)[1], "announces 5 rows, the file has 3"),
        ("file,age\na.jpg,5\n", "line 2: age: input should be greater than or equal to 13"),
        ("file,age\na.jpg,thirty\n", "line 2: age is 'thirty'"),
        ("file,glasses\na.jpg,maybe\n", "line 2: glasses is 'maybe'; a flag is"),
        ("file,smiling\na.jpg,sometimes\n", "line 2: smiling is 'sometimes'; a flag is"),
        (
            "file,expression\na.jpg,grinning\n",
            "line 2: expression is 'grinning'; expected one of neutral, smiling, other",
        ),
        ("file,gender\na.jpg,female\na.jpg,male\n", "line 3: a.jpg already has a row (line 2)"),
        ("file,gender\na.jpg\n", "line 2: 1 fields, the header has 2"),
        ("", "the file is empty"),
    ],
)
def test_bad_attribute_files_are_usage_errors(tmp_path: Path, content: str, message: str) -> None:
    table_file = tmp_path / "attrs.txt"
    table_file.write_text(content)
    with pytest.raises(UsageError) as caught:
        read_attributes(table_file)
    assert str(caught.value).startswith(f"--attributes {table_file}")
    assert message.lower() in str(caught.value).lower()


def test_declared_expressions_reach_the_stored_faces(tmp_path: Path) -> None:
    # CelebA's layout over its file names, and a CSV with a smiling column: published as
    # events, run through the stage chain in process, stored with declared labels.
    from agents.pipeline import Incoming, IngestPipeline

    celeba = tmp_path / "img_align_celeba"
    celeba.mkdir()
    for number, photo in ((1, "london_001_smiling.jpg"), (2, "london_004_neutral.jpg")):
        (celeba / f"{number:06d}.jpg").write_bytes((REAL / photo).read_bytes())
    celeba_attrs = tmp_path / "list_attr_celeba.txt"
    celeba_attrs.write_text(
        "2\nEyeglasses Male Smiling Young\n000001.jpg -1 -1 1 1\n000002.jpg -1 1 -1 1\n"
    )
    selfies = tmp_path / "selfies"
    selfies.mkdir()
    (selfies / "photo.jpg").write_bytes((REAL / "london_016_smiling.jpg").read_bytes())
    csv_attrs = tmp_path / "attrs.csv"
    csv_attrs.write_text("file,gender,smiling\nphoto.jpg,female,yes\n")
    settings = Settings(home=tmp_path / "home")
    publisher = ListPublisher()
    for folder, table_file in ((celeba, celeba_attrs), (selfies, csv_attrs)):
        batch = plan([folder])
        table = read_attributes(table_file)
        list(publish_each(batch.files, _request(), settings, publisher, table))
    assert [e.schema_version for e in publisher.events] == [2, 2, 2]
    pipeline = IngestPipeline.build(settings)
    try:
        outcomes = pipeline.run([Incoming(e.to_bytes()) for e in publisher.events])
        declared = []
        for outcome in outcomes:
            assert outcome.face is not None, outcome.rejection
            labels = pipeline.repository.labels_of_face(outcome.face.face_id)
            declared.append({(x.name, x.value) for x in labels if x.source == "declared"})
    finally:
        pipeline.close()
    assert declared == [
        {("expression", "smiling"), ("gender", "female"), ("glasses", "no")},
        {("expression", "neutral"), ("gender", "male"), ("glasses", "no")},
        {("expression", "smiling"), ("gender", "female")},
    ]
