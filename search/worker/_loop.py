"""The worker's loop: ask, train, tell until the study's budget is met, and what ends it early."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from search.errors import FATAL, FailReason, StudyStopped, TrialFailure, TrialLost, WorkerStopping
from search.runtime import accelerator_memory_mib, rss_mib
from search.settings import Settings
from search.study import (
    FINE_TUNE,
    FineTuneStage,
    StudyLock,
    budget_used,
    fail_and_retry,
    failure_streak,
    fine_tuning,
    fresh_trial,
    queue_due_retry,
    retries_due,
    stop_study,
    stopped_because,
)
from search.worker._liveness import Background
from search.worker._signals import StopFlag
from storage import attrs

logger = logging.getLogger("search.worker")
DEFAULTS = Settings.model_fields  # the defaults are written once, in Settings
TrialObjective = Callable[[optuna.Trial], float | tuple[float, float]]


class LoopBudget(Protocol):
    """What the loop reads of a study (a StudySpec; tests pass a plain namespace)."""

    trials: int
    timeout_s: float | None
    max_consecutive_failures: int

RECYCLE = "recycle"


def grown_past(baseline: dict | None, now: dict, limits: dict) -> str | None:
    """Which memory (if any) has grown past its limit since the baseline; a limit of 0 is off."""
    if baseline is None:
        return None
    for key, limit in limits.items():
        if limit and now.get(key) is not None and baseline.get(key) is not None and now[key] - baseline[key] > limit:
            return (f"{key} grew {now[key] - baseline[key]:.0f} MiB since this process's first finished trial "
                    f"(limit {limit:.0f} MiB)")
    return None


def memory_now() -> dict:

    gpu = accelerator_memory_mib()
    return {"rss": rss_mib(), "gpu": None if gpu is None else gpu[0], "gpu_peak": None if gpu is None else gpu[1]}


@dataclass(frozen=True)
class LoopLimits:
    """What ends a worker's loop besides the budget; from the study and the Settings."""

    max_rss_growth_mb: float = DEFAULTS["worker_max_rss_growth_mb"].default  # continue in a fresh process past it
    max_gpu_growth_mb: float = DEFAULTS["worker_max_gpu_growth_mb"].default
    poll_s: float = DEFAULTS["heartbeat_interval"].default  # how often a worker whose budget is met looks for retries
    # How long a worker whose budget is met waits for a retry that is due but not queued (retries_due):
    # two store calls apart, unless the process between them died; then the retry is never queued.
    due_wait_s: float = DEFAULTS["grace_period"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopLimits:
        return cls(settings.worker_max_rss_growth_mb, settings.worker_max_gpu_growth_mb,
                   poll_s=settings.heartbeat_interval, due_wait_s=settings.grace_period)


@dataclass
class TrialEnd:
    state: TrialState
    value: Any = None
    reason: str | None = None


def run_loop(study: optuna.Study, spec: LoopBudget, objective: TrialObjective, stop: StopFlag, background: Background, label: str,
             limits: LoopLimits = LoopLimits(), after_trial: Callable[[optuna.Study, int], object] | None = None,
             stage: FineTuneStage | None = None, lock: StudyLock | None = None) -> str | None:
    """Ask, train, tell until the study's budget is met and no counted trial can need a retry; with
    `stage` (a study's `fine_tune:`), then promote its best heads and run the fine-tuning trials.
    `lock` (the study's lock across workers): the budget check and the ask are taken under it, so
    workers together run exactly the budget; a retry due that its failing process died before
    queuing is queued here, under it, after the grace period; without one it counts as failed.

    Optuna's study.optimize has no budget shared across workers and treats every exception alike;
    this is the same ask/tell with the budget check of MaxTrialsCallback (running trials counted)
    and the service's error handling (errors.py). Store outages are the resilient store's.
    """
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
    baseline = None  # memory once this process has finished a trial (the backend warmed up)
    try:
        while (wanted := _trial_to_run(study, spec, stop, label, limits, deadline, stage, lock)) is not None:
            trial = _ask(study, spec, wanted, lock)
            if trial is None:
                continue  # another worker took the budget's last trial in between
            if wanted == FINE_TUNE and not fine_tuning(trial):
                _not_queued(study, trial, label)
                continue
            end = run_trial(study, objective, trial, background, label)
            if end is not None:
                _mark_peak(trial)
            if end is None or not _tell(study, trial, end, label):
                continue
            if after_trial is not None:
                after_trial(study, trial.number)  # the experiment tracker: never raises (dashboards.tracking)
            _check_streak(study, spec)
            if end.reason == FailReason.OOM:
                # TensorFlow's CPU allocator keeps what the failed trial got before it ran out (measured:
                # 16 GiB after a 4,000,000-unit layer failed); a fresh process starts from an empty one.
                logger.info("%s: trial %d ran out of memory: continuing in a fresh process", label, trial.number)
                return RECYCLE
            baseline, grown = _memory_check(baseline, end, limits)
            if grown:
                logger.info("%s: %s (WORKER_MAX_RSS_GROWTH_MB / WORKER_MAX_GPU_GROWTH_MB): continuing in a "
                            "fresh process", label, grown)
                return RECYCLE
    except WorkerStopping:
        logger.warning("%s: trial checkpointed, failed and queued for retry; exiting", label)
    return None


def _trial_to_run(study: optuna.Study, spec: LoopBudget, stop: StopFlag, label: str, limits: LoopLimits,
                  deadline: float | None, stage: FineTuneStage | None = None,
                  lock: StudyLock | None = None) -> str | None:
    """Which trial to ask for next ("search", or FINE_TUNE for a queued fine-tuning trial), or None to
    exit. With the budget met, a worker waits while trials it counts are RUNNING elsewhere (one may die
    and be retried) or a failed one's retry is due but not queued yet: nobody else may be left to run
    the retry (a Kubernetes work-queue Job starts no pod once one has exited 0). Then, with a
    fine-tuning stage, the best heads are promoted (once) and their trials run the same way."""
    waiting_logged = False
    due_since: dict[int, float] = {}
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        reason = stopped_because(study)
        if reason:
            raise StudyStopped(reason)
        if budget_used(study) < spec.trials:
            return "search"
        if stage is not None and stage.queued(study):
            return FINE_TUNE
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        due = _due_in_time(study, due_since, limits.due_wait_s, label, lock)
        if running == 0 and not due and _settled(study, spec, stop, min(limits.poll_s, 2.0),
                                                 lambda: _due_in_time(study, due_since, limits.due_wait_s, label, lock)):
            if stage is not None and (stage.promote(study) or stage.queued(study)):
                continue  # the fine-tuning trials this or another worker queued are asked for next
            logger.info("%s: budget of %d trials met%s, exiting", label, spec.trials,
                        "" if stage is None else " and the fine-tuning stage done")
            return None
        if not waiting_logged:
            logger.info("%s: budget met; waiting for %d running trial(s) to finish or be retried", label,
                        running + len(due))
            waiting_logged = True
        stop.event.wait(limits.poll_s)
    return None


def _ask(study: optuna.Study, spec: LoopBudget, wanted: str, lock: StudyLock | None) -> optuna.Trial | None:
    """Ask for the next trial, or None when the budget was met in between. With the study's lock the
    budget check and the ask are one step for all workers, so the budget is exact; without one (two
    store calls) workers asking at once near the end may overshoot it by up to their number - 1, as
    Optuna's MaxTrialsCallback does."""
    if lock is None or wanted == FINE_TUNE:  # the fine-tuning stage's queue bounds its own trials
        return study.ask()
    with lock():
        return study.ask() if budget_used(study) < spec.trials else None


def _not_queued(study: optuna.Study, trial: optuna.Trial, label: str) -> None:
    """A worker asked for a queued fine-tuning trial and another took the last one first: Optuna then
    samples a new trial, which is not trained; it is marked as the stage's, so no budget counts it."""
    why = "asked for a fine-tuning trial after another worker took the last queued one; not trained"
    trial.set_user_attr(attrs.STAGE, FINE_TUNE)
    trial.set_user_attr(attrs.INFEASIBLE, why)
    study.tell(trial, state=TrialState.PRUNED)
    logger.info("%s: trial %d %s", label, trial.number, why)


def _due_in_time(study: optuna.Study, since: dict[int, float], wait_s: float, label: str,
                 lock: StudyLock | None = None) -> list[int]:
    """The retries due but not queued that are still worth waiting for: one due for longer than
    `wait_s` (the grace period) will not come, as the process that failed its trial died before
    queuing it. With the study's lock this worker then queues it itself (and waits for it as queued);
    without, that trial counts against the budget, as a failure not retried does."""
    now, waiting = time.monotonic(), []
    for number in retries_due(study):
        first = since.setdefault(number, now)
        if now - first <= wait_s:
            waiting.append(number)
        elif lock is not None:
            with lock():
                queued = queue_due_retry(study, number)
            if queued:
                logger.warning("%s: trial %d failed with a retry due that was not queued in %.0fs (the process that "
                               "failed it died in between): queued it", label, number, wait_s)
            waiting.append(number)  # queued now (by this worker or another): the loop asks for it
        elif first != -1.0:
            logger.warning("%s: trial %d failed with a retry due that was never queued in %.0fs (the process "
                           "that failed it died in between); it counts as a failed trial", label, number, wait_s)
            since[number] = -1.0  # warned once; monotonic time is never negative
    return waiting


def _settled(study: optuna.Study, spec: LoopBudget, stop: StopFlag, wait_s: float,
             due: Callable[[], list[int]]) -> bool:
    """Still met a moment later: a belt to retries_due's braces, for a store that shows the failure
    and the queued retry to readers a moment apart."""
    stop.event.wait(wait_s)
    return (budget_used(study) >= spec.trials and not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            and not due())


def _mark(trial: optuna.Trial, label: str) -> None:
    """Who runs the trial (the runner fails it at once if this process dies) and this process's
    memory as it starts (bench-gpu reads the GPU figures; growth recycles the worker)."""
    trial.set_user_attr(attrs.WORKER, label)
    for key, value in memory_now().items():
        if value is not None:
            trial.set_user_attr(attrs.WORKER_MEMORY[key], round(value, 1))


def _mark_peak(trial: optuna.Trial) -> None:
    """The GPU memory this process's allocator has held at most, as the trial ends: what
    WORKERS_PER_GPU=auto packs by (search.commands._packing). Nothing on a CPU."""
    peak = memory_now()["gpu_peak"]
    if peak is None:
        return
    try:
        trial.set_user_attr(attrs.WORKER_GPU_PEAK_END_MIB, round(peak, 1))
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # the reaper finished the trial meanwhile; _tell says so


def run_trial(study: optuna.Study, objective: TrialObjective, trial: optuna.Trial, background: Background,
              label: str) -> TrialEnd | None:
    """Run the objective on one trial and say how it ended; None if the trial is no longer ours.
    Its first heartbeat is its first write after the ask (a reaper judges a trial with none from when
    it first saw it)."""
    with background.beating(trial):
        _mark(trial, label)
        try:
            return TrialEnd(TrialState.COMPLETE, objective(trial))
        except optuna.TrialPruned:
            return TrialEnd(TrialState.PRUNED)
        except TrialFailure as failure:  # its reason is recorded by the objective
            return TrialEnd(TrialState.FAIL, reason=failure.reason)
        except (TrialLost, optuna.exceptions.UpdateFinishedTrialError) as lost:
            logger.warning("%s: %s; its result is dropped and this worker goes on", label, lost)
            return None
        except WorkerStopping as why:
            fail_and_retry(study, trial.number, FailReason.INTERRUPTED, str(why))
            raise
        except FATAL as exc:
            fail_and_retry(study, trial.number, FailReason.FATAL, f"{type(exc).__name__}: {exc}"[:500])
            raise
        except Exception as exc:  # a bug in one configuration must not stop the worker
            return _unexpected(trial, exc, label)


def _unexpected(trial: optuna.Trial, exc: Exception, label: str) -> TrialEnd | None:
    logger.exception("%s: trial %d raised", label, trial.number)
    try:
        trial.set_user_attr(attrs.FAIL_REASON, FailReason.ERROR.value)
        trial.set_user_attr(attrs.FAIL_MESSAGE, f"{type(exc).__name__}: {exc}"[:500])
    except optuna.exceptions.UpdateFinishedTrialError:
        logger.warning("%s: trial %d was failed by the reaper meanwhile; its error is dropped and this worker "
                       "goes on", label, trial.number)
        return None
    return TrialEnd(TrialState.FAIL, reason="error")


def _tell(study: optuna.Study, trial: optuna.Trial, end: TrialEnd, label: str) -> bool:
    """Record the result; False when the reaper finished the trial first (its result is dropped)."""
    try:
        told = study.tell(trial, end.value, state=end.state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:  # reaped between tell's check and its write
        told = fresh_trial(trial)
    if told.state != end.state:
        logger.warning("%s: trial %d was failed by the reaper while this worker was paused; its result (%s) is "
                       "dropped", label, trial.number, end.value)
        return False
    logger.info("%s: trial %d %s%s", label, trial.number, end.state.name.lower(),
                "" if end.value is None else f", value {end.value}")
    return True


def _check_streak(study: optuna.Study, spec: LoopBudget) -> None:
    reason = failure_streak(study, spec.max_consecutive_failures)
    if reason:
        stop_study(study, reason)
        raise StudyStopped(reason)


def _memory_check(baseline: dict | None, end: TrialEnd, limits: LoopLimits) -> tuple[dict | None, str | None]:
    now = memory_now()
    if baseline is None:
        return (now if end.state in (TrialState.COMPLETE, TrialState.PRUNED) else None), None
    return baseline, grown_past(baseline, now, {"rss": limits.max_rss_growth_mb, "gpu": limits.max_gpu_growth_mb})


def worker_label(index: int, pid: int | None = None) -> str:
    """How a worker names itself on its trials (attrs.WORKER) and in its log lines."""
    return f"w{index}@{socket.gethostname()}:{pid or os.getpid()}"
