"""make bench-storage: the store under load, on the local PostgreSQL, in both of its layouts.

Layouts: `rdb` is Optuna's RDBStorage (postgresql+psycopg2://...), `journal` Optuna's JournalStorage
with its log in one PostgreSQL table (journal+postgresql+psycopg2://...). Parts (`--parts`, all by default):
- classic: ask/tell p50/p95 from 8 concurrent workers at 1,000 and 10,000 trials (trivial objective,
  RandomSampler: the figure is the store's, not a sampler's); throughput with 1, 2, 4, 8 workers on a
  ~50 ms CPU-bound objective, against linear.
- open: a fresh worker process at each of `--sizes` trials: seconds to open the store, load the
  study and ask once, and its peak resident memory; journal from the snapshot and by a full replay.
- fleet: ask/tell p50/p95 with `--workers` (32) processes, all open before the first ask, on the
  first size's study; the sessions they held (pg_stat_activity).
open and fleet fill a fresh database per layout (dropped afterwards) with trials as workers write them
(_write_trial). Appends the figures with the machine to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.trial import TrialState

from benchmarks.machine import publish
from storage import JOURNAL_PG_PREFIX, close_storage, open_storage, redact
from storage._journal_pg import SNAPSHOT_TABLE, TABLE, PostgresJournalBackend, journal_in_scratch_schema
from storage._rdb import APPLICATION_NAME

DEFAULT_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
T = TypeVar("T")
PARTS = ("classic", "open", "fleet")


def _said(lines: list[str]) -> list[str]:
    print("\n".join(lines), flush=True)  # as measured; publish() prints them all again at the end
    return lines


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _ms(values: list[float]) -> str:
    return f"p50 {1000 * statistics.median(values):.1f} ms, p95 {1000 * _percentile(values, 0.95):.1f} ms"


def _suggest_x(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -10, 10) ** 2


def _suggest_like_the_fill(trial: optuna.Trial) -> float:
    """The filled trials' parameters. A parameter no early trial has would cost the journal a scan of
    every trial on each suggest, in every worker (Optuna checks it against the first trial that has it)."""
    value = 0.0
    for name, d in PARAMS.items():
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            trial.suggest_categorical(name, d.choices)
        elif isinstance(d, optuna.distributions.IntDistribution):
            trial.suggest_int(name, d.low, d.high, log=d.log)
        else:
            value += trial.suggest_float(name, d.low, d.high, log=d.log)
    return value


def _cycles(study: optuna.Study, cycles: int, suggest: Callable[[optuna.Trial], float]) -> tuple[list, list]:
    asks, tells = [], []
    for _ in range(cycles):
        t0 = time.perf_counter()
        trial = study.ask()
        value = suggest(trial)
        t1 = time.perf_counter()
        study.tell(trial, value)
        asks.append(t1 - t0)
        tells.append(time.perf_counter() - t1)
    return asks, tells


def _latency_worker(url: str, name: str, cycles: int, seed: int, out: mp.Queue, barrier: Any = None) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    t_open = time.perf_counter()
    study = optuna.load_study(study_name=name, storage=open_storage(url),
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    suggest = _suggest_x if barrier is None else _suggest_like_the_fill  # classic's prefill has x
    if barrier is not None:  # fleet: the first ask counts as opening (RDB: it reads every trial)
        study.tell(study.ask(), 0.0)
    opened = time.perf_counter() - t_open
    if barrier is not None:
        barrier.wait()  # measure ask/tell with every worker open, not while the others replay
    out.put((*_cycles(study, cycles, suggest), opened))


def _run_workers(url: str, name: str, workers: int, cycles: int, *, together: bool) -> tuple[list, list, list]:
    out: mp.Queue = mp.Queue()
    barrier = mp.Barrier(workers) if together else None
    procs = [mp.Process(target=_latency_worker, args=(url, name, cycles, i, out, barrier)) for i in range(workers)]
    results = _start_join(procs, lambda: [out.get() for _ in procs])[1]
    return ([x for r in results for x in r[0]], [x for r in results for x in r[1]], [r[2] for r in results])


def _start_join(procs: list[mp.Process], collect: Callable[[], T]) -> tuple[float, T]:
    """Start procs, collect what they send, wait for them; the seconds all that took, and what came."""
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    collected = collect()
    for p in procs:
        p.join()
    return time.perf_counter() - t0, collected


def _prefill(url: str, name: str, n: int) -> None:
    study = optuna.create_study(study_name=name, storage=open_storage(url, create_schema=True))
    dist = {"x": optuna.distributions.FloatDistribution(-10, 10)}
    study.add_trials([optuna.trial.create_trial(params={"x": float(i % 20 - 10)}, distributions=dist, value=float(i))
                      for i in range(n)])


def latency(url: str, n_trials: int, workers: int, cycles: int) -> tuple[list[float], list[float], list[float]]:
    name = f"bench_latency_{uuid.uuid4().hex[:8]}"
    _prefill(url, name, n_trials)
    result = _run_workers(url, name, workers, cycles, together=False)
    optuna.delete_study(study_name=name, storage=open_storage(url))
    return result


def _cpu_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    deadline = time.process_time() + 0.05
    acc = 0.0
    while time.process_time() < deadline:
        acc += sum(i * i for i in range(500))
    return x * x + acc * 0


def _throughput_worker(url: str, name: str, n: int, seed: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=open_storage(url),
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(_cpu_objective, n_trials=n)


def throughput(url: str, workers: int, trials_per_worker: int) -> float:
    name = f"bench_tput_{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(url, create_schema=True))
    procs = [mp.Process(target=_throughput_worker, args=(url, name, trials_per_worker, i)) for i in range(workers)]
    seconds = _start_join(procs, lambda: None)[0]
    optuna.delete_study(study_name=name, storage=open_storage(url))
    return workers * trials_per_worker / seconds


def classic(url: str, layout: str, cycles: int, trials_per_worker: int) -> list[str]:
    lines = []
    for n in (1_000, 10_000):
        asks, tells, opens = latency(url, n, 8, cycles)
        lines += _said([f"{layout:>7}: {n:>6,} trials, 8 workers x {cycles} cycles: ask {_ms(asks)}; tell {_ms(tells)}; "
                        f"a worker opens the store and loads the study in {1000 * statistics.median(opens):,.0f} ms "
                        "(median of 8)"])
    base = None
    for workers in (1, 2, 4, 8):
        rate = throughput(url, workers, trials_per_worker)
        base = base or rate
        lines += _said([f"{layout:>7}: throughput, {workers} worker(s), ~50 ms CPU-bound objective: {rate:.1f} "
                        f"trials/s, {rate / (base * workers):.2f}x of linear"])
    return lines


# --- open and fleet: a fresh database per layout, filled with trials as workers write them -------------

PARAMS = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
          "depth": optuna.distributions.IntDistribution(1, 8),
          "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"]),
          "dropout": optuna.distributions.FloatDistribution(0.0, 0.5)}
EPOCHS, HEARTBEATS = 5, 2
TRIAL_SHAPE = (f"each trial as a worker writes it: {len(PARAMS)} params, {EPOCHS} epoch reports, 4 user attributes, "
               f"{HEARTBEATS} heartbeats, a value ({2 + len(PARAMS) + EPOCHS + 4 + HEARTBEATS} journal logs)")


def _write_trial(storage: optuna.storages.BaseStorage, study_id: int, rng: random.Random) -> None:
    """One finished trial through Optuna's storage API, operation by operation as a worker writes it."""
    trial_id = storage.create_new_trial(study_id)
    for name, dist in PARAMS.items():
        value = rng.choice(dist.choices) if isinstance(dist, optuna.distributions.CategoricalDistribution) else (
            rng.randint(dist.low, dist.high) if isinstance(dist.low, int) else rng.uniform(dist.low, dist.high))
        storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
    for epoch in range(EPOCHS):
        storage.set_trial_intermediate_value(trial_id, epoch, rng.random())
        if epoch < HEARTBEATS:
            storage.set_trial_system_attr(trial_id, "cnn_search:heartbeat", time.time())
    for key in ("worker", "worker_rss_mib", "epochs_run", "train_seconds"):
        storage.set_trial_user_attr(trial_id, key, rng.random())
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [rng.random()])


