"""Dataset snapshots, exports and reports against a real database and blob store, and the
exports read back with the loaders training code uses (datasets, webdataset)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dataset_seed import (
    APPROVED_IN_SNAPSHOT,
    T0,
    Seeded,
    _table,
    seed,
)
from PIL import Image
from sqlalchemy import event, update
from sqlalchemy.exc import IntegrityError

from agents.references.catalog import Catalog
from infra.cli import cli
from schemas.tables import (
    AnimeRef,
    IdentityLink,
    Label,
    Snapshot,
)
from trainer.dataset import (
    SnapshotParams,
    build_manifest,
    canonical_json,
    create_snapshot,
    export_snapshot,
    find_snapshot,
    list_snapshots,
    load_state,
    read_manifest,
    reference_use,
    render_report,
    write_report,
)
from trainer.errors import DatasetError


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Seeded]:
    state = seed(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 's2a.db'}")
    yield state
    state.engine.dispose()


# -- snapshots ----------------------------------------------------------------------------


def test_snapshot_is_deterministic_and_named_by_its_bytes(sql_url: str, tmp_path: Path) -> None:
    state = seed(tmp_path / "home", sql_url)
    try:
        first = create_snapshot(state.engine, state.settings)
        assert first.created
        assert first.version == 1
        data = first.manifest_path.read_bytes()
        assert first.snapshot_id == "ds-" + hashlib.sha256(data).hexdigest()[:16]
        assert str(tmp_path) not in data.decode()

        # The backend is not part of the state: a SQLite copy of it gives the same id.
        copy = seed(tmp_path / "copy", f"sqlite:///{tmp_path / 'copy' / 's2a.db'}")
        try:
            assert create_snapshot(copy.engine, copy.settings).snapshot_id == first.snapshot_id
        finally:
            copy.engine.dispose()

        # Rebuilt from the same state: the same bytes, and no new row.
        params = SnapshotParams.from_settings(state.settings)
        assert canonical_json(build_manifest(load_state(state.engine, params), params)) == data
        again = create_snapshot(state.engine, state.settings)
        assert (again.snapshot_id, again.version, again.created) == (first.snapshot_id, 1, False)
        assert [s.snapshot_id for s in list_snapshots(state.engine)] == [first.snapshot_id]

        # One label changed: another id, the next version, the first manifest untouched.
        labels = _table(Label)
        with state.engine.begin() as connection:
            connection.execute(
                update(labels)
                .where(labels.c.face_id == state.faces["c1"], labels.c.name == "age_band")
                .values(value="60+")
            )
        changed = create_snapshot(state.engine, state.settings)
        assert changed.created
        assert changed.version == 2
        assert changed.snapshot_id != first.snapshot_id
        assert first.manifest_path.read_bytes() == data
        rows = list_snapshots(state.engine)
        assert [(r.version, r.snapshot_id) for r in rows] == [
            (1, first.snapshot_id),
            (2, changed.snapshot_id),
        ]
        assert find_snapshot(state.engine, "latest").snapshot_id == changed.snapshot_id
        assert find_snapshot(state.engine, "1").snapshot_id == first.snapshot_id
    finally:
        state.engine.dispose()


def test_snapshot_records_splits_cap_labels_and_lineage(seeded: Seeded) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    by_face = {r.face_id: r for r in manifest.records}
    face = {name: by_face.get(face_id) for name, face_id in seeded.faces.items()}

    assert len(manifest.records) == APPROVED_IN_SNAPSHOT - 1  # 8: a1 a2 b1 c1 d1 f1 g1 h1
    assert [face[name] for name in ("a3", "e1", "p1", "u1", "x1")] == [None] * 5
    train = {r.subject for r in manifest.split("train")}
    validation = {r.subject for r in manifest.split("validation")}
    assert not train & validation
    assert train
    assert validation

    summary = manifest.summary
    assert summary.dropped_by_cap == 1
    assert summary.quarantined_refs == 1
    assert summary.queue == {"pending": 2, "unmatched": 1, "rejected": 1}
    assert summary.decided_by == {"auto": 6, "human": 1, "import": 1, "other": 0}
    assert summary.duplicate_uploads == 2
    assert summary.styles == {"cel": 1, "ghibli": 7}
    assert summary.splits["train"].records + summary.splits["validation"].records == 8

    b1, d1 = face["b1"], face["d1"]
    assert b1 is not None
    assert d1 is not None
    assert "glasses" not in b1.labels  # model guess at 0.5 < 0.85
    assert b1.labels["expression"].model_dump(mode="json") == {
        "value": "smiling",
        "source": "model",
        "confidence": 0.99,
    }
    assert d1.labels["gender"].value == "male"  # human over declared
    assert d1.lineage.face_license == "CC-BY-4.0"
    assert d1.lineage.face_attribution == "Face Research Lab London Set"
    assert b1.lineage.face_license is None
    assert b1.lineage.decided_by == "human:alice"
    assert b1.ref_labels["hair_colour"].value == "black"
    assert b1.caption == "anime portrait, ghibli style, smiling adult man, slightly turned"
    assert manifest.library_version == 2

    row = find_snapshot(seeded.engine, result.snapshot_id)
    assert isinstance(row, Snapshot)
    assert (row.pairs, row.subjects) == (8, 7)
    assert (row.train, row.validation) == (
        summary.splits["train"].records,
        summary.splits["validation"].records,
    )
    assert row.params["max_per_subject"] == 2
    assert row.library_version == 2

    ghibli = create_snapshot(seeded.engine, seeded.settings, style="ghibli")
    assert ghibli.summary.styles == {"ghibli": 7}
    assert ghibli.version == 2


def test_subjects_linked_as_one_person_share_a_split_and_the_report_counts_them(
    seeded: Seeded, tmp_path: Path
) -> None:
    before = read_manifest(
        seeded.settings.dataset_dir, create_snapshot(seeded.engine, seeded.settings).snapshot_id
    )
    split_before = {r.subject: r.split for r in before.records}
    # Pick two subjects the split put apart, and say the embedder found them one person.
    first = next(r for r in before.records if r.split == "train")
    second = next(r for r in before.records if r.split == "validation")
    with seeded.engine.begin() as connection:
        connection.execute(
            _table(IdentityLink).insert(),
            {
                "face_id": second.face_id,
                "other_face_id": first.face_id,
                "distance": 0.12,
                "embedder": "test",
                "created_at": T0,
            },
        )

    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)

    split_of = {r.subject: r.split for r in manifest.records}
    identity_of = {r.subject: r.identity for r in manifest.records}
    assert split_of[first.subject] == split_of[second.subject]
    assert (
        identity_of[first.subject]
        == identity_of[second.subject]
        == min(first.subject, second.subject)
    )
    # Nobody else moved.
    others = set(split_of) - {first.subject, second.subject}
    assert {s: split_of[s] for s in others} == {s: split_before[s] for s in others}
    assert manifest.summary.merged_subjects == 2
    assert manifest.summary.identity_groups == len(split_of) - 1
    page = write_report(manifest, tmp_path / "report.html").read_text()
    assert "<td>subjects merged as one person (kept in one split)</td><td>2</td>" in page


def test_a_snapshot_that_loses_the_race_for_its_version_number_takes_the_next(
    seeded: Seeded,
) -> None:
    # Another process inserts a snapshot between our read of the highest version and our
    # insert: played by failing our first insert as the database would.
    lost: list[bool] = []

    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SNAPSHOTS") and not lost:
            lost.append(True)
            raise IntegrityError(statement, {}, Exception("UNIQUE constraint failed"))

    event.listen(seeded.engine, "before_cursor_execute", race)
    try:
        result = create_snapshot(seeded.engine, seeded.settings)
    finally:
        event.remove(seeded.engine, "before_cursor_execute", race)
    assert lost == [True]
    assert (result.version, result.created) == (1, True)


def test_snapshot_of_nothing_and_a_tampered_manifest_are_errors(tmp_path: Path) -> None:
    empty = seed(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 's2a.db'}", specs={})
    try:
        with pytest.raises(DatasetError, match="no approved pairs"):
            create_snapshot(empty.engine, empty.settings)
    finally:
        empty.engine.dispose()
    state = seed(tmp_path / "other", f"sqlite:///{tmp_path / 'other' / 's2a.db'}")
    try:
        result = create_snapshot(state.engine, state.settings)
        result.manifest_path.chmod(0o644)
        result.manifest_path.write_bytes(result.manifest_path.read_bytes().replace(b"0.9", b"0.1"))
        with pytest.raises(DatasetError, match="changed after it was written"):
            read_manifest(state.settings.dataset_dir, result.snapshot_id)
        with pytest.raises(DatasetError, match="different content"):
            create_snapshot(state.engine, state.settings)
        with pytest.raises(DatasetError, match="not a snapshot id"):
            read_manifest(state.settings.dataset_dir, "../../etc")
    finally:
        state.engine.dispose()


# -- exports ------------------------------------------------------------------------------


def _load(data_dir: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    return datasets.load_dataset("imagefolder", data_dir=str(data_dir), cache_dir=str(cache))


def test_imagefolder_export_loads_with_both_images_and_captions(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    out = tmp_path / "export" / "imagefolder"
    exported = export_snapshot(manifest, seeded.blobs, out, "imagefolder", size=256)
    assert exported.rows == {s: len(manifest.split(s)) for s in ("train", "validation")}

    loaded = _load(out, tmp_path / "hf-cache", monkeypatch)
    assert set(loaded) == {"train", "validation"}
    for split in ("train", "validation"):
        records = {r.pair_id: r for r in manifest.split(split)}
        rows = loaded[split]
        assert rows.num_rows == len(records)
        assert {"image", "selfie", "text", "weight", "labels"} <= set(rows.column_names)
        for row in rows:
            record = records[row["pair_id"]]
            assert row["text"] == record.caption
            assert row["image"].size == (48, 48)  # the anime training image
            assert row["selfie"].size == (32, 32)  # the 256 crop (tiny in this test)
            assert json.loads(row["labels"])["gender"] == record.labels["gender"].value

    licenses = (out / "LICENSES.md").read_text()
    for ref in ("CC-BY-4.0", "CC0-1.0", "CC-BY-SA-4.0", "Dirk Struve", "Astrid \\| Graeber"):
        assert ref in licenses
    assert "Face Research Lab London Set" in licenses
    assert "quarantined one" not in licenses
    assert json.loads((out / "export.json").read_text())["snapshot_id"] == result.snapshot_id


def test_instructpix2pix_export_loads_with_its_three_columns(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    out = tmp_path / "ip2p"
    out.mkdir()  # an empty directory is accepted
    export_snapshot(manifest, seeded.blobs, out, "instructpix2pix")

    loaded = _load(out, tmp_path / "hf-cache", monkeypatch)
    train = loaded["train"]
    assert {"input_image", "edit_prompt", "edited_image"} <= set(train.column_names)
    assert train.num_rows == len(manifest.split("train"))
    row = train[0]
    assert row["input_image"].size == (64, 64)  # the 512 crop (tiny in this test)
    assert row["edited_image"].size == (48, 48)
    assert row["edit_prompt"].startswith("turn this photo into an anime portrait, ")


def test_webdataset_export_reads_back_every_sample(seeded: Seeded, tmp_path: Path) -> None:
    import webdataset as wds

    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    out = tmp_path / "wds"
    exported = export_snapshot(manifest, seeded.blobs, out, "webdataset", shard_size=3)
    train_records = {r.pair_id: r for r in manifest.split("train")}
    shards = sorted((out / "train").glob("shard-*.tar"))
    assert len(shards) == -(-len(train_records) // 3)
    assert [f"train/{p.name}" for p in shards] == list(exported.files["train"])

    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(train_records)
    for sample in samples:
        record = train_records[sample["__key__"]]
        assert sample["selfie.png"].size == (64, 64)
        assert sample["anime.png"].size == (48, 48)
        assert sample["txt"] == record.caption
        assert sample["json"]["split"] == "train"
        assert sample["json"]["weight"] == record.weight
        assert sample["json"]["lineage"]["ref_id"] == record.lineage.ref_id
    validation_shard = str(out / "validation" / "shard-000000.tar")
    validation = list(wds.WebDataset(validation_shard, shardshuffle=False).decode())
    assert len(validation) == len(manifest.split("validation"))


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset"])
def test_exports_are_byte_identical(seeded: Seeded, tmp_path: Path, fmt: str) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    first = export_snapshot(manifest, seeded.blobs, tmp_path / "one", fmt).out
    second = export_snapshot(manifest, seeded.blobs, tmp_path / "two", fmt).out

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert files(first) == files(second)
    assert len(files(first)) > 3


def test_a_missing_or_corrupt_blob_fails_the_export_and_leaves_nothing(
    seeded: Seeded, tmp_path: Path
) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    record = manifest.records[0]
    digest = record.anime.training
    blob = seeded.blobs.path(digest)
    original = blob.read_bytes()

    blob.write_bytes(original[:-10])
    with pytest.raises(DatasetError, match=f"blob {digest} is corrupt"):
        export_snapshot(manifest, seeded.blobs, tmp_path / "bad", "webdataset")
    blob.unlink()
    with pytest.raises(DatasetError, match=f"anime: blob {digest} is missing"):
        export_snapshot(manifest, seeded.blobs, tmp_path / "bad", "imagefolder")
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        export_snapshot(manifest, seeded.blobs, tmp_path / "full", "imagefolder")


# -- report and CLI -------------------------------------------------------------------------


def test_report_shows_gaps_and_counts(seeded: Seeded, tmp_path: Path) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    path = write_report(manifest, tmp_path / "report.html")
    page = path.read_text()

    # age_band 60+ is a target value no record holds: a flagged gap row.
    assert (
        '<tr class="gap"><td>age_band</td><td>60+</td><td>0</td><td>0</td><td>0</td>'
        "<td>missing</td></tr>" in page
    )
    assert "<td>pairs dropped by the per-subject cap</td><td>1</td>" in page
    assert "<td>duplicate uploads removed at ingestion</td><td>2</td>" in page
    assert "<b>2</b> pending" in page
    assert "<td>human</td><td>1</td><td>12.5%</td>" in page
    assert page.count("<svg") >= 4  # pose, style and attribute charts
    for external in ("<script", "<link", "src=", "@import", "url("):
        assert external not in page
    assert "Astrid | Graeber" not in page  # nothing unescaped from the data either


def test_cli_json_prints_only_json(seeded: Seeded, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {
        "S2A_HOME": str(seeded.settings.home),
        "S2A_DATABASE_URL": seeded.settings.sql_url,
        "S2A_DATASET__MAX_PER_SUBJECT": "2",
        "S2A_DATASET__VALIDATION_FRACTION": "0.3",
    }

    def run(*args: str) -> Any:
        result = runner.invoke(cli, ["dataset", *args, "--json"], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    made = run("snapshot")
    assert made["created"] is True
    assert made["summary"]["records"] == 8
    again = run("snapshot")
    assert (again["snapshot_id"], again["created"]) == (made["snapshot_id"], False)
    listed = run("list")
    assert [row["snapshot_id"] for row in listed] == [made["snapshot_id"]]

    exported = run("export", "latest", "--format", "webdataset", "--out", str(tmp_path / "w"))
    assert exported["snapshot_id"] == made["snapshot_id"]
    assert Path(exported["out"], exported["files"]["train"][0]).is_file()

    reported = run("report", made["snapshot_id"])
    assert Path(reported["path"]) == (
        seeded.settings.dataset_dir / made["snapshot_id"] / "report.html"
    )
    assert Path(reported["path"]).is_file()

    missing = runner.invoke(cli, ["dataset", "report", "7", "--json"], env=env)
    assert missing.exit_code != 0
    assert missing.stdout == ""


# -- report pictures ------------------------------------------------------------------------


class _Page(HTMLParser):
    """The parts of a report page the picture tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.split: str | None = None
        self.pairs: dict[str, list[tuple[str, list[dict[str, str]]]]] = {}
        """split -> [(pair_id, its <img> attributes)]"""
        self.refs: list[str] = []
        self.resources: list[str] = []
        """every src= and href= value"""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.resources += [a[k] for k in ("src", "href") if k in a]
        if tag == "div" and "data-split" in a:
            self.split = a["data-split"]
        elif tag == "figure" and "data-pair" in a and self.split is not None:
            self.pairs.setdefault(self.split, []).append((a["data-pair"], []))
        elif tag == "tr" and "data-ref" in a:
            self.refs.append(a["data-ref"])
        elif tag == "img" and self.split is not None and self.pairs.get(self.split):
            self.pairs[self.split][-1][1].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3"):  # a heading closes the sheet before it
            self.split = None


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def _decode(uri: str) -> Image.Image:
    head, _, data = uri.partition(",")
    assert head == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def _quarantine_with_reason(seeded: Seeded) -> str:
    refs = _table(AnimeRef)
    ref_id = seeded.refs["r-ghibli-q"]
    with seeded.engine.begin() as connection:
        connection.execute(
            update(refs)
            .where(refs.c.ref_id == ref_id)
            .values(
                reason="style_outlier", detail="hue <mean> 4.2 sd from the style", outlier_score=4.2
            )
        )
    return ref_id


