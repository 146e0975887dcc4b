"""A person overruling the style check: ``refs quarantine`` and ``refs reinstate``.

Real components, as in ``test_references.py``: the migrated database from ``sql_url``
(SQLite, and PostgreSQL when it runs), the blob store and the versioned reference index
under a temporary home, the seeded embedder, and the ``s2a`` command through click.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from agents.references import Attribution, InvalidRequest, Outcome, RefLibrary, read_sources
from agents.stores.refindex import open_ref_index
from infra.cli import cli
from schemas.migrate import upgrade
from schemas.reasons import RefReason, RefStatus
from schemas.settings import Settings

DATA = Path(__file__).parents[1] / "data"
ANIME = DATA / "anime"
SYLVIE = sorted(ANIME.glob("renpy_sylvie_*_face.png"))[:6]
PHOTO = DATA / "real" / "london_004_neutral.jpg"


@pytest.fixture
def settings(tmp_path: Path, sql_url: str) -> Settings:
    upgrade(sql_url)
    return Settings(home=tmp_path / "home", database_url=sql_url)


@pytest.fixture
def library(settings: Settings, embedder: Any) -> RefLibrary:
    return RefLibrary(settings, embedder=embedder)


@pytest.fixture(scope="module")
def sources() -> dict[str, Attribution]:
    return read_sources(DATA / "SOURCES.csv")


def _indexed(library: RefLibrary, version: int) -> set[str]:
    """The ref ids in version ``version``'s index (every point, by a search as wide)."""
    index = open_ref_index(library.settings, version, library.embedder.space)
    try:
        count = index.count()
        probe = np.ones(library.embedder.space.dim, dtype=np.float32)
        return {hit.ref_id for hit in index.search(probe, max(count, 1))} if count else set()
    finally:
        index.close()


def _vector(library: RefLibrary, ref_id: str) -> Any:
    ref = library.get(ref_id)
    assert ref is not None
    return library._vector_of(ref)


def test_quarantine_by_hand_records_who_and_when_and_leaves_the_index(
    library: RefLibrary, sources: dict[str, Attribution]
) -> None:
    added = library.add(SYLVIE, style="renpy", sources=sources)
    assert [o.outcome for o in added] == [Outcome.ADDED] * len(SYLVIE)
    target = added[2].ref_id or ""
    before = datetime.now(UTC)

    # A prefix as `refs list` shows it; the reason's spacing is tidied.
    change = library.quarantine(target[:8], reason="  off-model   for this style ", by="alice")

    after = datetime.now(UTC)
    assert (change.ref_id, change.previous, change.status) == (
        target,
        RefStatus.ACTIVE,
        RefStatus.QUARANTINED,
    )
    assert (change.by, change.reason, change.library_version) == ("alice", RefReason.BY_HAND, 2)
    stored = library.get(target)
    assert stored is not None
    assert (stored.status, stored.reason, stored.detail) == (
        "quarantined",
        "by_hand",
        "off-model for this style",
    )
    assert stored.status_by == "alice"
    assert stored.status_at is not None
    assert before <= stored.status_at.astimezone(UTC) <= after
    # The check's own verdicts carry no person.
    others = [r for r in library.list() if r.ref_id != target]
    assert all(r.status_by is None and r.status_at is None for r in others)

    assert [(v.version, v.added, v.quarantined) for v in library.versions()] == [
        (1, len(SYLVIE), 0),
        (2, 0, 1),
    ]
    assert "alice" in (library.versions()[-1].note or "")
    assert library.styles() == {"renpy": len(SYLVIE) - 1}
    assert _indexed(library, 2) == {o.ref_id for o in added} - {target}
    assert _indexed(library, 1) == {o.ref_id for o in added}  # versions are immutable


