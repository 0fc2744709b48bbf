"""make evaluate NAME=...: is the best trial real or noise, and how does it do on the test split?

Retrains the best trial's configuration with several seeds (validation accuracy: mean and
spread), then evaluates the first seed's model once on the test split, the only place in the
service that may. Stores the final model (.keras), test accuracy, confusion matrix, per-class
accuracy and the most confidently misclassified test images with the study.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import io
import json
import logging
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
from PIL import Image

from data import Splits, final_evaluation
from search._tracking import MlflowTracker, tracker
from search.settings import Settings
from search.spec import StudySpec, TrialConfig, load_data, minimized, split_fine_tune, study_splits, trial_config
from search.study import (
    check_same_data,
    confirmation_study,
    confirmations_of,
    enqueue_confirmations,
    one_per_params,
    ranked,
    unfinished,
)
from search.trial import (
    BalancedAccuracy,
    FineTuning,
    FitOptions,
    MacroF1,
    TrainResult,
    ensure_features,
    full_model,
    image_model,
    release,
    train,
    trial_builder,
)
from storage import Artifacts, attrs, upload

logger = logging.getLogger(__name__)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    if len(study.directions) == 1:
        return study.best_trial
    best = min if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else max
    return best(study.best_trials, key=lambda t: t.values[0])  # Pareto front: the best first objective


def test_metrics(probs: np.ndarray, y: np.ndarray, class_names: tuple[str, ...], n_worst: int = 25,
                 top_k: int = 5) -> dict[str, Any]:
    pred = probs.argmax(1)
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    top_k = min(top_k, k)
    # The objective metrics on the test split, by the same Keras metrics trials are scored with.
    others = {"test_macro_f1": MacroF1(k), "test_balanced_accuracy": BalancedAccuracy(k),
              f"test_top_{top_k}_accuracy": keras.metrics.SparseTopKCategoricalAccuracy(k=top_k)}
    for metric in others.values():
        metric.update_state(y, probs)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:n_worst]
    return {
        "test_accuracy": float((pred == y).mean()),
        **{name: float(metric.result()) for name, metric in others.items()},
        "n_test": int(len(y)),
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "per_class_accuracy": [round(float(a), 4) for a in per_class],
        "worst_misclassified": [{"index": int(i), "true": int(y[i]), "pred": int(pred[i]),
                                 "confidence": round(float(probs[i, pred[i]]), 4)} for i in worst],
    }


@dataclass
class _EvaluationData:
    dataset: Any
    splits: Splits
    train_splits: Splits  # images, or every cached feature of a feature-cache study
    make_model: Any
    base_weights: Path | None = None  # a feature-cache study's base: the final model is base + head
    fine_tuning: FineTuning | None = None  # a study with `fine_tune:`: every image, for a fine-tuning candidate


def _evaluation_data(spec: StudySpec, settings: Settings, store_url: str | None = None) -> _EvaluationData:
    dataset = load_data(spec, settings)
    splits = study_splits(spec, dataset)
    if spec.feature_cache is None:
        return _EvaluationData(dataset, splits, splits, image_model(spec.normalization))
    artifacts = settings.artifacts()
    # All features, not the search subset.
    store_url = store_url or settings.store_url()  # a PostgreSQL store: builds are locked there, across machines
    train_splits, make_model = trial_builder(spec, splits, search=False, artifacts=artifacts, store_url=store_url)
    weights = None if spec.augments else ensure_features(spec, splits, artifacts=artifacts,
                                                         store_url=store_url).base_weights
    fine = None if spec.fine_tune is None else FineTuning.for_study(spec, splits, search=False, artifacts=artifacts,
                                                                     store_url=store_url)
    return _EvaluationData(dataset, splits, train_splits, make_model, weights, fine)


def _retrain(spec: StudySpec, data: _EvaluationData, cfg: TrialConfig,
             seeds: tuple[int, ...]) -> tuple[list[TrainResult], keras.Model]:
    """Train the configuration once per seed; each seed's result and the first seed's model. A
    fine-tuning trial's (its knobs hold fine_tune_*) is its head, then the whole model fine-tuned."""
    results, final = [], None
    fine = split_fine_tune(cfg.knobs)[1]
    for seed in seeds:
        # Keras's progress bar on a terminal, as the base training's (search.trial._features); log lines otherwise.
        options = FitOptions.for_study(spec, verbose=1 if sys.stderr.isatty() else 0)
        if fine:
            _, result, model = data.fine_tuning.train(cfg, fine, data.train_splits, data.make_model, options,
                                                      seed=seed, label=f"evaluate seed {seed}")
        else:
            result, model = train(cfg, data.train_splits, options, seed=seed,
                                  label=f"evaluate seed {seed}", make_model=data.make_model)
        results.append(result)
        logger.info("seed %d: best %s %.4f at epoch %d (validation accuracy %.4f)", seed, spec.metric,
                    result.best_value, result.best_epoch, result.best_val_accuracy)
        if final is None:
            final = model
            if data.base_weights is not None and not fine:  # a fine-tuned model takes images already
                final = full_model(spec, data.splits, data.base_weights, model)
        else:
            del model
    return results, final


