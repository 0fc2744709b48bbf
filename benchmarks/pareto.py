"""make bench-pareto: pruning a two-objective study (accuracy, parameters) on its first objective's
curve, against not pruning it: epochs spent and the Pareto front's best accuracy, same seeds.

mnist_cnn's space (seed 003's CNN) on a stratified subset of the real MNIST, `objective: {second:
params}`, NSGA-II seeded per run; the pruned runs use `pruner: median` (search/trial/_pareto_pruning.py),
the others `pruner: none`. Everything else is equal: the same trials, epochs cap, data and seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time

import optuna

from benchmarks.machine import publish, quiet_tensorflow
from data import load_dataset, train_val_splits
from search.errors import TrialFailure
from search.spec import parse_spec
from search.spec._strategies import make_pruner, make_sampler
from search.trial._objective import Objective
from storage import attrs

STUDY = """
architecture: s003_mnist_cnn
dataset: mnist
space:
  optimizer: {{choices: [sgd, adam, rmsprop]}}
  learning_rate: {{low: 1.0e-5, high: 1.0e-1, log: true}}
  dense_units: {{choices: [16, 64, 128, 256]}}
  dropout: {{low: 0.0, high: 0.5}}
  batch_size: {{choices: [64]}}
sampler: {{name: nsga2, seed: {seed}}}
pruner: {pruner}
objective: {{second: params}}
budget: {{trials: {trials}, max_epochs: {epochs}}}
early_stopping: {{patience: {epochs}}}
"""


@dataclasses.dataclass
class Run:
    epochs: int
    seconds: float
    front_best: float
    pruned: int


def run(splits, *, seed: int, pruner: str, trials: int, epochs: int) -> Run:
    spec = parse_spec(STUDY.format(seed=seed, pruner=pruner, trials=trials, epochs=epochs), name="pareto")
    study = optuna.create_study(directions=spec.directions, sampler=make_sampler(spec), pruner=make_pruner(spec))
    started = time.perf_counter()
    study.optimize(Objective(spec, splits), n_trials=trials, catch=(TrialFailure,))
    seconds = time.perf_counter() - started
    # A pruned trial's epochs are its curve's (the median pruner records it); the others ran EPOCHS_RUN.
    spent = sum(len(t.user_attrs[attrs.OBJECTIVE_CURVE]) if t.state == optuna.trial.TrialState.PRUNED
                else t.user_attrs.get(attrs.EPOCHS_RUN, 0) for t in study.trials)
    front = max(t.values[0] for t in study.best_trials)
    return Run(spent, seconds, front, sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials))


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pareto")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-train", type=int, default=2_000)
    parser.add_argument("--max-val", type=int, default=1_000)
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import keras

    dataset = load_dataset("mnist", data_dir=args.data_dir, allow_download=False)
    splits = train_val_splits(dataset, val_fraction=0.1, seed=0, max_train=args.max_train, max_val=args.max_val)
    runs: dict[str, list[Run]] = {"none": [], "median": []}
    for seed in range(args.seeds):
        for pruner in runs:
            runs[pruner].append(run(splits, seed=seed, pruner=pruner, trials=args.trials, epochs=args.epochs))
            logging.warning("seed %d pruner %s: %s", seed, pruner, runs[pruner][-1])
    lines = [f"mnist_cnn's space, objective (val_accuracy, params), NSGA-II, {args.trials} trials of at most "
             f"{args.epochs} epochs, {args.max_train:,} training / {args.max_val:,} validation MNIST images, "
             f"seeds 0-{args.seeds - 1}:"]
    for pruner, label in (("none", "not pruned"), ("median", "pruned on the first objective (median rule)")):
        r = runs[pruner]
        lines.append(f"  {label}: epochs {', '.join(str(x.epochs) for x in r)}; Pareto front's best accuracy "
                     f"{', '.join(f'{x.front_best:.4f}' for x in r)}; {statistics.mean(x.seconds for x in r):.0f} s "
                     f"a run; pruned trials {', '.join(str(x.pruned) for x in r)}")
    ratio = statistics.mean(p.epochs / n.epochs for p, n in zip(runs["median"], runs["none"]))
    delta = statistics.mean(p.front_best - n.front_best for p, n in zip(runs["median"], runs["none"]))
    lines.append(f"  pruned / not pruned: {ratio:.2f}x the epochs (mean of seeds); Pareto front's best accuracy "
                 f"{delta:+.4f} (mean difference)")
    publish(args.output, "bench-pareto: pruning a two-objective study on its first objective", keras.backend.backend(),
            lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
