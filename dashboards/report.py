"""python -m dashboards.report NAME: reports/NAME/index.html, self-contained (plotly's JS inline)."""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
from pathlib import Path

import optuna
import plotly.offline

from dashboards import _draw, _records
from storage import artifact_store, check_study_name, describe, open_storage

logger = logging.getLogger(__name__)


def _baseline_study(study: optuna.Study) -> optuna.Study | None:
    names = {s.study_name for s in optuna.get_all_study_summaries(study._storage)}
    for candidate in (f"{study.study_name}-random", f"{study.study_name}_random"):
        if candidate in names:
            return optuna.load_study(study_name=candidate, storage=study._storage)
    return None


def _evaluation_images(record: dict) -> list[dict]:
    artifact_id = record.get("evaluation_artifact_id")
    if not artifact_id:
        return []
    try:
        with artifact_store().open_reader(artifact_id) as f:
            full = json.loads(f.read())
    except Exception as exc:  # the report still renders without the images
        logger.warning("could not read evaluation artifact %s: %s", artifact_id, exc)
        return []
    return [w for w in full.get("worst_misclassified", []) if "png" in w]


def build_report(study: optuna.Study) -> str:
    sections: list[tuple[str, str]] = []
    counts = _records.counts(study)

    def add(title: str, fig) -> None:
        sections.append((title, fig.to_html(full_html=False, include_plotlyjs=False)))

    h = _records.history(study)
    if h.numbers:
        add("History", _draw.history(h))
    c = _records.curves(study)
    if c.trials:
        add("Learning curves", _draw.curves(c))
    imp = _records.importances(study)
    if imp:
        add("Importances", _draw.importances(imp))
    names, rows = _records.params_table(study)
    if rows:
        add("Parallel coordinates", _draw.parallel(names, rows))
        for name in (list(imp) or names)[:4]:
            add(f"Slice {name}", _draw.slice_plot(name, rows))
    cost = _records.cost_points(study)
    if cost.trials:
        add("Accuracy vs parameters", _draw.cost(cost, "params"))
        add("Accuracy vs training time", _draw.cost(cost, "seconds"))
    base = _baseline_study(study)
    if base is not None:
        add("Against random search", _draw.baseline(_records.best_vs_epochs(study), _records.best_vs_epochs(base),
                                                    base.study_name))
    final = _records.final_evaluation(study)
    if final:
        add("Confusion matrix", _draw.confusion(final["confusion_matrix"], final["class_names"]))
        add("Per-class accuracy", _draw.per_class(final["per_class_accuracy"], final["class_names"]))

    top = _records.top_trials(study)
    table = "".join(
        f"<tr><td>{t['trial']}</td><td>{t['value']:.4f}</td><td>{t['epochs']}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in t['params'].items()))}</td></tr>"
        for t in top)
    summary = (f"<p>{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed, "
               f"{counts['running']} running.</p>")
    if final:
        summary += (f"<p><b>Final evaluation</b> of trial {final['trial']}: validation accuracy over "
                    f"{len(final['seeds'])} seeds {final['val_accuracy_mean']:.4f} ± {final['val_accuracy_std']:.4f}; "
                    f"test accuracy (once) <b>{final['test_accuracy']:.4f}</b>.</p>")
    images = _evaluation_images(final) if final else []
    grid = ""
    if images:
        cells = "".join(
            f"<figure><img src='data:image/png;base64,{w['png']}' width=64 height=64>"
            f"<figcaption>true {html.escape(final['class_names'][w['true']])}<br>"
            f"pred {html.escape(final['class_names'][w['pred']])} ({w['confidence']:.2f})</figcaption></figure>"
            for w in images)
        grid = f"<h2>Most confidently misclassified test images</h2><div class=grid>{cells}</div>"
    body = "".join(f"<section><h2>{html.escape(t)}</h2>{div}</section>" for t, div in sections)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(study.study_name)}: report</title>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;text-align:center;font-size:11px}} img{{image-rendering:pixelated}}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>{summary}
<h2>Top trials</h2><table id=top-trials><tr><th>trial</th><th>val accuracy</th><th>epochs</th><th>params</th></tr>{table}</table>
{body}{grid}</body></html>"""


def write_report(study: optuna.Study, out_dir: str | Path = "reports") -> Path:
    target = Path(out_dir) / study.study_name / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(build_report(study))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.report")
    parser.add_argument("name")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_study_name(args.name)
        study = optuna.load_study(study_name=args.name, storage=open_storage(args.storage))
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}; studies are created by `make study NAME=...` ({describe(args.storage)})", file=sys.stderr)
        return 2
    path = write_report(study, args.out)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
