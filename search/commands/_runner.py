"""The runner of `make study`: worker processes on this machine, one study counter, signals passed on.

It also stands in for the heartbeat of a worker it saw die: the moment a child exits, its RUNNING
trial is failed and its retry queued (instead of waiting out the grace period), so the study's
other workers, which wait while counted trials run, pick the retry up and the budget is met.

With WORKERS_PER_GPU=auto on a GPU box it starts one worker per GPU and packs more as the trials'
measured memory allows (search.commands._packing), stopping the newest ones when an `oom` lowers the packing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from search._cli import child_store_env, override_argv
from search._progress import StudyBar, watched
from search._tracking import tracker
from search.commands._packing import MIN_MEASURED, AutoPacking, GpuBox
from search.settings import Settings
from search.spec import StudySpec
from search.study import (
    Reaper,
    budget_used,
    confirm_name,
    counts,
    open_study,
    reap_worker,
    stage_pending,
    stage_spec,
    storage_errors,
)
from search.worker import GROW_ENV, visible_gpus, worker_label

logger = logging.getLogger("search")


class Runner:
    def __init__(self, args: argparse.Namespace, settings: Settings, spec: StudySpec, *, box: GpuBox | None = None) -> None:
        """box: the GPUs and cores WORKERS_PER_GPU=auto packs for (default: this machine's)."""
        self.args, self.settings, self.spec, self.box = args, settings, spec, box
        self.argv = [sys.executable, "-m", "search.worker", args.name, *override_argv(args)]
        self.procs: dict[int, subprocess.Popen] = {}  # worker index -> process (signals are passed on to them)
        self.signalled: list[int] = []
        self.packing: AutoPacking | None = None
        self.retired: set[int] = set()  # workers stopped because the packing went down
        self.reaper = Reaper(settings.grace_period, settings.max_stale_retries, settle=settings.store_max_backoff)
        self.confirming = getattr(args, "stage", "search") == "confirm"  # NAME.confirm: evaluate's confirmations

    def run(self) -> int:
        confirming = self.confirming
        self.study = open_study(confirm_name(self.args.name) if confirming else self.args.name,
                                self.settings.store_url(self.args.storage))
        if confirming:  # the stage's budget: the trials `make evaluate` queued
            self.spec = stage_spec(self.spec, self.study)
        signal.signal(signal.SIGINT, self._forward)
        signal.signal(signal.SIGTERM, self._forward)
        self.env = self._worker_env()
        if "WORKER_THREADS" in self.env and self.spec.feature_cache is not None:
            code = self._prepare()
            if code is not None:
                return code
        self.packing = self._auto_packing()
        for i in range(len(self.packing.box.gpus) if self.packing else self.args.workers):
            self._start(i)
        self._watch()
        if not confirming:  # MLflow has the search's trials; evaluate logs the confirmed pick
            self._catch_up()
        return self._exit_code()

    def _catch_up(self) -> None:
        """Trials a worker could not record in MLflow (its server was down) are written now."""
        tracked = tracker(self.spec.name, self.spec.mlflow, self.settings)
        if tracked is not None and (written := tracked.sync(self.study)):
            print(f"[study {self.spec.name}] {written} trial run(s) written to MLflow that the workers could not "
                  "write", flush=True)

    def _auto_packing(self) -> AutoPacking | None:
        if self.settings.workers_per_gpu != "auto":
            return None
        try:
            box = self.box or GpuBox.detect(self.settings.cuda_visible_devices)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            logger.warning("WORKERS_PER_GPU=auto: cannot read the GPUs' memory with nvidia-smi (%s)", exc)
            box = None
        if box is None:
            logger.info("WORKERS_PER_GPU=auto: no GPU visible; running %d worker(s)", self.args.workers)
            return None
        logger.info("WORKERS_PER_GPU=auto: one worker per GPU (%d, %.0f MiB each) until %d trials have recorded "
                    "their peak GPU memory, then as many as fit (--workers is not used)", len(box.gpus),
                    box.total_mib, MIN_MEASURED)
        return AutoPacking(box)

    def _start(self, index: int) -> None:
        env = self.env
        if self.packing is not None:  # a number for the worker's slot and memory cap; no backend takes the card
            env = {**env, "WORKERS_PER_GPU": str(self.packing.k), **GROW_ENV}
        # A session of its own: Ctrl-C in the terminal reaches the runner only, which passes it on once
        # (a second SIGINT from the terminal would make each worker exit at once, mid-epoch).
        self.procs[index] = subprocess.Popen([*self.argv, "--worker-index", str(index)], env=env,
                                             start_new_session=True)

    def _pack(self) -> None:
        """WORKERS_PER_GPU=auto: start workers up to k per GPU; stop the newest above it after an oom.
        Once a worker has left (budget met, or an error) none is added."""
        if self.packing is None or self.signalled:
            return
        k = self.packing.update(self.study.get_trials(deepcopy=False))
        workers = {i: p for i, p in self.procs.items() if i >= 0 and i not in self.retired}
        alive = sorted(i for i, p in workers.items() if p.returncode is None)
        target = k * len(self.packing.box.gpus)
        for i in alive[target:]:
            logger.warning("stopping worker w%d (packing is down to %d per GPU); its trial is checkpointed and "
                           "retried", i, k)
            self.retired.add(i)
            self.procs[i].send_signal(signal.SIGTERM)
        if len(alive) < len(workers):
            return
        for _ in range(min(target - len(alive), self.spec.trials - budget_used(self.study))):
            self._start(max(self.procs) + 1)

    def _exit_code(self) -> int:
        """0 when the study has met its budget, whatever became of a worker killed on the way (its
        trial was retried); else the workers' worst exit code."""
        codes = {i: p.returncode for i, p in self.procs.items() if i not in self.retired}
        if self.signalled:  # the workers checkpointed and exited as asked (128 + the signal)
            return 0
        for i, code in codes.items():
            if code < 0:
                print(f"worker w{i} was killed by signal {-code}; its trial was failed and queued for retry",
                      file=sys.stderr)
        if any(code > 0 for code in codes.values()):
            print(f"workers exited with {list(codes.values())}", file=sys.stderr)
            return max(codes.values())
        used = budget_used(self.study)
        if self.spec.timeout_s:  # budget.timeout_s ends a study short, as asked
            return 0
        if used >= self.spec.trials and (self.confirming or not stage_pending(self.study, self.spec)):
            return 0
        if used >= self.spec.trials:  # the budget is met but the fine-tuning stage is not done
            print(f"[study {self.study.study_name}] the workers exited with the fine-tuning stage unfinished; run "
                  "`make study` again to finish it", file=sys.stderr)
            return max(codes.values(), key=abs) or 1
        # Every worker exited 0 with the budget unmet (a study stopped by its failure streak says so
        # itself): `make study` must not report success one configuration short.
        again = f"make evaluate NAME={self.spec.name}" if self.study.study_name != self.spec.name else "make study"
        print(f"[study {self.study.study_name}] the workers exited with the budget unmet ({used} of "
              f"{self.spec.trials}); run `{again}` again to resume it", file=sys.stderr)
        return max(codes.values(), key=abs) or 1

    def _forward(self, signum: int, _frame: object) -> None:
        self.signalled.append(signum)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    def _worker_env(self) -> dict[str, str]:
        """N workers on one CPU get cores // N threads each, so they do not compete for the same cores."""
        s = self.settings
        store = child_store_env(self.args)  # never on argv (a password in `ps`)
        if self.args.workers > 1 and not s.worker_threads and not visible_gpus(s.cuda_visible_devices):
            return s.child_env(WORKER_THREADS=str(max(1, (os.cpu_count() or 1) // self.args.workers)), **store)
        return s.child_env(**store)

    def _prepare(self) -> int | None:
        """The one-time base training and feature extraction, once, on every core, before the
        workers (which share the cores) start; a worker would otherwise train the base on its share."""
        # Every core (no WORKER_THREADS: the workers share the cores later), and the store in its environment.
        env = {k: v for k, v in self.env.items() if k != "WORKER_THREADS"}
        prepare = subprocess.Popen([*self.argv, "--prepare"], env=env, start_new_session=True)
        self.procs[-1] = prepare
        code = prepare.wait()
        del self.procs[-1]
        if self.signalled:
            print(f"stopped while preparing study {self.args.name}; no worker was started", file=sys.stderr)
            return 0
        if code != 0:
            print(f"preparing the base of study {self.args.name} failed (exit {code})", file=sys.stderr)
            return code
        return None

    def _watch(self) -> None:
        bar = StudyBar(self.study.study_name, self.spec.trials, bar=watched())  # plain counter lines in a log
        try:
            self._watch_with(bar)
        finally:
            bar.close()

    def _watch_with(self, bar: StudyBar) -> None:
        seen_dead: set[int] = set()
        while True:
            alive = [p.poll() is None for p in self.procs.values()]  # poll() each: it sets returncode
            try:
                for i, p in self.procs.items():
                    if p.returncode is not None and i not in seen_dead:
                        reap_worker(self.study, worker_label(i, p.pid), p.returncode,
                                    max_stale_retries=self.settings.max_stale_retries)
                        seen_dead.add(i)  # only once reaped: a store error means try again next poll
                self.reaper(self.study)
                self._pack()
                bar.update(counts(self.study))
            except storage_errors() as exc:
                # Whichever call failed, the workers' heartbeats may be waiting it out: judge nothing from before
                self.reaper.forget("a store call failed", self.reaper.clock(), outage=True)
                bar.note(f"[study {self.args.name}] store unreachable ({type(exc).__name__}); workers are backing off")
            if not any(alive):
                return
            time.sleep(self.args.poll)

