"""The bad-input corpus (:mod:`badinputs`) through the in-process pipeline.

Real models and stores under a temp home, as in ``test_pipeline.py``. The whole corpus
goes through as one batch, as a worker would meet it: no bad record may fail the batch,
and each ends in exactly the state its kind calls for, with a detail naming the setting
or field to look at.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from badinputs import ACCEPTED, LIMITS, SKIPPED, BadInput, corpus, kinds

from agents.pipeline import Incoming, IngestPipeline, Outcome
from schemas.reasons import UploadState
from schemas.settings import Settings


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[IngestPipeline, dict[str, tuple[BadInput, Outcome]]]]:
    home = tmp_path_factory.mktemp("bad-inputs")
    root, outside = home / "incoming", home / "outside"
    root.mkdir()
    outside.mkdir()
    cases = corpus(root, outside)
    pipeline = IngestPipeline.build(Settings(home=home / "s2a", uri_roots=(root,), limits=LIMITS))
    try:
        outcomes = pipeline.run([Incoming(case.raw) for case in cases])
        yield (
            pipeline,
            {case.kind: (case, outcome) for case, outcome in zip(cases, outcomes, strict=True)},
        )
    finally:
        pipeline.close()


def _ending(outcome: Outcome) -> str:
    if outcome.rejection is not None:
        return outcome.rejection.reason.value
    return outcome.state.value if outcome.state else SKIPPED


@pytest.mark.parametrize("kind", kinds())
def test_each_kind_ends_as_it_should(
    kind: str, results: tuple[IngestPipeline, dict[str, tuple[BadInput, Outcome]]]
) -> None:
    case, outcome = results[1][kind]
    assert outcome.upload_id == case.upload_id
    assert _ending(outcome) == case.expect
    if outcome.rejection is not None:
        assert case.names in outcome.rejection.detail
        assert outcome.rejection.stage
    elif case.expect == ACCEPTED:
        assert outcome.face is not None


def test_every_upload_has_exactly_one_terminal_state(
    results: tuple[IngestPipeline, dict[str, tuple[BadInput, Outcome]]],
) -> None:
    pipeline, by_kind = results
    ids = {case.upload_id for case, _ in by_kind.values()}
    assert len(by_kind) >= 30
    rows = [row for row in pipeline.repository.list_uploads() if row.upload_id in ids]
    assert sorted(row.upload_id for row in rows) == sorted(ids)  # one row each, none lost
    states = {row.upload_id: row.state for row in rows}
    for case, outcome in by_kind.values():
        if case.expect == SKIPPED:
            continue
        want = UploadState.ACCEPTED if case.expect == ACCEPTED else UploadState.REJECTED
        assert states[case.upload_id] == want, case.kind
        assert outcome.state is want
