"""The progress display of the command line: on stderr, when it is a terminal, one line per phase of a run.

A phase follows bytes (reading inputs) or a count (rows tokenized, chunks of shards written). Starting a phase fills
the lines of the phases before it, so a run's last line is the work still going on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Display", "StartPhase", "display", "echo"]

Advance = Callable[[int], None]


class StartPhase(Protocol):
    """Starts one phase of a run: its description and its total, in bytes or, with `counted`, in rows or steps;
    returns what the phase's progress is reported to."""

    def __call__(self, description: str, total: int, *, counted: bool = False) -> Advance: ...


class Display:
    """A live progress display on stderr (`display` makes one only for a terminal)."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), _amount_column(), TimeRemainingColumn(),
            console=console, transient=True,
        )  # fmt: skip
        self._bar.start()

    def phase(self, description: str, total: int, *, counted: bool = False) -> Advance:
        """Start a phase (see `StartPhase`), filling the lines of the phases before it."""
        for task in self._bar.tasks:
            if task.total is not None:
                self._bar.update(task.id, completed=task.total)
        task_id = self._bar.add_task(description, total=total, counted=counted)
        return lambda n: self._bar.advance(task_id, n)

    def starter(self, description: str, *, counted: bool = False) -> Callable[[int], Advance]:
        """What a run reports the start of a phase to, with its total (e.g. `pipeline.convert`'s ``on_writing``)."""
        return lambda total: self.phase(description, total, counted=counted)

    def say(self, message: str, *, err: bool = False) -> None:
        """Print a line of the run's report (to stdout, or stderr with `err`) without breaking the live bars: through
        the display where that stream is the terminal it draws on, as it is once the display has stopped."""
        if self._bar.live.is_started and (err or sys.stdout.isatty()):
            self._bar.console.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            echo(message, err=err)

    def stop(self) -> None:
        self._bar.stop()


def echo(message: str, *, err: bool = False) -> None:
    """Print a line of the run's report; once its reader has gone (`dsprep convert … | head -3`), print nothing more
    and let the run finish."""
    import click

    try:
        click.echo(message, err=err)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), (sys.stderr if err else sys.stdout).fileno())


def display(quiet: bool) -> Display | None:
    """A progress display on stderr, or None under `quiet` or when stderr is not a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    return None if quiet or not console.is_terminal else Display(console)


def _amount_column() -> Any:
    """Bytes read and their speed for a phase that follows bytes; done and total for a counted one."""
    from rich.progress import DownloadColumn, MofNCompleteColumn, ProgressColumn, Task, TransferSpeedColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        def __init__(self) -> None:
            super().__init__()
            self.size, self.speed, self.count = DownloadColumn(), TransferSpeedColumn(), MofNCompleteColumn()

        def render(self, task: Task) -> Text:
            if task.fields.get("counted"):
                return self.count.render(task)
            return Text.assemble(self.size.render(task), " ", self.speed.render(task))

    return Amount()
