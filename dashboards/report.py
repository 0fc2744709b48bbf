"""python -m dashboards.report NAME: reports/NAME/index.html, self-contained (plotly's JS inline).

Optuna's views (history, importances, parallel coordinates, slices, Pareto front) are drawn by
optuna.visualization (_standard.py); what only this project knows (learning curves with pruned
trials, accuracy against model size and training time, where the trials' time went (per trial and per
phase: build, compile, train, validate, checkpoint, store...), the comparison with a random baseline, the
test evaluation, the warm starts imported from an old scikit-learn search beside their new accuracy)
is drawn from records (_records.py -> _draw.py, _html.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import optuna

from dashboards import _draw, _html, _records, _standard
from dashboards._html import Section
from search.settings import Settings
from storage import Artifacts, artifact_store, check_study_name, describe, open_storage
from storage.attrs import N_PARAMS, TRAIN_SECONDS

logger = logging.getLogger(__name__)

N_SLICES = 4  # slices of the most important parameters
_COST_SECTIONS = {N_PARAMS: "Accuracy vs parameters", TRAIN_SECONDS: "Accuracy vs training time"}


def find_baseline(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    """The random-search baseline of study `name` in the same store (NAME-random), if there is one."""
    names = set(optuna.study.get_all_study_names(storage))
    for candidate in (f"{name}-random", f"{name}_random"):
        if candidate in names:
            return optuna.load_study(study_name=candidate, storage=storage)
    return None


def _evaluation_images(record: dict[str, Any], artifacts: Artifacts | Path | None = None) -> list[dict[str, Any]]:
    artifact_id = record.get("evaluation_artifact_id")
    if not artifact_id:
        return []
    try:
        with artifact_store(artifacts).open_reader(artifact_id) as f:
            full = json.loads(f.read())
    except Exception as exc:  # the report still renders without the images
        logger.warning("could not read evaluation artifact %s: %s", artifact_id, exc)
        return []
    return [w for w in full.get("worst_misclassified", []) if "png" in w]


def _optuna_sections(study: optuna.Study) -> list[Section]:
    if _records.counts(study)["complete"] == 0:
        return [Section("History", note="No complete trial yet: the optimization history, importances, "
                                        "parallel coordinates and slices appear once one finishes.")]
    sections = [Section("History", _standard.history(study))]
    try:
        importances = _standard.importances(study)
        sections.append(Section("Importances", importances))
        order = _standard.ranked(importances)
    except _standard.Unavailable as exc:
        sections.append(Section("Importances", note=str(exc)))
        order = _standard.params(study)
    sections.append(Section("Parallel coordinates", _standard.parallel(study)))
    sections += [Section(f"Slice {name}", _standard.slice_plot(study, name)) for name in order[:N_SLICES]]
    if len(study.directions) == 2:
        sections.append(Section("Pareto front", _standard.pareto(study, _records.second_objective(study))))
    return sections


def _own_sections(study: optuna.Study, baseline: optuna.Study | None) -> list[Section]:
    sections = []
    curves = _records.curves(study)
    if curves.trials:
        sections.append(Section("Learning curves", _draw.curves(curves)))
    cost = _records.cost_points(study)
    for axis, title in _COST_SECTIONS.items():
        if cost.trials and axis != _records.second_objective(study):  # that one is optuna's Pareto front
            sections.append(Section(title, _draw.cost(cost, axis)))
    if baseline is not None:
        sections.append(Section("Against random search", _draw.baseline(
            _records.best_vs_epochs(study), _records.best_vs_epochs(baseline), baseline.study_name)))
    return sections


def _evaluation_sections(final: dict[str, Any] | None) -> list[Section]:
    if not final:
        return []
    names = final["class_names"]
    return [Section("Confusion matrix", _draw.confusion(final["confusion_matrix"], names)),
            Section("Per-class accuracy", _draw.per_class(final["per_class_accuracy"], names))]


def _time_sections(study: optuna.Study) -> list[Section]:
    """Where the trials' time went (attrs.TIME_BREAKDOWN): per trial, and the study's totals."""
    breakdown = _records.time_breakdown(study)
    if not breakdown.trials:
        return []
    return [Section("Time per trial", _draw.time_per_trial(breakdown)),
            Section("Time per phase", _draw.time_totals(breakdown))]


def sections(study: optuna.Study, *, baseline: optuna.Study | None = None) -> list[Section]:
    """Every figure (or the note in its place) of the report, in order."""
    final = _records.final_evaluation(study)
    return [*_optuna_sections(study), *_own_sections(study, baseline), *_time_sections(study),
            *_evaluation_sections(final)]


def build_report(study: optuna.Study, *, baseline: optuna.Study | None = None, artifacts: Artifacts | Path | None = None) -> str:
    final = _records.final_evaluation(study)
    return _html.page(
        study.study_name,
        intro=_html.summary(_records.counts(study), _records.fail_reasons(study), _records.stopped(study), final),
        top=_records.top_trials(study),
        imported=_html.imported_table(_records.imported_trials(study)),
        sections=sections(study, baseline=baseline),
        gallery=_html.images(_evaluation_images(final, artifacts), final["class_names"]) if final else "",
    )


def write_report(study: optuna.Study, out_dir: str | Path = "reports", *,
                 baseline: optuna.Study | None = None, artifacts: Artifacts | Path | None = None) -> Path:
    target = Path(out_dir) / study.study_name / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(build_report(study, baseline=baseline, artifacts=artifacts))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.report")
    parser.add_argument("name")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env()
    url = settings.store_url(args.storage)
    try:
        check_study_name(args.name)
        storage = open_storage(url)
        study = optuna.load_study(study_name=args.name, storage=storage)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}; studies are created by `make study NAME=...` ({describe(url)})", file=sys.stderr)
        return 2
    path = write_report(study, args.out, baseline=find_baseline(storage, args.name), artifacts=settings.artifacts())
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
