"""The worker loop when its trial was taken over by the reaper meanwhile."""

from __future__ import annotations

from helpers.synthetic import TINY, memory_study
from optuna.trial import TrialState


def test_the_worker_loop_goes_on_when_a_trial_reaped_meanwhile_raises(caplog):
    """Regression (CI): the paused worker's trial raised after the reaper had failed it; recording
    fail_reason "error" raised UpdateFinishedTrialError and the worker exited 1."""
    from search.study._retries import fail_and_retry
    from search.worker._liveness import Background, Liveness
    from search.worker._loop import run_loop
    from search.worker._signals import StopFlag

    spec, study = memory_study(TINY)

    def objective(trial):
        if trial.number == 0:
            fail_and_retry(study, 0, "stale", "no heartbeat (test)")
            raise OSError("the checkpoint folder vanished")
        return 0.5

    no_threads = Background(study, Liveness())  # not entered: heartbeats written inline, no threads
    with caplog.at_level("WARNING", logger="search.worker"):
        assert run_loop(study, spec, objective, StopFlag(), no_threads, "w0") is None
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE, TrialState.COMPLETE], states
    assert study.trials[0].user_attrs["fail_reason"] == "stale"
    assert study.trials[1].system_attrs["failed_trial"] == 0  # the retry ran
    assert "its error is dropped" in caplog.text
