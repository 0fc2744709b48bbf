"""One contract, run against every store: the embedded journal file, and PostgreSQL in both layouts
(Optuna's RDB tables, and the journal table the service uses); then the journal table's own guarantees."""

from __future__ import annotations

import io
import os
import time
import uuid

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from search import create_study, parse_spec
from search.errors import StudyMismatchError
from search.study._retries import Reaper
from search.study._store import ResilientStorage
from search.study._study import budget_used, counts, load_existing
from storage import (
    JOURNAL_PG_PREFIX,
    StorageConfigError,
    StorageUnavailableError,
    attrs,
    close_storage,
    open_storage,
    redact,
    resolve_url,
)

SPEC = """
architecture: s000_model_1
dataset: cifar10
space:
  optimizer: {choices: [adam, sgd]}
  learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
budget: {trials: 5}
warm_start:
  - {optimizer: adam, learning_rate: 0.001}
"""


# The PostgreSQL layouts ask for the server only when they run (getfixturevalue): their params carry
# the postgres marker, so `make test-fast` deselects them.
@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("postgres-journal", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "journal":
        yield f"journal://{tmp_path / 'studies.journal'}"
        return
    if request.param == "postgres-journal":
        yield request.getfixturevalue("journal_pg_url")
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    storage = open_storage(url)
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.startswith("contract_"):
            optuna.delete_study(study_name=summary.study_name, storage=storage)


def _name() -> str:
    return f"contract_{uuid.uuid4().hex[:8]}"


def test_create_is_idempotent_and_enqueues_warm_starts_once(store):
    spec = parse_spec(SPEC, name=(name := _name()))
    storage = open_storage(store, create_schema=True)
    create_study(spec, storage)
    create_study(spec, storage)
    study = load_existing(name, open_storage(store))
    assert [t.state for t in study.trials] == [TrialState.WAITING]
    assert study.user_attrs["space_hash"] == spec.space_hash() and study.user_attrs["budget"] == 5


def test_ask_tell_counts_and_budget(store):
    spec = parse_spec(SPEC, name=(name := _name()))
    study = create_study(spec, open_storage(store, create_schema=True))
    first = study.ask()
    assert first.params == {} and first.number == 0
    assert first.suggest_categorical("optimizer", ["adam", "sgd"]) == "adam"  # the warm start
    study.tell(first, 0.5)
    second = study.ask()
    assert budget_used(study) == 2
    study.tell(second, state=TrialState.PRUNED)
    c = counts(load_existing(name, open_storage(store)))
    assert (c.n_complete, c.n_pruned, c.n_running, c.best_value) == (1, 1, 0, 0.5)


def test_a_changed_space_cannot_join(store):
    name = _name()
    create_study(parse_spec(SPEC, name=name), open_storage(store, create_schema=True))
    with pytest.raises(StudyMismatchError, match="space"):
        create_study(parse_spec(SPEC.replace("[adam, sgd]", "[adam]"), name=name), open_storage(store))


def test_a_missing_study_is_named(store):
    open_storage(store, create_schema=True)
    with pytest.raises(StudyMismatchError, match="does not exist in this store; create it first"):
        load_existing("no_such_study", open_storage(store))


def _no_warm_start(store):
    return create_study(parse_spec(SPEC.replace("warm_start:\n  - {optimizer: adam, learning_rate: 0.001}\n", ""),
                                   name=_name()), open_storage(store, create_schema=True))


def _run_next(study):
    """Ask for the next trial (the queued retry, if any) and sample its parameter as a worker would."""
    trial = study.ask()
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    return trial


class _Clock:
    """A reaper's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reap_for(study, seconds: float, *, grace: float = 1.0, max_stale_retries: int = 1, beating=(),
              reaper: Reaper | None = None) -> list[int]:
    """What a reaper fails while it watches the study for `seconds` of its own clock, looking every
    grace/4 as a worker's does; the trials in `beating` beat (with nonsense times) between looks."""
    reaper = reaper or Reaper(grace, max_stale_retries, clock=_Clock())
    reaped = reaper(study)
    for step in range(int(seconds / (grace / 4)) + 1):
        for n, trial in enumerate(beating):
            study._storage.set_trial_system_attr(trial._trial_id, attrs.HEARTBEAT, -1e9 * step - n)
        reaper.clock.now += grace / 4
        reaped += reaper(study)
    return reaped


def test_a_create_cut_short_before_its_warm_starts_is_completed_by_the_next(tmp_path, monkeypatch):
    """Issue (faults a real store brings): the study was marked made (its space hash) before its warm
    starts were queued, so a create that died in between lost them for good."""
    spec = parse_spec(SPEC, name=_name())
    storage = open_storage(f"journal://{tmp_path / 'studies.journal'}")
    real = optuna.Study.enqueue_trial
    monkeypatch.setattr(optuna.Study, "enqueue_trial", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        create_study(spec, storage)
    monkeypatch.setattr(optuna.Study, "enqueue_trial", real)
    study = create_study(spec, storage)  # `make study` again
    assert attrs.STUDY_SPACE_HASH in study.user_attrs
    assert [t.params or t.system_attrs["fixed_params"] for t in study.trials] == [dict(w) for w in spec.warm_start]
    create_study(spec, storage)
    assert len(study.trials) == len(spec.warm_start) == 1  # queued once, however often create runs


def test_reaper_fails_a_silent_trial_and_queues_one_retry(store):
    study = _no_warm_start(store)
    trial = _run_next(study)  # never beats
    live = study.ask()  # beats
    assert _reap_for(study, 0.8, beating=[live]) == []  # within the grace period, judged from first seen
    assert _reap_for(study, 1.5, beating=[live]) == [trial.number]
    trials = study.trials
    assert trials[trial.number].state == TrialState.FAIL and trials[trial.number].user_attrs["fail_reason"] == "stale"
    assert trials[live.number].state == TrialState.RUNNING
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING and retries[0].params == trials[trial.number].params
    assert _reap_for(study, 1.5, beating=[live]) == []  # nothing twice
    assert budget_used(study) == 1  # the live trial; the failed one's retry will count in its place


def _time_zone(name: str | None) -> None:
    """This process's local time zone (None: the machine's), as datetime.now() sees it."""
    if name is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = name
    time.tzset()


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_clock_skew_and_time_zones_between_workers_and_reapers_do_not_matter(tmp_path, skew):
    """Issue (faults a real store brings): liveness was judged on each machine's clock, so a worker
    whose clock ran behind the reaper's by more than the grace period had its live trials reaped, and
    a dead one whose clock ran ahead kept its trial for as long. Heartbeats are now tokens a reaper
    watches change on its own clock; a start time in another time zone is not read at all."""
    study = _no_warm_start(f"journal://{tmp_path / 'studies.journal'}")
    before = os.environ.get("TZ")
    try:
        _time_zone("<+01>-1")  # the asking workers' machine: UTC+1 (POSIX form: no tz database needed)
        live, dead = _run_next(study), _run_next(study)
        _time_zone("UTC0")  # the reaper's machine
        study._storage.set_trial_system_attr(dead._trial_id, attrs.HEARTBEAT, time.time() + skew)  # its last beat
        reaper = Reaper(10.0, clock=_Clock())
        assert _reap_for(study, 9.0, grace=10.0, beating=[live], reaper=reaper) == []
        assert _reap_for(study, 3.0, grace=10.0, beating=[live], reaper=reaper) == [dead.number]
        assert study.trials[live.number].state == TrialState.RUNNING
    finally:
        _time_zone(before)


def test_a_reaper_never_judges_across_its_own_outage(store):
    """Issue (faults a real store brings): PostgreSQL stopped for longer than the grace period; the
    runner's reaper, back first, failed every running trial as stale, though their workers were only
    waiting for the store too. A reaper that lost the store, or waited it out in a call, or did not
    look for a grace period, forgets what it saw and gives the trials `settle` (their store calls'
    longest backoff) plus a grace period of its contact to beat again."""
    study = _no_warm_start(store)
    trial = _run_next(study)
    study._storage.set_trial_system_attr(trial._trial_id, attrs.HEARTBEAT, 1.0)
    clock = _Clock()
    reaper = Reaper(4.0, settle=10.0, clock=clock)
    assert reaper(study) == []

    class Down:
        _storage = study._storage

        def get_trials(self, **kwargs):
            clock.now += 3.0
            raise OSError("the store is down")

    for _ in range(5):  # 15 s without the store: more than the grace period
        with pytest.raises(OSError):
            reaper(Down())
    assert reaper(study) == []  # back: the silence before the outage does not count
    assert _reap_for(study, 12.0, grace=4.0, reaper=reaper) == []  # the settle time, then under a grace period
    assert _reap_for(study, 3.0, grace=4.0, reaper=reaper) == [trial.number]  # silent through both: dead

    second = _run_next(study)  # the retry
    slow = _Clock()
    patient = Reaper(4.0, clock=slow)
    assert patient(study) == []

    class Slow:  # a call the resilient store held through an outage: it succeeded, 30 s later
        _storage = study._storage

        def get_trials(self, **kwargs):
            slow.now += 30.0
            return study.get_trials(**kwargs)

    assert patient(Slow()) == [] and _reap_for(study, 3.0, grace=4.0, reaper=patient) == []
    slow.now += 5.0  # a pass after more than a grace period without looking (a stalled process)
    assert patient(study) == [] and second.number in patient.seen


class _Blip:
    """A store whose next call fails `failures` times before it works: an outage its caller rides out in a
    moment (a stand-in, not a subclass: the store's calls to itself never fail)."""

    def __init__(self, store) -> None:
        self.store, self.failures = store, 0

    def __getattr__(self, name: str):
        attr = getattr(self.store, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def flaky(*args, **kwargs):
            if self.failures > 0:
                self.failures -= 1
                raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
            return attr(*args, **kwargs)

        return flaky


def test_an_outage_shorter_than_half_the_grace_period_still_holds_the_reapers_judgement(store):
    """CI (the outage sweep's 3-s outage, grace 6 s): the reaper's own call rode the outage out in under
    grace/2, so it saw nothing amiss, while the other worker's heartbeat was still in its backoff (1, 2,
    4 s... after its first failure); that worker's live trial was failed as stale. A call of this process
    that waited to retry, however briefly, now counts as an outage: `settle` plus a grace period."""
    plain = _no_warm_start(store)
    trial = _run_next(plain)
    plain._storage.set_trial_system_attr(trial._trial_id, attrs.HEARTBEAT, 1.0)  # its last beat, then silence
    blip = _Blip(plain._storage)
    study = optuna.load_study(study_name=plain.study_name, storage=ResilientStorage(blip, sleep=lambda s: None))
    clock = _Clock()
    reaper = Reaper(4.0, settle=10.0, clock=clock)
    assert reaper(study) == []
    clock.now += 1.0
    blip.failures = 2  # the reaper's next call waits to retry twice, and takes no time on its clock
    assert reaper(study) == [] and blip.failures == 0
    assert _reap_for(study, 12.0, grace=4.0, reaper=reaper) == []  # the settle time, then under a grace period
    assert _reap_for(study, 3.0, grace=4.0, reaper=reaper) == [trial.number]  # silent through both: dead


def test_every_running_trial_silent_at_once_is_given_a_second_grace_period(store, caplog):
    """Issue (faults a real store brings): if every RUNNING trial looks dead at once, suspect the
    store, not the workers. One silent trial beside a live one is failed after the grace period; two
    silent with nothing else running, after two."""
    study = _no_warm_start(store)
    first, second = _run_next(study), _run_next(study)
    reaper = Reaper(1.0, clock=_Clock())
    assert _reap_for(study, 1.5, reaper=reaper) == []
    assert "all 2 running trials went silent at once: suspecting the store" in caplog.text
    assert sorted(_reap_for(study, 0.75, reaper=reaper)) == [first.number, second.number]
    live, dead = _run_next(study), _run_next(study)  # the two retries: one beats, one does not
    assert _reap_for(study, 1.5, beating=[live]) == [dead.number]


def test_a_retry_does_not_inherit_its_original_s_heartbeat(store):
    study = _no_warm_start(store)
    trial = _run_next(study)
    study._storage.set_trial_system_attr(trial._trial_id, attrs.HEARTBEAT, time.time() - 30.0)  # silent 30 s
    assert _reap_for(study, 12.0, grace=10.0) == [trial.number]
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number)
    assert retry.state == TrialState.WAITING and attrs.HEARTBEAT not in retry.system_attrs
    assert retry.system_attrs[attrs.STALE_FAILURES] == 1  # what it should inherit, it does
    started = _run_next(study)  # asked just now, no beat yet: judged from when a reaper first saw it
    assert started.number == retry.number and _reap_for(study, 9.0, grace=10.0) == []


def test_outside_causes_are_retried_every_time_and_a_silent_lineage_at_most_twice(store):
    """Regression (CI, fault row 3): a trial failed by one PostgreSQL restart and its retry failed by
    the next one ended the lineage, because every retry counted against max_retry=1."""
    from search.study._retries import fail_and_retry, lineage

    study = _no_warm_start(store)
    first = _run_next(study)
    for reason in ("store", "store", "interrupted", "store"):  # none is the trial's doing
        fail_and_retry(study, study.trials[-1].number, reason, f"{reason} (test)")
        retry = _run_next(study)
        assert lineage(study._storage.get_trial(retry._trial_id)) == first.number
        assert retry.params == first.params
    # A worker going silent may be the trial's fault (OOM killer): MAX_STALE_RETRIES per lineage.
    for expect_retry in (True, True, False):
        running = study.trials[-1].number
        assert _reap_for(study, 1.5, max_stale_retries=2) == [running]
        waiting = [t for t in study.trials if t.state == TrialState.WAITING]
        assert len(waiting) == (1 if expect_retry else 0)
        if expect_retry:
            _run_next(study)
    last = study.trials[-1]
    assert last.state == TrialState.FAIL and last.system_attrs[attrs.STALE_FAILURES] == 3
    assert "not retried: its lineage went silent 3 times (MAX_STALE_RETRIES=2)" in last.user_attrs["fail_message"]
    assert {lineage(t) for t in study.trials} == {first.number} and len(study.trials) == 1 + 4 + 2


def test_a_worker_back_after_an_outage_does_not_fail_a_reaped_trial_twice(store):
    """Regression (fault row 4): the worker whose store calls failed found its trial already reaped
    and crashed with UpdateFinishedTrialError instead of going on."""
    from search.study._retries import fail_and_retry

    study = _no_warm_start(store)
    trial = _run_next(study)
    assert _reap_for(study, 1.5) == [trial.number]
    fail_and_retry(study, trial.number, "store", "store outage: OperationalError")  # must not raise
    trials = study.trials
    assert trials[trial.number].user_attrs["fail_reason"] == "stale"  # the reaper's record stands
    assert len([t for t in trials if t.system_attrs.get("failed_trial") == trial.number]) == 1  # one retry


def test_unreachable_and_malformed_urls_fail_fast_and_never_print_the_password():
    for layout in ("", JOURNAL_PG_PREFIX):
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as err:
            open_storage(f"{layout}postgresql+psycopg2://worker:hunter2secret@127.0.0.1:1/studies")
        assert time.monotonic() - started < 15
        assert "127.0.0.1:1/studies" in str(err.value) and "hunter2secret" not in str(err.value)
    with pytest.raises(StorageConfigError, match="unsupported store URL"):
        open_storage("mongodb://somewhere/db")
    assert redact("postgresql://u:p4ss@h/d") == "postgresql://u:***@h/d"


def test_wrong_password_is_reported_without_it(postgres_url, tmp_path):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("DROP ROLE IF EXISTS cnn_pw_test"))
        conn.execute(sqlalchemy.text("CREATE ROLE cnn_pw_test LOGIN PASSWORD 'right-one'"))
        conn.commit()
    try:
        url = postgres_url.replace("postgres@", "cnn_pw_test:wrong-one@")
        for layout in ("", JOURNAL_PG_PREFIX):
            with pytest.raises(StorageUnavailableError) as err:
                open_storage(layout + url)
            assert "wrong-one" not in str(err.value) and "cnn_pw_test:***@" in str(err.value)
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("DROP ROLE IF EXISTS cnn_pw_test"))
            conn.commit()
        engine.dispose()


