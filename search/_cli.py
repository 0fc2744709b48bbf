"""Arguments and logging shared by `python -m search` and `python -m search.worker`."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

from search.errors import FATAL_EXIT
from search.settings import Settings, quiet_backend_logs


def settings_or_exit() -> Settings:
    """The settings, read once for this process; an invalid variable ends it with exit code 2."""
    quiet_backend_logs()
    try:
        return Settings.from_env()
    except ValueError as exc:  # pydantic's ValidationError names the variable and the problem
        print(f"error: invalid environment: {exc}", file=sys.stderr)
        raise SystemExit(FATAL_EXIT) from None


def add_study_args(parser: argparse.ArgumentParser, settings: Settings) -> None:
    """NAME and the study overrides; each override defaults to its Settings value (the environment
    variable compose and Kubernetes pass)."""
    parser.add_argument("name", help="study name: <STUDIES_DIR>/<name>.yaml")
    parser.add_argument("--storage", default=None, help="store URL (default: $STORAGE, else the embedded journal)")
    parser.add_argument("--dataset", default=settings.dataset, help="override the study file's dataset")
    parser.add_argument("--trials", type=int, default=settings.trials, help="total trial budget across workers")
    parser.add_argument("--epochs", type=int, default=settings.epochs, help="maximum epochs per trial")
    parser.add_argument("--profile", default=settings.profile, choices=["smoke", "quick"],
                        help="smoke: small subset, at most 2 epochs; quick: fc_head on a CPU (a lighter base, "
                             "trained once, heads searched on a feature subset)")


def add_stage_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=["search", "confirm"], default="search", help=(
        "search: the study's trials; confirm: its confirmation stage, the top trials `make evaluate` queued "
        "for retraining over seeds (study NAME.confirm)"))


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"dataset": args.dataset, "trials": args.trials, "epochs": args.epochs, "profile": args.profile}


def override_argv(args: argparse.Namespace) -> list[str]:
    """The study overrides for a child process's argv. Not the store URL, which may hold a password
    that any user of the machine would read in `ps`: children get it as STORAGE (child_store_env)."""
    out: list[str] = []
    for key, value in overrides(args).items():
        if value is not None:
            out += [f"--{key}", str(value)]
    if getattr(args, "stage", "search") != "search":
        out += ["--stage", args.stage]
    return out


def child_store_env(args: argparse.Namespace) -> dict[str, str]:
    return {"STORAGE": args.storage} if args.storage else {}


def setup_logging(prefix: str = "") -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {prefix}%(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.ERROR)
    # TPE's `group` option (conditional knobs sampled jointly) is marked experimental; we rely on it.
    warnings.filterwarnings("ignore", message=".*``group`` is an experimental feature.*")
