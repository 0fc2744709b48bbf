"""make bench-search: seed 002's randomized search against our default, on fc_head's cached features.

(1) random sampler, no pruning, no early stopping, a fixed number of epochs per trial;
(2) our default: TPE, Hyperband pruning, early stopping.
Same space (fc_head's), same number of trials, several seeds each. By default the protocol is seed
002's own (11 configurations, 20 epochs each) and (2) runs as the service does, with the study's
warm start (the document's best head) enqueued first; `--no-warm-start` compares the search methods
alone.

The features come from a conv base trained once on training images that the heads never see (a
disjoint pool; the validation split stays held out), then run once over the heads' images. seed
002's own VGG base trains at about 25 images/s on a 2-core CPU, so by default the base is the lighter
`s003_vgg_blocks` preset (same 2,048-d flattened features, about 330 images/s); `--base
s002_vgg_base` uses seed 002's. The comparison of search methods holds on any fixed features.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import statistics
import time

import numpy as np
import optuna

from benchmarks.machine import publish, quiet_tensorflow
from data import Splits, load_dataset, stratified_subset, train_val_splits
from search.errors import TrialFailure
from search.spec import load_spec
from search.spec._strategies import make_pruner, make_sampler
from search.trial._features import ensure_base, ensure_features, head_model
from search.trial._objective import Objective

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    best: list[float]  # best value so far after each trial
    epochs: list[int]  # cumulative epochs after each trial
    seconds: float

    @property
    def final(self) -> float:
        return self.best[-1]


def run_search(spec, features, *, trials: int, warm_start: tuple = ()) -> Run:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec), pruner=make_pruner(spec))
    for params in warm_start:
        study.enqueue_trial(params)
    started = time.perf_counter()
    objective = Objective(spec, features, make_model=head_model(), image_shape=(32, 32, 3))
    study.optimize(objective, n_trials=trials, catch=(TrialFailure,))
    seconds = time.perf_counter() - started
    best, epochs, b, total = [], [], -math.inf, 0
    for t in study.trials:
        total += len(t.intermediate_values)
        if t.state == optuna.trial.TrialState.COMPLETE:
            b = max(b, t.value)
        best.append(b)
        epochs.append(total)
    return Run(best, epochs, seconds)


def epochs_to_reach(run: Run, target: float) -> tuple[int, int] | tuple[None, None]:
    """Cumulative epochs, and trials, after which run's best first reaches target."""
    return next(((e, i + 1) for i, (b, e) in enumerate(zip(run.best, run.epochs)) if b >= target), (None, None))


