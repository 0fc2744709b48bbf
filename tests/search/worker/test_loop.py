"""The worker loop's decisions (search/worker/_loop.py), on trivial objectives: a trial failure goes on, a
fatal error stops the worker, a failure streak stops the study, and a worker whose budget is met
waits while counted trials run elsewhere."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types

import optuna
import pytest
from optuna.trial import TrialState

from search.errors import FATAL_EXIT, FailReason, StudyStopped, TrialFailure
from search.study import retries_due
from search.study._retries import _fail, _queue_retry
from search.study._study import failure_streak, resume, stop_study
from search.worker._liveness import Background, Liveness
from search.worker._loop import LoopLimits, run_loop
from search.worker._signals import StopFlag
from storage import attrs


def _study(trials: int = 6, streak: int = 5):
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    spec = types.SimpleNamespace(trials=trials, timeout_s=None, max_consecutive_failures=streak)
    return study, spec


def _loop(study, spec, objective, **limits):
    return run_loop(study, spec, objective, StopFlag(), Background(study, Liveness()), "w0",
                    LoopLimits(max_rss_growth_mb=0, max_gpu_growth_mb=0, **limits))


def test_a_trial_failure_is_recorded_and_the_worker_goes_on():
    study, spec = _study(trials=4)

    def objective(trial):
        x = trial.suggest_int("x", 0, 3)
        if trial.number == 1:
            trial.set_user_attr(attrs.FAIL_REASON, "build")
            raise TrialFailure("build", "this width cannot be built")
        if trial.number == 2:
            raise ValueError("a bug in one configuration")
        return float(x)

    assert _loop(study, spec, objective) is None
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[2].user_attrs[attrs.FAIL_REASON] == "error"
    assert "ValueError: a bug in one configuration" in study.trials[2].user_attrs[attrs.FAIL_MESSAGE]


@pytest.mark.parametrize("fatal", [ModuleNotFoundError("No module named 'my_netz'"), SyntaxError("invalid syntax")])
def test_a_fatal_error_stops_the_worker_and_hands_its_trial_back(fatal):
    """A typo in a builder or a broken install fails every trial alike: the worker stops at once
    (it used to record each as failed and burn the whole budget), and the trial is queued again
    for a healthy worker."""
    study, spec = _study(trials=10)

    def objective(trial):
        trial.suggest_int("x", 0, 3)
        raise fatal

    with pytest.raises(type(fatal)):
        _loop(study, spec, objective)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs[attrs.FAIL_REASON] == "fatal"
    assert type(fatal).__name__ in first.user_attrs[attrs.FAIL_MESSAGE]
    assert retry.state == TrialState.WAITING and retry.params == first.params


def test_the_same_failure_five_times_in_a_row_stops_the_study_and_every_worker():
    study, spec = _study(trials=50, streak=5)

    def objective(trial):
        trial.suggest_int("x", 0, 3)
        trial.set_user_attr(attrs.FAIL_REASON, "nan")
        trial.set_user_attr(attrs.FAIL_MESSAGE, "training loss became nan at epoch 1")
        raise TrialFailure("nan", "training loss became nan at epoch 1")

    with pytest.raises(StudyStopped, match=r"last 5 trials \(0, 1, 2, 3, 4\) all failed with reason 'nan'"):
        _loop(study, spec, objective)
    assert len(study.trials) == 5  # not 50
    assert "max_consecutive_failures=5" in study.user_attrs[attrs.STUDY_STOPPED]
    with pytest.raises(StudyStopped, match="reason 'nan'"):  # a second worker stops before it asks
        _loop(study, spec, lambda trial: 1.0)
    assert len(study.trials) == 5
    resume(study)  # `make study` again, once the cause is fixed
    assert _loop(study, spec, lambda trial: trial.suggest_int("x", 0, 3) * 1.0) is None
    assert study.trials[-1].state == TrialState.COMPLETE and len(study.trials) == 50


def test_a_streak_needs_one_reason_of_the_trials_own():
    study, _ = _study()
    for number, reason in enumerate(["nan", "oom", "nan", "stale", "nan"]):
        trial = study.ask()
        trial.set_user_attr(attrs.FAIL_REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
    assert failure_streak(study, 3) is None  # nan, oom, nan: mixed reasons ("stale" is an outside cause)
    assert failure_streak(study, 2) is not None and failure_streak(study, 0) is None
    trial = study.ask()
    study.tell(trial, 0.5)
    assert failure_streak(study, 2) is None  # a success breaks the streak
    for reason in ("nan", "stale", "nan"):  # a reaper that lost the race to the tell left "stale" on a success
        trial = study.ask()
        trial.set_user_attr(attrs.FAIL_REASON, reason)
        study.tell(trial, *((0.5,) if reason == "stale" else ()), state=TrialState.COMPLETE if reason == "stale"
                   else TrialState.FAIL)
    assert failure_streak(study, 2) is None  # nan, success, nan: the success breaks it, whatever it carries
    stop_study(study, "test")
    assert study.user_attrs[attrs.STUDY_STOPPED] == "test"


def test_a_worker_whose_budget_is_met_waits_for_a_running_trial_and_runs_its_retry():
    """Issue (many GPU machines, part 4): workers counted a dead worker's RUNNING trial against the
    budget and left before it was reaped; its retry was stranded. Now a worker waits while counted
    trials run, and runs the retry that appears."""
    study, spec = _study(trials=3)
    dead = study.ask()  # a worker that will never beat again
    dead.suggest_int("x", 0, 3)
    ran = []

    def objective(trial):
        ran.append(trial.number)
        return float(trial.suggest_int("x", 0, 3))

    liveness = Liveness(interval=0.1, grace=0.6)
    started = time.monotonic()
    with Background(study, liveness) as background:  # its reaper fails the silent trial after 0.6 s
        run_loop(study, spec, objective, StopFlag(), background, "w0", LoopLimits(poll_s=0.05))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states, states
    retry = study.trials[-1]
    assert retry.system_attrs["failed_trial"] == dead.number and ran[-1] == retry.number
    assert time.monotonic() - started >= 0.6


def _failed_with_retry_due(study):
    """A trial failed by a reaper that has not queued its retry yet (the two store calls apart)."""
    trial = study.ask()
    trial.suggest_int("x", 0, 3)
    frozen = study.trials[trial.number]
    assert _fail(study, frozen, FailReason.STALE, "no heartbeat", {attrs.RETRY_DUE: True})
    return frozen


def test_a_worker_whose_budget_is_met_waits_for_a_retry_due_but_not_queued_yet():
    """CI once saw it (tests/e2e, work-queue workers): a reaper failed a dead peer's trial, the two
    idle workers saw the budget met with nothing RUNNING and exited in the moment before the reaper
    queued the retry, which was left WAITING. Now the failure carries the retry it is due."""
    study, spec = _study(trials=2)
    study.enqueue_trial({"x": 1})
    study.tell(study.ask(), 1.0)
    frozen = _failed_with_retry_due(study)
    assert retries_due(study) == [frozen.number]
    threading.Timer(0.5, _queue_retry, (study, frozen)).start()  # the reaper, a moment later
    run_loop(study, spec, lambda t: float(t.suggest_int("x", 0, 3)), StopFlag(), Background(study, Liveness()),
             "w0", LoopLimits(poll_s=0.05))
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], states
    assert study.trials[2].system_attrs["failed_trial"] == frozen.number
    assert attrs.RETRY_DUE not in study.trials[2].system_attrs  # the retry is no failure with a retry due
    assert retries_due(study) == []


def test_a_retry_due_that_never_comes_is_waited_for_a_grace_period_then_counted_as_failed(caplog):
    study, spec = _study(trials=1)
    frozen = _failed_with_retry_due(study)  # and its reaper died: no retry will be queued
    started = time.monotonic()
    run_loop(study, spec, lambda t: 1.0, StopFlag(), Background(study, Liveness()), "w0",
             LoopLimits(poll_s=0.05, due_wait_s=0.5))
    assert 0.5 <= time.monotonic() - started < 5
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert f"trial {frozen.number} failed with a retry due that was never queued" in caplog.text


def test_a_retry_due_that_never_comes_is_queued_under_the_study_lock_and_run(caplog):
    """Issue (faults a real store brings): a FAIL whose retry was never queued (its reaper died
    between the two store calls) left the study one configuration short. A worker holding the
    study's lock queues it after the grace period, once, and runs it."""
    import contextlib

    study, spec = _study(trials=1)
    frozen = _failed_with_retry_due(study)  # and its reaper died: no retry will be queued
    held = []

    @contextlib.contextmanager
    def lock():
        held.append(1)
        yield

    run_loop(study, spec, lambda t: float(t.suggest_int("x", 0, 3)), StopFlag(), Background(study, Liveness()), "w0",
             LoopLimits(poll_s=0.05, due_wait_s=0.5), lock=lock)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert held == [1, 1]  # once to queue the retry, once to ask for it within the budget
    assert trials[1].system_attrs["failed_trial"] == frozen.number and trials[1].params == frozen.params
    assert f"trial {frozen.number} failed with a retry due that was not queued in 0s" in caplog.text
    assert retries_due(study) == []


