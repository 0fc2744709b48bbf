"""The report's HTML: sections of figures (or notes in their place), the summary, the top-trials
table and the misclassified images, in one self-contained page."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import plotly.offline

from dashboards._records import ImportedTrial

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px} .grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;text-align:center;font-size:11px} img{image-rendering:pixelated}
.note{color:#555;font-style:italic}"""


@dataclass
class Section:
    """One heading of the report: a figure, or a note saying why there is none."""

    title: str
    figure: go.Figure | None = None
    note: str | None = None

    def html(self) -> str:
        if self.figure is not None:
            body = self.figure.to_html(full_html=False, include_plotlyjs=False)
        else:
            body = f"<p class=note>{html.escape(self.note or '')}</p>"
        return f"<section><h2>{html.escape(self.title)}</h2>{body}</section>"


def summary(counts: dict[str, int], fail_reasons: dict[str, int], stopped: str | None,
            final: dict[str, Any] | None) -> str:
    reasons = ", ".join(f"{html.escape(r)} {n}" for r, n in fail_reasons.items())
    out = (f"<p>{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
           f"{f' ({reasons})' if reasons else ''}, {counts['running']} running.</p>")
    if stopped:
        out += f"<p><b>Workers stopped early:</b> {html.escape(stopped)}</p>"
    if final:
        out += (f"<p><b>Final evaluation</b> of trial {final['trial']}: validation accuracy over "
                f"{len(final['seeds'])} seeds {final['val_accuracy_mean']:.4f} ± {final['val_accuracy_std']:.4f}; "
                f"test accuracy (once) <b>{final['test_accuracy']:.4f}</b>.</p>") + confirmation_table(final)
    return out


def confirmation_table(final: dict[str, Any]) -> str:
    """The top trials confirmed before the test: each one's search value beside its confirmed mean ±
    spread over the seeds, and how much the search over-rated it (positive: the search said better)."""
    candidates = final.get("candidates") or []
    if len(candidates) < 2:
        return ""
    metric = html.escape(str(final.get("metric", "val_accuracy")))
    rows = "".join(
        f"<tr{' class=picked' if c['trial'] == final['trial'] else ''}><td>{c['trial']}</td>"
        f"<td>{c['search_value']:.4f}</td><td>{c['confirmed_mean']:.4f} ± {c['confirmed_std']:.4f}</td>"
        f"<td>{c['over_rating']:+.4f}</td><td>{'picked, tested' if c['trial'] == final['trial'] else ''}</td>"
        f"<td>{_params(c['params'])}</td></tr>" for c in candidates)
    warning = ("" if final["trial"] == final.get("search_best_trial", final["trial"]) else
               f"<p class=warning>The confirmed winner is trial {final['trial']}, not the search's best (trial "
               f"{final['search_best_trial']}).</p>")
    return (f"<h3>Confirmed before the test</h3><p>The top {len(candidates)} trials retrained on the training split "
            f"over {len(final['seeds'])} seeds ({metric}); the best confirmed mean was tested.</p>{warning}"
            f"<table id=confirmation><tr><th>trial</th><th>search {metric}</th><th>confirmed mean ± spread</th>"
            f"<th>over-rated by</th><th></th><th>params</th></tr>{rows}</table>")


def _params(params: dict[str, Any]) -> str:
    return html.escape(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()))


def top_table(top: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{t['trial']}</td><td>{t['value']:.4f}</td><td>{t['epochs']}</td>"
                   f"<td>{_params(t['params'])}</td></tr>" for t in top)
    return ("<h2>Top trials</h2><table id=top-trials><tr><th>trial</th><th>val accuracy</th><th>epochs</th>"
            f"<th>params</th></tr>{rows}</table>")


def images(worst: list[dict[str, Any]], class_names: list[str]) -> str:
    if not worst:
        return ""
    cells = "".join(
        f"<figure><img src=\"data:image/png;base64,{html.escape(str(w['png']), quote=True)}\" width=64 height=64>"
        f"<figcaption>true {html.escape(class_names[w['true']])}<br>"
        f"pred {html.escape(class_names[w['pred']])} ({w['confidence']:.2f})</figcaption></figure>"
        for w in worst)
    return f"<h2>Most confidently misclassified test images</h2><div class=grid>{cells}</div>"


IMPORTED_TITLE = "Imported from the old search"


def imported_table(rows: list[ImportedTrial]) -> str:
    """The warm starts import-cv brought from an old scikit-learn search: old CV score beside new accuracy."""
    if not rows:
        return ""
    cells = "".join(
        f"<tr><td>{r.trial}</td><td>{_params(r.params)}</td>"
        f"<td>{r.cv_mean:.4f}{'' if r.cv_std is None else f' ± {r.cv_std:.4f}'} (rank {r.cv_rank})</td>"
        f"<td>{html.escape(r.state) if r.value is None else f'{r.value:.4f}'}</td></tr>" for r in rows)
    sources = html.escape(", ".join(sorted({r.source for r in rows})))
    return (f"<section><h2>{IMPORTED_TITLE}</h2><p class=note>Best configurations of the old search ({sources}). "
            "Its scores were measured on cross-validation folds, this study's on its validation split: compare "
            "the order, not the numbers.</p><table id=imported-trials><tr><th>trial</th><th>params</th>"
            f"<th>old mean CV score ± std (rank)</th><th>new validation accuracy</th></tr>{cells}</table></section>")


def page(name: str, *, intro: str, top: list[dict[str, Any]], sections: list[Section], gallery: str,
         imported: str = "") -> str:
    body = "".join(s.html() for s in sections)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(name)}: report</title>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
<style>{_STYLE}</style></head><body>
<h1>Study {html.escape(name)}</h1>{intro}
{top_table(top)}
{imported}{body}{gallery}</body></html>"""
