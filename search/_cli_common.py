"""Arguments and logging shared by `python -m search` and `python -m search.worker`."""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="study name: search/studies/<name>.yaml")
    parser.add_argument("--storage", default=None, help="store URL (default: $STORAGE, else the embedded journal)")
    # Each override also reads its environment variable (what compose services pass).
    env = os.environ.get
    parser.add_argument("--dataset", default=env("DATASET") or None, help="override the study file's dataset")
    parser.add_argument("--trials", type=int, default=int(env("TRIALS")) if env("TRIALS") else None,
                        help="total trial budget across workers")
    parser.add_argument("--epochs", type=int, default=int(env("EPOCHS")) if env("EPOCHS") else None,
                        help="maximum epochs per trial")
    parser.add_argument("--profile", default=env("PROFILE") or None, choices=["smoke", "quick"],
                        help="smoke: small subset, at most 2 epochs; quick: fc_head on a CPU (a lighter base, "
                             "trained once, heads searched on a feature subset)")


def overrides(args: argparse.Namespace) -> dict:
    return {"dataset": args.dataset, "trials": args.trials, "epochs": args.epochs, "profile": args.profile}


def override_argv(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for key, value in overrides(args).items():
        if value is not None:
            out += [f"--{key}", str(value)]
    if args.storage:
        out += ["--storage", args.storage]
    return out


def setup_logging(prefix: str = "") -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {prefix}%(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.ERROR)
    import warnings

    # TPE's `group` option (conditional knobs sampled jointly) is marked experimental; we rely on it.
    warnings.filterwarnings("ignore", message=".*``group`` is an experimental feature.*")
