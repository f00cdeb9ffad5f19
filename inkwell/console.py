"""Console helpers every command line shares: the rich console, progress bars, usage errors.

A leaf module: the component CLIs, the benchmarks and the `inkwell` hub import it; it imports
nothing of Inkwell's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="MNIST directory (default: INKWELL_DATA_DIR).")
]


def progress_bar() -> Progress:
    """The rich progress bar every long-running command uses."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def progress_step(progress: Progress, task: TaskID) -> Callable[[int, float], None]:
    """A training `on_step` hook that moves `task` on and shows the loss."""

    def update(step: int, loss: float) -> None:
        progress.update(task, completed=step, info=f"loss {loss:.3f}")

    return update


def check_choice(value: str, choices: tuple[str, ...], hint: str) -> None:
    """A usage error (exit 2) naming the choices when `value` is not one of them."""
    if value not in choices:
        raise typer.BadParameter(f"choose one of {', '.join(choices)}", param_hint=hint)
