"""The versioned anime-reference index, on the real engines: qdrant-edge shards and
qdrant-client's local store, in temporary folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agents.errors import EmbedderMismatch, StorageError
from agents.records import EmbeddingSpace
from agents.stores.refindex import (
    MANIFEST,
    RefFilter,
    RefIndex,
    RefInputError,
    RefPoint,
    RefVersionMissing,
    copy_sparse,
    latest_local_version,
    open_ref_index,
    prune_versions,
    publish_version,
    version_dir,
)
from schemas.settings import Settings

BACKENDS = ("edge", "qdrant-local")
DIM = 512
SPACE = EmbeddingSpace("test-embedder/dim=512", DIM)

MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    def make(backend: str = "edge", home: str = "home") -> Settings:
        return Settings(home=tmp_path / home, refs={"index_backend": backend})

    return make


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, make_settings: MakeSettings) -> Settings:
    return make_settings(request.param)


def unit(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_id(i: int) -> str:
    return str(uuid.UUID(int=(0xFACE << 112) + i))


def point(
    i: int,
    vector: npt.NDArray[np.float32],
    style: str = "ghibli",
    labels: dict[str, str] | None = None,
    version: int = 1,
) -> RefPoint:
    return RefPoint(
        ref_id=ref_id(i),
        vector=vector,
        payload={
            "style": style,
            "tags": ["face", f"n{i}"],
            "labels": labels if labels is not None else {"glasses": "no"},
            "license": "CC-BY-4.0",
            "source": f"https://example.org/{i}.png",
            "author": "A. Artist",
            "library_version": version,
            "score_hint": 0.25,
        },
    )


def library(n: int = 60, seed: int = 0) -> list[RefPoint]:
    """n references over three styles, glasses on every third, hair colours in rotation."""
    vectors = unit(np.random.default_rng(seed), n)
    hair = ("black", "brown", "blond")
    return [
        point(
            i,
            vectors[i],
            style=("ghibli", "shoujo", "chibi")[i % 3],
            labels={"glasses": "yes" if i % 3 == 0 else "no", "hair_colour": hair[(i // 3) % 3]},
        )
        for i in range(n)
    ]


def opened(settings: Settings, version: int) -> RefIndex:
    return open_ref_index(settings, version, SPACE)


def test_a_published_version_reads_back_with_exact_payloads(settings: Settings) -> None:
    points = library()
    location = publish_version(settings, 1, None, points, space=SPACE)

    assert location == str(settings.ref_index_dir / "v000001")
    index = opened(settings, 1)
    try:
        assert index.version == 1
        assert index.count() == len(points)
        for p in points[:5]:
            (hit,) = index.search(p.vector, 1)
            assert hit.ref_id == p.ref_id
            assert hit.score == pytest.approx(1.0, abs=1e-5)
            assert hit.payload == p.payload
    finally:
        index.close()
    manifest = json.loads((Path(location) / MANIFEST).read_text())
    assert (manifest["version"], manifest["count"]) == (1, len(points))
    assert manifest["backend"] == settings.refs.index_backend
    assert (manifest["embedder"], manifest["dim"]) == (SPACE.name, DIM)


def test_the_dim_follows_the_embedder_and_another_embedders_version_is_refused(
    settings: Settings,
) -> None:
    dlib_like = EmbeddingSpace("dlib-resnet/sha256=0123456789ab", 128)
    rng = np.random.default_rng(4)
    small = [point(i, v) for i, v in enumerate(unit(rng, 5)[:, :128])]
    small = [RefPoint(p.ref_id, p.vector / np.linalg.norm(p.vector), p.payload) for p in small]
    with pytest.raises(RefInputError, match=r"shape \(512,\)"):
        publish_version(settings, 1, None, small, space=SPACE)
    publish_version(settings, 1, None, small, space=dlib_like)
    index = open_ref_index(settings, 1, dlib_like)
    try:
        assert index.dim == 128
        assert index.search(small[2].vector, 1)[0].ref_id == small[2].ref_id
    finally:
        index.close()
    # Vectors of two embedders are never compared: opening, or building on, is refused.
    with pytest.raises(EmbedderMismatch) as caught:
        open_ref_index(settings, 1, SPACE)
    assert "dlib-resnet/sha256=0123456789ab" in str(caught.value)
    assert "S2A_MODELS__EMBEDDER" in str(caught.value)
    with pytest.raises(EmbedderMismatch):
        publish_version(settings, 2, 1, library(2), space=SPACE)
    assert latest_local_version(settings) == 1


def test_a_version_that_does_not_record_its_embedder_is_refused(settings: Settings) -> None:
    location = Path(publish_version(settings, 1, None, library(3), space=SPACE))
    manifest = json.loads((location / MANIFEST).read_text())
    del manifest["embedder"]  # as written before embedders were recorded
    (location / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EmbedderMismatch, match="an embedder it does not record"):
        open_ref_index(settings, 1, SPACE)


def test_filters_return_only_matching_points_and_k_of_them(settings: Settings) -> None:
    rng = np.random.default_rng(1)
    query = unit(rng, 1)[0]
    # 150 near neighbours of the query that fail the filter, 12 far ones that pass: a
    # search that filtered after taking the top k would come back short.
    near = [
        point(i, query + 0.3 * unit(rng, 1)[0], style="ghibli", labels={"glasses": "no"})
        for i in range(150)
    ]
    far = [
        point(
            150 + i,
            -query + 0.3 * unit(rng, 1)[0],
            style="shoujo",
            labels={"glasses": ("yes", "no", "unsure")[i % 3], "age_band": "18-29"},
        )
        for i in range(12)
    ]
    publish_version(settings, 1, None, near + far, space=SPACE)
    index = opened(settings, 1)
    try:
        hits = index.search(query, 5, RefFilter(style="shoujo"))
        assert len(hits) == 5
        assert {h.payload["style"] for h in hits} == {"shoujo"}

        any_of = index.search(
            query, 8, RefFilter(style="shoujo", labels={"glasses": ["yes", "no"]})
        )
        assert len(any_of) == 8
        assert {h.payload["labels"]["glasses"] for h in any_of} == {"yes", "no"}

        exact = index.search(query, 10, RefFilter(labels={"glasses": "yes", "age_band": "18-29"}))
        assert sorted(h.ref_id for h in exact) == sorted(p.ref_id for p in far[0::3])

        left_out = [p.ref_id for p in far[:4]]
        rest = index.search(query, 20, RefFilter(style="shoujo", exclude=left_out))
        assert sorted(h.ref_id for h in rest) == sorted(p.ref_id for p in far[4:])

        assert index.search(query, 5, RefFilter(style="renpy")) == []
        assert index.search(query, 5, RefFilter(labels={"glasses": []})) == []
        # Ranked by similarity, best first.
        scores = [h.score for h in rest]
        assert scores == sorted(scores, reverse=True)
    finally:
        index.close()


def test_labels_not_shuts_out_those_values_and_lets_unlabelled_references_pass(
    settings: Settings,
) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 7)
    wearing = [point(i, vectors[i], labels={"glasses": "yes"}) for i in range(3)]
    bare = [point(3 + i, vectors[3 + i], labels={"glasses": "no"}) for i in range(2)]
    unlabelled = [point(5 + i, vectors[5 + i], labels={}) for i in range(2)]
    publish_version(settings, 1, None, wearing + bare + unlabelled, space=SPACE)
    index = opened(settings, 1)
    try:
        hits = index.search(vectors[0], 10, RefFilter(labels_not={"glasses": ["yes"]}))
    finally:
        index.close()
    assert sorted(h.ref_id for h in hits) == sorted(p.ref_id for p in bare + unlabelled)


def test_search_many_answers_each_query_as_search_does(settings: Settings) -> None:
    points = library()
    publish_version(settings, 1, None, points, space=SPACE)
    queries = np.stack([p.vector for p in points[:6]])
    where = RefFilter(style="chibi", labels={"glasses": "no"})
    index = opened(settings, 1)
    try:
        many = index.search_many(queries, 4, where)
        single = [index.search(q, 4, where) for q in queries]
        assert index.search_many([], 4) == []
    finally:
        index.close()
    assert [[h.ref_id for h in hits] for hits in many] == [
        [h.ref_id for h in hits] for hits in single
    ]
    assert all(len(hits) == 4 for hits in many)


def test_next_version_is_base_plus_upserts_minus_deletes_while_base_reader_is_unchanged(
    settings: Settings,
) -> None:
    old = library(40)
    publish_version(settings, 1, None, old, space=SPACE)
    reader = opened(settings, 1)  # the worker's view, opened before the publish
    try:
        before = {p.ref_id: reader.search(p.vector, 3) for p in old[:5]}
        new = [
            point(100 + i, v, style="renpy")
            for i, v in enumerate(unit(np.random.default_rng(7), 5))
        ]
        changed = point(3, old[3].vector, style="renpy", version=2)
        deleted = [old[0].ref_id, old[1].ref_id]

        publish_version(settings, 2, 1, [*new, changed], deleted, space=SPACE)

        newer = opened(settings, 2)
        try:
            assert newer.count() == 40 + 5 - 2
            assert newer.search(old[0].vector, 1)[0].ref_id != old[0].ref_id
            assert newer.search(new[2].vector, 1)[0].ref_id == new[2].ref_id
            assert newer.search(old[3].vector, 1)[0].payload == changed.payload
            assert {
                h.ref_id for h in newer.search(old[5].vector, 50, RefFilter(style="renpy"))
            } == {p.ref_id for p in [*new, changed]}
        finally:
            newer.close()
        assert reader.count() == 40
        assert {p.ref_id: reader.search(p.vector, 3) for p in old[:5]} == before
        assert reader.search(old[3].vector, 1)[0].payload == old[3].payload
    finally:
        reader.close()
    assert latest_local_version(settings) == 2


def test_a_reader_in_another_process_keeps_its_version_while_a_writer_publishes(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings("edge")
    old = library(30)
    publish_version(settings, 1, None, old, space=SPACE)
    # The worker: opens version 1, then answers one search per line on stdin.
    reader = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from agents.records import EmbeddingSpace
        from agents.stores.refindex import open_ref_index
        from schemas.settings import Settings
        space = EmbeddingSpace({SPACE.name!r}, {SPACE.dim})
        index = open_ref_index(Settings(home={str(settings.home)!r}), 1, space)
        print("open", flush=True)
        for line in sys.stdin:
            hits = index.search(np.array(json.loads(line), dtype=np.float32), 1)
            print(json.dumps([index.count(), hits[0].ref_id]), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", reader],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[4],
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "open"
        extra = point(500, unit(np.random.default_rng(3), 1)[0], style="renpy")
        publish_version(settings, 2, 1, [extra], [old[0].ref_id], space=SPACE)

        proc.stdin.write(json.dumps(old[0].vector.tolist()) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == [30, old[0].ref_id]
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    index = opened(settings, 2)
    try:
        assert index.count() == 30
        assert index.search(old[0].vector, 1)[0].ref_id != old[0].ref_id
    finally:
        index.close()


def test_republishing_a_version_changes_nothing(settings: Settings) -> None:
    first = library(20)
    location = publish_version(settings, 1, None, first, space=SPACE)
    manifest = (Path(location) / MANIFEST).read_text()

    again = publish_version(settings, 1, None, library(25, seed=9), space=SPACE)

    assert again == location
    assert (Path(location) / MANIFEST).read_text() == manifest
    index = opened(settings, 1)
    try:
        assert index.count() == 20
        assert index.search(first[4].vector, 1)[0].ref_id == first[4].ref_id
    finally:
        index.close()


def test_a_failed_publish_leaves_no_version_and_no_temporary_folder(settings: Settings) -> None:
    publish_version(settings, 1, None, library(20), space=SPACE)
    # Damage the base: its copy then holds fewer points than its manifest promises.
    engine = version_dir(settings, 1) / settings.refs.index_backend
    if settings.refs.index_backend == "edge":
        shutil.rmtree(engine / "segments")
        (engine / "segments").mkdir()
    else:
        (engine / "collection" / "anime_refs" / "storage.sqlite").unlink()
    with pytest.raises(StorageError, match="manifest says 20"):
        publish_version(settings, 2, 1, library(3, seed=5), space=SPACE)

    assert not version_dir(settings, 2).exists()
    assert sorted(p.name for p in settings.ref_index_dir.iterdir()) == ["v000001"]
    assert latest_local_version(settings) == 1


def test_temporary_folders_of_dead_publishers_are_ignored_then_removed(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings("edge")
    publish_version(settings, 1, None, library(10), space=SPACE)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(finished.stdout)
    dead = settings.ref_index_dir / f".v000002.tmp-{dead_pid}-0bad"
    (dead / "edge").mkdir(parents=True)
    (dead / "edge" / "half-written").write_bytes(b"\0" * 64)
    live = settings.ref_index_dir / f".v000003.tmp-{os.getpid()}-0123"
    live.mkdir()
    # A folder under a version's name without a manifest is not a version either.
    (settings.ref_index_dir / "v000004").mkdir()

    assert latest_local_version(settings) == 1
    with pytest.raises(RefVersionMissing):
        open_ref_index(settings, 4, SPACE)
    publish_version(settings, 2, 1, library(3, seed=5), space=SPACE)

    assert not dead.exists()
    assert live.exists()  # its publisher is still running
    assert latest_local_version(settings) == 2


def test_a_missing_version_names_its_folder(settings: Settings) -> None:
    with pytest.raises(RefVersionMissing) as caught:
        open_ref_index(settings, 7, SPACE)
    assert str(version_dir(settings, 7)) in str(caught.value)
    assert isinstance(caught.value, StorageError)
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(RefVersionMissing, match="v000003"):
        publish_version(settings, 4, 3, library(2), space=SPACE)


def test_both_backends_return_the_exact_top_hits(make_settings: MakeSettings) -> None:
    points = library(90, seed=4)
    vectors = np.stack([p.vector for p in points])
    queries = unit(np.random.default_rng(11), 8)
    where = RefFilter(style="ghibli", labels={"hair_colour": ["black", "blond"]})
    allowed = np.array(
        [
            p.payload["style"] == "ghibli"
            and p.payload["labels"]["hair_colour"] in ("black", "blond")
            for p in points
        ]
    )
    answers: dict[str, list[list[tuple[str, float]]]] = {}
    for backend in BACKENDS:
        settings = make_settings(backend, home=backend)
        publish_version(settings, 1, None, points, space=SPACE)
        index = open_ref_index(settings, 1, SPACE)
        try:
            answers[backend] = [
                [(h.ref_id, h.score) for h in hits]
                for hits in [*index.search_many(queries, 5), *index.search_many(queries, 5, where)]
            ]
        finally:
            index.close()
    brute = []
    for mask in (np.ones(len(points), bool), allowed):
        for q in queries:
            scores = np.where(mask, vectors @ q, -np.inf)
            brute.append([ref_id(int(i)) for i in np.argsort(-scores)[:5]])
    for backend in BACKENDS:
        assert [[rid for rid, _ in hits] for hits in answers[backend]] == brute
    edge, local = answers["edge"], answers["qdrant-local"]
    for a, b in zip(edge, local, strict=True):
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)


def test_an_optimised_edge_library_still_answers_exactly(make_settings: MakeSettings) -> None:
    # 6,000 references fill segments past the engine's indexing threshold: they are
    # optimised with the tuned config (immutable segments, points stored by style).
    settings = make_settings("edge")
    n = 6000
    rng = np.random.default_rng(21)
    vectors = unit(rng, n)
    styles = rng.integers(0, 3, n)
    names = ("ghibli", "shoujo", "chibi")
    publish_version(
        settings,
        1,
        None,
        [point(i, vectors[i], style=names[styles[i]]) for i in range(n)],
        space=SPACE,
    )
    queries = unit(rng, 20)
    index = open_ref_index(settings, 1, SPACE)
    try:
        plain = index.search_many(queries, 10)
        filtered = index.search_many(queries, 10, RefFilter(style="shoujo"))
    finally:
        index.close()
    for hits, q in zip(plain, queries, strict=True):
        assert [h.ref_id for h in hits] == [ref_id(int(i)) for i in np.argsort(-(vectors @ q))[:10]]
    for hits, q in zip(filtered, queries, strict=True):
        scores = np.where(styles == 1, vectors @ q, -np.inf)
        assert [h.ref_id for h in hits] == [ref_id(int(i)) for i in np.argsort(-scores)[:10]]


def test_prune_keeps_the_newest_and_an_open_pruned_version_still_answers(
    settings: Settings,
) -> None:
    points = library(12)
    publish_version(settings, 1, None, points, space=SPACE)
    oldest = opened(settings, 1)
    try:
        for version in range(2, 6):
            publish_version(
                settings, version, version - 1, [], [points[version].ref_id], space=SPACE
            )

        assert prune_versions(settings, keep=2) == [1, 2, 3]
        assert sorted(p.name for p in settings.ref_index_dir.iterdir()) == ["v000004", "v000005"]
        assert prune_versions(settings, keep=2) == []
        with pytest.raises(RefVersionMissing):
            open_ref_index(settings, 3, SPACE)
        # Deleted on disk, still open here (Linux keeps the files while they are open).
        assert oldest.count() == 12
        assert oldest.search(points[2].vector, 1)[0].ref_id == points[2].ref_id
    finally:
        oldest.close()
    assert latest_local_version(settings) == 5


def _disk_bytes(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (allocated blocks, not their length)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def test_copy_sparse_keeps_the_holes_and_every_byte(tmp_path: Path) -> None:
    src, dst = tmp_path / "sparse.dat", tmp_path / "copy.dat"
    with src.open("wb") as out:
        out.truncate(64 << 20)  # 64 MiB of hole ...
        out.seek(5 << 20)
        out.write(b"data in the middle" * 1000)
        out.seek((64 << 20) - 3)
        out.write(b"end")  # ... and data at the very end
    if _disk_bytes(tmp_path) > 8 << 20:
        pytest.skip("this filesystem does not keep holes")

    copy_sparse(str(src), str(dst))

    assert dst.stat().st_size == src.stat().st_size
    assert dst.stat().st_blocks * 512 < 8 << 20
    with src.open("rb") as a, dst.open("rb") as b:
        while chunk := a.read(1 << 20):
            assert chunk == b.read(1 << 20)


def test_a_new_version_takes_about_the_disk_of_its_base(make_settings: MakeSettings) -> None:
    """The edge engine's files are mostly holes; a plain copy made each version 137 MiB."""
    settings = make_settings("edge")
    points = library(20)
    publish_version(settings, 1, None, points, space=SPACE)
    publish_version(settings, 2, 1, [], [points[0].ref_id], space=SPACE)
    first = _disk_bytes(version_dir(settings, 1))
    second = _disk_bytes(version_dir(settings, 2))
    apparent = sum(f.stat().st_size for f in version_dir(settings, 2).rglob("*") if f.is_file())

    assert second < max(2 * first, 4 << 20) < apparent
    index = opened(settings, 2)
    try:
        assert index.count() == 19
    finally:
        index.close()


