"""The edge index's in-memory search against the engine's own, on one real shard: the same
hits for every kind of filter, fresh payloads, and writes seen by the next search."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agents.stores.refindex import EDGE_TUNING, EdgeRefIndex, RefFilter, RefPoint

DIM = 128
STYLES = ("ghibli", "shoujo", "chibi")
GLASSES = ("yes", "no", None)  # None: the reference carries no glasses label
HAIR = ("black", "brown", "blond")


def ref_id(i: int) -> str:
    return str(uuid.UUID(int=(0xED6E << 112) + i))


def unit(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def points(n: int, seed: int = 0, start: int = 0) -> list[RefPoint]:
    """n references over three styles (interleaved, so the engine's order is not the
    style order), with and without glasses and hair-colour labels."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng, n)
    out = []
    for i in range(n):
        labels = {"hair_colour": HAIR[(i // 2) % 3]}
        glasses = GLASSES[(i // 3) % 3]
        if glasses is not None:
            labels["glasses"] = glasses
        out.append(
            RefPoint(
                ref_id(start + i),
                # Not unit length: the engine normalises; the copy must score cosines too.
                vectors[i] * (1.0 + i % 4),
                {"style": STYLES[i % 3], "labels": labels, "tags": [f"n{i}"], "n": start + i},
            )
        )
    return out


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed shard of 900 references (written once, only read by the tests)."""
    path = tmp_path_factory.mktemp("refindex-edge") / "edge"
    index = EdgeRefIndex.create(path, dim=DIM)
    index.upsert(points(900))
    index.finish()
    index.close()
    return path


@pytest.fixture
def index(shard: Path) -> Iterator[EdgeRefIndex]:
    index = EdgeRefIndex.load(shard, dim=DIM)
    yield index
    index.close()


@pytest.fixture
def engine(shard: Path) -> Iterator[EdgeRefIndex]:
    """The same shard, searched by the engine: the reference answers."""
    index = EdgeRefIndex.load(
        shard, dim=DIM, tuning=dataclasses.replace(EDGE_TUNING, in_memory=False)
    )
    yield index
    index.close()


#: Each kind of filter, by what it selects from the style-ordered rows: all, one block,
#: part of a block (scored whole or gathered), rows across blocks, an exclusion, nothing.
FILTERS: dict[str, RefFilter | None] = {
    "none": None,
    "empty": RefFilter(),
    "style": RefFilter(style="shoujo"),
    "style+label": RefFilter(style="chibi", labels={"glasses": "yes"}),
    "style+any-of": RefFilter(style="ghibli", labels={"hair_colour": ["black", "blond"]}),
    "label": RefFilter(labels={"glasses": "no"}),
    "style+not": RefFilter(style="shoujo", labels_not={"glasses": ["yes"]}),
    "nots": RefFilter(labels_not={"glasses": ["yes", "no"], "hair_colour": "brown"}),
    "style+label+not": RefFilter(
        style="ghibli", labels={"glasses": "yes"}, labels_not={"hair_colour": "black"}
    ),
    "style+exclude": RefFilter(style="chibi", exclude=[ref_id(i) for i in range(0, 300, 2)]),
    "absent label": RefFilter(labels={"age_band": "18-29"}),
    "absent style": RefFilter(style="renpy"),
}


@pytest.mark.parametrize("where", FILTERS.values(), ids=FILTERS.keys())
def test_the_in_memory_search_answers_as_the_engine_does(
    index: EdgeRefIndex, engine: EdgeRefIndex, where: RefFilter | None
) -> None:
    queries = unit(np.random.default_rng(7), 6)
    for limit in (1, 10, 400):
        mine = index.search_many(queries, limit, where)
        theirs = engine.search_many(queries, limit, where)
        for a, b in zip(mine, theirs, strict=True):
            assert [h.ref_id for h in a] == [h.ref_id for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
            assert [h.payload for h in a] == [h.payload for h in b]


def test_hits_are_ranked_and_filtered(index: EdgeRefIndex) -> None:
    query = unit(np.random.default_rng(8), 1)[0]
    excluded = {ref_id(i) for i in range(0, 900, 5)}
    where = RefFilter(style="shoujo", labels_not={"glasses": "yes"}, exclude=sorted(excluded))
    hits = index.search(query, 1000, where)
    expected = [
        p
        for p in points(900)
        if p.payload["style"] == "shoujo"
        and p.payload["labels"].get("glasses") != "yes"
        and p.ref_id not in excluded
    ]
    assert sorted(h.ref_id for h in hits) == sorted(p.ref_id for p in expected)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_each_hit_gets_its_own_payload(index: EdgeRefIndex) -> None:
    query = unit(np.random.default_rng(9), 1)[0]
    first = index.search(query, 1)[0]
    first.payload["labels"]["glasses"] = "changed"
    first.payload["tags"].append("changed")
    again = index.search(query, 1)[0]
    assert again.ref_id == first.ref_id
    assert "changed" not in again.payload["tags"]
    assert again.payload["labels"].get("glasses") != "changed"


def test_writes_are_seen_by_the_next_search(tmp_path: Path) -> None:
    index = EdgeRefIndex.create(tmp_path / "edge", dim=DIM)
    query = unit(np.random.default_rng(10), 1)[0]
    added = RefPoint(ref_id(5000), query, {"style": "renpy", "labels": {}})
    try:
        index.upsert(points(60))
        assert len(index.search(query, 5, RefFilter(style="shoujo"))) == 5  # read into memory
        index.upsert([added])
        hits = index.search(query, 3)
        assert hits[0].ref_id == added.ref_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-6)
        renpy = index.search(query, 3, RefFilter(style="renpy"))
        assert [h.ref_id for h in renpy] == [added.ref_id]
        index.delete([added.ref_id])
        assert index.search(query, 3, RefFilter(style="renpy")) == []
        assert added.ref_id not in {h.ref_id for h in index.search(query, 3)}
    finally:
        index.close()


def test_an_empty_shard_answers_nothing(tmp_path: Path) -> None:
    index = EdgeRefIndex.create(tmp_path / "edge", dim=DIM)
    try:
        query = unit(np.random.default_rng(11), 1)[0]
        assert index.search(query, 10) == []
        assert index.search(query, 10, RefFilter(style="ghibli")) == []
    finally:
        index.close()
