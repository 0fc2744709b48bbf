"""Where a trial's time goes (attrs.TIME_BREAKDOWN), and checkpoints written on a time basis
(CHECKPOINT_EVERY_S): the breakdown of real tiny trials, the timer and the checkpoint policy with
injected clocks, the report's record and `make status`'s totals."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from helpers.synthetic import TINY as SEARCH_TINY
from helpers.synthetic import easy_splits
from optuna.trial import TrialState, create_trial

from search import TrialFailure, create_study, make_pruner, make_sampler, parse_spec
from search.errors import WorkerStopping
from search.study._store import ResilientStorage, store_seconds
from search.trial._checkpoints import Checkpoints
from search.trial._objective import Objective, TrialGuard
from search.trial._timing import TrialTimer
from search.worker._signals import StopFlag
from storage.attrs import TIME_BREAKDOWN, TIME_PHASES

TINY = SEARCH_TINY + """warm_start:
  - {optimizer: adam, learning_rate: 0.003}
  - {optimizer: sgd, learning_rate: 1.0e-7, momentum: 0.9}
"""

# How far the phases' sum may fall short of the trial's wall time (datetime_complete - datetime_start).
# The breakdown is taken just before its own write and the tell, which it cannot cover: with the
# in-memory store these take milliseconds, but a thread on a loaded 2-core machine can wait tens of
# milliseconds for a core between the two. Each phase is rounded to 1 ms (8 phases: at most 4 ms
# over), and the idle phase starts from the store's clock (datetime.now(), as Optuna's).
SHORT_BY_AT_MOST_S = 0.25
OVER_BY_AT_MOST_S = 0.01


def _study(text: str = TINY, storage: optuna.storages.BaseStorage | None = None):
    spec = parse_spec(text, name="tiny")
    study = create_study(spec, storage or optuna.storages.InMemoryStorage())
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    return spec, study


def test_complete_and_pruned_trials_carry_a_breakdown_that_adds_up_to_their_wall_time(tmp_path):
    spec, study = _study(storage=ResilientStorage(optuna.storages.InMemoryStorage()))  # store calls timed
    objective = Objective(spec, easy_splits(), checkpoints=Checkpoints(tmp_path, spec.name, every_s=0))
    study.optimize(objective, n_trials=2, catch=(TrialFailure,))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    for t in study.trials:
        phases = t.user_attrs[TIME_BREAKDOWN]
        assert list(phases) == list(TIME_PHASES) and all(s >= 0 for s in phases.values()), phases
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        assert -OVER_BY_AT_MOST_S <= wall - sum(phases.values()) <= SHORT_BY_AT_MOST_S, (wall, phases)
        # Recorded to the millisecond: the in-memory store's few calls of a trial pruned at its first
        # epoch can add up to less than that, so its store phase may round to 0.
        timed = ("build", "compile", "train", "validate", "checkpoint", "cleanup")
        for phase in (*timed, "store") if t.state == TrialState.COMPLETE else timed:
            assert phases[phase] > 0, (t.number, phase, phases)


def test_the_timer_moves_store_calls_out_of_the_phase_they_interrupt():
    now, in_store = [100.0], [7.0]
    timer = TrialTimer(clock=lambda: now[0], store_clock=lambda: in_store[0], idle_before=0.5)
    now[0] += 1.0
    timer.switch("train")
    now[0] += 5.0
    in_store[0] += 2.0  # 2 of those 5 seconds were store round trips
    with timer.phase("checkpoint"):
        now[0] += 0.25
    now[0] += 1.0
    assert timer.breakdown() == {**dict.fromkeys(TIME_PHASES, 0.0), "idle": 1.5, "train": 4.0, "store": 2.0,
                                 "checkpoint": 0.25}
    assert timer.current == "train"
    with pytest.raises(ValueError, match="unknown phase 'training'"):
        timer.switch("training")


def test_the_resilient_store_counts_the_seconds_of_this_thread_s_calls():
    storage = ResilientStorage(optuna.storages.InMemoryStorage())
    before = store_seconds()
    optuna.create_study(storage=storage).ask()
    assert store_seconds() > before


class _Clock:
    """A clock the test advances: each epoch 'takes' `epoch_s` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Tick(keras.callbacks.Callback):
    def __init__(self, clock: _Clock, epoch_s: float) -> None:
        super().__init__()
        self.clock, self.epoch_s = clock, epoch_s

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.clock.now += self.epoch_s


def _fit(callbacks: list[keras.callbacks.Callback], epochs: int = 6) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(16, 4)).astype("float32"), np.arange(16) % 2
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks)


