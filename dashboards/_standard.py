"""The figures optuna.visualization draws for us: optimization history, parameter importances,
parallel coordinates, slices and, for a two-objective study, the Pareto front.

They plot objective 0 (validation accuracy unless the study names another metric). A two-objective study (accuracy, cost) passes it as
`target`, so optuna plots accuracy alone; optuna then draws no best-so-far line, since it cannot
tell which way a target improves. Only the layout is ours (size, margins, titles)."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from dashboards._draw import COST_TITLES, LAYOUT
from dashboards._records import objective_name, sign
from storage.attrs import N_PARAMS

logger = logging.getLogger(__name__)

# Optuna pins the parallel-coordinates title to the top edge of the plot area, on the top tick
# labels of the axes; a taller top margin with the title pinned near the top of the whole
# figure keeps them apart.
PARALLEL_TOP_MARGIN = 90
PARALLEL_TITLE_Y = 0.96  # of the whole figure (yref="container")


class Unavailable(Exception):
    """A figure that cannot be drawn for this study; the message says why, for the report."""


def _accuracy(trial: FrozenTrial) -> float:
    return trial.values[0]


def _target(study: optuna.Study) -> dict[str, Any]:
    if len(study.directions) == 1:
        return {"target_name": objective_name(study)}
    return {"target": _accuracy, "target_name": objective_name(study)}


def _styled(fig: go.Figure, title: str) -> go.Figure:
    return fig.update_layout(**LAYOUT).update_layout(title_text=title)


def params(study: optuna.Study) -> list[str]:
    """Every parameter of a complete trial, by name."""
    return sorted({p for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for p in t.params})


def history(study: optuna.Study) -> go.Figure:
    return _styled(vis.plot_optimization_history(study, **_target(study)), "Optimization history")


def importances(study: optuna.Study) -> go.Figure:
    """Optuna's importances (PED-ANOVA) of accuracy; Unavailable says why there are none."""
    scored = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.values and math.isfinite(t.values[0])]
    if len(scored) < 2:
        raise Unavailable(f"Parameter importances need at least 2 complete trials; this study has {len(scored)}.")
    try:
        fig = _plot_importances(study)
    except Exception as exc:  # an evaluator's errors are not a documented set; the report goes on without it
        logger.warning("parameter importances of %s failed: %r", study.study_name, exc)
        raise Unavailable(f"Optuna could not compute parameter importances for this study "
                          f"({type(exc).__name__}: {exc}).") from exc
    if not ranked(fig):
        raise Unavailable("Parameter importances: no parameter is shared by every complete trial.")
    return _styled(fig, "Parameter importances (PED-ANOVA)")


def _plot_importances(study: optuna.Study) -> go.Figure:
    name = objective_name(study)
    if len(study.directions) == 1:
        return vis.plot_param_importances(study, target_name=name)
    # PED-ANOVA takes low targets as good: a maximised objective is negated (importances are >= 0).
    flip = sign(study)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*low `target` values", category=UserWarning)
        return vis.plot_param_importances(study, target=lambda t: -flip * _accuracy(t), target_name=name)


def ranked(importances_fig: go.Figure) -> list[str]:
    """Parameter names, most important first (optuna's bar chart lists them bottom-up)."""
    bars = [trace for trace in importances_fig.data if trace.type == "bar"]
    return list(bars[0].y or ())[::-1] if bars else []


def parallel(study: optuna.Study) -> go.Figure:
    fig = _styled(vis.plot_parallel_coordinate(study, **_target(study)), "Parallel coordinates")
    return fig.update_layout(margin_t=PARALLEL_TOP_MARGIN, title_y=PARALLEL_TITLE_Y, title_yref="container",
                             title_yanchor="top")


def slice_plot(study: optuna.Study, name: str) -> go.Figure:
    return _styled(vis.plot_slice(study, params=[name], **_target(study)), f"Slice: {name}")


def pareto(study: optuna.Study, second: str | None) -> go.Figure:
    """Accuracy against the study's second objective (an attribute of _records.COSTS, None if
    unknown), the Pareto front highlighted."""
    cost = COST_TITLES.get(second or "", "objective 1")
    fig = _styled(vis.plot_pareto_front(study, target_names=[objective_name(study), cost]),
                  f"Pareto front: {objective_name(study)} and {cost}")
    return fig.update_layout(yaxis_type="log") if second == N_PARAMS else fig