def bench_features(spec, dataset, *, base: str, base_epochs: int, base_images: int, max_train: int):
    """Features of the heads' images (max_train training, the whole validation split) from a base
    trained once, for base_epochs, on base_images other training images. Both are cached."""
    full = train_val_splits(dataset, val_fraction=spec.val_fraction, seed=spec.seed)
    heads = train_val_splits(dataset, val_fraction=spec.val_fraction, seed=spec.seed, max_train=max_train)
    taken = stratified_subset(full.y_train, max_train, spec.seed)  # the same images as heads.x_train
    rest = np.setdiff1d(np.arange(len(full.y_train)), taken)
    if len(rest) == 0:
        raise ValueError(f"--max-train {max_train} leaves no training images for the base; lower it")
    pool = rest[stratified_subset(full.y_train[rest], base_images, spec.seed)]
    base_splits = Splits(full.x_train[pool], full.y_train[pool], full.x_val, full.y_val, full.class_names,
                         f"{full.fingerprint}:base-pool:{len(pool)}-disjoint-from-{max_train}")
    fc = dataclasses.replace(spec.feature_cache, base=base, base_epochs=base_epochs, base_max_train=None,
                             base_weights=None)
    base_spec = dataclasses.replace(spec, feature_cache=fc)
    weights = ensure_base(base_spec, base_splits)
    base_val = json.loads((weights.parent / "base.json").read_text())["val_accuracy"]
    feature_spec = dataclasses.replace(spec, feature_cache=dataclasses.replace(fc, base_weights=str(weights)))
    return ensure_features(feature_spec, heads).splits, len(pool), base_val


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--seeds", type=int, default=5)
    # Seed 002's protocol: 11 configurations of the head, 20 epochs each.
    parser.add_argument("--trials", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=20, help="random search's fixed epochs; our maximum")
    parser.add_argument("--max-train", type=int, default=5_000, help="training images (features) per trial")
    parser.add_argument("--base", default="s003_vgg_blocks", help="conv base preset whose features the heads train on")
    parser.add_argument("--base-epochs", type=int, default=8)
    parser.add_argument("--base-images", type=int, default=20_000,
                        help="training images for the base, disjoint from the heads' training images")
    parser.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                        help="give (2) the study's warm starts (the document's best head), as the service does")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import keras

    spec = load_spec("fc_head", dataset="cifar10", epochs=args.epochs)
    warm = spec.warm_start if args.warm_start else ()
    spec = dataclasses.replace(spec, warm_start=(), max_train=None)
    dataset = load_dataset("cifar10", data_dir=args.data_dir)
    t0 = time.perf_counter()
    features, base_images, base_val = bench_features(spec, dataset, base=args.base, base_epochs=args.base_epochs,
                                                     base_images=args.base_images, max_train=args.max_train)
    one_time = time.perf_counter() - t0
    n_train = len(features.y_train)

    random_spec = dataclasses.replace(spec, sampler="random", pruner="none", patience=args.epochs + 1)
    logger.warning("one-time base (val_accuracy %.4f) + features: %.0fs; %d seeds x %d trials follow", base_val,
                   one_time, args.seeds, args.trials)
    rows, fractions, finals = [], [], []
    for seed in range(args.seeds):
        rnd = run_search(dataclasses.replace(random_spec, seed=seed), features, trials=args.trials)
        ours = run_search(dataclasses.replace(spec, seed=seed), features, trials=args.trials, warm_start=warm)
        reached, trials_used = epochs_to_reach(ours, rnd.final)
        fraction = reached / rnd.epochs[-1] if reached is not None else math.inf
        fractions.append(fraction)
        finals.append((rnd.final, ours.final, rnd.seconds, ours.seconds))
        reach = (f"{reached} epochs ({trials_used} trial(s)) ({100 * fraction:.1f}%)" if reached is not None
                 else "never (n/a)")
        rows.append(f"   seed {seed}: random best {rnd.final:.4f} in {rnd.epochs[-1]} epochs, {rnd.seconds:.0f}s | "
                    f"ours best {ours.final:.4f} in {ours.epochs[-1]} epochs, {ours.seconds:.0f}s | ours reached "
                    f"random's best after {reach}")
        print(rows[-1], flush=True)

    finite = [f for f in fractions if math.isfinite(f)]
    median = statistics.median(fractions)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"fc_head space on cached CIFAR-10 features ({features.x_train.shape[1]:,}-d) of a {args.base} base trained "
        f"{args.base_epochs} epoch(s) on {base_images:,} training images the heads never see (base val_accuracy "
        f"{base_val:.4f}); one-time base + features: {one_time:.0f}s this run, 0 if cached",
        f"{args.trials} trials per run, {args.seeds} seeds, head trained on {n_train:,} training "
        f"features, validated on {len(features.y_val):,}",
        f"(1) random, no pruning, no early stopping, {args.epochs} epochs each; (2) TPE + Hyperband + early stopping "
        f"(patience {spec.patience}), at most {args.epochs} epochs"
        + (", with the study's warm start (the document's best head) enqueued first" if warm else ", no warm start"),
        "TPE's first 10 trials are seeded random samples (Optuna's default n_startup_trials), the same configurations "
        "random search draws with that seed",
        *rows,
        f"median fraction of (1)'s epochs that (2) needs to reach (1)'s final best: "
        f"{'%.1f%%' % (100 * median) if math.isfinite(median) else 'not reached in most seeds'} "
        f"(reached in {len(finite)}/{len(fractions)} seeds; goal: at most 10%)",
        f"final best, mean over seeds: random {statistics.mean(f[0] for f in finals):.4f}, ours "
        f"{statistics.mean(f[1] for f in finals):.4f}; ours at least as high in "
        f"{sum(f[1] >= f[0] for f in finals)}/{len(finals)} seeds (goal: ends at least as high)",
        f"wall time per run, mean: random {statistics.mean(f[2] for f in finals):.0f}s, ours "
        f"{statistics.mean(f[3] for f in finals):.0f}s",
        f"peak resident memory of this process: {peak_mb:,.0f} MB",
    ]
    publish(args.output, "bench-search: randomized search vs TPE + Hyperband on fc_head", keras.backend.backend(), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