@pytest.mark.parametrize("every_s, writes", [(10.0, 2), (0.0, 6)])
def test_cheap_epochs_do_not_each_write_a_checkpoint(tmp_path, every_s, writes):
    """Six epochs of 4 s each: every 10 s means writes after epochs 3 (12 s) and 6 (24 s); 0, every epoch."""
    _, study = _study()
    clock = _Clock()
    with Checkpoints(tmp_path, "tiny", every_s=every_s, clock=clock).attempt(study.ask()) as backup:
        _fit([_Tick(clock, 4.0), backup])
    assert backup.writes == writes


def _metadata(folder: Path) -> dict:
    return json.loads((folder / "training_metadata.json").read_text())


def test_a_signal_after_the_checkpoint_s_turn_still_writes_the_stopping_epoch(tmp_path):
    """SIGTERM between the checkpoint's turn (not due) and TrialGuard's: the guard writes it."""
    _, study = _study()
    stop = StopFlag()

    class Signal(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            stop.event.set()

    trial = study.ask()
    with pytest.raises(WorkerStopping):
        with Checkpoints(tmp_path, "tiny", every_s=3600).attempt(trial, stop=stop) as backup:
            _fit([backup, Signal(), TrialGuard(trial, stop, after_checkpoint=True, checkpoint=backup)])
    assert backup.writes == 1
    (folder,) = tmp_path.iterdir()  # kept for the retry
    assert _metadata(folder)["epoch"] == 1


class _SignalAtSecondReport(optuna.storages.InMemoryStorage):
    """Sets the stop flag as the trial reports its second epoch (as SIGTERM would, mid-trial)."""

    def __init__(self, stop: StopFlag) -> None:
        super().__init__()
        self.stop = stop

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        if step == 1:
            self.stop.event.set()
        super().set_trial_intermediate_value(trial_id, step, value)


def test_a_stopped_trial_checkpoints_at_its_stopping_epoch_though_no_checkpoint_is_due(tmp_path):
    stop = StopFlag()
    spec, study = _study(TINY.replace("pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}",
                                      "pruner: none"), _SignalAtSecondReport(stop))
    trial = study.ask()
    with pytest.raises(WorkerStopping, match="after epoch 2"):
        Objective(spec, easy_splits(), checkpoints=Checkpoints(tmp_path, spec.name, every_s=3600), stop=stop)(trial)
    (folder,) = tmp_path.iterdir()
    assert _metadata(folder)["epoch"] == 2  # the retry resumes at epoch 3
    assert not (folder / "latest.weights.h5.bkp").exists()  # epoch 1 was not written: this is the only write
    assert sum(study.trials[0].user_attrs[TIME_BREAKDOWN].values()) > 0  # an interrupted trial has one too


def _timed(number: int, state: TrialState, **seconds: float):
    return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                        user_attrs={TIME_BREAKDOWN: {**dict.fromkeys(TIME_PHASES, 0.0), **seconds}})


def _timed_study(storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    study = optuna.create_study(study_name="timed", storage=storage, direction="maximize")
    study.add_trial(_timed(0, TrialState.COMPLETE, build=1.0, compile=4.0, train=10.0, validate=3.0, store=2.0))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1))  # from before breakdowns
    study.add_trial(_timed(2, TrialState.PRUNED, compile=4.0, train=2.0, validate=1.0, checkpoint=3.0))
    return study


def test_the_report_record_has_every_timed_trial_s_phases_and_the_study_s_totals():
    from dashboards import _records
    from dashboards.report import sections

    record = _records.time_breakdown(_timed_study())
    assert record.trials == [0, 2] and record.states == ["complete", "pruned"]
    assert record.seconds["train"] == [10.0, 2.0] and record.seconds["checkpoint"] == [0.0, 3.0]
    assert record.totals["compile"] == 8.0 and record.total == 30.0
    assert record.shares()["train"] == pytest.approx(0.4)
    titles = [s.title for s in sections(_timed_study())]
    assert "Time per trial" in titles and "Time per phase" in titles
    assert "Time per trial" not in [s.title for s in sections(optuna.create_study(direction="maximize"))]


def test_status_prints_the_seconds_and_share_of_each_phase(capsys):
    from search.__main__ import main
    from storage import open_storage, resolve_url

    _timed_study(open_storage(resolve_url("")))
    assert main(["status", "timed"]) == 0
    out = capsys.readouterr().out
    assert "time of 2 trials, 30.0 s in all" in out
    assert "train" in out and "12.0 s  40.0%" in out and "checkpoint" in out and "3.0 s  10.0%" in out