def test_an_empty_database_fails_closed(postgres_url):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    db = f"empty_{uuid.uuid4().hex[:6]}"
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    try:
        empty = postgres_url.rsplit("/", 1)[0] + f"/{db}"
        with pytest.raises(StorageUnavailableError, match="has no Optuna schema; create the study first"):
            open_storage(empty)
        with pytest.raises(StorageUnavailableError, match="has no journal table cnn_search_journal; create the study first"):
            open_storage(JOURNAL_PG_PREFIX + empty)
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {db} WITH (FORCE)"))
        engine.dispose()


def _journal_rows(url: str) -> list[tuple[int, str]]:
    from storage import close_storage

    storage = open_storage(url)
    try:
        with storage._backend._engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql("SELECT id, batch::text FROM cnn_search_journal ORDER BY id")]
    finally:
        close_storage(storage)


def _append_from_a_process(url: str, study_name: str, n: int) -> None:
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    for _ in range(n):
        study.tell(study.ask(), 1.0)


def test_journal_appends_from_many_processes_are_numbered_without_gaps_or_repeats(journal_pg_url):
    import multiprocessing as mp

    optuna.create_study(study_name="race", storage=open_storage(journal_pg_url, create_schema=True))
    procs = [mp.get_context("spawn").Process(target=_append_from_a_process, args=(journal_pg_url, "race", 15))
             for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    rows = _journal_rows(journal_pg_url)
    assert [r[0] for r in rows] == list(range(len(rows)))  # log numbers 0, 1, 2, ... as Optuna requires
    assert len({r[1] for r in rows}) == len(rows)  # one batch per append
    trials = optuna.load_study(study_name="race", storage=open_storage(journal_pg_url)).trials
    assert [t.number for t in trials] == list(range(90)) and all(t.state == TrialState.COMPLETE for t in trials)


def test_journal_append_that_committed_as_its_connection_died_is_not_written_twice(journal_pg_url, monkeypatch):
    from storage import _journal_pg

    study = optuna.create_study(study_name="landed", storage=open_storage(journal_pg_url, create_schema=True))
    before = len(_journal_rows(journal_pg_url))
    # The append commits, then the server ends the session before the client hears back.
    monkeypatch.setattr(_journal_pg, "_APPEND", _journal_pg._APPEND + "COMMIT; SELECT pg_terminate_backend(pg_backend_pid());")
    study.ask()  # one CREATE_TRIAL operation: must land exactly once
    monkeypatch.undo()
    assert len(_journal_rows(journal_pg_url)) == before + 1
    assert len(optuna.load_study(study_name="landed", storage=open_storage(journal_pg_url)).trials) == 1


def test_a_batch_appended_again_while_its_first_session_waits_on_the_lock_is_written_once(journal_pg_url):
    """Issue (faults a real store brings): the batch-id check ran outside the append lock, so a session
    the client had given up on (a client-side disconnect), still waiting on the lock on the server,
    wrote the operation a second time after the client's settle had found nothing and appended it."""
    import threading

    import sqlalchemy

    from storage import _journal_pg

    optuna.create_study(study_name="twice", storage=open_storage(journal_pg_url, create_schema=True))
    url = journal_pg_url.removeprefix(JOURNAL_PG_PREFIX)
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")  # the journal's schema (search_path)

    def batches() -> list[str]:  # read as rows: the log below is no operation Optuna could replay
        with engine.connect() as conn:
            return [b for (b,) in conn.exec_driver_sql("SELECT batch::text FROM cnn_search_journal ORDER BY id")]

    before = len(batches())
    params = {"batch": str(uuid.uuid4()), "logs": ['{"a log": "of this test"}']}
    try:
        with engine.connect() as holder:  # someone else's append holds the lock
            holder = holder.execution_options(isolation_level="READ COMMITTED")
            holder.exec_driver_sql("BEGIN")
            holder.exec_driver_sql("SELECT pg_advisory_xact_lock('cnn_search_journal'::regclass::oid::bigint)")
            first = threading.Thread(target=lambda: _run(engine, _journal_pg._APPEND, params))
            first.start()  # the session the client gave up on: it waits on the lock
            time.sleep(0.5)
            holder.exec_driver_sql("COMMIT")
            first.join(10)
        _run(engine, _journal_pg._APPEND, params)  # the client's settle: the same batch, again
        assert batches()[before:] == [params["batch"]]  # written once
    finally:
        engine.dispose()


def _run(engine, sql: str, params: dict) -> None:
    with engine.connect() as conn:
        conn.exec_driver_sql(sql, params)


def test_journal_append_cut_off_before_its_commit_is_written_once_on_a_new_connection(journal_pg_url):
    import threading

    import sqlalchemy

    storage = open_storage(journal_pg_url, create_schema=True)
    study = optuna.create_study(study_name="cut", storage=storage)
    before = len(_journal_rows(journal_pg_url))
    admin = sqlalchemy.create_engine(journal_pg_url[len(JOURNAL_PG_PREFIX):], isolation_level="AUTOCOMMIT")
    with admin.connect() as holder, admin.connect() as killer:
        # Hold the append lock so the worker's append waits inside its transaction, then end its session.
        holder.exec_driver_sql("BEGIN; SELECT pg_advisory_xact_lock('cnn_search_journal'::regclass::oid::bigint)")
        asker = threading.Thread(target=study.ask)
        asker.start()
        deadline = time.monotonic() + 30
        waiting = []
        while not waiting and time.monotonic() < deadline:
            waiting = killer.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                             "AND position('pg_advisory_xact_lock' in query) > 0").scalars().all()
            time.sleep(0.05)
        assert len(waiting) == 1, "the append never waited on the lock"
        killer.exec_driver_sql(f"SELECT pg_terminate_backend({waiting[0]})")
        holder.exec_driver_sql("COMMIT")
        asker.join(60)
    admin.dispose()
    assert not asker.is_alive()
    assert len(_journal_rows(journal_pg_url)) == before + 1
    assert len(optuna.load_study(study_name="cut", storage=open_storage(journal_pg_url)).trials) == 1


