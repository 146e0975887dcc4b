"""The bad-input corpus (:mod:`badinputs`) through the real broker and a worker process.

One broker and one worker for the whole corpus: every record is published as a producer
would (keyed by subject), then each upload must reach exactly one terminal state, with
the reason its kind calls for, and each rejection exactly one dead letter. The worker
must still be alive at the end: no bad input crashes it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from badinputs import ACCEPTED, LIMITS, SKIPPED, BadInput, corpus

from agents.stores.db import create_engine_for
from agents.stores.repository import Repository
from infra.broker import free_port
from infra.kafka import UploadPublisher, consumer_lag, read_rejections
from infra.runtime import Stack
from infra.waiting import wait_until
from schemas.rejections import Rejection
from schemas.settings import Settings

pytestmark = pytest.mark.integration
DEADLINE_S = 300.0


@dataclass
class Run:
    cases: list[BadInput]
    repository: Repository
    dead_letters: list[Rejection]
    worker_alive: bool


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    home = tmp_path_factory.mktemp("bad-stream")
    root, outside = home / "incoming", tmp_path_factory.mktemp("outside")
    root.mkdir()
    settings = Settings(
        home=home,
        broker_port=free_port(),
        topic_prefix=f"bad{uuid.uuid4().hex[:6]}.",
        uri_roots=(root,),
        limits=LIMITS,
    )
    cases = corpus(root, outside)
    ids = {case.upload_id for case in cases}
    repository = Repository(create_engine_for(settings.sql_url))
    with Stack(settings) as stack, UploadPublisher(settings) as publisher:
        for case in cases:
            publisher.publish_raw(case.key, case.raw)
        wait_until(
            lambda: (
                len(repository.finished(ids)) == len(ids) and consumer_lag(settings).behind == 0
            ),
            deadline_s=DEADLINE_S,
            what="every bad input's terminal state",
            alive=stack.check_worker,
        )
        rejected = sum(1 for row in repository.list_uploads() if row.state == "rejected")
        dead_letters = read_rejections(settings, expect=rejected)
        proc = stack.worker.proc
        alive = proc is not None and proc.poll() is None
    return Run(cases, repository, dead_letters, alive)


def test_every_bad_input_ends_in_exactly_one_expected_state(run: Run) -> None:
    rows = run.repository.list_uploads()
    by_id = {row.upload_id: row for row in rows}
    assert len(by_id) == len(rows)  # one row per upload: no state recorded twice
    got, want = {}, {}
    for case in run.cases:
        if case.expect == SKIPPED:
            continue  # its upload_id's state is the first copy's, checked under that kind
        row = by_id[case.upload_id]
        got[case.kind] = row.reason if row.state == "rejected" else str(row.state)
        want[case.kind] = case.expect
        if case.expect != ACCEPTED:
            assert case.names in (row.detail or ""), case.kind
    assert got == want
    assert run.worker_alive


def test_one_dead_letter_per_rejection(run: Run) -> None:
    letters: dict[str, Rejection] = {}
    for letter in run.dead_letters:
        assert letter.upload_id not in letters, f"two dead letters for {letter.upload_id}"
        letters[letter.upload_id] = letter
    expected = {
        case.upload_id: case.expect for case in run.cases if case.expect not in (ACCEPTED, SKIPPED)
    }
    assert {upload_id: letter.reason.value for upload_id, letter in letters.items()} == expected
    for case in run.cases:
        if case.upload_id in letters:
            assert case.names in letters[case.upload_id].detail, case.kind