class _JournalFill(BaseJournalBackend):
    """Fills a journal store fast: Optuna's JournalStorage writes each trial operation by operation,
    as workers do, into this backend's buffer, which goes to PostgreSQL in large batches. Reads come
    from the buffer, or from the table while the buffer is empty (picking up what probes added)."""

    def __init__(self, url: str, name: str) -> None:
        self.target = PostgresJournalBackend(url[len(JOURNAL_PG_PREFIX):], create_schema=True)
        self.buffer: list[dict[str, Any]] = []
        self.base = 0  # the number of logs in the table, as far as this fill knows
        self.storage = JournalStorage(self)
        self.study_id = self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
        self._flush()

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        if self.buffer:
            return self.buffer[log_number_from - self.base:]
        logs = list(self.target.read_logs(log_number_from))
        self.base = log_number_from + len(logs)
        return logs

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.buffer.extend(logs)

    def _flush(self) -> None:
        if self.buffer:
            self.target.append_logs(self.buffer)
            self.base, self.buffer = self.base + len(self.buffer), []

    def fill_to(self, n: int, rng: random.Random) -> None:
        have = len(self.storage.get_all_trials(self.study_id, deepcopy=False))  # with what probes added
        for i in range(have, n):
            _write_trial(self.storage, self.study_id, rng)
            if i % 2_000 == 1_999:
                self._flush()
        self._flush()

    def close(self) -> None:
        self.target.close()