def test_journal_store_replaces_a_connection_a_restart_broke_without_an_error(journal_pg_url):
    import sqlalchemy

    storage = open_storage(journal_pg_url, create_schema=True)
    study = optuna.create_study(study_name="stale", storage=storage)
    study.tell(study.ask(), 1.0)
    admin = sqlalchemy.create_engine(journal_pg_url[len(JOURNAL_PG_PREFIX):], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # what a server restart does to every session
        ended = conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE application_name = 'cnn-search' AND pid <> pg_backend_pid()").all()
    admin.dispose()
    assert ended
    assert len(study.trials) == 1  # a read on a fresh connection, no error to the caller
    study.tell(study.ask(), 2.0)  # appends too
    assert [t.value for t in optuna.load_study(study_name="stale", storage=open_storage(journal_pg_url)).trials] == [1.0, 2.0]


def test_journal_read_after_an_append_waits_for_the_store_instead_of_failing_a_written_operation(
        journal_pg_url, monkeypatch):
    import sqlalchemy


    study = optuna.create_study(study_name="reread", storage=open_storage(journal_pg_url, create_schema=True))
    backend = study._storage._backend
    real_call, failures = backend._call, []

    def flaky(work, *, retry_stale):  # the store goes away for two reads right after the append
        if backend._appended_unread and len(failures) < 2:
            failures.append(1)
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real_call(work, retry_stale=retry_stale)

    monkeypatch.setattr(backend, "_call", flaky)
    trial = study.ask()  # must neither raise nor, retried by its caller, make a second trial
    assert len(failures) == 2 and trial.number == 0
    assert len(optuna.load_study(study_name="reread", storage=open_storage(journal_pg_url)).trials) == 1


def test_password_file_fills_the_url(tmp_path):
    from search.settings import Settings

    (tmp_path / "pw").write_text("s3cr/t@x\n")
    url = "postgresql+psycopg2://optuna@db:5432/optuna"
    assert resolve_url(url, password_file=tmp_path / "pw") == "postgresql+psycopg2://optuna:s3cr%2Ft%40x@db:5432/optuna"
    settings = Settings.from_env({"STORAGE": url, "STORAGE_PASSWORD_FILE": str(tmp_path / "pw")})
    assert settings.store_url() == "postgresql+psycopg2://optuna:s3cr%2Ft%40x@db:5432/optuna"
    assert "s3cr" not in str(settings.redacted())  # what `python -m search config` prints
    with pytest.raises(StorageConfigError, match="cannot read it"):
        resolve_url(url, password_file=tmp_path / "missing")


@pytest.mark.parametrize("bad", ["../outside", "a/../../outside", "/etc/passwd"])
def test_artifact_ids_that_escape_the_store_are_refused(tmp_path, bad):
    from storage import artifact_store

    (tmp_path / "outside").write_text("secret")
    store = artifact_store(tmp_path / "artifacts")
    with pytest.raises(ValueError, match="Invalid artifact_id"):
        store.open_reader(bad)
    with pytest.raises(ValueError, match="Invalid artifact_id"):
        store.write(bad, io.BytesIO(b"overwrite"))
    assert (tmp_path / "outside").read_text() == "secret"


@pytest.mark.parametrize("kind,key", [("base", "../x"), ("base", "a/b"), ("..", "x"), ("base", ""), ("/etc", "x")])
def test_cache_keys_that_escape_the_cache_are_refused(tmp_path, kind, key):
    from storage import cache_path

    with pytest.raises(ValueError, match="is not allowed"):
        cache_path(kind, key, root=tmp_path)


def test_a_report_with_a_hostile_artifact_id_renders_without_reading_it(tmp_path, monkeypatch, caplog):
    from dashboards.report import _evaluation_images

    (tmp_path / "secret.json").write_text('{"worst_misclassified": [{"png": "leaked"}]}')
    assert _evaluation_images({"evaluation_artifact_id": "../secret.json"}, tmp_path / "artifacts") == []
    assert "Invalid artifact_id" in caplog.text


def test_every_postgresql_connection_has_keepalives_and_a_user_timeout(postgres_url, journal_pg_url):
    """Issue (faults): the store connections set no TCP keepalive, so a database node lost without a
    RST froze a worker, its heartbeat and its reaper for 15 minutes to about 2 hours."""
    from storage._journal_pg import PostgresJournalBackend
    from storage._rdb import open_rdb

    def dsn(engine) -> dict:
        with engine.connect() as conn:
            return conn.connection.dbapi_connection.get_dsn_parameters()

    journal = open_storage(journal_pg_url, create_schema=True)  # a JournalStorage over our backend
    rdb = open_rdb(postgres_url, create_schema=True)
    assert isinstance(journal._backend, PostgresJournalBackend)
    from storage.proxy import open_backend

    proxied = open_backend(postgres_url, threads=2)  # the storage proxy's pool (Optuna's cache over RDB)
    for params in (dsn(rdb.engine), dsn(journal._backend._engine), dsn(proxied._backend.engine)):
        assert (params["keepalives"], params["keepalives_idle"], params["tcp_user_timeout"]) == ("1", "30", "60000")
    close_storage(journal)
    proxied._backend.engine.dispose()
