"""Committed, then raised (issue: faults a real store brings, "ambiguous commits"): a write that
landed but whose acknowledgement was lost (the connection dropped after COMMIT) is retried by the
resilient store. Queuing a failed trial's retry is the one write whose repeat would do harm (the
configuration would run twice); on the RDB layout, directly and through the storage proxy, the
second insert is refused whole by a unique index (storage._rdb) and recognised as "queued already".

The journal layout's appends are made idempotent below this level (each batch carries an id the
backend looks up before appending again: storage/test_storage_contract, README row 21d); a worker's
`tell` that landed is recognised by the trial's state (search.worker._loop._tell)."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from helpers.processes import free_port
from optuna.trial import TrialState

from search.errors import FailReason
from search.study._retries import fail_and_retry, lineage
from search.study._store import resilient
from storage import close_storage, open_storage
from storage._grpc import make_server, open_grpc
from storage.attrs import ONE_RETRY_INDEX


def _commit_then_raise(storage: optuna.storages.RDBStorage, method: str, times: int = 1) -> list[int]:
    """Make `method` of this store do its write, then raise as a connection lost after COMMIT would."""
    original, calls = getattr(storage, method), []

    def flaky(*args, **kwargs):
        result = original(*args, **kwargs)
        if len(calls) < times:
            calls.append(1)
            raise sqlalchemy.exc.OperationalError(method, {}, Exception("server closed the connection after COMMIT"))
        return result

    setattr(storage, method, flaky)
    return calls


@pytest.fixture(params=["rdb", "proxy"])
def layout(request, fresh_db):
    """(the store a worker uses, the RDB store behind it whose create_new_trial is made ambiguous)."""
    rdb = open_storage(fresh_db, create_schema=True)
    if request.param == "rdb":
        yield rdb, rdb
    else:
        port = free_port()
        server = make_server(rdb, host="127.0.0.1", port=port, threads=4)
        server.start()
        client = open_grpc(f"grpc://127.0.0.1:{port}")
        yield client, rdb
        client.close()
        server.stop(0).wait()
    close_storage(rdb)


def test_a_retry_queued_again_after_a_lost_acknowledgement_is_refused_and_runs_once(layout):
    store, rdb = layout
    study = optuna.create_study(study_name="ambiguous", storage=resilient(store, max_backoff=0.1))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    # Optuna's RDB store writes a new trial in _create_new_trial (its cache and the proxy's servicer both
    # come through there): the insert lands, then the "connection" drops.
    calls = _commit_then_raise(rdb, "_create_new_trial")
    fail_and_retry(study, trial.number, FailReason.INTERRUPTED, "SIGTERM")
    assert calls == [1]  # the first insert landed, then "failed"; the store retried it
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # one retry, not two
    assert lineage(trials[1]) == 0 and trials[1].params == trials[0].params
    # The retry runs; when it fails in turn, its own retry is queued (the key is per failed trial).
    retry = study.ask()
    assert retry.number == 1
    fail_and_retry(study, retry.number, FailReason.INTERRUPTED, "SIGTERM again")
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.FAIL, TrialState.FAIL,
                                                                   TrialState.WAITING]


def test_the_create_step_makes_the_one_retry_index(fresh_db):
    close_storage(open_storage(fresh_db, create_schema=True))
    engine = sqlalchemy.create_engine(fresh_db, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        definition = conn.execute(sqlalchemy.text("select indexdef from pg_indexes where indexname = :n"),
                                  {"n": ONE_RETRY_INDEX}).scalar_one()
    engine.dispose()
    assert "UNIQUE" in definition and "value_json" in definition and "cnn_search:retry_of_trial" in definition


def test_a_result_told_again_after_a_lost_acknowledgement_is_kept(layout):
    """The worker's tell landed, its acknowledgement was lost, the store told it again: the second
    tell finds the trial finished. The worker recognises its own result (the state it told), keeps
    it and goes on, rather than dropping it as a trial the reaper took over."""
    from search.worker._loop import TrialEnd, _tell

    store, rdb = layout
    study = optuna.create_study(study_name="told", storage=resilient(store, max_backoff=0.1))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    calls = _commit_then_raise(rdb, "set_trial_state_values")
    assert _tell(study, trial, TrialEnd(TrialState.COMPLETE, 0.75), "w0") is True
    assert calls == [1]
    [told] = study.get_trials(deepcopy=False)
    assert (told.state, told.value) == (TrialState.COMPLETE, 0.75)


def _raise_before_commit(storage: optuna.storages.RDBStorage, method: str) -> list[int]:
    """Make `method` fail once without writing, as a connection lost before COMMIT would."""
    original, calls = getattr(storage, method), []

    def flaky(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise sqlalchemy.exc.OperationalError(method, {}, Exception("server closed the connection"))
        return original(*args, **kwargs)

    setattr(storage, method, flaky)
    return calls


def test_a_pop_whose_acknowledgement_was_lost_is_taken_by_its_worker(layout):
    """A queued retry popped (WAITING -> RUNNING), committed, acknowledgement lost: the retried pop
    finds it RUNNING. The worker recognises its own pop and runs the queued trial; it used to take it
    for another worker's, create a new trial, and leave the popped one RUNNING with no worker until
    the reaper failed it as silent (a step towards MAX_STALE_RETRIES)."""
    store, rdb = layout
    study = optuna.create_study(study_name="popped", storage=resilient(store, max_backoff=0.1))
    study.enqueue_trial({"x": 0.25})
    calls = _commit_then_raise(rdb, "set_trial_state_values")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert calls == [1]
    assert (trial.number, trial.params) == (0, {"x": 0.25})
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.RUNNING]  # no second trial


def test_a_pop_that_did_not_land_leaves_a_queued_trial_another_worker_took_to_it(layout):
    """The first attempt failed before COMMIT and, while this worker backed off, another popped the
    trial: its start lies outside this worker's failed attempt, so this worker does not claim it and
    asks for a new trial instead."""
    from search.study._store import ResilientStorage

    store, rdb = layout
    optuna.create_study(study_name="raced", storage=rdb).enqueue_trial({"x": 0.75})
    other = optuna.load_study(study_name="raced", storage=rdb)
    taken = []
    study = optuna.load_study(study_name="raced", storage=ResilientStorage(
        store, max_backoff=0.1, sleep=lambda seconds: taken.append(other.ask()) if not taken else None))
    calls = _raise_before_commit(rdb, "set_trial_state_values")
    mine = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert calls == [1] and [t.number for t in taken] == [0]  # the other worker popped it meanwhile
    assert mine.number == 1  # not the other worker's trial
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.RUNNING, TrialState.RUNNING]