def test_with_the_study_lock_the_budget_is_exact_when_another_worker_asks_in_between():
    """CI saw 4/3 finished with two workers: both found 2 of 3 used, both asked. Under the study's
    lock the check is made again with the ask, so the worker that comes second runs nothing."""
    import contextlib

    study, spec = _study(trials=1)
    calls = []

    @contextlib.contextmanager
    def lock():
        if not calls:  # another worker got the lock first and took the budget's last trial
            other = study.ask()
            study.tell(other, 0.5)
        calls.append(1)
        yield

    run_loop(study, spec, lambda t: 1.0, StopFlag(), Background(study, Liveness()), "w0",
             LoopLimits(poll_s=0.05), lock=lock)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] and study.trials[0].value == 0.5
    assert calls == [1]


def test_a_stop_request_ends_the_wait():
    study, spec = _study(trials=1)
    study.ask()  # running elsewhere, forever
    stop = StopFlag()
    threading.Timer(0.3, stop.event.set).start()
    started = time.monotonic()
    assert run_loop(study, spec, lambda t: 1.0, stop, Background(study, Liveness()), "w0",
                    LoopLimits(poll_s=10)) is None
    assert time.monotonic() - started < 5


def test_the_worker_exits_2_naming_a_missing_study(tmp_path):
    run = subprocess.run([sys.executable, "-m", "search.worker", "mnist_cnn", "--storage",
                          f"journal://{tmp_path / 'empty.journal'}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == FATAL_EXIT == 2, run.stderr[-2000:]
    assert "study 'mnist_cnn' does not exist in this store; create it first" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_reaper_that_fails_says_so_as_a_warning_once_a_minute(caplog):
    """Issue (faults): reaper and heartbeat errors were logged at debug level only: an operator saw
    nothing while a worker's reaper could not reach the store."""
    study, _ = _study()
    background = Background(study, Liveness())

    def broken():
        raise ConnectionError("server closed the connection unexpectedly")

    with caplog.at_level("DEBUG", logger="search.worker._liveness"):
        for _ in range(3):
            background._guarded(broken, "reaper")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "reaper failed (ConnectionError: server closed" in warnings[0].getMessage()
    assert sum(r.levelname == "DEBUG" for r in caplog.records) == 2