def test_bad_input_is_refused_with_the_argument_named(settings: Settings) -> None:
    good = library(3)
    bad_points: list[tuple[RefPoint, str]] = [
        (RefPoint(good[0].ref_id, good[0].vector[:100], good[0].payload), "shape"),
        (RefPoint(good[0].ref_id.upper(), good[0].vector, good[0].payload), "canonical UUID"),
        (RefPoint(good[0].ref_id, good[0].vector, {"tags": []}), "style"),
        (RefPoint(good[0].ref_id, np.zeros(DIM, np.float32), good[0].payload), "non-zero"),
    ]
    for bad, message in bad_points:
        with pytest.raises(RefInputError, match=message):
            publish_version(settings, 1, None, [good[1], bad], space=SPACE)
    assert latest_local_version(settings) is None

    publish_version(settings, 1, None, good, space=SPACE)
    index = opened(settings, 1)
    try:
        cases: list[tuple[Callable[[], Any], str]] = [
            (lambda: index.search(good[0].vector, 0), "limit"),
            (lambda: index.search(np.ones(3), 1), "shape"),
            (
                lambda: index.search(good[0].vector, 1, RefFilter(labels={"Glasses!": "no"})),
                "label name",
            ),
            (lambda: index.search(good[0].vector, 1, RefFilter(exclude=["not-a-uuid"])), "exclude"),
        ]
        for call, message in cases:
            with pytest.raises(RefInputError, match=message):
                call()
    finally:
        index.close()
    with pytest.raises(RefInputError, match="keep"):
        prune_versions(settings, keep=0)