def test_reinstate_puts_a_quarantined_reference_back_into_the_index(
    library: RefLibrary, sources: dict[str, Attribution]
) -> None:
    outcomes = library.add(
        [*SYLVIE, PHOTO], style="renpy", sources=sources, labels={"gender": "male"}
    )
    photo = outcomes[-1]
    assert photo.outcome is Outcome.QUARANTINED  # the check's call: a photo
    photo_id = photo.ref_id or ""
    assert photo_id not in _indexed(library, 1)

    change = library.reinstate(photo_id, by="bob")

    assert (change.previous, change.status, change.library_version) == (
        RefStatus.QUARANTINED,
        RefStatus.ACTIVE,
        2,
    )
    stored = library.get(photo_id)
    assert stored is not None
    assert (stored.status, stored.reason, stored.status_by) == ("active", None, "bob")
    assert (stored.detail or "").startswith("reinstated by hand; was style_outlier: ")
    assert [(v.added, v.quarantined) for v in library.versions()] == [(len(SYLVIE), 1), (1, 0)]
    assert _indexed(library, 2) == {o.ref_id for o in outcomes}
    # Its point is the one `add` would have made: its own embedding, its payload. (The
    # same recomputation finds a reference `add` indexed: it is add's embedding.)
    index = open_ref_index(library.settings, 2, library.embedder.space)
    try:
        (hit,) = index.search(_vector(library, photo_id), 1)
        (sylvie,) = index.search(_vector(library, outcomes[0].ref_id or ""), 1)
    finally:
        index.close()
    assert sylvie.ref_id == outcomes[0].ref_id
    assert sylvie.score == pytest.approx(1.0, abs=1e-4)
    assert hit.ref_id == photo_id
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    assert hit.payload["style"] == "renpy"
    assert hit.payload["labels"] == {"gender": "male"}
    assert hit.payload["license"] == stored.license
    assert hit.payload["author"] == stored.author
    assert hit.payload["library_version"] == stored.library_version == 1

    # And out again: each change is a version of its own.
    again = library.quarantine(photo_id, reason="on second thought, a photo", by="carol")
    assert again.library_version == 3
    assert photo_id not in _indexed(library, 3)
    assert library.get(photo_id).status_by == "carol"  # type: ignore[union-attr]


def test_a_status_change_that_cannot_be_made_changes_nothing(
    library: RefLibrary, sources: dict[str, Attribution]
) -> None:
    added = library.add(SYLVIE[:5], style="renpy", sources=sources)
    ref_id = added[0].ref_id or ""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ref": "0123456789abcdef"}, "no reference"),
        ({"ref": ref_id[:5]}, "first 8"),
        ({"ref": "'; drop table"}, "not a reference id"),
        ({"ref": ref_id, "by": "  "}, "--by"),
        ({"ref": ref_id, "reason": ""}, "--reason"),
    ]
    for kwargs, message in cases:
        call = {"reason": "why", "by": "erin"} | kwargs
        with pytest.raises(InvalidRequest, match=message):
            library.quarantine(call.pop("ref"), **call)
    with pytest.raises(InvalidRequest, match="already active"):
        library.reinstate(ref_id, by="erin")
    assert library.current_version() == 1
    assert all(r.status == "active" and r.status_by is None for r in library.list())


def test_the_cli_quarantines_reinstates_and_lists_who_and_when(
    library: RefLibrary, settings: Settings, sources: dict[str, Attribution], sql_url: str
) -> None:
    added = library.add(SYLVIE[:5], style="renpy", sources=sources)
    ref_id = added[1].ref_id or ""
    # The library's embedder (seeded random-init, seed 0) is what the settings name.
    env = {
        "S2A_HOME": str(settings.home),
        "S2A_DATABASE_URL": sql_url,
        "S2A_MODELS__EMBEDDER": "random-init",
        "S2A_MODELS__EMBEDDER_SEED": "0",
    }
    runner = CliRunner()

    out = runner.invoke(
        cli,
        ["refs", "quarantine", ref_id[:8], "--reason", "not our style", "--by", "dave", "--json"],
        env=env,
    )
    assert out.exit_code == 0, out.output
    change = json.loads(out.stdout)
    assert change["ref_id"] == ref_id
    assert (change["status"], change["previous"], change["reason"]) == (
        "quarantined",
        "active",
        "by_hand",
    )
    assert (change["status_by"], change["library_version"]) == ("dave", 2)

    listed = runner.invoke(cli, ["refs", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = {r["ref_id"]: r for r in json.loads(listed.stdout)}
    assert rows[ref_id]["status_by"] == "dave"
    assert rows[ref_id]["status_at"] is not None
    assert rows[ref_id]["detail"] == "not our style"
    assert all(r["status_by"] is None for i, r in rows.items() if i != ref_id)

    table = runner.invoke(cli, ["refs", "list", "--status", "quarantined"], env=env)
    assert table.exit_code == 0, table.output
    header, *body = table.stdout.splitlines()
    assert header.split()[-2:] == ["BY", "AT"]
    assert len(body) == 1
    assert body[0].startswith(ref_id[:8])
    assert body[0].split()[-2] == "dave"
    assert body[0].split()[-1].endswith("Z")

    back = runner.invoke(cli, ["refs", "reinstate", ref_id, "--by", "dave", "--json"], env=env)
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["status"] == "active"
    assert ref_id in _indexed(library, 3)

    twice = runner.invoke(cli, ["refs", "reinstate", ref_id, "--by", "dave"], env=env)
    assert twice.exit_code != 0
    assert isinstance(twice.exception, InvalidRequest)
    assert "already active" in str(twice.exception)
