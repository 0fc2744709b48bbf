"""Records in, plotly figures out, for the views optuna.visualization does not draw. No study
access here."""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards._records import CostPoints, Curves, TimeBreakdown
from storage.attrs import N_PARAMS, TRAIN_SECONDS

LAYOUT = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=60, b=50))
COST_TITLES = {N_PARAMS: "parameters", TRAIN_SECONDS: "training seconds"}


def curves(c: Curves) -> go.Figure:
    fig = go.Figure()
    for number, xs, ys, pruned in zip(c.trials, c.epochs, c.values, c.pruned):
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=f"trial {number}{' (pruned)' if pruned else ''}",
            line=dict(dash="dot", color="rgba(200,60,60,0.6)") if pruned else dict(width=2),
            marker=dict(symbol="x" if pruned else "circle", size=5), legendgroup="pruned" if pruned else "kept",
        ))
    return fig.update_layout(title="Learning curves (pruned trials dotted red)", xaxis_title="epoch",
                             yaxis_title="validation accuracy", **LAYOUT)


def cost(p: CostPoints, axis: str) -> go.Figure:
    """Accuracy against one cost (an attribute of _records.COSTS) with its Pareto front."""
    xs, front = p.costs[axis], set(p.fronts[axis])
    on = sorted((i for i, n in enumerate(p.trials) if n in front), key=lambda i: xs[i])
    fig = go.Figure([
        go.Scatter(x=xs, y=p.accuracy, mode="markers", name="trial", text=[f"trial {n}" for n in p.trials]),
        go.Scatter(x=[xs[i] for i in on], y=[p.accuracy[i] for i in on], mode="lines+markers", name="Pareto front",
                   line_shape="hv"),
    ])
    title = COST_TITLES[axis]
    return fig.update_layout(title=f"Accuracy against {title}", xaxis_title=title, yaxis_title="validation accuracy",
                             xaxis_type="log" if axis == N_PARAMS else None, **LAYOUT)


def confusion(matrix: list[list[int]], names: list[str]) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, colorscale="Blues"))
    return fig.update_layout(title="Test confusion matrix (rows: true, columns: predicted)",
                             yaxis_autorange="reversed", **{**LAYOUT, "height": 560})


def per_class(acc: list[float], names: list[str]) -> go.Figure:
    fig = go.Figure(go.Bar(x=names, y=acc))
    return fig.update_layout(title="Per-class test accuracy", yaxis_range=[0, 1], **LAYOUT)


def baseline(ours: tuple[list[int], list[float]], theirs: tuple[list[int], list[float]], name: str) -> go.Figure:
    fig = go.Figure([
        go.Scatter(x=ours[0], y=ours[1], mode="lines", line_shape="hv", name="this study"),
        go.Scatter(x=theirs[0], y=theirs[1], mode="lines", line_shape="hv", name=f"random baseline ({name})"),
    ])
    return fig.update_layout(title="Best validation accuracy against cumulative epochs", xaxis_title="epochs trained",
                             yaxis_title="best validation accuracy", **LAYOUT)


def time_per_trial(b: TimeBreakdown) -> go.Figure:
    """A stacked bar per trial: its seconds in each phase."""
    labels = [f"{n} ({state})" for n, state in zip(b.trials, b.states)]
    fig = go.Figure([go.Bar(x=labels, y=b.seconds[phase], name=phase) for phase in b.seconds])
    return fig.update_layout(title="Where each trial's time went", barmode="stack", xaxis_title="trial",
                             yaxis_title="seconds", xaxis_type="category", **LAYOUT)


def time_totals(b: TimeBreakdown) -> go.Figure:
    """The study's seconds per phase, with each phase's share of all trial time."""
    shares = b.shares()
    fig = go.Figure(go.Bar(x=list(b.totals.values()), y=list(b.totals), orientation="h",
                           text=[f"{b.totals[p]:,.1f} s ({shares[p]:.0%})" for p in b.totals], textposition="auto"))
    return fig.update_layout(title=f"Time per phase over {len(b.trials)} trials ({b.total:,.0f} s in all)",
                             xaxis_title="seconds", yaxis_autorange="reversed", **LAYOUT)