def test_report_shows_every_pair_as_embedded_thumbnails(seeded: Seeded, tmp_path: Path) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    page = write_report(
        manifest, tmp_path / "report.html", blobs=seeded.blobs, thumb_size=96
    ).read_text()
    parsed = _parse(page)

    for split in ("train", "validation"):
        records = manifest.split(split)
        shown = parsed.pairs[split]
        assert [pair_id for pair_id, _ in shown] == [r.pair_id for r in records]
        assert f"Showing {len(records)} of {len(records)} {split} pairs." in page
        for _, images in shown:
            assert [img["alt"] for img in images] == ["selfie crop", "anime reference"]
            for img in images:
                # Square test images are fitted to the square, scaled up from 32 and 48 px.
                assert _decode(img["src"]).size == (96, 96)
                assert (img["width"], img["height"]) == ("96", "96")
    b1 = next(r for r in manifest.records if r.face_id == seeded.faces["b1"])
    assert "male, 30-44, slight<br>score 0.70 · human:alice" in page  # b1's caption

    # Nothing outside the file: every resource is inline data or a link within the page
    # (the SVG namespace URI is a name, not a resource).
    assert parsed.resources
    assert all(uri.startswith(("data:image/jpeg;base64,", "#")) for uri in parsed.resources)
    assert re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page) is None
    for external in ("<script", "<link", "@import", "url(", "@font-face"):
        assert external not in page
    assert b1.pair_id in page


