"""The anime reference library end to end: SQL (SQLite and PostgreSQL), blobs, the index.

Real components throughout: the migrated database from ``sql_url``, the blob store and
the reference index under a temporary home, the offline (seeded) face embedder, and the
``s2a`` command in a subprocess. Images and their licenses are ``tests/data/anime`` and
``tests/data/SOURCES.csv``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from PIL import Image

from agents.records import EmbedInput
from agents.references import (
    Attribution,
    Box,
    InvalidRequest,
    Outcome,
    RefInput,
    RefLibrary,
    RefOutcome,
    RefReason,
    normalise_license,
    read_sources,
    ref_id_for,
)
from agents.references.palette import TRAINING_SIDE, square_pad
from agents.references.style import resize_square
from agents.stages.embed import INPUT_SIZE, InceptionEmbedder
from agents.stores.blobs import BlobStore
from agents.stores.refindex import (
    RefFilter,
    RefPoint,
    latest_local_version,
    open_ref_index,
    publish_version,
)
from infra.cli import cli
from schemas.migrate import upgrade
from schemas.settings import LimitSettings, Settings
from schemas.tables import AnimeRef

DATA = Path(__file__).parents[1] / "data"
ANIME = DATA / "anime"
REAL = DATA / "real"
SOURCES = DATA / "SOURCES.csv"

PC = sorted(ANIME.glob("pc_*_face.*"))
RENPY = sorted(ANIME.glob("renpy_*_face.*"))
PENCIL = ANIME / "pc_pepper_pencil_face.jpg"
SYLVIE = sorted(ANIME.glob("renpy_sylvie_*_face.png"))[:6]
MODELSHEET = sorted(ANIME.glob("pc_modelsheet_*_face.jpg"))
PHOTO = REAL / "london_004_neutral.jpg"


@pytest.fixture
def settings(tmp_path: Path, sql_url: str) -> Settings:
    upgrade(sql_url)
    return Settings(home=tmp_path / "home", database_url=sql_url)


@pytest.fixture
def library(settings: Settings, embedder: InceptionEmbedder) -> RefLibrary:
    return RefLibrary(settings, embedder=embedder)


@pytest.fixture(scope="module")
def sources() -> dict[str, Attribution]:
    return read_sources(SOURCES)


def _by_file(outcomes: list[RefOutcome]) -> dict[str, RefOutcome]:
    return {Path(o.file).name: o for o in outcomes}


def _blob_count(settings: Settings) -> int:
    return len(BlobStore(settings.blob_dir).digests())


# -- licenses and the sources CSV (no database) ------------------------------------------


@pytest.mark.parametrize(
    ("text", "spdx"),
    [
        ('MIT/Expat (Ren\'Py license: "The artwork ..."; Debian copyright Files:* Expat)', "MIT"),
        ("Public domain (Open Clip Art Library PD dedication)", "public-domain"),
        ("CC0-1.0 (LICENSE file in character dir)", "CC0-1.0"),
        ("CC-BY-4.0", "CC-BY-4.0"),
        ("CC BY 4.0", "CC-BY-4.0"),
        ("cc-by-sa-4.0", "CC-BY-SA-4.0"),
        ("CC-BY-2.0", "CC-BY-2.0"),
        ("All rights reserved", "All rights reserved"),
    ],
)
def test_licenses_are_normalised_to_spdx_ids(text: str, spdx: str) -> None:
    license_id, full = normalise_license(text)
    assert license_id == spdx
    # The long wording survives as attribution detail; a bare id needs none.
    assert full == (None if text == spdx else " ".join(text.split()))


def test_the_sources_csv_gives_every_test_image_a_license(
    sources: dict[str, Attribution],
) -> None:
    for path in [*PC, *RENPY, PHOTO]:
        row = sources[path.name]
        assert row.license
        assert row.author
    assert normalise_license(sources[RENPY[0].name].license or "")[0] == "MIT"


def test_a_sources_csv_without_the_license_column_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,author,source\na.png,me,here\n")
    with pytest.raises(InvalidRequest, match="license"):
        read_sources(bad)


# -- loading styles -----------------------------------------------------------------------


def test_loading_the_anime_crops_adds_them_and_quarantines_the_sketch(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution]
) -> None:
    pc = _by_file(library.add(PC, style="pc", sources=sources))
    renpy = library.add(SYLVIE[:2], style="renpy", sources=sources)

    assert {n for n, o in pc.items() if o.outcome is Outcome.ADDED} == {
        p.name for p in PC if p != PENCIL
    }
    assert {o.license for o in pc.values()} == {"CC-BY-4.0"}
    # The grayscale pencil sketch is stored but kept out of the coloured style.
    sketch = pc[PENCIL.name]
    assert sketch.outcome is Outcome.QUARANTINED
    assert sketch.reason is RefReason.STYLE_OUTLIER
    # Caught for how it is drawn, not for being grey (palette is weak evidence only).
    assert "sketched z=+" in (sketch.detail or "")
    assert [o.outcome for o in renpy] == [Outcome.ADDED] * 2

    assert library.current_version() == 2
    assert library.styles() == {"pc": len(PC) - 1, "renpy": 2}
    versions = library.versions()
    assert [(v.version, v.added, v.quarantined) for v in versions] == [
        (1, len(PC) - 1, 1),
        (2, 2, 0),
    ]
    assert all(v.index_location for v in versions)


def test_references_keep_license_credit_region_and_their_blobs(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution]
) -> None:
    library.add(RENPY[:5], style="renpy", sources=sources)
    refs = library.list(style="renpy")
    assert len(refs) == 5
    blobs = BlobStore(settings.blob_dir)
    for ref in refs:
        assert ref.status == "active"
        assert ref.license == "MIT"
        assert ref.author in {sources[p.name].author for p in RENPY[:5]}
        # The long license wording is attribution too: it stays with the source.
        assert "[license: MIT/Expat (Ren'Py license:" in ref.source
        assert ref.region == "whole"
        assert ref.box == [0.0, 0.0, float(ref.width), float(ref.height)]
        assert ref.embedder == library.embedder.name
        assert set(ref.stats) >= {"edge_crispness", "line_density", "chroma", "palette_size"}
        assert ref.outlier_score is not None
        with Image.open(blobs.path(ref.original)) as original:
            assert original.size == (ref.width, ref.height)
            assert not original.info  # metadata-free PNG
        with Image.open(blobs.path(ref.training)) as training:
            assert training.size == (TRAINING_SIDE, TRAINING_SIDE)
        assert ref.ref_id == ref_id_for("renpy", ref.original)


def test_the_first_references_of_a_style_are_not_judged(
    library: RefLibrary, sources: dict[str, Attribution]
) -> None:
    outcomes = library.add([*RENPY[:2], PHOTO], style="renpy", sources=sources)
    # Three images say nothing about a style: even the photo goes in, unjudged.
    assert [o.outcome for o in outcomes] == [Outcome.ADDED] * 3
    assert all(o.outlier_score is None for o in outcomes)
    assert all("not judged" in (o.detail or "") for o in outcomes)


def test_a_photo_added_to_a_style_is_quarantined_and_kept_out_of_the_index(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution]
) -> None:
    library.add(SYLVIE, style="renpy", sources=sources)
    blobs_before = _blob_count(settings)

    (photo,) = library.add([PHOTO], style="renpy", sources=sources)

    assert photo.outcome is Outcome.QUARANTINED
    assert photo.reason is RefReason.STYLE_OUTLIER
    assert photo.outlier_score is not None
    assert photo.outlier_score > settings.refs.outlier_z
    assert "photographic z=+" in (photo.detail or "")
    assert photo.library_version == 2
    stored = library.get(photo.ref_id or "")
    assert stored is not None
    assert (stored.status, stored.reason) == ("quarantined", "style_outlier")
    assert stored.license == "CC-BY-4.0"
    assert stored.author.startswith("DeBruine")
    assert _blob_count(settings) == blobs_before + 2  # its original and training PNGs
    index = open_ref_index(settings, 2, library.embedder.space)
    try:
        assert index.count() == len(SYLVIE)
        hits = index.search(_embeddings(library, [stored])[0], 50)
        assert photo.ref_id not in {hit.ref_id for hit in hits}
    finally:
        index.close()


def test_re_adding_is_exists_and_changes_nothing(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution]
) -> None:
    first = library.add(RENPY[:6], style="renpy", sources=sources)
    blobs, rows = _blob_count(settings), len(library.list())

    again = library.add(RENPY[:6], style="renpy", sources=sources)

    assert [o.outcome for o in again] == [Outcome.EXISTS] * 6
    assert [o.ref_id for o in again] == [o.ref_id for o in first]
    assert library.current_version() == 1
    assert (_blob_count(settings), len(library.list())) == (blobs, rows)
    assert latest_local_version(settings) == 1
    # The same image under another style is another reference.
    (other,) = library.add(RENPY[:1], style="renpy-alt", sources=sources)
    assert other.outcome is Outcome.ADDED


def test_the_same_image_twice_in_one_call_is_added_once(
    library: RefLibrary, tmp_path: Path, sources: dict[str, Attribution]
) -> None:
    copy = tmp_path / "copy.png"
    shutil.copyfile(RENPY[0], copy)
    outcomes = library.add([RENPY[0], copy], style="renpy", license="MIT", author="Piroshki")
    assert [o.outcome for o in outcomes] == [Outcome.ADDED, Outcome.EXISTS]


# -- refusals -----------------------------------------------------------------------------


def _nothing_stored(library: RefLibrary, settings: Settings) -> None:
    assert library.current_version() is None
    assert library.list() == []
    assert _blob_count(settings) == 0
    assert latest_local_version(settings) is None


def test_a_missing_license_is_refused_and_nothing_is_stored(
    library: RefLibrary, settings: Settings
) -> None:
    outcomes = library.add(RENPY[:3], style="renpy", author="Deji")
    assert {(o.outcome, o.reason) for o in outcomes} == {
        (Outcome.REFUSED, RefReason.LICENSE_MISSING)
    }
    _nothing_stored(library, settings)


def test_a_disallowed_license_is_refused_and_nothing_is_stored(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution]
) -> None:
    # The command-line license overrides the CSV's MIT.
    outcomes = library.add(RENPY[:3], style="renpy", license="CC-BY-NC-4.0", sources=sources)
    assert {(o.outcome, o.reason) for o in outcomes} == {
        (Outcome.REFUSED, RefReason.LICENSE_NOT_ALLOWED)
    }
    assert "CC-BY-NC-4.0" in (outcomes[0].detail or "")
    _nothing_stored(library, settings)


def test_a_license_that_needs_credit_without_an_author_is_refused(
    library: RefLibrary, settings: Settings
) -> None:
    (outcome,) = library.add(RENPY[:1], style="renpy", license="CC-BY-4.0")
    assert outcome.reason is RefReason.ATTRIBUTION_MISSING
    _nothing_stored(library, settings)


def test_too_small_bad_box_and_broken_files_are_refused(
    library: RefLibrary, settings: Settings, tmp_path: Path
) -> None:
    small = tmp_path / "small.png"
    with Image.open(RENPY[0]) as image:
        image.resize((100, 100)).save(small)
    broken = tmp_path / "broken.png"
    broken.write_bytes(RENPY[0].read_bytes()[:500])
    credit = {"license": "MIT", "author": "Piroshki"}

    outcomes = library.add([small, broken], style="renpy", **credit)
    assert [o.reason for o in outcomes] == [RefReason.TOO_SMALL, RefReason.DECODE_ERROR]

    (outside,) = library.add(RENPY[:1], style="renpy", box=Box(0, 0, 400, 400), **credit)
    assert outside.reason is RefReason.BAD_BOX
    (tiny,) = library.add(RENPY[:1], style="renpy", box=Box(10, 10, 90, 90), **credit)
    assert tiny.reason is RefReason.TOO_SMALL
    _nothing_stored(library, settings)


def test_files_over_the_upload_limits_are_refused_unread(
    settings: Settings, embedder: InceptionEmbedder
) -> None:
    tight = settings.model_copy(
        update={"limits": LimitSettings(max_upload_bytes=20_000, max_inline_bytes=20_000)}
    )
    library = RefLibrary(tight, embedder=embedder)
    (outcome,) = library.add(RENPY[:1], style="renpy", license="MIT", author="Piroshki")
    assert outcome.reason is RefReason.TOO_LARGE
    assert "max_upload_bytes" in (outcome.detail or "")
    _nothing_stored(library, settings)


def test_a_transparent_sprite_is_stored_on_white(library: RefLibrary) -> None:
    sprite = ANIME / "renpy_eileen_happy_sprite_rgba.png"
    (outcome,) = library.add([sprite], style="renpy", license="MIT", author="Piroshki")
    ref = library.get(outcome.ref_id or "")
    assert ref is not None
    with Image.open(library.blobs.path(ref.original)) as original:
        assert original.mode == "RGB"
        # The corner is fully transparent in the sprite (black under alpha 0).
        assert original.getpixel((0, 0)) == (255, 255, 255)


def test_a_box_is_the_face_region(library: RefLibrary, settings: Settings) -> None:
    (outcome,) = library.add(
        RENPY[:1], style="renpy", license="MIT", author="Piroshki", box=Box(20, 10, 250, 260)
    )
    assert outcome.outcome is Outcome.ADDED
    assert outcome.region == "box"
    ref = library.get(outcome.ref_id or "")
    assert ref is not None
    assert ref.box == [20.0, 10.0, 250.0, 260.0]


def test_an_unknown_label_refuses_the_whole_call(library: RefLibrary, settings: Settings) -> None:
    with pytest.raises(InvalidRequest, match="glasses"):
        library.add(RENPY[:1], style="renpy", license="MIT", author="x", labels={"glasses": "2"})
    _nothing_stored(library, settings)


def test_bytes_inputs_carry_their_own_attribution(library: RefLibrary) -> None:
    item = RefInput(
        "eileen.png", RENPY[0].read_bytes(), Attribution("MIT", "Ren'Py demo", "Piroshki")
    )
    (outcome,) = library.add([item], style="renpy")
    assert outcome.outcome is Outcome.ADDED
    assert outcome.file == "eileen.png"


# -- the index ----------------------------------------------------------------------------


def _embeddings(library: RefLibrary, refs: list[AnimeRef]) -> npt.NDArray[np.float32]:
    """The references' embeddings, recomputed from their stored originals and regions."""
    faces = []
    for ref in refs:
        with Image.open(library.blobs.path(ref.original)) as image:
            pixels = np.asarray(image.convert("RGB"))
        x1, y1, x2, y2 = (int(v) for v in ref.box)
        square = square_pad(np.ascontiguousarray(pixels[y1:y2, x1:x2]))
        side = float(square.shape[0])
        faces.append(EmbedInput(square, (0.0, 0.0, side, side), resize_square(square, INPUT_SIZE)))
    return library.embedder.embed(faces)


