"""The evaluation's stages as they run: it takes minutes on a CPU, so each stage shows a bar over its
windows while it runs and leaves one line with its count and elapsed time (``Stages``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ctxsae.cache.dataset import Windows


class Stage:
    """One running stage: ``track`` its batches (or ``advance`` by hand) to count its windows."""

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None):
        self.bar, self.task = bar, task

    def expect(self, n_windows: int) -> None:
        """Set the stage's window count once it is known (after the stage began)."""
        if self.bar is not None:
            self.bar.update(self.task, total=n_windows)

    def advance(self, n_windows: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n_windows)

    def track(self, batches: Iterable[Windows]) -> Iterator[Windows]:
        for batch in batches:
            yield batch
            self.advance(len(batch.x_BTD))


#: What the stage functions (held-out pass, LM passes, probe) report to when no one is watching: nothing.
UNSEEN = Stage()


class Stages:
    """The stages of one evaluation, shown as they run; ``seconds``: each finished stage's wall time by name
    (eval.json's timings)."""

    def __init__(self, show: bool = True):
        self.show, self.seconds = show, {}

    @contextmanager
    def stage(self, name: str, description: str, n_windows: int | None = None) -> Iterator[Stage]:
        """Run the stage ``name``; ``n_windows``: how many windows it goes through (0: known later, ``Stage.expect``;
        None: not counted, e.g. figures)."""
        count = [MofNCompleteColumn(), TextColumn("windows")] if n_windows is not None else []
        t0 = time.perf_counter()
        with Progress(TextColumn(f"{description:<24}"), BarColumn(), *count, TimeElapsedColumn(), disable=not self.show) as bar:
            task = bar.add_task(name, total=n_windows if n_windows is not None else 1)
            yield Stage(bar, task)
            if n_windows is None:
                bar.update(task, completed=1)
        self.seconds[name] = time.perf_counter() - t0
