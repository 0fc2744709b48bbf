"""The peers of bench-peers (benchmarks/peers.py), each in a process of its own that the benchmark
starts, times and stops at its wall-clock budget:

    python -m benchmarks.peer_methods {prepare,optuna,keras-tuner} CONFIG.json

- `prepare` (not timed): decode the dataset into the data cache and, for a feature-cache study, train
  the base and cache its features, through the service's own feature cache (what `python -m search
  run` does once before its workers start); writes what the trials see to CONFIG's `records`.
- `optuna`: a plain Optuna script, one process: TPESampler(multivariate=True), HyperbandPruner,
  Keras's EarlyStopping and optuna-integration's KerasPruningCallback, `study.optimize` until killed.
- `keras-tuner`: keras_tuner.Hyperband (max_epochs the study's cap, its default factor 3), the same
  space declared as Keras Tuner hyperparameters (`kt_values`), batch size tuned in HyperModel.fit as
  its documentation shows, EarlyStopping as its documentation recommends.

Both peers train what the service's trials train: the same study file read the same way (space,
epochs cap, patience, validation split, and for fc_head the cached features and their training
subset), the same model for the same knob values (search.spec.trial_config and the service's model
builders) and the same optimiser and schedule for them (search.trial._recipe). What differs is the
search: sampler, pruner, processes, and the training loop around `model.fit` (each peer's is plain
Keras with the library's defaults). Each finished trial is appended to `records` as a JSON line
{"t": wall-clock time, "state": complete|pruned|failed, "value": best val_accuracy or null, "epochs"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import optuna
from optuna_integration import KerasPruningCallback

from data import Splits
from search.settings import Settings
from search.spec import KNOBS, Dimension, StudySpec, load_data, load_spec, study_splits, suggest, trial_config
from search.trial import ModelBuilder, ensure_features, image_model
from search.trial._features import head_model, search_subset
from search.trial._recipe import make_loss, make_optimizer, steps_per_epoch

logger = logging.getLogger(__name__)

# Keras Tuner's Hyperband runs `hyperband_iterations` sweeps and stops; its documentation asks for "as
# high a value as is within your resource budget": the wall-clock budget stops it, not this.
KT_ITERATIONS = 10_000


@dataclass(frozen=True)
class Problem:
    """What every trial of a study trains on, and how its model is built."""

    spec: StudySpec
    splits: Splits  # for a feature-cache study: the cached features trials train on (its search subset)
    make_model: ModelBuilder
    image_shape: tuple[int, ...]  # the images the model stands for (trial_config's input shape)
    base_val_accuracy: float | None = None  # the feature cache's base, when there is one


def load_problem(config: dict[str, Any]) -> Problem:
    """The study as its workers load it: the study file with the command line's overrides, its split, and
    for a feature-cache study the cached features (built now if missing) and the head model."""
    settings = Settings.from_env()
    spec = load_spec(config["study"], studies_dir=settings.studies_dir, **config["overrides"])
    dataset = load_data(spec, settings)
    splits = study_splits(spec, dataset)
    if spec.feature_cache is None:
        return Problem(spec, splits, image_model(spec.normalization), dataset.input_shape)
    if spec.augments:
        raise ValueError(f"study {spec.name} augments its images: bench-peers compares searches on cached features")
    cache = ensure_features(spec, splits, artifacts=settings.artifacts_dir)
    base = json.loads((cache.base_weights.parent / "base.json").read_text()) \
        if (cache.base_weights.parent / "base.json").is_file() else {}
    return Problem(spec, search_subset(spec, cache.splits), head_model(), dataset.input_shape,
                   base.get("val_accuracy"))


def compiled(problem: Problem, values: dict[str, Any], seed: int) -> tuple[keras.Model, int]:
    """The model of `values`, compiled with its optimiser, schedule and loss; and its batch size."""
    cfg = trial_config(problem.spec, values, input_shape=problem.image_shape, num_classes=problem.splits.num_classes)
    keras.utils.set_random_seed(seed)
    model = problem.make_model(cfg, problem.splits, seed)
    steps = steps_per_epoch(len(problem.splits.y_train), cfg.train.batch_size)
    model.compile(optimizer=make_optimizer(cfg.train, steps, problem.spec.max_epochs), loss=make_loss(cfg.train),
                  metrics=["accuracy"])
    return model, cfg.train.batch_size


class Records:
    """Finished trials, one JSON line each, written as each ends (the process is killed at its budget)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def add(self, state: str, value: float | None, epochs: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"t": time.time(), "state": state, "value": value, "epochs": epochs}) + "\n")


def early_stopping(spec: StudySpec) -> keras.callbacks.EarlyStopping:
    return keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=spec.patience)