def test_the_index_holds_exactly_the_active_refs_with_their_payload(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution]
) -> None:
    library.add(MODELSHEET, style="pc", sources=sources)
    library.add([*SYLVIE, PHOTO], style="renpy", sources=sources, labels={"gender": "female"})
    active = library.list(status="active")
    assert len(active) == len(MODELSHEET) + len(SYLVIE)  # the photo is quarantined
    version = library.current_version()
    assert version == 2

    index = open_ref_index(settings, version, library.embedder.space)
    try:
        assert index.count() == len(active)
        vectors = _embeddings(library, active)
        for ref, vector in zip(active, vectors, strict=True):
            hits = index.search(vector, 3, where=RefFilter(style=ref.style))
            # Each reference is the nearest to its own embedding.
            assert hits[0].ref_id == ref.ref_id
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            payload = hits[0].payload
            assert payload["style"] == ref.style
            assert payload["license"] == ref.license
            assert payload["author"] == ref.author
            assert payload["source"] == ref.source
            assert payload["library_version"] == ref.library_version
        renpy = index.search(vectors[0], 50, where=RefFilter(style="renpy"))
        assert {h.ref_id for h in renpy} == {r.ref_id for r in active if r.style == "renpy"}
        assert all(h.payload["labels"] == {"gender": "female"} for h in renpy)
    finally:
        index.close()
    labels = library.labels_of(renpy[0].ref_id)
    assert [(lb.name, lb.value, lb.source, lb.confidence) for lb in labels] == [
        ("gender", "female", "human", 1.0)
    ]


