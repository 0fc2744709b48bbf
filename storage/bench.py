"""make bench-storage: the store under load, on the local PostgreSQL, in both of its layouts.

Layouts: `rdb` is Optuna's RDBStorage (postgresql+psycopg2://...); `journal` is Optuna's
JournalStorage with its log in one PostgreSQL table (journal+postgresql+psycopg2://...), run in a
schema of its own that is dropped afterwards. For each:
1. p50/p95 latency of study.ask() and study.tell() from 8 concurrent worker processes, with
   1,000 and with 10,000 trials already in the study (trivial objective; RandomSampler, so the
   figure is the store's and not a sampler's);
   plus how long a fresh worker takes to open the store and load the study;
2. throughput (trials/s) with 1, 2, 4 and 8 workers on a cheap CPU-bound objective (~50 ms of
   arithmetic a trial), and scaling against linear.
Appends the figures with the machine to BENCHMARKS.md. Studies it creates are deleted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
import uuid

import optuna

from data.machine import append_benchmark, machine_description
from storage import open_storage, redact
from storage._journal_pg import journal_in_scratch_schema

DEFAULT_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _latency_worker(url: str, name: str, cycles: int, seed: int, out: mp.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    t_open = time.perf_counter()
    study = optuna.load_study(study_name=name, storage=open_storage(url),
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    opened = time.perf_counter() - t_open
    asks, tells = [], []
    for _ in range(cycles):
        t0 = time.perf_counter()
        trial = study.ask()
        x = trial.suggest_float("x", -10, 10)
        t1 = time.perf_counter()
        study.tell(trial, x * x)
        t2 = time.perf_counter()
        asks.append(t1 - t0)
        tells.append(t2 - t1)
    out.put((asks, tells, opened))


def _prefill(url: str, name: str, n: int) -> None:
    study = optuna.create_study(study_name=name, storage=open_storage(url, create_schema=True))
    dist = {"x": optuna.distributions.FloatDistribution(-10, 10)}
    batch = [optuna.trial.create_trial(params={"x": float(i % 20 - 10)}, distributions=dist, value=float(i))
             for i in range(n)]
    study.add_trials(batch)


def latency(url: str, n_trials: int, workers: int, cycles: int) -> tuple[list[float], list[float], list[float]]:
    name = f"bench_latency_{uuid.uuid4().hex[:8]}"
    _prefill(url, name, n_trials)
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_latency_worker, args=(url, name, cycles, i, out)) for i in range(workers)]
    for p in procs:
        p.start()
    asks, tells, opens = [], [], []
    for _ in procs:
        a, t, o = out.get()
        asks += a
        tells += t
        opens.append(o)
    for p in procs:
        p.join()
    optuna.delete_study(study_name=name, storage=open_storage(url))
    return asks, tells, opens


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
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    optuna.delete_study(study_name=name, storage=open_storage(url))
    return workers * trials_per_worker / seconds


def measure(url: str, layout: str, cycles: int, trials_per_worker: int) -> list[str]:
    lines = []
    for n in (1_000, 10_000):
        asks, tells, opens = latency(url, n, 8, cycles)
        lines.append(f"{layout:>7}: {n:>6,} trials, 8 workers x {cycles} cycles: ask p50 {1000 * statistics.median(asks):.1f} ms, "
                     f"p95 {1000 * _percentile(asks, 0.95):.1f} ms; tell p50 {1000 * statistics.median(tells):.1f} ms, "
                     f"p95 {1000 * _percentile(tells, 0.95):.1f} ms; a worker opens the store and loads the study in "
                     f"{1000 * statistics.median(opens):,.0f} ms (median of 8)")
        print(lines[-1], flush=True)
    base = None
    for workers in (1, 2, 4, 8):
        rate = throughput(url, workers, trials_per_worker)
        base = base or rate
        lines.append(f"{layout:>7}: throughput, {workers} worker(s), ~50 ms CPU-bound objective: {rate:.1f} trials/s, "
                     f"{rate / (base * workers):.2f}x of linear")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.bench")
    parser.add_argument("--storage", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL),
                        help="a postgresql+psycopg2:// URL; the journal layout runs on the same database")
    parser.add_argument("--layout", choices=("rdb", "journal", "both"), default="both")
    parser.add_argument("--cycles", type=int, default=25, help="ask/tell cycles per worker")
    parser.add_argument("--trials-per-worker", type=int, default=40)
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lines = [f"database: {redact(args.storage)}",
             f"goals: ask p95 <= 100 ms and tell p95 <= 50 ms at 10,000 trials; >= 0.9x of linear up to "
             f"{os.cpu_count()} cores"]
    print("\n".join(lines), flush=True)
    if args.layout in ("rdb", "both"):
        lines += measure(args.storage, "rdb", args.cycles, args.trials_per_worker)
    if args.layout in ("journal", "both"):
        with journal_in_scratch_schema(args.storage) as url:
            lines += measure(url, "journal", args.cycles, args.trials_per_worker)
    append_benchmark(args.output, "bench-storage: PostgreSQL under concurrent workers", machine_description("n/a"), lines)
    print(f"appended to {args.output}")  # lines were printed as they were measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