def run_optuna(problem: Problem, seed: int, records: Records, *, warm_start: bool) -> None:
    spec, s = problem.spec, problem.splits
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(multivariate=True, seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.max_epochs, reduction_factor=3))
    for params in spec.warm_start if warm_start else ():
        study.enqueue_trial(params)

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()  # as Optuna's Keras examples do
        model, batch_size = compiled(problem, suggest(trial, spec), seed + trial.number)
        history = model.fit(s.x_train, s.y_train, batch_size=batch_size, epochs=spec.max_epochs, verbose=0,
                            validation_data=(s.x_val, s.y_val),
                            callbacks=[KerasPruningCallback(trial, "val_accuracy"), early_stopping(spec)])
        return max(history.history["val_accuracy"])

    def record(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(trial.state.name, "failed")
        records.add(state, trial.value, len(trial.intermediate_values))

    study.optimize(objective, callbacks=[record], catch=(Exception,))


@contextlib.contextmanager
def _conditions(hp: kt.HyperParameters, when: tuple[tuple[str, tuple], ...]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for parent, allowed in when:
            stack.enter_context(hp.conditional_scope(parent, list(allowed)))
        yield


def _declare(hp: kt.HyperParameters, name: str, dim: Dimension) -> Any:
    if dim.choices is not None:
        return hp.Choice(name, list(dim.choices))
    sampling = "log" if dim.log else "linear"
    if KNOBS[dim.name].kind == "int":
        return hp.Int(name, int(dim.low), int(dim.high), step=int(dim.step) if dim.step else None, sampling=sampling)
    return hp.Float(name, float(dim.low), float(dim.high), step=dim.step, sampling=sampling)


def kt_values(hp: kt.HyperParameters, spec: StudySpec) -> dict[str, Any]:
    """The study's space as Keras Tuner hyperparameters, named as search.spec.suggest names them, and the
    active values: a knob with `when` inside Keras Tuner's conditional scopes; dense_units as one
    dense_units_<i> per layer, each active while dense_layers > i."""
    if spec.builder_files:
        raise ValueError("bench-peers translates a preset's space; a builder's knobs are not translated")
    values: dict[str, Any] = {}
    for dim in spec.space:
        if dim.name == "dense_units":
            continue
        with _conditions(hp, dim.when):
            values[dim.name] = _declare(hp, dim.name, dim)
    units, layers = spec.dimension("dense_units"), spec.dimension("dense_layers")
    if units is not None:
        if layers is None or layers.choices is not None:
            raise ValueError("bench-peers translates dense_units for a dense_layers range only")
        for i in range(int(layers.high)):
            when = (*units.when, ("dense_layers", tuple(range(max(i + 1, int(layers.low)), int(layers.high) + 1))))
            with _conditions(hp, when):
                values[f"dense_units_{i}"] = _declare(hp, f"dense_units_{i}", units)
    return {k: v for k, v in values.items() if v is not None}  # an inactive hyperparameter reads as None


class StudyHyperModel(kt.HyperModel):
    """The study's models for Keras Tuner; the batch size is a hyperparameter used in fit."""

    def __init__(self, problem: Problem, seed: int) -> None:
        super().__init__()
        self.problem, self.seed = problem, seed
        self.batch_size, self.epochs_run = 32, 0

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        model, self.batch_size = compiled(self.problem, kt_values(hp, self.problem.spec), self.seed)
        self.epochs_run = 0
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> keras.callbacks.History:
        history = model.fit(*args, batch_size=self.batch_size, **kwargs)
        self.epochs_run = len(history.epoch)
        return history


class RecordingHyperband(kt.Hyperband):
    """Keras Tuner's Hyperband, each ended trial appended to the records with the oracle's own score."""

    def __init__(self, hypermodel: StudyHyperModel, *, records: Records, **kwargs: Any) -> None:
        super().__init__(hypermodel, **kwargs)
        self.records, self.study_model = records, hypermodel

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        ended = self.oracle.trials[trial.trial_id]
        done = ended.status == "COMPLETED" and ended.score is not None
        self.records.add("complete" if done else "failed", ended.score if done else None, self.study_model.epochs_run)


def run_keras_tuner(problem: Problem, seed: int, records: Records, *, directory: Path) -> None:
    spec, s = problem.spec, problem.splits
    keras.utils.set_random_seed(seed)
    tuner = RecordingHyperband(StudyHyperModel(problem, seed), records=records, objective="val_accuracy",
                               max_epochs=spec.max_epochs, hyperband_iterations=KT_ITERATIONS, seed=seed,
                               directory=str(directory), project_name=f"{spec.name}-kt", overwrite=True)
    tuner.search(s.x_train, s.y_train, epochs=spec.max_epochs, validation_data=(s.x_val, s.y_val),
                 callbacks=[early_stopping(spec)], verbose=0)


def prepare(problem: Problem, out: Path) -> None:
    s = problem.splits
    out.write_text(json.dumps({"train": len(s.y_train), "val": len(s.y_val), "shape": list(s.x_train.shape[1:]),
                               "base": problem.spec.feature_cache and (problem.spec.feature_cache.base
                                                                       or problem.spec.architecture),
                               "base_val_accuracy": problem.base_val_accuracy, "max_epochs": problem.spec.max_epochs,
                               "patience": problem.spec.patience}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_methods", description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=["prepare", "optuna", "keras-tuner"])
    parser.add_argument("config", type=Path, help="JSON: study, overrides, seed, records, directory, warm_start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = json.loads(args.config.read_text())
    problem = load_problem(config)
    logger.info("%s: %d training and %d validation examples of shape %s, at most %d epochs", args.method,
                len(problem.splits.y_train), len(problem.splits.y_val), problem.splits.x_train.shape[1:],
                problem.spec.max_epochs)
    records = Records(config["records"])
    if args.method == "prepare":
        prepare(problem, Path(config["records"]))
    elif args.method == "optuna":
        run_optuna(problem, config["seed"], records, warm_start=config["warm_start"])
    else:
        run_keras_tuner(problem, config["seed"], records, directory=Path(config["directory"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
