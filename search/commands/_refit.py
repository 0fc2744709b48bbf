"""The best configuration trained once on all the training data: scikit-learn's refit.

Nothing is held out, so nothing tells when to stop: the model trains for the epoch at which the
trial reached its best validation value (with `data.folds`, the mean over the folds). The test
split is not read (that is `make evaluate`'s, once).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import optuna

from data import Splits
from search.commands._evaluate import best_trial
from search.errors import StudySpecError
from search.settings import Settings
from search.spec import StudySpec, load_data, trial_config
from search.study import check_same_data
from search.trial import FitOptions, fit_all, image_model, release
from storage import attrs


def refit_epochs(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> int:
    """The epoch of the trial's best validation value (the mean over its folds), at least 1."""
    epochs = trial.user_attrs.get(attrs.FOLD_BEST_EPOCHS) or [trial.user_attrs.get(attrs.BEST_EPOCH, spec.max_epochs)]
    return max(1, round(statistics.fmean(epochs)))


def refit(spec: StudySpec, study: optuna.Study, settings: Settings, output: Path, *,
          trial: int | None = None) -> dict[str, Any]:
    if spec.feature_cache is not None:
        raise StudySpecError("feature_cache", (
            "a feature-cache study's model is its base and the searched head: `make evaluate` trains and stores "
            "it (with the test); refit trains a study's whole model"))
    chosen = best_trial(study) if trial is None else study.trials[trial]
    if chosen.state != optuna.trial.TrialState.COMPLETE:
        raise StudySpecError("trial", f"trial {chosen.number} is {chosen.state.name}; refit a completed trial")
    dataset = load_data(spec, settings)
    check_same_data(study, spec, dataset.fingerprint)
    everything = Splits(dataset.x_train, dataset.y_train, dataset.x_train[:0], dataset.y_train[:0],
                        dataset.class_names, f"{dataset.fingerprint}:all")
    cfg = trial_config(spec, chosen.params, input_shape=everything.input_shape, num_classes=everything.num_classes)
    epochs = refit_epochs(chosen, spec)
    started = time.perf_counter()
    try:
        model = fit_all(cfg, everything, FitOptions.for_study(spec), epochs=epochs, seed=spec.seed,
                        make_model=image_model(spec.normalization))
        output.parent.mkdir(parents=True, exist_ok=True)
        model.save(output)
    finally:
        release()
    return {"trial": chosen.number, "params": chosen.params, "epochs": epochs, "n_train": len(everything.y_train),
            "seconds": time.perf_counter() - started, "path": str(output)}