class _RdbFill:
    """One trial written by Optuna's RDB storage, then copied row for row, child tables and all."""

    CHILDREN = ("trial_params", "trial_values", "trial_intermediate_values", "trial_user_attributes",
                "trial_system_attributes")

    def __init__(self, url: str, name: str) -> None:
        storage = open_storage(url, create_schema=True)
        self.study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
        _write_trial(storage, self.study_id, random.Random(0))
        close_storage(storage)
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def fill_to(self, n: int, rng: random.Random) -> None:
        with self.engine.begin() as conn:
            template, have, top = conn.exec_driver_sql(
                "SELECT MIN(trial_id), COUNT(*), MAX(trial_id) FROM trials WHERE study_id = %(s)s", {"s": self.study_id}).one()
            conn.exec_driver_sql(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                "SELECT %(have)s + g, study_id, state, datetime_start, datetime_complete "
                "FROM trials, generate_series(0, %(k)s - 1) g WHERE trial_id = %(t)s",
                {"have": have, "k": n - have, "t": template})
            inspector = sqlalchemy.inspect(conn)
            for table in self.CHILDREN:
                skip = {"trial_id", *inspector.get_pk_constraint(table)["constrained_columns"]}
                cols = [c["name"] for c in inspector.get_columns(table) if c["name"] not in skip]
                conn.exec_driver_sql(
                    f"INSERT INTO {table} (trial_id, {', '.join(cols)}) SELECT n.trial_id, {', '.join('c.' + c for c in cols)} "
                    f"FROM {table} c, trials n WHERE c.trial_id = %(t)s AND n.trial_id > %(top)s AND n.study_id = %(s)s",
                    {"t": template, "top": top, "s": self.study_id})

    def close(self) -> None:
        self.engine.dispose()


@contextlib.contextmanager
def _scratch_database(url: str) -> Iterator[str]:
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    db = f"bench_storage_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {db}")
    try:
        yield sqlalchemy.engine.make_url(url).set(database=db).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {db} WITH (FORCE)")
        admin.dispose()


