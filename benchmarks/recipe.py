"""make bench-recipe: seed 001's training recipe against a modern one, on simple_cnn and CIFAR-10.

simple_cnn's architecture (seed 001's model_1) trained for the same fixed number of epochs (no early
stopping, no pruning) under two recipes, `--seeds` training seeds each, on the same split of the real
CIFAR-10 (DATA_DIR; all 45,000 training images by default):
- seed: what seed 001 wrote, rmsprop(lr=0.0005, decay=1e-6) at batch 32: `lr_schedule: inverse_time`
  with `decay_rate: 1e-6` per step (Keras's legacy `decay`), nothing else;
- modern: the same optimiser, rate and batch with a cosine schedule and one warm-up epoch, label
  smoothing 0.1 and RandAugment (2 operations at magnitude 0.5) in the model graph.
It reports each run's best validation accuracy and the seconds an epoch took on this machine (the
policy's cost: RandAugment runs on the CPU with the training step). Each run is one trial of the
service's own Objective, so what is measured is what a study trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time

import optuna
import yaml

from benchmarks.machine import publish, quiet_tensorflow
from data import load_dataset, train_val_splits
from search.spec import parse_spec
from search.trial._objective import Objective
from storage import attrs

SEED_RECIPE = {"optimizer": "rmsprop", "learning_rate": 0.0005, "batch_size": 32, "lr_schedule": "inverse_time",
               "decay_rate": 1.0e-6}
MODERN = {"optimizer": "rmsprop", "learning_rate": 0.0005, "batch_size": 32, "lr_schedule": "cosine",
          "warmup_epochs": 1, "label_smoothing": 0.1}
RECIPES = {"seed": (SEED_RECIPE, "{}"), "modern": (MODERN, "{randaugment: true, randaugment_ops: 2, "
                                                           "randaugment_magnitude: 0.5}")}

STUDY = """
architecture: s001_model_1
dataset: cifar10
space:
  dropout: {{choices: [0.0]}}
fixed: {fixed}
augment: {augment}
pruner: none
budget: {{trials: 1, max_epochs: {epochs}}}
early_stopping: {{patience: {epochs}}}
seed: {seed}
"""


@dataclasses.dataclass
class Run:
    best: float
    epoch_seconds: float
    epochs: int


def run(splits, recipe: str, *, seed: int, epochs: int) -> Run:
    fixed, augment = RECIPES[recipe]
    fixed = yaml.safe_dump(fixed, default_flow_style=True, width=1000).strip()  # 1.0e-06: a float to YAML
    spec = parse_spec(STUDY.format(fixed=fixed, augment=augment, epochs=epochs, seed=seed), name=f"recipe_{recipe}")
    study = optuna.create_study(direction="maximize")
    started = time.perf_counter()
    study.optimize(Objective(spec, splits), n_trials=1)
    seconds = time.perf_counter() - started
    [trial] = study.trials
    ran = trial.user_attrs[attrs.EPOCHS_RUN]
    return Run(trial.value, trial.user_attrs.get(attrs.TRAIN_SECONDS, seconds) / ran, ran)


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-train", type=int, default=None, help="a stratified subset (default: all 45,000)")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import keras

    dataset = load_dataset("cifar10", data_dir=args.data_dir, allow_download=False)
    splits = train_val_splits(dataset, val_fraction=0.1, seed=0, max_train=args.max_train)
    runs: dict[str, list[Run]] = {name: [] for name in RECIPES}
    for seed in range(args.seeds):
        for name in RECIPES:
            runs[name].append(run(splits, name, seed=seed, epochs=args.epochs))
            logging.warning("seed %d recipe %s: %s", seed, name, runs[name][-1])
    lines = [f"simple_cnn (seed 001's model_1), {args.epochs} epochs each (no early stopping, no pruning), "
             f"{len(splits.y_train):,} training / {len(splits.y_val):,} validation CIFAR-10 images, "
             f"training seeds 0-{args.seeds - 1}:"]
    labels = {"seed": "seed 001's recipe (rmsprop 0.0005, legacy decay 1e-6, batch 32)",
              "modern": "the same + cosine, 1 warm-up epoch, label smoothing 0.1, RandAugment(2, 0.5)"}
    for name, label in labels.items():
        r = runs[name]
        lines.append(f"  {label}: best validation accuracy {', '.join(f'{x.best:.4f}' for x in r)} "
                     f"(mean {statistics.mean(x.best for x in r):.4f}); "
                     f"{statistics.mean(x.epoch_seconds for x in r):.1f} "
                     f"s an epoch")
    delta = statistics.mean(m.best - s.best for m, s in zip(runs["modern"], runs["seed"]))
    cost = statistics.mean(x.epoch_seconds for x in runs["modern"]) / statistics.mean(
        x.epoch_seconds for x in runs["seed"])
    lines.append(f"  modern - seed: {delta:+.4f} best validation accuracy (mean of seeds) at {cost:.2f}x the time an "
                 f"epoch")
    publish(args.output, "bench-recipe: seed 001's recipe against cosine + warm-up + label smoothing + RandAugment",
            keras.backend.backend(), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
