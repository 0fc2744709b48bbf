"""A worker with the service's own loop, heartbeat and reaper, but a trivial objective (no Keras).

Load, privilege and proxy tests start many of these: `python tests/helpers/trivial_worker.py URL STUDY
INDEX BUDGET`. TRIAL_SECONDS (0.02) is each trial's work; HEARTBEAT_INTERVAL (1) and GRACE_PERIOD (30) its
liveness. Each trial records the process that ran it (user attribute `pid`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import types

import optuna

from search.study._store import resilient
from search.worker._liveness import Background, Liveness
from search.worker._loop import LoopLimits, run_loop
from search.worker._signals import StopFlag
from storage import open_storage


def objective(trial: optuna.Trial) -> float:
    trial.set_user_attr("pid", os.getpid())
    x = trial.suggest_float("x", -10, 10)
    time.sleep(float(os.environ.get("TRIAL_SECONDS", "0.02")))  # a little work, so workers overlap
    return x * x


def main(url: str, name: str, index: int, budget: int) -> int:
    logging.basicConfig(level=logging.WARNING, format=f"[t{index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = resilient(open_storage(url))
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=index))
    spec = types.SimpleNamespace(trials=budget, timeout_s=None, max_consecutive_failures=5)
    stop = StopFlag().install()
    liveness = Liveness(interval=float(os.environ.get("HEARTBEAT_INTERVAL", "1")),
                        grace=float(os.environ.get("GRACE_PERIOD", "30")))
    with Background(study, liveness) as background:
        run_loop(study, spec, objective, stop, background, f"t{index}", LoopLimits(poll_s=0.5))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
