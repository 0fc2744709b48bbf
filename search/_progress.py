"""One progress bar for a study, where a person watches: trials finished of the budget, best so far,
running, pruned and failed, and tqdm's ETA from the rate so far. Elsewhere (a log file, a pipe) the
runner's plain counter lines, as before. Used by `make study` (search.commands._runner) and the
Python API (search.api)."""

from __future__ import annotations

import sys
from typing import IO

from tqdm.auto import tqdm

from search.study import StudyCounts, counter_line


def watched(stream: IO[str] | None = None) -> bool:
    """A terminal, or a notebook's kernel."""
    stream = stream or sys.stdout
    return "ipykernel" in sys.modules or (hasattr(stream, "isatty") and stream.isatty())


class StudyBar:
    """`bar=False`: print counter_line whenever it changes (what a log keeps)."""

    def __init__(self, name: str, total: int, *, bar: bool, file: IO[str] | None = None) -> None:
        self.file = file or sys.stdout
        self._last = ""
        self._bar = tqdm(total=total, desc=f"study {name}", unit="trial", file=self.file, dynamic_ncols=True) \
            if bar else None

    def update(self, c: StudyCounts) -> None:
        if self._bar is None:
            line = counter_line(c)
            if line != self._last:
                print(line, file=self.file, flush=True)
                self._last = line
            return
        if c.budget:
            self._bar.total = max(c.budget, c.n_finished)
        self._bar.n = c.n_finished
        best = "-" if c.best_value is None else f"{c.best_value:.4f} (trial {c.best_trial})"
        stopped = f", STOPPED: {c.stopped}" if c.stopped else ""
        self._bar.set_postfix_str(f"best {best}, running {c.n_running}, pruned {c.n_pruned}, failed {c.n_fail}"
                                  f"{stopped}", refresh=False)
        self._bar.refresh()

    def note(self, line: str) -> None:
        """A line that is not a count (the store unreachable): above the bar, or as it is."""
        if self._bar is None:
            if line != self._last:
                print(line, file=self.file, flush=True)
                self._last = line
        else:
            self._bar.write(line, file=self.file)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
