"""make bench-outage: PostgreSQL stopped under a running study, for 0.5x, 1x, 2x and 5x the grace
period, twice a run (issue: faults a real store brings; a managed database fails over in 30-120 s).

For each outage length, a fresh study (`simple_cnn`, smoke profile) runs as a user runs it,
`python -m search run simple_cnn --workers W` on the PostgreSQL journal layout (a schema of its own on
the local server, `--store`), with GRACE_PERIOD and HEARTBEAT_INTERVAL as given. Once trials train,
the server is stopped for the length, started, given a grace period to settle, stopped again, then
left up until the run ends. Read from the store afterwards, per length: trials reaped as silent
(`stale`) or failed for the store (`store`), retries queued, lineages given up (no trial of theirs
finished), whether the budget was met, the runner's exit code and the wall time.

It stops and starts the machine's PostgreSQL cluster (`pg_ctlcluster`, as root): run nothing else
against it meanwhile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.machine import publish, quiet_tensorflow

DEFAULT_STORE = "journal+postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _pg(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True, timeout=120)


def _wait_up(url: str, timeout: float = 120) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url.removeprefix("journal+"), poolclass=sqlalchemy.pool.NullPool)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect():
                    return
            except sqlalchemy.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        engine.dispose()


def _trials(url: str, name: str) -> list:
    import optuna

    from storage import close_storage, open_storage

    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=True)
    finally:
        close_storage(storage)


def _training(url: str, name: str) -> bool:
    from optuna.trial import TrialState

    try:
        return any(t.state == TrialState.RUNNING and t.intermediate_values for t in _trials(url, name))
    except Exception:  # not created yet
        return False


def _outcome(trials: list, budget: int) -> dict:
    from optuna.trial import TrialState

    from search.study._retries import lineage
    from storage import attrs

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    lineages: dict[int, list] = {}
    for t in trials:
        lineages.setdefault(lineage(t), []).append(t)
    reasons = [t.user_attrs.get(attrs.FAIL_REASON) for t in trials if t.state == TrialState.FAIL]
    return {"reaped": reasons.count("stale"), "store": reasons.count("store"),
            "retries": sum("failed_trial" in t.system_attrs for t in trials),
            "given_up": sum(not any(t.state in finished for t in chain) for chain in lineages.values()),
            "finished": sum(any(t.state in finished for t in chain) for chain in lineages.values()),
            "budget": budget}


def _one(args: argparse.Namespace, factor: float, env: dict[str, str]) -> dict:
    import sqlalchemy

    from storage import with_search_path

    schema = f"bench_outage_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(args.store.removeprefix("journal+"), isolation_level="AUTOCOMMIT",
                                      poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = with_search_path(args.store, schema)
    name, outage = "simple_cnn", factor * args.grace
    log = open(Path(args.workdir) / f"run-{factor:g}x.log", "w")
    started = time.monotonic()
    run = subprocess.Popen([sys.executable, "-m", "search", "run", name, "--workers", str(args.workers),
                            "--profile", "smoke", "--trials", str(args.trials), "--epochs", str(args.epochs),
                            "--storage", url], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not _training(url, name):
            if run.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the study did not start training; see {log.name}")
            time.sleep(1)
        for n in range(2):
            _pg("stop")
            time.sleep(outage)
            _pg("start")
            _wait_up(url)
            if n == 0:
                time.sleep(args.grace)  # the store up for a grace period between the two outages
        code = run.wait(timeout=args.timeout)
    finally:
        if run.poll() is None:
            run.kill()
        _wait_up(url)
    wall = time.monotonic() - started
    row = {"factor": factor, "outage_s": outage, "exit": code, "wall_s": wall, **_outcome(_trials(url, name),
                                                                                         args.trials)}
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outage")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--store", default=DEFAULT_STORE, help="a PostgreSQL journal store on this machine's cluster")
    parser.add_argument("--grace", type=float, default=12.0, help="GRACE_PERIOD, seconds")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="HEARTBEAT_INTERVAL, seconds")
    parser.add_argument("--factors", default="0.5,1,2,5", help="outage lengths, in grace periods")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--workdir", default="artifacts/bench-outage")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not Path("/etc/postgresql").is_dir():
        raise SystemExit("bench-outage stops and starts this machine's PostgreSQL cluster: run it as root on a "
                         "machine whose cluster pg_ctlcluster manages (/etc/postgresql)")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATA_DIR": str(Path(args.data_dir).resolve()), "ARTIFACTS_DIR": str(work / "artifacts"),
           "GRACE_PERIOD": str(args.grace), "HEARTBEAT_INTERVAL": str(args.heartbeat),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rows = [_one(args, float(f), env) for f in args.factors.split(",")]
    lines = [f"simple_cnn, smoke profile, {args.trials} trials of at most {args.epochs} epochs, {args.workers} workers "
             f"(python -m search run), PostgreSQL journal layout; GRACE_PERIOD {args.grace:g} s, HEARTBEAT_INTERVAL "
             f"{args.heartbeat:g} s; PostgreSQL stopped twice a run for each length, a grace period apart:",
             "  outage        reaped (stale)  failed (store)  retries  lineages given up  budget met  exit  wall"]
    for r in rows:
        lines.append(f"  {r['outage_s']:5.0f} s ({r['factor']:g}x)  {r['reaped']:14d}  {r['store']:14d}  "
                     f"{r['retries']:7d}  {r['given_up']:17d}  {r['finished']:>4d}/{r['budget']:<5d}  "
                     f"{r['exit']:4d}  {r['wall_s']:.0f} s")
    worst = max(rows, key=lambda r: (r["reaped"], r["given_up"]))
    lines.append(f"  summary: {sum(r['reaped'] for r in rows)} trials reaped, {sum(r['given_up'] for r in rows)} "
                 f"lineages given up, budget met in {sum(r['finished'] >= r['budget'] for r in rows)} of {len(rows)} "
                 f"runs (longest outage {max(r['outage_s'] for r in rows):.0f} s; worst row {worst['outage_s']:.0f} s)")
    publish(args.output, "bench-outage: PostgreSQL stopped under a running study", "tensorflow", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