def test_an_index_folder_left_by_a_crashed_add_is_replaced(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution]
) -> None:
    # A crash between publishing version 1 and committing it leaves this folder behind.
    space = library.embedder.space
    stray = RefPoint(str(uuid.uuid4()), np.ones(space.dim, np.float32), {"style": "renpy"})
    publish_version(settings, 1, None, [stray], space=space)

    outcomes = library.add(SYLVIE[:2], style="renpy", sources=sources)

    assert library.current_version() == 1
    index = open_ref_index(settings, 1, space)
    try:
        assert index.count() == 2
        ids = {h.ref_id for h in index.search(np.ones(space.dim, dtype=np.float32), 10)}
        assert ids == {o.ref_id for o in outcomes}
    finally:
        index.close()


def test_only_the_newest_index_versions_are_kept_and_the_current_one_answers(
    tmp_path: Path, sql_url: str, embedder: InceptionEmbedder, sources: dict[str, Attribution]
) -> None:
    upgrade(sql_url)
    settings = Settings(
        home=tmp_path / "home", database_url=sql_url, refs={"keep_index_versions": 2}
    )
    library = RefLibrary(settings, embedder=embedder)
    for image in SYLVIE[:4]:  # one library version per add
        library.add([image], style="renpy", sources=sources)
    changed = library.quarantine(library.list(status="active")[0].ref_id, reason="test", by="t")

    assert changed.library_version == library.current_version() == 5
    assert sorted(p.name for p in settings.ref_index_dir.iterdir()) == ["v000004", "v000005"]
    index = open_ref_index(settings, 5, embedder.space)
    try:
        assert index.count() == 3
    finally:
        index.close()