def test_report_caps_the_pairs_shown_per_split(seeded: Seeded, tmp_path: Path) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    page = render_report(manifest, blobs=seeded.blobs, sheet_size=2)
    parsed = _parse(page)
    train = manifest.split("train")
    assert len(train) > 2
    assert len(parsed.pairs["train"]) == 2
    assert f"Showing 2 of {len(train)} train pairs (evenly spread" in page
    # Spread over the manifest order, not its head: the first and a later pair.
    assert [p for p, _ in parsed.pairs["train"]] == [
        train[0].pair_id,
        train[len(train) // 2].pair_id,
    ]
    with pytest.raises(DatasetError, match="sheet_size must be 0 or more"):
        render_report(manifest, sheet_size=-1)


def test_report_lists_quarantined_references_with_their_reason(
    seeded: Seeded, tmp_path: Path
) -> None:
    ref_id = _quarantine_with_reason(seeded)
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    quarantined = Catalog(seeded.engine).list(status="quarantined")
    assert [r.ref_id for r in quarantined] == [ref_id]
    page = render_report(manifest, blobs=seeded.blobs, quarantined=quarantined)

    assert _parse(page).refs == [ref_id]
    row = page[page.index(f'<tr data-ref="{ref_id}">') :]
    row = row[: row.index("</tr>")]
    assert '<td class="reason">style_outlier</td>' in row
    assert "<td>hue &lt;mean&gt; 4.2 sd from the style</td>" in row  # escaped
    assert "<td>ghibli</td>" in row
    assert "<td>4.20</td>" in row
    assert _decode(re.findall(r'src="([^"]+)"', row)[0]).size == (112, 112)
    assert "Showing 1 of 1 quarantined references." in page

    assert "The reference library was not read" in render_report(manifest)
    assert "Showing 0 of 0 quarantined references." in render_report(manifest, quarantined=[])


def test_report_counts_distinct_references(seeded: Seeded) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    use = reference_use(manifest)

    ref_ids = [r.lineage.ref_id for r in manifest.records]
    assert use.distinct == len(set(ref_ids)) == 3  # r-ghibli-1, r-ghibli-2, r-cel-1
    for split in ("train", "validation"):
        assert use.per_split[split] == len({r.lineage.ref_id for r in manifest.split(split)})
    assert use.top_ref == seeded.refs["r-ghibli-1"]  # a1, b1, d1, g1, h1
    assert use.top_count == ref_ids.count(use.top_ref) == 5
    assert use.top_share == 5 / 8

    page = render_report(manifest)
    per_split = "".join(f"<td>{use.per_split[s]}</td>" for s in ("train", "validation"))
    assert f"<td>distinct references</td>{per_split}<td>3</td>" in page
    assert f"<td>most-used reference</td><td>{use.top_ref}: 5 pair(s), 62.5% of" in page


def test_report_flags_a_corrupt_blob_and_still_shows_the_rest(
    seeded: Seeded, tmp_path: Path
) -> None:
    result = create_snapshot(seeded.engine, seeded.settings)
    manifest = read_manifest(seeded.settings.dataset_dir, result.snapshot_id)
    record = manifest.records[0]
    blob = seeded.blobs.path(record.selfie.crop_256)
    blob.write_bytes(blob.read_bytes()[:-10])

    page = render_report(manifest, blobs=seeded.blobs)
    assert '<p class="flag">1 image(s) could not be shown:' in page
    assert f"pair {record.pair_id} selfie: blob {record.selfie.crop_256} is corrupt" in page
    assert "selfie crop not shown</div>" in page
    images = sum(len(imgs) for pairs in _parse(page).pairs.values() for _, imgs in pairs)
    assert images == 2 * len(manifest.records) - 1


def test_cli_report_shows_pairs_and_quarantined_references(seeded: Seeded) -> None:
    ref_id = _quarantine_with_reason(seeded)
    env = {
        "S2A_HOME": str(seeded.settings.home),
        "S2A_DATABASE_URL": seeded.settings.sql_url,
        "S2A_DATASET__MAX_PER_SUBJECT": "2",
        "S2A_DATASET__VALIDATION_FRACTION": "0.3",
    }
    runner = CliRunner()
    made = runner.invoke(cli, ["dataset", "snapshot", "--json"], env=env, catch_exceptions=False)
    snapshot_id = json.loads(made.stdout)["snapshot_id"]
    reported = runner.invoke(
        cli, ["dataset", "report", snapshot_id, "--json"], env=env, catch_exceptions=False
    )
    assert reported.exit_code == 0, reported.output
    parsed = _parse(Path(json.loads(reported.stdout)["path"]).read_text())
    assert sum(len(pairs) for pairs in parsed.pairs.values()) == 8
    assert parsed.refs == [ref_id]
