"""Pure functions: a study in, small records out, for what only this project shows (optuna's own
figures are drawn straight from the study in _standard.py). Drawing is in _draw.py; tests assert on
these records, not on pixels. Validation accuracy is always objective 0."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage.attrs import (
    CV_MEAN_TEST_SCORE,
    CV_RANK,
    CV_SOURCE,
    CV_STD_TEST_SCORE,
    EPOCHS_RUN,
    FAIL_REASON,
    FINAL_CONFUSION_MATRIX,
    FINAL_EVALUATION,
    FIXED_PARAMS,
    N_PARAMS,
    STUDY_SPEC,
    STUDY_STOPPED,
    TIME_BREAKDOWN,
    TIME_PHASES,
    TRAIN_SECONDS,
    VAL_ACCURACY_CURVE,
)

COSTS = (N_PARAMS, TRAIN_SECONDS)  # the trial attributes the report plots accuracy against
# The spec's names for a second objective (search's SECOND_OBJECTIVES) and the attribute each is.
_SECOND_OBJECTIVES = {"params": N_PARAMS, "train_seconds": TRAIN_SECONDS}


@dataclass
class Curves:
    """Per-epoch validation accuracy of every trial that reported any; pruned ones flagged."""

    trials: list[int]
    epochs: list[list[int]]
    values: list[list[float]]
    pruned: list[bool]


@dataclass
class CostPoints:
    """Accuracy and both costs of every complete trial that recorded its size; the trials on the
    Pareto front (higher accuracy, lower cost) of each cost, by number."""

    trials: list[int]
    accuracy: list[float]
    costs: dict[str, list[float]]  # keyed by the attributes of COSTS
    fronts: dict[str, list[int]] = field(default_factory=dict)


def _feasible(trial: FrozenTrial) -> bool:
    """Within every constraint the study set (search/trial/_constraints.py), as Optuna's best trial counts it."""
    return all(value <= 0.0 for value in trial.constraints.values())


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials within every constraint the study set (the ones Optuna's best trial is among)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.values and _feasible(t)]


OBJECTIVE_NAMES = {"val_accuracy": "validation accuracy", "val_loss": "validation loss",
                   "val_top_k_accuracy": "validation top-k accuracy", "val_macro_f1": "validation macro-F1",
                   "val_balanced_accuracy": "validation balanced accuracy"}


def objective_name(study: optuna.Study) -> str:
    """What objective 0 is, in words (the study's metric; validation accuracy by default)."""
    return OBJECTIVE_NAMES.get((study.user_attrs.get(STUDY_SPEC) or {}).get("metric", "val_accuracy"), "objective")


def sign(study: optuna.Study) -> float:
    """+1 when objective 0 is maximised, -1 when minimised: sign x value is 'higher is better'."""
    return -1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else 1.0


def second_objective(study: optuna.Study) -> str | None:
    """The attribute (one of COSTS) the study minimizes beside accuracy, if its spec says."""
    if len(study.directions) == 1:
        return None
    return _SECOND_OBJECTIVES.get((study.user_attrs.get(STUDY_SPEC) or {}).get("second_objective"))


def curves(study: optuna.Study) -> Curves:
    out = Curves([], [], [], [])
    for t in study.get_trials(deepcopy=False):
        points = sorted(t.intermediate_values.items())
        if not points and t.user_attrs.get(VAL_ACCURACY_CURVE):
            points = list(enumerate(t.user_attrs[VAL_ACCURACY_CURVE]))
        if points:
            out.trials.append(t.number)
            out.epochs.append([e + 1 for e, _ in points])
            out.values.append([v for _, v in points])
            out.pruned.append(t.state == TrialState.PRUNED)
    return out


def _front(points: list[tuple[int, float, float]]) -> list[int]:
    """Trials not dominated (a better objective 0, as 'higher is better', and a lower cost)."""
    front = []
    for n, acc, cost in points:
        if not any(a >= acc and c <= cost and (a > acc or c < cost) for _, a, c in points):
            front.append(n)
    return sorted(front)


def cost_points(study: optuna.Study) -> CostPoints:
    done = [t for t in _finished(study) if N_PARAMS in t.user_attrs]
    pts = CostPoints([t.number for t in done], [t.values[0] for t in done],
                     {attr: [float(t.user_attrs.get(attr, 0.0)) for t in done] for attr in COSTS})
    better = [sign(study) * v for v in pts.accuracy]
    pts.fronts = {axis: _front(list(zip(pts.trials, better, xs))) for axis, xs in pts.costs.items()}
    return pts


def top_trials(study: optuna.Study, k: int = 10) -> list[dict[str, Any]]:
    done = sorted(_finished(study), key=lambda t: -sign(study) * t.values[0])[:k]
    return [{"trial": t.number, "value": round(t.values[0], 4), "epochs": t.user_attrs.get(EPOCHS_RUN),
             "params": t.params} for t in done]


def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}


