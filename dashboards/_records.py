"""Pure functions: a study in, small records out. Drawing is elsewhere (_draw.py); tests assert
on these records, not on pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


@dataclass
class History:
    numbers: list[int]
    values: list[float]
    best_so_far: list[float]
    states: list[str]


@dataclass
class Curves:
    """Per-epoch validation accuracy of every trial that reported any; pruned ones flagged."""

    trials: list[int]
    epochs: list[list[int]]
    values: list[list[float]]
    pruned: list[bool]


@dataclass
class CostPoints:
    trials: list[int]
    accuracy: list[float]
    params: list[float]
    seconds: list[float]
    pareto_params: list[int] = field(default_factory=list)  # trial numbers on the front
    pareto_seconds: list[int] = field(default_factory=list)


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.values]


def history(study: optuna.Study) -> History:
    done = sorted(_finished(study), key=lambda t: t.number)
    best, running = [], -math.inf
    for t in done:
        running = max(running, t.values[0])
        best.append(running)
    return History([t.number for t in done], [t.values[0] for t in done], best, [t.state.name for t in done])


def curves(study: optuna.Study) -> Curves:
    out = Curves([], [], [], [])
    for t in study.get_trials(deepcopy=False):
        points = sorted(t.intermediate_values.items())
        if not points and t.user_attrs.get("val_accuracy_curve"):
            points = list(enumerate(t.user_attrs["val_accuracy_curve"]))
        if points:
            out.trials.append(t.number)
            out.epochs.append([e + 1 for e, _ in points])
            out.values.append([v for _, v in points])
            out.pruned.append(t.state == TrialState.PRUNED)
    return out


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's importances (PED-ANOVA) of accuracy; empty until there is enough to say."""
    done = _finished(study)
    if len(done) < 3 or len({tuple(sorted(t.params.items())) for t in done}) < 2:
        return {}
    try:
        if len(study.directions) == 1:  # Optuna's default evaluator (PED-ANOVA) knows the direction
            return dict(optuna.importance.get_param_importances(study))
        # several objectives: importances for accuracy; PED-ANOVA treats low targets as good
        return dict(optuna.importance.get_param_importances(study, target=lambda t: -t.values[0]))
    except (RuntimeError, ValueError):
        return {}


def params_table(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """Every finished trial's params and value (parallel coordinates and slice plots)."""
    done = _finished(study)
    names = sorted({p for t in done for p in t.params})
    return names, [{"trial": t.number, "value": t.values[0], **t.params} for t in done]


def _front(points: list[tuple[int, float, float]]) -> list[int]:
    """Trials not dominated (higher accuracy, lower cost)."""
    front = []
    for n, acc, cost in points:
        if not any(a >= acc and c <= cost and (a > acc or c < cost) for _, a, c in points):
            front.append(n)
    return sorted(front)


def cost_points(study: optuna.Study) -> CostPoints:
    done = [t for t in _finished(study) if "n_params" in t.user_attrs]
    pts = CostPoints([t.number for t in done], [t.values[0] for t in done],
                     [float(t.user_attrs["n_params"]) for t in done],
                     [float(t.user_attrs.get("train_seconds", 0.0)) for t in done])
    pts.pareto_params = _front(list(zip(pts.trials, pts.accuracy, pts.params)))
    pts.pareto_seconds = _front(list(zip(pts.trials, pts.accuracy, pts.seconds)))
    return pts


def top_trials(study: optuna.Study, k: int = 10) -> list[dict[str, Any]]:
    done = sorted(_finished(study), key=lambda t: -t.values[0])[:k]
    return [{"trial": t.number, "value": round(t.values[0], 4), "epochs": t.user_attrs.get("epochs_run"),
             "params": t.params} for t in done]


def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}


def best_vs_epochs(study: optuna.Study) -> tuple[list[int], list[float]]:
    """Best validation accuracy so far against cumulative epochs trained, in trial order."""
    xs, ys, total, best = [], [], 0, -math.inf
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        total += max(len(t.intermediate_values), int(t.user_attrs.get("epochs_run", 0)))
        if t.state == TrialState.COMPLETE and t.values:
            best = max(best, t.values[0])
        if best > -math.inf:
            xs.append(total)
            ys.append(best)
    return xs, ys


def final_evaluation(study: optuna.Study) -> dict[str, Any] | None:
    record = study.user_attrs.get("final_evaluation")
    if not record:
        return None
    return {**record, "confusion_matrix": study.user_attrs.get("final_confusion_matrix")}