def _max_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM, not getrusage's ru_maxrss: the latter
    keeps the parent's peak across fork + exec, so a probe started by this (large) benchmark would
    report the benchmark's memory (a child of a 500 MB parent read 511 MB, VmHWM 11 MB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _probe(mode: str, url: str, name: str) -> None:
    """In a fresh interpreter: open the store, load the study, ask once. Prints JSON."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rss_base, t0 = _max_rss_mb(), time.perf_counter()
    if mode == "journal-replay":  # open_storage's journal store, with snapshots off
        backend = PostgresJournalBackend(url[len(JOURNAL_PG_PREFIX):], snapshots=False, application_name=APPLICATION_NAME)
        storage = JournalStorage(backend)
    else:
        storage = open_storage(url)
    t1 = time.perf_counter()
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    t2 = time.perf_counter()
    study.ask()
    t3 = time.perf_counter()
    print(json.dumps({"open": t1 - t0, "load": t2 - t1, "ask": t3 - t2, "total": t3 - t0, "rss_base": rss_base,
                      "rss": _max_rss_mb()}))


def probe(mode: str, url: str, name: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.storage", "--probe", mode, url, name],
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _watch_sessions(admin_url: str, database: str) -> Iterator[list[int]]:
    """Yields [peak sessions, peak of them waiting for an advisory lock (the journal's append lock)]
    on database, sampled every 0.2 s from another database."""
    peak, stop = [0, 0], threading.Event()
    engine = sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
    query = ("SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'advisory') "
             "FROM pg_stat_activity WHERE datname = %(d)s")

    def watch() -> None:
        with engine.connect() as conn:
            while not stop.wait(0.2):
                sample = conn.exec_driver_sql(query, {"d": database}).one()
                peak[:] = [max(peak[0], sample[0]), max(peak[1], sample[1])]

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        engine.dispose()


def _megabytes(url: str, tables: tuple[str, ...]) -> float:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        size = conn.exec_driver_sql("SELECT sum(COALESCE(pg_total_relation_size(to_regclass(t)), 0)) "
                                    "FROM unnest(%(t)s) AS t", {"t": list(tables)}).scalar_one()
    engine.dispose()
    return float(size) / 2**20


def _open_line(layout: str, n: int, label: str, runs: list[dict[str, float]]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    samples = ", ".join(f"{r['total']:.2f}" for r in runs)
    return (f"{layout:>7}: {n:>6,} trials, {label}: open + load + first ask {med('total'):.2f} s ({samples}; "
            f"open {med('open'):.2f}, load {med('load'):.2f}, ask {med('ask'):.2f}), peak RSS {med('rss'):,.0f} MB "
            f"(after imports {med('rss_base'):,.0f} MB)")


def _measure_open(layout: str, url: str, name: str, n: int, reps: int) -> list[str]:
    plain = url[len(JOURNAL_PG_PREFIX):] if layout == "journal" else url
    if layout == "rdb":
        runs = [probe("rdb", url, name) for _ in range(reps)]
        return [f"    rdb: {n:>6,} trials: trial tables {_megabytes(plain, ('trials', *_RdbFill.CHILDREN)):,.0f} MB",
                _open_line(layout, n, "RDB", runs)]
    first = probe("journal", url, name)  # creates trial n, a multiple of 100: saves the snapshot
    runs: dict[str, list[dict[str, float]]] = {"journal-replay": [], "journal": []}
    for mode in ["journal-replay", "journal"] * reps:  # alternated, so both see the same load
        runs[mode].append(probe(mode, url, name))
    replay, snap = (statistics.median(r["total"] for r in runs[m]) for m in ("journal-replay", "journal"))
    rss_replay, rss_snap = (statistics.median(r["rss"] for r in runs[m]) for m in ("journal-replay", "journal"))
    return [f"journal: {n:>6,} trials: log {_megabytes(plain, (TABLE,)):,.0f} MB, snapshot "
             f"{_megabytes(plain, (SNAPSHOT_TABLE,)):,.1f} MB; the worker that created trial {n:,} saved the snapshot: "
             f"that ask took {first['ask']:.2f} s",
             _open_line(layout, n, "full replay", runs["journal-replay"]),
             _open_line(layout, n, "from the snapshot", runs["journal"]),
             f"journal: {n:>6,} trials: the snapshot opens {replay / snap:.1f}x faster than a full replay, "
             f"with {rss_replay / rss_snap:.1f}x less peak RSS ({rss_replay - rss_snap:,.0f} MB less)"]


def _fleet(layout: str, base_url: str, url: str, name: str, workers: int, cycles: int) -> list[str]:
    database = sqlalchemy.engine.make_url(url[len(JOURNAL_PG_PREFIX):] if layout == "journal" else url).database
    with _watch_sessions(base_url, database) as peak:
        asks, tells, opens = _run_workers(url, name, workers, cycles, together=True)
    return [f"{layout:>7}: {workers} workers x {cycles} cycles, all open first, suggesting the fill's {len(PARAMS)} "
            f"params: ask + suggest {_ms(asks)}; tell {_ms(tells)}; "
            f"opening the store, loading the study and a first ask/tell, all at once: {statistics.median(opens):.1f} s "
            f"(median), {max(opens):.1f} s (slowest); "
            f"peak sessions on the database {peak[0]}, {peak[1]} of them waiting for an advisory lock"]


def scale(base_url: str, layout: str, parts: set[str], sizes: list[int], reps: int, workers: int, cycles: int) -> list[str]:
    lines, rng, name = [], random.Random(0), "bench_scale"
    with _scratch_database(base_url) as db_url:
        url = JOURNAL_PG_PREFIX + db_url if layout == "journal" else db_url
        t0 = time.perf_counter()
        filler = _JournalFill(url, name) if layout == "journal" else _RdbFill(url, name)
        for i, n in enumerate(sizes):
            t_fill = time.perf_counter()
            filler.fill_to(n, rng)
            filler.close()  # no connection of this process's across the forks below (reopened on use)
            lines += _said([f"{layout:>7}: filled to {n:,} trials in {time.perf_counter() - t_fill:.0f} s"])
            if "open" in parts:
                lines += _said(_measure_open(layout, url, name, n, reps))
            if "fleet" in parts and i == 0:
                lines += _said(_fleet(layout, base_url, url, name, workers, cycles))
        lines.append(f"{layout:>7}: open/fleet part took {time.perf_counter() - t0:.0f} s in all")
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storage")
    parser.add_argument("--storage", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL),
                        help="a postgresql+psycopg2:// URL; the journal layout runs on the same server")
    parser.add_argument("--layout", choices=("rdb", "journal", "both"), default="both")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--cycles", type=int, default=25, help="classic: ask/tell cycles per worker")
    parser.add_argument("--trials-per-worker", type=int, default=40, help="classic: throughput trials per worker")
    parser.add_argument("--sizes", default="10000,50000", help="open: study sizes, in trials (fleet runs on the first)")
    parser.add_argument("--reps", type=int, default=2, help="open: fresh workers per size and mode")
    parser.add_argument("--workers", type=int, default=32, help="fleet: worker processes")
    parser.add_argument("--fleet-cycles", type=int, default=20, help="fleet: ask/tell cycles per worker")
    parser.add_argument("--output", default="BENCHMARKS.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--probe"]:
        _probe(*sys.argv[2:5])
        return 0
    parser = _parser()
    args = parser.parse_args(argv)
    parts, sizes = set(args.parts.split(",")), [int(s) for s in args.sizes.split(",")]
    if not parts <= set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lines = _said([f"database: {redact(args.storage)}; parts: {', '.join(p for p in PARTS if p in parts)}",
                   "goals: ask p95 <= 100 ms and tell p95 <= 50 ms at 10,000 trials; >= 0.9x of linear up to "
                   f"{os.cpu_count()} cores", f"open/fleet: {TRIAL_SHAPE}; RandomSampler; a fresh database per layout"])
    t0 = time.perf_counter()
    for layout in ["rdb", "journal"] if args.layout == "both" else [args.layout]:
        if "classic" in parts:
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(journal_in_scratch_schema(args.storage)) if layout == "journal" else args.storage
                lines += classic(url, layout, args.cycles, args.trials_per_worker)
        if parts & {"open", "fleet"}:
            lines += scale(args.storage, layout, parts, sizes, args.reps, args.workers, args.fleet_cycles)
    lines.append(f"whole run: {time.perf_counter() - t0:.0f} s")
    publish(args.output, "bench-storage: PostgreSQL under concurrent workers", "n/a", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
