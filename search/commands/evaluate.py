"""`python -m search evaluate NAME` (`make evaluate`): retrain the best trial with several seeds, then
score it once on the test split (search.commands._evaluate)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from search._cli import add_study_args, child_store_env, override_argv, overrides
from search.commands._confirmation import confirmation_lines
from search.settings import Settings
from search.spec import load_spec
from search.study import check_compatible, open_study
from storage import attrs

HELP = "confirm the best trials with several seeds each, then test the pick once"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("evaluate", help=HELP)
    add_study_args(p, settings)
    p.add_argument("--seeds", type=int, default=None, help="retrains of each candidate (at least 3; default: the "
                                                         "study file's evaluate.seeds, 3)")
    p.add_argument("--top-k", type=int, default=None, help="candidates confirmed before the test (default: the "
                                                           "study file's evaluate.top_k, 5)")
    p.add_argument("--workers", type=int, default=1, help=(
        "with more than one candidate, the worker processes on this machine that retrain them (the study's "
        "confirmation stage: workers elsewhere join it with `python -m search.worker NAME --stage confirm`)"))
    p.add_argument("--retest", action="store_true", help=(
        "evaluate on the test split again, though the study has a test result (it is then no longer an "
        "unbiased estimate)"))


def run(args: argparse.Namespace, settings: Settings) -> int:
    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    settings.artifacts().check(settings.store_url(args.storage))  # before the test split is read or anything queued
    study = open_study(args.name, settings.store_url(args.storage))
    check_compatible(study, spec)
    accesses = study.user_attrs.get(attrs.TEST_ACCESSES, [])
    recorded = study.user_attrs.get(attrs.FINAL_EVALUATION)
    if recorded and not args.retest:
        last = accesses[-1] if accesses else {}
        print(f"study {spec.name} was tested already: test accuracy {recorded['test_accuracy']:.4f} on "
              f"{recorded['n_test']} images, best trial {recorded['trial']} (the test split was read "
              f"{len(accesses)} time(s), last by {last.get('who', '?')} at {last.get('when', '?')}). Testing "
              "again would make the test split a selection criterion; pass --retest to do it anyway.")
        return 0
    # Keras loads here, and only for this command: every other command starts without a backend.
    from search.commands._evaluate import evaluate

    seeds = tuple(range(args.seeds or spec.evaluate_seeds))
    record = evaluate(spec, study, settings, store_url=settings.store_url(args.storage), seeds=seeds,
                      top_k=args.top_k, confirm_on_workers=lambda: _run_confirmation(args, settings))
    for line in confirmation_lines(record):
        print(line)
    per_seed = ", ".join(f"{a:.4f}" for a in record["val_accuracy_per_seed"])
    print(f"study {spec.name}, best trial {record['trial']} (search value {record['study_best_value']:.4f})")
    print(f"validation accuracy over {len(seeds)} seeds: {record['val_accuracy_mean']:.4f} "
          f"± {record['val_accuracy_std']:.4f} ({per_seed})")
    if record["metric"] != "val_accuracy":  # the study's objective
        values = ", ".join(f"{v:.4f}" for v in record["val_metric_per_seed"])
        print(f"{record['metric']} over {len(seeds)} seeds: {record['val_metric_mean']:.4f} "
              f"± {record['val_metric_std']:.4f} ({values})")
    reads = len(study.user_attrs.get(attrs.TEST_ACCESSES, []))
    if reads > 1:
        print(f"test accuracy: {record['test_accuracy']:.4f} on {record['n_test']} images; the test split has now "
              f"been read {reads} times, so this is no longer an unbiased estimate of accuracy on new data")
    else:
        print(f"test accuracy (evaluated once): {record['test_accuracy']:.4f} on {record['n_test']} images")
    worst = sorted(zip(record["per_class_accuracy"], record["class_names"]))[:3]
    print("weakest classes: " + ", ".join(f"{n} {a:.3f}" for a, n in worst))
    print(f"stored with the study: final model (artifact {record['model_artifact_id']}), confusion matrix, "
          f"per-class accuracy (artifact {record['evaluation_artifact_id']})")
    return 0


def _run_confirmation(args: argparse.Namespace, settings: Settings) -> None:
    """`python -m search run NAME --stage confirm`: the confirmation stage's workers on this machine,
    with the runner's reaping, retries and worker threads, until the queued confirmations are done."""
    argv = [sys.executable, "-m", "search", "run", args.name, *override_argv(argparse.Namespace(
        **{**vars(args), "stage": "confirm"})), "--no-create", "--workers", str(args.workers)]
    code = subprocess.run(argv, env=settings.child_env(**child_store_env(args))).returncode
    if code != 0:
        raise RuntimeError(f"the confirmation stage's workers exited with {code}; `make evaluate` again resumes it "
                           "(what ran is kept)")
