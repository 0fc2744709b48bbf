"""The study's progress (search/_progress.py): a bar where a person watches (a terminal, a notebook),
the runner's counter lines where a log is kept."""

from __future__ import annotations

import io
import os

from search._progress import StudyBar, watched
from search.study import StudyCounts


def _counts(done: int, best: float | None = None) -> StudyCounts:
    return StudyCounts("demo", n_complete=done, n_pruned=1, n_fail=0, n_running=2, n_waiting=0, budget=6,
                       best_value=best, best_trial=None if best is None else 3)


def test_a_terminal_gets_one_bar_with_the_best_so_far_and_what_runs():
    out = io.StringIO()
    bar = StudyBar("demo", 6, bar=True, file=out)
    bar.update(_counts(0))
    bar.update(_counts(2, 0.7125))
    bar.note("[study demo] store unreachable (OperationalError); workers are backing off")
    bar.close()
    text = out.getvalue()
    assert "study demo" in text and "3/6" in text  # 2 complete + 1 pruned of 6
    assert "best 0.7125 (trial 3), running 2, pruned 1, failed 0" in text
    assert "store unreachable" in text and "\r" in text  # redrawn in place, not a line per update


def test_a_log_gets_the_counter_line_each_time_it_changes():
    out = io.StringIO()
    bar = StudyBar("demo", 6, bar=False, file=out)
    for done in (0, 0, 2, 2):
        bar.update(_counts(done, 0.5 if done else None))
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["[study demo] 1/6 finished: 0 complete, 1 pruned, 0 failed; 2 running; best none yet",
                     "[study demo] 3/6 finished: 2 complete, 1 pruned, 0 failed; 2 running; best 0.5000 (trial 3)"]


def test_watched_means_a_terminal():
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as tty, open(os.devnull, "w") as log:
        assert watched(tty) and not watched(log)
    os.close(primary)
