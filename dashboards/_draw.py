"""Records in, plotly figures out. No study access here."""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards._records import CostPoints, Curves, History

_LAYOUT = dict(template="plotly_white", height=420, margin=dict(l=60, r=20, t=50, b=50))


def history(h: History) -> go.Figure:
    fig = go.Figure([
        go.Scatter(x=h.numbers, y=h.values, mode="markers", name="trial"),
        go.Scatter(x=h.numbers, y=h.best_so_far, mode="lines", name="best so far", line_shape="hv"),
    ])
    return fig.update_layout(title="Optimization history", xaxis_title="trial", yaxis_title="validation accuracy",
                             **_LAYOUT)


def curves(c: Curves) -> go.Figure:
    fig = go.Figure()
    for number, xs, ys, pruned in zip(c.trials, c.epochs, c.values, c.pruned):
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=f"trial {number}{' (pruned)' if pruned else ''}",
            line=dict(dash="dot", color="rgba(200,60,60,0.6)") if pruned else dict(width=2),
            marker=dict(symbol="x" if pruned else "circle", size=5), legendgroup="pruned" if pruned else "kept",
        ))
    return fig.update_layout(title="Learning curves (pruned trials dotted red)", xaxis_title="epoch",
                             yaxis_title="validation accuracy", **_LAYOUT)


def importances(imp: dict[str, float]) -> go.Figure:
    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[imp[n] for n in names], y=names, orientation="h"))
    return fig.update_layout(title="Parameter importances (PED-ANOVA)", xaxis_title="importance", **_LAYOUT)


def parallel(names: list[str], rows: list[dict]) -> go.Figure:
    dims = []
    for name in names:
        values = [r.get(name) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None):
            dims.append(dict(label=name, values=[v if v is not None else float("nan") for v in values]))
        else:
            cats = sorted({str(v) for v in values})
            dims.append(dict(label=name, values=[cats.index(str(v)) for v in values],
                             tickvals=list(range(len(cats))), ticktext=cats))
    dims.append(dict(label="accuracy", values=[r["value"] for r in rows]))
    fig = go.Figure(go.Parcoords(line=dict(color=[r["value"] for r in rows], colorscale="Viridis", showscale=True),
                                 dimensions=dims))
    return fig.update_layout(title="Parallel coordinates", **_LAYOUT)


def slice_plot(name: str, rows: list[dict]) -> go.Figure:
    pts = [r for r in rows if name in r]
    fig = go.Figure(go.Scatter(x=[r[name] for r in pts], y=[r["value"] for r in pts], mode="markers",
                               text=[f"trial {r['trial']}" for r in pts], marker=dict(color=[r["trial"] for r in pts],
                                                                                        colorscale="Blues")))
    return fig.update_layout(title=f"Slice: {name}", xaxis_title=name, yaxis_title="validation accuracy", **_LAYOUT)


def cost(p: CostPoints, axis: str) -> go.Figure:
    xs = p.params if axis == "params" else p.seconds
    front = set(p.pareto_params if axis == "params" else p.pareto_seconds)
    on = [i for i, n in enumerate(p.trials) if n in front]
    on.sort(key=lambda i: xs[i])
    fig = go.Figure([
        go.Scatter(x=xs, y=p.accuracy, mode="markers", name="trial", text=[f"trial {n}" for n in p.trials]),
        go.Scatter(x=[xs[i] for i in on], y=[p.accuracy[i] for i in on], mode="lines+markers", name="Pareto front",
                   line_shape="hv"),
    ])
    title = "parameters" if axis == "params" else "training seconds"
    return fig.update_layout(title=f"Accuracy against {title}", xaxis_title=title, yaxis_title="validation accuracy",
                             xaxis_type="log" if axis == "params" else None, **_LAYOUT)


def confusion(matrix: list[list[int]], names: list[str]) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, colorscale="Blues"))
    return fig.update_layout(title="Test confusion matrix (rows: true, columns: predicted)",
                             yaxis_autorange="reversed", **{**_LAYOUT, "height": 560})


def per_class(acc: list[float], names: list[str]) -> go.Figure:
    fig = go.Figure(go.Bar(x=names, y=acc))
    return fig.update_layout(title="Per-class test accuracy", yaxis_range=[0, 1], **_LAYOUT)


def baseline(ours: tuple[list[int], list[float]], theirs: tuple[list[int], list[float]], name: str) -> go.Figure:
    fig = go.Figure([
        go.Scatter(x=ours[0], y=ours[1], mode="lines", line_shape="hv", name="this study"),
        go.Scatter(x=theirs[0], y=theirs[1], mode="lines", line_shape="hv", name=f"random baseline ({name})"),
    ])
    return fig.update_layout(title="Best validation accuracy against cumulative epochs", xaxis_title="epochs trained",
                             yaxis_title="best validation accuracy", **_LAYOUT)
