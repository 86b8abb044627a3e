"""Rich progress bars for ``ftl-bench`` (stderr, so ``--json`` output stays clean)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ftlct.bench.experiment import Reporter


class RichReporter(Reporter):
    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, quiet=quiet)
        self.progress = Progress(
            TextColumn("{task.description:>16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def stage(self, name: str, total: int) -> Callable[[], None]:
        task = self.progress.add_task(name, total=total)
        return lambda: self.progress.advance(task)

    def note(self, text: str) -> None:
        self.progress.console.log(text)
