"""python -m search {run,create,status,validate} NAME ...

run: create the study if needed, then start --workers worker processes and print a study-level
counter until its budget is met. status: a readable summary, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time

from search._cli_common import add_study_args, override_argv, overrides, setup_logging

logger = logging.getLogger("search")


def _counter_line(c: dict) -> str:
    finished = c["n_complete"] + c["n_pruned"] + c["n_fail"]
    best = "none yet" if c["best_value"] is None else f"{c['best_value']:.4f} (trial {c['best_trial']})"
    return (f"[study {c['study']}] {finished}/{c['budget']} finished: {c['n_complete']} complete, "
            f"{c['n_pruned']} pruned, {c['n_fail']} failed; {c['n_running']} running; best {best}")


def cmd_create(args: argparse.Namespace, spec=None):
    from search._spec import load_spec
    from search._study import create_study
    from storage import describe, open_storage

    spec = spec or load_spec(args.name, **overrides(args))  # a bad file fails here, before the store is touched
    storage = open_storage(args.storage, create_schema=True)
    study = create_study(spec, storage)
    base = spec.feature_cache and spec.feature_cache.base
    print(f"study {spec.name}: {spec.architecture}{f' (conv base: {base})' if base else ''} on {spec.dataset}, "
          f"budget {spec.trials} trials, "
          f"<= {spec.max_epochs} epochs each, sampler {spec.sampler}, pruner {spec.pruner}; {describe(args.storage)}")
    return study


def cmd_run(args: argparse.Namespace) -> int:
    from search._lifecycle import reap, storage_errors, with_retry
    from search._placement import visible_gpus
    from search._spec import load_spec
    from search._study import counts
    from data import load_dataset

    spec = load_spec(args.name, **overrides(args))
    # The data is found (or downloaded) and decoded before the study is created: a missing dataset
    # then fails before anything is written to the store (a study created for data that was not
    # there refused the corrected command, e.g. with another DATASET, as a changed setup), and the
    # workers and the base-preparing child all read the decoded cache.
    load_dataset(spec.dataset, label_mode=spec.label_mode)  # DatasetError names what was looked for
    study = cmd_create(args, spec) if not args.no_create else None
    if study is None:
        from search._study import load_existing
        from storage import open_storage

        study = load_existing(args.name, open_storage(args.storage))
    argv = [sys.executable, "-m", "search.worker", args.name, *override_argv(args)]
    procs: list[subprocess.Popen] = []  # the children SIGINT/SIGTERM are passed on to (they stop at an epoch)
    signalled: list[int] = []

    def forward(signum, _frame):
        signalled.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    env = dict(os.environ)
    if args.workers > 1 and not env.get("WORKER_THREADS") and not visible_gpus():
        env["WORKER_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))  # no oversubscribed cores
        if spec.feature_cache is not None:
            # The one-time base training and feature extraction run once, on every core, before the
            # workers, which share the cores, start; a worker would otherwise train the base on its share.
            prepare = subprocess.Popen([*argv, "--prepare"])
            procs.append(prepare)
            code = prepare.wait()
            procs.remove(prepare)
            if code != 0:
                print(f"preparing the base of study {args.name} failed (exit {code})", file=sys.stderr)
                return code
            if signalled:
                print(f"stopped while preparing study {args.name}; no worker was started", file=sys.stderr)
                return 0
    procs += [subprocess.Popen([*argv, "--worker-index", str(i)], env=env) for i in range(args.workers)]
    last = ""
    while any(p.poll() is None for p in procs):
        time.sleep(args.poll)
        try:
            reap(study)  # a killed worker's trial is failed and retried even if no worker asks
            line = _counter_line(counts(study))
        except storage_errors() as exc:
            line = f"[study {args.name}] store unreachable ({type(exc).__name__}); workers are backing off"
        if line != last:
            print(line, flush=True)
            last = line
    final = _counter_line(with_retry(lambda: counts(study), "count trials"))
    if final != last:
        print(final, flush=True)
    codes = [p.returncode for p in procs]
    if any(codes):
        print(f"workers exited with {codes}", file=sys.stderr)
    return max(codes, key=abs)


def cmd_status(args: argparse.Namespace) -> int:
    from search._study import counts, load_existing
    from storage import describe, open_storage

    study = load_existing(args.name, open_storage(args.storage))
    c = counts(study)
    if args.json:
        print(json.dumps({k: c[k] for k in ("study", "n_complete", "n_pruned", "n_fail", "n_running",
                                             "n_waiting", "best_value", "best_params", "best_trial")}))
        return 0
    print(_counter_line(c))
    print(f"  {describe(args.storage)}; {c['n_waiting']} waiting (enqueued)")
    if c["best_params"]:
        print("  best params: " + ", ".join(f"{k}={v}" for k, v in c["best_params"].items()))
    failed = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("fail_reason")]
    for t in failed[-5:]:
        print(f"  trial {t.number} failed ({t.user_attrs['fail_reason']}): {t.user_attrs.get('fail_message', '')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from search._evaluate import evaluate
    from search._spec import load_spec
    from search._study import check_compatible, load_existing
    from storage import open_storage

    spec = load_spec(args.name, **overrides(args))
    study = load_existing(args.name, open_storage(args.storage))
    check_compatible(study, spec)
    seeds = tuple(range(args.seeds))
    record = evaluate(spec, study, seeds=seeds)
    per_seed = ", ".join(f"{a:.4f}" for a in record["val_accuracy_per_seed"])
    print(f"study {spec.name}, best trial {record['trial']} (search value {record['study_best_value']:.4f})")
    print(f"validation accuracy over {len(seeds)} seeds: {record['val_accuracy_mean']:.4f} "
          f"± {record['val_accuracy_std']:.4f} ({per_seed})")
    print(f"test accuracy (evaluated once): {record['test_accuracy']:.4f} on {record['n_test']} images")
    worst = sorted(zip(record["per_class_accuracy"], record["class_names"]))[:3]
    print("weakest classes: " + ", ".join(f"{n} {a:.3f}" for a, n in worst))
    print(f"stored with the study: final model (artifact {record['model_artifact_id']}), confusion matrix, "
          f"per-class accuracy (artifact {record['evaluation_artifact_id']})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from search._spec import load_spec

    spec = load_spec(args.name, **overrides(args))
    print(f"{spec.name}: valid ({len(spec.space)} knobs, {len(spec.warm_start)} warm starts, hash {spec.space_hash()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "create if needed, then run workers until the budget is met"),
                           ("create", "create the study (idempotent) and enqueue warm starts"),
                           ("status", "summary of a study"), ("validate", "check a study file"),
                           ("evaluate", "retrain the best trial with several seeds, then test once")):
        p = sub.add_parser(name, help=helptext)
        add_study_args(p)
        if name == "run":
            p.add_argument("--workers", type=int, default=1)
            p.add_argument("--no-create", action="store_true", help="the study must already exist")
            p.add_argument("--poll", type=float, default=2.0, help="seconds between counter lines")
        if name == "evaluate":
            p.add_argument("--seeds", type=int, default=3, help="retrains of the best trial (at least 3)")
        if name == "status":
            p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    from data import DatasetError
    from search.errors import StudyMismatchError, StudySpecError
    from storage import StorageConfigError, StorageUnavailableError

    commands = {"run": cmd_run, "create": lambda a: cmd_create(a) and 0, "status": cmd_status, "validate": cmd_validate,
                "evaluate": cmd_evaluate}
    try:
        return commands[args.command](args)
    except (StudySpecError, StudyMismatchError, DatasetError, StorageConfigError, StorageUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
