"""make evaluate NAME=...: is the best trial real or noise, and how does it do on the test split?

Retrains the best trial's configuration with several seeds (validation accuracy: mean and
spread), then evaluates the first seed's model once on the test split, the only place in the
service that may. Stores the final model (.keras), test accuracy, confusion matrix, per-class
accuracy and the most confidently misclassified test images with the study.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna

from data import final_evaluation, load_dataset, train_val_splits
from search._space import trial_config
from search._spec import StudySpec
from search._train import image_model, release, train
from storage import upload

logger = logging.getLogger(__name__)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: t.values[0])  # Pareto front: the most accurate


def test_metrics(probs: np.ndarray, y: np.ndarray, class_names: tuple[str, ...], n_worst: int = 25) -> dict[str, Any]:
    pred = probs.argmax(1)
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:n_worst]
    return {
        "test_accuracy": float((pred == y).mean()),
        "n_test": int(len(y)),
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "per_class_accuracy": [round(float(a), 4) for a in per_class],
        "worst_misclassified": [{"index": int(i), "true": int(y[i]), "pred": int(pred[i]),
                                 "confidence": round(float(probs[i, pred[i]]), 4)} for i in worst],
    }


def evaluate(spec: StudySpec, study: optuna.Study, *, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    if len(seeds) < 3:
        raise ValueError(f"evaluation needs at least 3 seeds to say anything about noise but got {len(seeds)}")
    trial = best_trial(study)
    dataset = load_dataset(spec.dataset, label_mode=spec.label_mode)
    splits = train_val_splits(dataset, val_fraction=spec.val_fraction, seed=spec.seed,
                              max_train=spec.max_train, max_val=spec.max_val)
    train_splits, make_model, cache = splits, image_model(spec.normalization), None
    if spec.feature_cache is not None:
        from search._features import ensure_features, trial_builder

        train_splits, make_model = trial_builder(spec, splits, search=False)  # all features, not the search subset
        cache = None if spec.augments else ensure_features(spec, splits)
    cfg = trial_config(spec, trial.params, input_shape=splits.input_shape, num_classes=splits.num_classes)

    accuracies, final = [], None
    for seed in seeds:
        result, model = train(cfg, train_splits, max_epochs=spec.max_epochs, patience=spec.patience, seed=seed,
                              label=f"evaluate seed {seed}", make_model=make_model)
        accuracies.append(result.best_val_accuracy)
        logger.info("seed %d: best validation accuracy %.4f at epoch %d", seed, result.best_val_accuracy,
                    result.best_epoch)
        if final is None:
            final = model
            if cache is not None:
                from search._features import full_model

                final = full_model(spec, splits, cache.base_weights, model)
        else:
            del model

    with final_evaluation():
        x_test, y_test = dataset.test_split()
        probs = np.asarray(final.predict(x_test, batch_size=256, verbose=0))
        for worst in (metrics := test_metrics(probs, y_test, dataset.class_names))["worst_misclassified"]:
            worst["png"] = _png(x_test[worst["index"]])
    record = {
        "trial": trial.number,
        "params": trial.params,
        "study_best_value": trial.values[0],
        "seeds": list(seeds),
        "n_train": len(train_splits.y_train),  # all of it, even when the search used a subset
        "val_accuracy_per_seed": [round(a, 5) for a in accuracies],
        "val_accuracy_mean": statistics.mean(accuracies),
        "val_accuracy_std": statistics.stdev(accuracies),
        **metrics,
    }
    _store(study, final, record)
    release()
    return record


def _png(image: np.ndarray) -> str:
    """A small base64 PNG of one test image, for the report's misclassification grid."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.squeeze()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _store(study: optuna.Study, model: keras.Model, record: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / f"{study.study_name}-final.keras"
        model.save(model_path)
        record["model_artifact_id"] = upload(study, model_path, mimetype="application/zip")
        json_path = Path(tmp) / f"{study.study_name}-evaluation.json"
        json_path.write_text(json.dumps(record, indent=1))
        record["evaluation_artifact_id"] = upload(study, json_path, mimetype="application/json")
    summary = {k: v for k, v in record.items() if k not in ("confusion_matrix", "worst_misclassified")}
    study.set_user_attr("final_evaluation", summary)
    study.set_user_attr("final_confusion_matrix", record["confusion_matrix"])
