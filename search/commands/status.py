"""`python -m search status NAME` (`make status`): a readable summary of a study, or one JSON object."""

from __future__ import annotations

import argparse
import json

import optuna
from optuna.trial import TrialState

from search._cli import add_study_args
from search.commands._confirmation import confirmation_lines, evaluation_summary
from search.errors import StudyMismatchError
from search.settings import Settings
from search.study import (
    confirm_name,
    counter_line,
    counts,
    load_existing,
    open_study,
    stage_lines,
    stage_summary,
    storage_of,
)
from storage import attrs, describe

HELP = "summary of a study"
JSON_KEYS = ("study", "n_complete", "n_pruned", "n_fail", "n_running", "n_waiting", "best_value", "best_params",
             "best_trial", "stopped")


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("status", help=HELP)
    add_study_args(p, settings)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    url = settings.store_url(args.storage)
    study = open_study(args.name, url)
    c = counts(study)
    record = study.user_attrs.get(attrs.FINAL_EVALUATION)
    reads = len(study.user_attrs.get(attrs.TEST_ACCESSES, []))
    if args.json:
        print(json.dumps({**{k: getattr(c, k) for k in JSON_KEYS},
                          "final_evaluation": evaluation_summary(record, reads), "fine_tune": stage_summary(study)}))
        return 0
    print(counter_line(c))
    print(f"  {describe(url)}; {c.n_waiting} waiting (enqueued)")
    if c.best_params:
        print("  best params: " + ", ".join(f"{k}={v}" for k, v in c.best_params.items()))
    # FAIL trials only: a reaper that lost the race to a tell leaves its reason on a COMPLETE trial.
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if t.user_attrs.get(attrs.FAIL_REASON)]
    for t in failed[-5:]:
        print(f"  trial {t.number} failed ({t.user_attrs[attrs.FAIL_REASON]}): "
              f"{t.user_attrs.get(attrs.FAIL_MESSAGE, '')}")
    for line in time_lines(study):
        print(line)
    fine_tune = stage_summary(study)
    for line in stage_lines(fine_tune) if fine_tune else ():
        print(f"  {line}")
    stage = _confirmation_stage(study)
    if stage is not None:
        print(f"  confirmation stage: {counter_line(counts(stage))}")
    if record:
        print(f"  tested: trial {record['trial']}, test accuracy {record['test_accuracy']:.4f} on {record['n_test']} "
              f"images (the test split read {reads} time(s){'; no longer unbiased' if reads > 1 else ''})")
        for line in confirmation_lines(record):
            print(f"  {line}")
    return 0


def time_lines(study: optuna.Study) -> list[str]:
    """Where the trials' time went: seconds per phase summed over the trials (attrs.TIME_BREAKDOWN)."""
    timed = [t.user_attrs[attrs.TIME_BREAKDOWN] for t in study.get_trials(deepcopy=False)
             if isinstance(t.user_attrs.get(attrs.TIME_BREAKDOWN), dict)]
    totals = {phase: sum(float(b.get(phase, 0.0)) for b in timed) for phase in attrs.TIME_PHASES}
    whole = sum(totals.values())
    if not whole:
        return []
    return [f"  time of {len(timed)} trials, {whole:,.1f} s in all:",
            *(f"    {phase:<11}{s:>10,.1f} s {s / whole:>6.1%}" for phase, s in totals.items())]


def _confirmation_stage(study: optuna.Study) -> optuna.Study | None:
    """The study's confirmation stage (NAME.confirm, made by `make evaluate` with top_k > 1), if any."""
    try:
        return load_existing(confirm_name(study.study_name), storage_of(study))
    except StudyMismatchError:
        return None
