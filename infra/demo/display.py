"""The demo's live progress on the terminal (``rich``): one row per step with its state,
what it is doing or what it found, and its time; the ingestion step also shows a progress
bar. When stderr is not a terminal (CI, a pipe) each finished step is one plain line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text


@dataclass
class _Row:
    title: str
    state: str = "waiting"
    """waiting | running | done | failed"""
    detail: str = ""
    seconds: float | None = None


_MARKS = {"waiting": Text("·", style="dim"), "done": Text("✓", style="green"),
          "failed": Text("✗", style="bold red")}  # fmt: skip


class Step:
    """The handle of the running step: say what it is doing, or how far it is."""

    def __init__(self, steps: Steps, row: _Row) -> None:
        self._steps = steps
        self._row = row

    def note(self, detail: str) -> None:
        """Replace the step's detail text (what it is doing now, then what it found)."""
        self._row.detail = detail
        self._steps.refresh()

    def progress(self, done: int, total: int) -> None:
        """Show a bar under the table: ``done`` of ``total`` items."""
        self._steps.bar(self._row.title, done, total)


class Steps:
    """A table of named steps, redrawn in place while the demo runs.

    Example::

        with Steps(["Load references", "Ingest uploads"]) as steps:
            with steps.step("Load references") as step:
                step.note("20 added")
        steps.seconds  # {'Load references': 1.2, ...}
    """

    def __init__(self, titles: Sequence[str], console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.rows = {title: _Row(title) for title in titles}
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            console=self.console,
        )  # fmt: skip
        self._task: TaskID | None = None
        self._live: Live | None = None

    @property
    def seconds(self) -> dict[str, float]:
        return {t: r.seconds for t, r in self.rows.items() if r.seconds is not None}

    def __enter__(self) -> Steps:
        if self.console.is_terminal:
            self._live = Live(
                get_renderable=self._render, console=self.console, refresh_per_second=8
            )
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def bar(self, description: str, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._bar.add_task(description, total=total)
        self._bar.update(self._task, completed=done, total=total, description=description)
        self.refresh()

    @contextmanager
    def step(self, title: str) -> Iterator[Step]:
        """Run one step: shown as running, then done with its time, or failed (the
        exception goes on)."""
        row = self.rows[title]
        row.state = "running"
        started = time.monotonic()
        self.refresh()
        try:
            yield Step(self, row)
        except BaseException as exc:
            row.state = "failed"
            row.detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            raise
        else:
            row.state = "done"
        finally:
            row.seconds = time.monotonic() - started
            if self._task is not None:
                self._bar.remove_task(self._task)
                self._task = None
            if self._live is None:
                mark = "ok" if row.state == "done" else "FAILED"
                self.console.print(
                    f"{mark:6} {title} ({row.seconds:.1f}s) {row.detail}",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
            self.refresh()

    def _render(self) -> RenderableType:
        table = Table(box=None, show_header=False, padding=(0, 1))
        table.add_column(width=1)
        table.add_column(style="bold")
        table.add_column(justify="right", style="cyan")
        table.add_column(overflow="fold")
        for row in self.rows.values():
            mark: RenderableType = (
                Spinner("dots", style="yellow") if row.state == "running" else _MARKS[row.state]
            )
            seconds = "" if row.seconds is None else f"{row.seconds:.1f}s"
            table.add_row(mark, row.title, seconds, row.detail)
        return Group(table, self._bar) if self._task is not None else table
