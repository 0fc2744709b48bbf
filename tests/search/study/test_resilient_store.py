"""The resilient store (search/study/_store.py): every call retried through outages, one exception for a
trial finished elsewhere, and the private attributes of Optuna and Keras that the adapter relies on."""

from __future__ import annotations

import inspect

import optuna
import pytest
import sqlalchemy.exc
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from search.study._store import ResilientStorage, TrialTakenOver, fresh_trial, resilient, storage_of, trial_id


class _Outage:
    """An in-memory store whose next `failures` calls each fail `times` times before they work, as
    during a PostgreSQL restart (a stand-in, not a subclass: the store's calls to itself never fail)."""

    def __init__(self, failures: int, times: int = 1) -> None:
        self.store = optuna.storages.InMemoryStorage()
        self.failures, self.times, self.failed, self._streak = failures, times, [], 0

    def __getattr__(self, name: str):
        attr = getattr(self.store, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def flaky(*args, **kwargs):
            if self.failures > 0 and self._streak < self.times:
                self._streak += 1
                self.failed.append(name)
                raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
            if self._streak:
                self.failures, self._streak = self.failures - 1, 0
            return attr(*args, **kwargs)

        return flaky


def test_every_storage_method_is_delegated_not_inherited():
    """A BaseStorage method the wrapper did not delegate would run BaseStorage's default on the
    wrapper itself, outside the retries; this fails when an Optuna upgrade adds one."""
    public = {name for name, _ in inspect.getmembers(BaseStorage, inspect.isfunction) if not name.startswith("_")}
    inherited = {name for name in public if getattr(ResilientStorage, name) is getattr(BaseStorage, name)}
    assert inherited == set(), f"not delegated: {sorted(inherited)}"


def test_a_study_runs_through_an_outage_on_every_kind_of_call():
    backend = _Outage(failures=0)
    waits: list[float] = []
    study = optuna.create_study(storage=ResilientStorage(backend, sleep=waits.append, jitter=lambda: 0.5))
    backend.failures = 10_000  # from here every call fails once, whatever it is
    for _ in range(3):
        trial = study.ask()
        trial.report(0.5, step=0)
        trial.set_user_attr("note", "kept")
        study.tell(trial, trial.suggest_float("x", 0, 1))
    kinds = {"create_new_trial", "set_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
             "set_trial_state_values", "get_trial", "get_all_trials"}
    assert kinds <= set(backend.failed), sorted(set(backend.failed))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert set(waits) == {1.0}  # one retry each, after 1 s


def test_the_backoff_doubles_to_its_cap_and_never_gives_up():
    waits: list[float] = []
    backend = _Outage(failures=1, times=8)
    storage = ResilientStorage(backend, max_backoff=30.0, sleep=waits.append, jitter=lambda: 0.5)
    study = optuna.create_study(storage=storage)  # its first call fails 8 times in a row
    assert study.trials == [] and len(backend.failed) == 8
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]  # 1 s doubling, capped (jitter x1 here)
    assert storage.outages_met == 1  # what the reaper watches: one call that waited, however often it retried


def test_a_trial_finished_elsewhere_raises_one_well_named_exception():
    study = optuna.create_study(storage=resilient(optuna.storages.InMemoryStorage()))
    trial = study.ask()
    storage_of(study).set_trial_state_values(trial_id(trial), state=TrialState.FAIL)  # the reaper, say
    with pytest.raises(TrialTakenOver, match="finished elsewhere"):
        trial.set_user_attr("late", 1)
    with pytest.raises(TrialTakenOver):
        trial.report(0.1, step=1)
    assert issubclass(TrialTakenOver, optuna.exceptions.UpdateFinishedTrialError)  # Optuna's own handlers still apply
    told = study.tell(trial, 0.9, skip_if_finished=True)
    assert told.state == TrialState.FAIL and fresh_trial(trial).state == TrialState.FAIL


def test_errors_that_are_not_outages_are_raised_at_once():
    backend = optuna.storages.InMemoryStorage()
    calls = []
    storage = ResilientStorage(backend, sleep=calls.append)
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("no such study")
    assert calls == []  # no retry of a question with a wrong answer


def test_the_private_attributes_we_rely_on_still_exist():
    """search/study/_store.py is the one place that reads private attributes of Optuna and Keras; an
    upgrade that renames one fails here, not in a worker at 3 a.m."""
    import keras

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    assert isinstance(trial._trial_id, int) and trial_id(trial) == trial._trial_id
    assert isinstance(study.trials[0]._trial_id, int)
    assert isinstance(study._storage, BaseStorage) and storage_of(study) is study._storage
    assert "_initial_epoch" in inspect.getsource(keras.callbacks.BackupAndRestore)  # what it sets
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert model._initial_epoch is None  # what fit() reads (and restart_from_epoch resets)
    assert "self._initial_epoch or initial_epoch" in inspect.getsource(type(model).fit)


def test_the_private_optuna_module_the_journal_snapshot_needs_still_exists():
    """storage/_journal_pg.py implements Optuna's journal snapshot interface, which Optuna 5.0 does
    not export: it imports it from `optuna.storages.journal._base`. An upgrade that moves it fails here."""
    from optuna.storages.journal._base import BaseJournalSnapshot

    from storage._journal_pg import PostgresJournalBackend

    assert issubclass(PostgresJournalBackend, BaseJournalSnapshot)
    assert {"save_snapshot", "load_snapshot"} <= set(BaseJournalSnapshot.__abstractmethods__)
