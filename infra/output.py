"""The command line's output layer: JSON on stdout for scripts, tables and progress for
people. Logs never go to stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def emit_json(value: Any, *, stream: IO[str] | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(value, default=_default, sort_keys=True) + "\n")
    out.flush()


def emit_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """Print ``rows`` under an upper-case ``header`` on stdout (``rich``): fitted to a
    terminal's width; on a pipe one unwrapped line per row, columns separated by spaces,
    so ``cut``/``awk`` and line-based readers still work (scripts should prefer ``--json``)."""
    terminal = Console()
    console = terminal if terminal.is_terminal else Console(width=100_000, no_color=True)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for name in header:
        table.add_column(name.upper(), no_wrap=not console.is_terminal, overflow="fold")
    for row in rows:
        table.add_row(*(("" if v is None else str(v)) for v in row))
    if console.is_terminal:
        console.print(table, highlight=False, markup=False)
        return
    # rich pads every cell to its column's width, the last one too; a pipe gets the lines
    # without that trailing padding.
    with console.capture() as captured:
        console.print(table, soft_wrap=True, highlight=False, markup=False)
    sys.stdout.write("".join(f"{line.rstrip()}\n" for line in captured.get().splitlines()))
    sys.stdout.flush()


class Progress:
    """A progress bar (``rich``) on stderr on a terminal; silent when stderr is piped.

    Example::

        progress = Progress("published", len(files))
        for file in files:
            ...
            progress.advance()
        progress.close()
    """

    def __init__(self, label: str, total: int) -> None:
        console = Console(stderr=True)
        self.total = total
        self.done = 0
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=False,
        )
        self._task = self._bar.add_task(label, total=total)
        self._bar.start()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        self.done = done
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        self._bar.stop()