# -- the command line ---------------------------------------------------------------------


def test_the_cli_with_json_prints_only_json(tmp_path: Path, sql_url: str) -> None:
    folder = tmp_path / "refs"
    folder.mkdir()
    for path in [*RENPY[:5], PHOTO]:
        shutil.copyfile(path, folder / path.name)
    (folder / "again").mkdir()  # the same image twice, both with a row in the CSV
    shutil.copyfile(RENPY[0], folder / "again" / RENPY[0].name)
    shutil.copyfile(SYLVIE[-1], folder / "unlisted.png")  # no row in the CSV: no license
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    home = tmp_path / "home"

    # A real process: whatever torch, the index or logging print must not reach stdout.
    added = subprocess.run(
        [sys.executable, "-m", "infra.cli", "refs", "add", str(folder), "--style", "renpy",
         "--sources", str(SOURCES), "--tags", "vn,sprite", "--json"],
        env={**os.environ, "S2A_HOME": str(home), "S2A_DATABASE_URL": sql_url},
        capture_output=True,
        text=True,
    )  # fmt: skip

    rows = [json.loads(line) for line in added.stdout.splitlines()]
    assert [(r["file"], r["outcome"], r["reason"]) for r in rows] == [
        (str(folder / "again" / RENPY[0].name), "added", None),
        (str(folder / PHOTO.name), "quarantined", "style_outlier"),
        (str(folder / RENPY[0].name), "exists", None),
        *[(str(folder / p.name), "added", None) for p in RENPY[1:5]],
        (str(folder / "unlisted.png"), "refused", "license_missing"),
    ]
    assert added.returncode == 1
    assert added.stderr.strip().splitlines()[-1] == "Error: 1 of 8 file(s) refused"

    env = {"S2A_HOME": str(home), "S2A_DATABASE_URL": sql_url}
    listed = CliRunner().invoke(cli, ["refs", "list", "--style", "renpy", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    refs = json.loads(listed.stdout)
    assert [r["status"] for r in refs].count("active") == 5
    assert all(r["tags"] == ["vn", "sprite"] for r in refs)
    assert {r["license"] for r in refs} == {"MIT", "CC-BY-4.0"}

    table = CliRunner().invoke(cli, ["refs", "list", "--status", "quarantined"], env=env)
    assert table.exit_code == 0, table.output
    header, *body = table.stdout.splitlines()
    assert header.split()[:4] == ["REF", "STYLE", "STATUS", "REASON"]
    assert [line.split()[1:5] for line in body] == [
        ["renpy", "quarantined", "style_outlier", "CC-BY-4.0"]
    ]


def test_the_demo_references_quarantine_only_the_pencil_sketch_and_the_photo(
    tmp_path: Path,
) -> None:
    """``s2a demo`` loads its bundled references in label groups, then one photo: the style
    check must keep out exactly the grayscale pencil sketch and the photo."""
    from infra.demo import load_references

    settings = Settings(home=tmp_path / "home").model_copy(
        update={"models": Settings().models.model_copy(update={"embedder": "random-init"})}
    )
    upgrade(settings.sql_url)
    outcomes = load_references(settings)
    quarantined = {Path(o["file"]).name for o in outcomes if o["outcome"] == "quarantined"}
    assert quarantined == {"pc_pepper_pencil_face.jpg", "london_012_neutral.jpg"}
    assert {o["outcome"] for o in outcomes} == {"added", "quarantined"}
