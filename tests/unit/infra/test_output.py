"""The command line's human output: tables on a pipe stay one line per row, and the demo's
step display reports each step, its time and a failure, also when stderr is no terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from infra.demo.display import Steps
from infra.output import emit_table


def test_a_table_on_a_pipe_keeps_each_row_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    long_detail = "sharpness 4.0 below 40.0 (S2A_QUALITY__MIN_SHARPNESS); " * 6
    emit_table(
        [("a.jpg", "rejected", long_detail), ("b.jpg", "accepted", None)],
        ("sample", "state", "detail"),
    )
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["SAMPLE", "STATE", "DETAIL"]
    assert [row.split()[:2] for row in rows] == [["a.jpg", "rejected"], ["b.jpg", "accepted"]]
    assert rows[0].endswith(long_detail.rstrip())
    assert rows[1].endswith("accepted")  # no padding after the last cell


def _plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=60), out


def test_steps_print_one_line_per_finished_step_with_its_note() -> None:
    console, out = _plain_console()
    with Steps(["Load references", "Ingest uploads"], console=console) as steps:
        with steps.step("Load references") as step:
            step.progress(1, 2)
            step.note("20 added, 2 quarantined to style 'renpy' " * 3)
        with steps.step("Ingest uploads") as step:
            step.note("23/23 as expected")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # never wrapped, whatever the width
    assert lines[0].startswith("ok     Load references (")
    assert lines[0].rstrip().endswith("to style 'renpy'")
    assert lines[1].endswith("23/23 as expected")
    assert set(steps.seconds) == {"Load references", "Ingest uploads"}


def test_a_failed_step_is_marked_and_its_error_goes_on() -> None:
    console, out = _plain_console()
    steps = Steps(["Erase"], console=console)
    with pytest.raises(TimeoutError, match="no worker"), steps, steps.step("Erase"):
        raise TimeoutError("no worker recorded the erasure")
    assert out.getvalue().startswith("FAILED Erase (")
    assert "TimeoutError: no worker recorded the erasure" in out.getvalue()
    assert steps.rows["Erase"].state == "failed"