def candidates(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k best trials by the study's value (its first objective; feasible ones when constrained),
    one per distinct params: a configuration run twice (a warm start, a retry) is confirmed once."""
    best = best_trial(study)
    return [best] if k <= 1 else one_per_params([best, *ranked(study)], k)


@dataclass
class Confirmation:
    """A candidate retrained over the seeds: its search value beside the confirmed mean."""

    trial: optuna.trial.FrozenTrial
    accuracies: list[float]
    values: list[float]  # the study's metric, each seed

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    def row(self, minimize: bool) -> dict[str, Any]:
        search = self.trial.values[0]
        return {"trial": self.trial.number, "params": self.trial.params, "search_value": search,
                "confirmed_mean": self.mean, "confirmed_std": statistics.stdev(self.values),
                # How much the search over-rated it: positive when its search value was the better one.
                "over_rating": (self.mean - search) if minimize else (search - self.mean)}


def evaluate(spec: StudySpec, study: optuna.Study, settings: Settings, *, store_url: str | None = None,
             seeds: tuple[int, ...] = (0, 1, 2), top_k: int | None = None,
             confirm_on_workers: Callable[[], None] | None = None) -> dict[str, Any]:
    """Confirm the top-k candidates over `seeds` on the study's training split (every cached feature of
    a feature-cache study, not the search's subset), pick the best by its
    confirmed mean of the study's metric, then score that one once on the test split.

    confirm_on_workers: runs the study's workers on its confirmation stage (`python -m search run
    NAME --stage confirm`) until the confirmations queued here are done; the candidates are then
    retrained there, in parallel, as trials (search.study._confirm), and only the pick once more
    here, for the model that is tested. None: each candidate is retrained here, one after another."""
    if len(seeds) < 3:
        raise ValueError(f"evaluation needs at least 3 seeds to say anything about noise but got {len(seeds)}")
    minimize = minimized(spec.metric)
    pool = candidates(study, top_k or spec.evaluate_top_k)
    on_workers = len(pool) > 1 and confirm_on_workers is not None
    if on_workers:  # first: the workers get the accelerator before this process holds any of it
        check_same_data(study, spec, load_data(spec, settings).fingerprint)  # test figures on other data would mislead
        confirmed = _confirm_on_workers(study, spec, pool, seeds, confirm_on_workers)
        chosen = _best(confirmed, minimize)
    data = _evaluation_data(spec, settings, store_url)
    check_same_data(study, spec, data.dataset.fingerprint)
    if on_workers:
        _, final = _retrain(spec, data, _config(spec, data, chosen.trial), seeds[:1])  # the model to test
    else:
        confirmed, chosen, final = _confirm_here(spec, data, pool, seeds, minimize)
    if len(pool) > 1:
        for c in confirmed:
            logger.info("candidate trial %d: search %s %.4f, confirmed %.4f ± %.4f over %d seeds", c.trial.number,
                        spec.metric, c.trial.values[0], c.mean, statistics.stdev(c.values), len(seeds))
    trial = chosen.trial
    if trial.number != pool[0].number:
        logger.warning("the confirmed winner is trial %d, not the search's best (trial %d)", trial.number,
                       pool[0].number)
    accuracies, values = chosen.accuracies, chosen.values
    _record_test_access(study, trial.number)  # before the read: an access that crashed still counts
    with final_evaluation():
        x_test, y_test = data.dataset.test_split()
        probs = np.asarray(final.predict(x_test, batch_size=256, verbose=0))
        metrics = test_metrics(probs, y_test, data.dataset.class_names, top_k=spec.top_k)
        for worst in metrics["worst_misclassified"]:
            worst["png"] = _png(x_test[worst["index"]])
    record = {
        "trial": trial.number, "params": trial.params, "study_best_value": trial.values[0], "seeds": list(seeds),
        "search_best_trial": pool[0].number, "candidates": [c.row(minimize) for c in confirmed],
        "n_train": len(data.train_splits.y_train),  # all of it, even when the search used a subset
        "val_accuracy_per_seed": [round(a, 5) for a in accuracies],
        "val_accuracy_mean": statistics.mean(accuracies), "val_accuracy_std": statistics.stdev(accuracies),
        "metric": spec.metric, "val_metric_per_seed": [round(v, 5) for v in values],
        "val_metric_mean": statistics.mean(values), "val_metric_std": statistics.stdev(values),
        **metrics,
    }
    _store(study, final, record, settings.artifacts(), tracker(spec.name, spec.mlflow, settings))
    release()
    return record


def _config(spec: StudySpec, data: _EvaluationData, trial: optuna.trial.FrozenTrial) -> TrialConfig:
    return trial_config(spec, trial.params, input_shape=data.splits.input_shape, num_classes=data.splits.num_classes)


def _best(confirmed: list[Confirmation], minimize: bool) -> Confirmation:
    """The best confirmed mean; among equals, the better-ranked candidate (min and max keep the first)."""
    return (min if minimize else max)(confirmed, key=lambda c: c.mean)


def _confirm_here(spec: StudySpec, data: _EvaluationData, pool: list[optuna.trial.FrozenTrial],
                  seeds: tuple[int, ...], minimize: bool) -> tuple[list[Confirmation], Confirmation, keras.Model]:
    """Each candidate retrained over the seeds in this process; the leader's first-seed model kept."""
    confirmed: list[Confirmation] = []
    chosen, final = None, None
    for trial in pool:
        results, model = _retrain(spec, data, _config(spec, data, trial), seeds)
        confirmation = Confirmation(trial, [r.best_val_accuracy for r in results], [r.best_value for r in results])
        confirmed.append(confirmation)
        if chosen is None or _best([chosen, confirmation], minimize) is confirmation:
            chosen, final = confirmation, model  # only the leader's model is kept
        else:
            del model
    return confirmed, chosen, final


def _confirm_on_workers(study: optuna.Study, spec: StudySpec, pool: list[optuna.trial.FrozenTrial],
                        seeds: tuple[int, ...], run_workers: Callable[[], None]) -> list[Confirmation]:
    """Queue a confirmation trial per candidate and seed in the study's confirmation stage, let the
    workers run them, and read them back; a candidate whose confirmation failed for good is left out."""
    confirm = confirmation_study(study, spec)
    budget = enqueue_confirmations(confirm, pool, seeds)
    logger.info("confirming the top %d trials over %d seeds: %d trials queued in study %s", len(pool), len(seeds),
                budget, confirm.study_name)
    run_workers()
    left = unfinished(confirm)
    if left:  # the workers were stopped: a pick now would compare candidates on what happened to finish
        raise RuntimeError(f"the confirmation stage stopped with {len(left)} confirmation(s) queued or running "
                           f"(study {confirm.study_name}); nothing was tested: `make evaluate` again resumes it")
    out = []
    for trial in pool:
        done = confirmations_of(confirm, trial, seeds)
        if done is None:
            logger.warning("candidate trial %d: a confirmation failed for good (study %s); it is left out",
                           trial.number, confirm.study_name)
            continue
        out.append(Confirmation(trial, [max(t.user_attrs.get(attrs.VAL_ACCURACY_CURVE) or [float("nan")])
                                        for t in done], [t.values[0] for t in done]))
    if not out:
        raise RuntimeError(f"no candidate of study {study.study_name} was confirmed: every confirmation failed "
                           f"(`make status NAME={confirm.study_name}` says why)")
    return out


def _record_test_access(study: optuna.Study, trial: int) -> None:
    accesses = list(study.user_attrs.get(attrs.TEST_ACCESSES, []))
    accesses.append({"who": f"{getpass.getuser()}@{socket.gethostname()}", "trial": trial,
                     "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    study.set_user_attr(attrs.TEST_ACCESSES, accesses)


def _png(image: np.ndarray) -> str:
    """A small base64 PNG of one test image, for the report's misclassification grid."""
    buf = io.BytesIO()
    Image.fromarray(image.squeeze()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _store(study: optuna.Study, model: keras.Model, record: dict[str, Any], artifacts: Artifacts,
           tracked: MlflowTracker | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / f"{study.study_name}-final.keras"
        model.save(model_path)
        record["model_artifact_id"] = upload(study, model_path, root=artifacts, mimetype="application/zip")
        if tracked is not None:  # the registered model's version, or None when the server is down (a warning)
            record["mlflow_model_version"] = tracked.safely("registering the final model", tracked.log_final,
                                                            record, model_path)
        json_path = Path(tmp) / f"{study.study_name}-evaluation.json"
        json_path.write_text(json.dumps(record, indent=1))
        record["evaluation_artifact_id"] = upload(study, json_path, root=artifacts, mimetype="application/json")
    summary = {k: v for k, v in record.items() if k not in ("confusion_matrix", "worst_misclassified")}
    study.set_user_attr(attrs.FINAL_EVALUATION, summary)
    study.set_user_attr(attrs.FINAL_CONFUSION_MATRIX, record["confusion_matrix"])