def fail_reasons(study: optuna.Study) -> dict[str, int]:
    """Failed trials by the reason the worker recorded, most frequent first."""
    reasons = collections.Counter(str(t.user_attrs.get(FAIL_REASON, "unknown"))
                                  for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    return dict(reasons.most_common())


def stopped(study: optuna.Study) -> str | None:
    """Why the study's workers stopped early, if they did."""
    reason = study.user_attrs.get(STUDY_STOPPED)
    return str(reason) if reason else None


def best_vs_epochs(study: optuna.Study) -> tuple[list[int], list[float]]:
    """The best objective value so far (validation accuracy unless the study names another metric)
    against cumulative epochs trained, in trial order."""
    sign_ = sign(study)
    xs, ys, total, best = [], [], 0, -math.inf
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        total += max(len(t.intermediate_values), int(t.user_attrs.get(EPOCHS_RUN, 0)))
        if t.state == TrialState.COMPLETE and t.values and _feasible(t):
            best = max(best, sign_ * t.values[0])  # the best feasible value
        if best > -math.inf:
            xs.append(total)
            ys.append(sign_ * best)
    return xs, ys


def final_evaluation(study: optuna.Study) -> dict[str, Any] | None:
    record = study.user_attrs.get(FINAL_EVALUATION)
    if not record:
        return None
    return {**record, "confusion_matrix": study.user_attrs.get(FINAL_CONFUSION_MATRIX)}


@dataclass
class ImportedTrial:
    """A warm start imported from an old scikit-learn search (import-cv): its old mean CV score, std
    and rank beside this study's validation accuracy (None until it completes; `state` says why)."""

    trial: int
    params: dict[str, Any]
    cv_mean: float
    cv_std: float | None
    cv_rank: int | None
    source: str
    value: float | None
    state: str


def imported_trials(study: optuna.Study) -> list[ImportedTrial]:
    """The trials that carry an old CV score, best old rank first."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if CV_MEAN_TEST_SCORE not in t.user_attrs:
            continue
        done = t.state == TrialState.COMPLETE and t.values
        out.append(ImportedTrial(
            trial=t.number, params=t.params or dict(t.system_attrs.get(FIXED_PARAMS) or {}),
            cv_mean=t.user_attrs[CV_MEAN_TEST_SCORE], cv_std=t.user_attrs.get(CV_STD_TEST_SCORE),
            cv_rank=t.user_attrs.get(CV_RANK), source=str(t.user_attrs.get(CV_SOURCE, "")),
            value=t.values[0] if done else None, state=t.state.name.lower()))
    return sorted(out, key=lambda r: (r.cv_rank is None, r.cv_rank or 0, r.trial))


@dataclass
class TimeBreakdown:
    """Where the trials' time went: seconds per phase (storage.attrs.TIME_PHASES) of every trial that
    recorded a breakdown, in trial order, and the study's totals per phase."""

    trials: list[int]
    states: list[str]
    seconds: dict[str, list[float]]  # phase -> seconds of each trial, in the order of `trials`
    totals: dict[str, float]  # phase -> seconds summed over the trials

    @property
    def total(self) -> float:
        return sum(self.totals.values())

    def shares(self) -> dict[str, float]:
        """Each phase's fraction of all the trials' time (0 when there is none)."""
        return {phase: seconds / self.total if self.total else 0.0 for phase, seconds in self.totals.items()}


def time_breakdown(study: optuna.Study) -> TimeBreakdown:
    timed = sorted((t for t in study.get_trials(deepcopy=False) if isinstance(t.user_attrs.get(TIME_BREAKDOWN), dict)),
                   key=lambda t: t.number)
    seconds = {phase: [float(t.user_attrs[TIME_BREAKDOWN].get(phase, 0.0)) for t in timed] for phase in TIME_PHASES}
    return TimeBreakdown(trials=[t.number for t in timed], states=[t.state.name.lower() for t in timed],
                         seconds=seconds, totals={phase: sum(values) for phase, values in seconds.items()})
