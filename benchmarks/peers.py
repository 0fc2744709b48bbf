"""make bench-peers: this service against a plain Optuna script and Keras Tuner's Hyperband, side by side.

One machine, one method at a time, the same data and the same wall-clock budget for each (`--budget-s`,
from the moment its process starts, start-up included), over several seeds (`--seeds`), on
(a) fc_head with the quick profile on CIFAR-10: dense heads searched on cached conv-base features;
(b) simple_cnn with the quick profile on full CIFAR-10: whole small CNNs on 45,000 images.
Methods (`--methods`; benchmarks/peer_methods.py has the two peers):
- service: `python -m search run NAME --workers 2 --profile quick`, as a user runs it (a scratch
  journal store and studies folder under `--workdir`), stopped with SIGTERM at the budget;
- service-data (not run unless named): the same, its study file with `budget: {fidelity: data}`
  (Hyperband's first rungs train on 1/9 and 1/3 of the training images; search.spec._fidelity);
- optuna: one process, TPESampler(multivariate=True) + HyperbandPruner + Keras EarlyStopping +
  KerasPruningCallback;
- keras-tuner: keras_tuner.Hyperband, max_epochs the same cap, its default factor.

Kept equal: the study file (space, epochs cap, early-stopping patience), the validation split (the
study's seeded, stratified 10%), the model and optimiser for the same knob values, and the trial budget
(unbounded: the wall clock ends every run). The study's warm start (the document's best settings, run
first) is off by default, since Keras Tuner cannot enqueue a configuration; `--warm-start` gives it to
the service and to plain Optuna (`enqueue_trial`). Each method is otherwise at its documented defaults,
threads included: the service's runner gives each of its `--workers` processes cores // workers
threads, each peer is one process on every core.

The feature cache is the service's and is built once, untimed, before any run (with the data cache):
a base trained for fc_head's quick profile, then its features of the study's split. Every method reads
the same cached features and trains heads on the same training subset; building them is a one-time cost
every method would pay alike, so no run pays it. Loading them is inside each run's budget.

Each finished trial is read from the method itself: the service's from its store (completion times
of its trials), the peers' from a line each writes as a trial ends. The best validation accuracy at a
time is each library's own best trial by then: Optuna's best complete trial (pruned ones are not
candidates), Keras Tuner's best completed trial (any round of a bracket; a later round resumes an
earlier one's weights). "Trials" are finished trials: complete or pruned (Optuna), completed (Keras
Tuner, one per round of a bracket). Results go to BENCHMARKS.md (benchmarks.machine.publish) and a
plot of best validation accuracy against elapsed time, the mean of seeds, to `--plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import plotly.graph_objects as go
import psutil
import yaml

from benchmarks.current import PEERS_HEADLINES
from benchmarks.machine import publish, quiet_tensorflow

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("service", "optuna", "keras-tuner", "service-data")
DEFAULT_METHODS = ("service", "optuna", "keras-tuner")
LABELS = {"service": "this service", "optuna": "plain Optuna", "keras-tuner": "Keras Tuner's Hyperband",
          "service-data": "this service, data fid."}
SUFFIX = {"service-data": "_data"}  # its own study: the fidelity is part of a study's identity
BUDGETS = {"fc_head": 600, "simple_cnn": 3600}  # default seconds a run
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the budget: the table's columns
UNBOUNDED_TRIALS = 100_000  # the study's trial budget: the wall clock stops every method first
# What every method loads the study with; the budget again, as a command line's: the quick profile caps a
# study's trials (60) unless one is given.
OVERRIDES = {"profile": "quick", "dataset": "cifar10", "trials": UNBOUNDED_TRIALS}
STOP_GRACE_S = 60  # after SIGTERM at the budget, then SIGKILL; nothing after the budget counts
HEADLINES = PEERS_HEADLINES  # defined in benchmarks.current (it cannot import this module: a cycle)


@dataclasses.dataclass(frozen=True)
class Event:
    """A finished trial: seconds since its method started, its state, its value if complete, its epochs."""

    elapsed: float
    state: str  # complete, pruned or failed
    value: float | None
    epochs: int


@dataclasses.dataclass(frozen=True)
class Run:
    case: str
    method: str
    seed: int
    budget_s: float
    events: tuple[Event, ...]

    def within(self) -> list[Event]:
        return sorted((e for e in self.events if e.elapsed <= self.budget_s), key=lambda e: e.elapsed)

    @property
    def finished(self) -> int:
        return sum(e.state != "failed" for e in self.within())

    @property
    def per_minute(self) -> float:
        return self.finished / (self.budget_s / 60)

    def best_at(self, t: float) -> float | None:
        values = [e.value for e in self.within() if e.elapsed <= t and e.value is not None]
        return max(values) if values else None

    @classmethod
    def from_json(cls, raw: dict) -> Run:
        return cls(**{**raw, "events": tuple(Event(**e) for e in raw["events"])})


def mean_best(runs: list[Run], t: float) -> float | None:
    """The mean over seeds of the best by `t`; None until every seed has a complete trial."""
    values = [r.best_at(t) for r in runs]
    return None if not values or None in values else statistics.mean(values)


def curve_record(runs: list[Run], budget_s: float, points: int = 200) -> dict:
    """The plot's data: times, and each method's mean best (None before every seed has one)."""
    times = [budget_s * i / points for i in range(points + 1)]
    methods = dict.fromkeys(r.method for r in runs)
    return {"times": times, "curves": {m: [mean_best([r for r in runs if r.method == m], t) for t in times]
                                       for m in methods}}


def draw(record: dict, title: str) -> go.Figure:
    fig = go.Figure(layout={"title": title, "template": "plotly_white", "xaxis_title": "elapsed s",
                            "yaxis_title": "best validation accuracy (mean of seeds)"})
    for method, curve in record["curves"].items():
        fig.add_trace(go.Scatter(x=record["times"], y=curve, name=LABELS[method], mode="lines", line_shape="hv"))
    return fig


def _cell(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "—"


def table(runs: list[Run], budget_s: float) -> list[str]:
    """Best validation accuracy at fractions of the budget and trials a minute, mean of seeds, a row a method."""
    head = "  ".join(f"{f * budget_s:>8.0f} s" for f in FRACTIONS)
    rows = [f"    {'method':<24}{head}  trials/min"]
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        cells = "  ".join(f"{_cell(mean_best(mine, f * budget_s)):>10}" for f in FRACTIONS)
        rows.append(f"    {LABELS[method]:<24}{cells}  {statistics.mean(r.per_minute for r in mine):10.2f}")
    return rows


def run_line(run: Run) -> str:
    done = run.within()
    complete = sum(e.state == "complete" for e in done)
    failed = sum(e.state == "failed" for e in done)
    first = next((f"{e.elapsed:.0f} s" for e in done if e.state == "complete"), "never")
    return (f"  {LABELS[run.method]}, seed {run.seed}: {run.finished} finished trials ({complete} complete"
            f"{f', {failed} failed' if failed else ''}), {sum(e.epochs for e in done)} epochs, {run.per_minute:.2f} "
            f"trials/min; first complete at {first}; best {_cell(run.best_at(run.budget_s))}")


def verdicts(case: str, runs: list[Run], budget_s: float) -> list[str]:
    """The goal lines of a case: this service (and with fidelity by data) against its peer, and fidelity
    by data against epochs only, for the methods that ran."""
    found = [verdict(case, runs, budget_s, ours) for ours in ("service", "service-data")]
    by_method = {m: [r for r in runs if r.method == m] for m in ("service", "service-data")}
    if all(by_method.values()):
        data, epochs = (mean_best(by_method[m], budget_s) for m in ("service-data", "service"))
        rates = [statistics.mean(r.per_minute for r in by_method[m]) for m in ("service-data", "service")]
        seeds = min(len(v) for v in by_method.values())
        found.append(None if data is None or epochs is None else (
            f"{case}: fidelity by data {data:.4f} against epochs only {epochs:.4f} ({data - epochs:+.4f}) best "
            f"validation accuracy after {budget_s:.0f} s, {rates[0]:.2f} against {rates[1]:.2f} trials/min, mean of "
            f"{seeds} seed{'s' if seeds > 1 else ''}"))
    return [line for line in found if line]


def verdict(case: str, runs: list[Run], budget_s: float, method: str = "service") -> str | None:
    """The goal line of a case for `method` (service or service-data), when it and its peer ran."""
    peer = "optuna" if case == "fc_head" else "keras-tuner"
    ours, theirs = [r for r in runs if r.method == method], [r for r in runs if r.method == peer]
    if not ours or not theirs:
        return None
    # fidelity by data's line starts otherwise, so that the headlines (benchmarks.current) read the service's
    case_as = case if method == "service" else f"{case} (fidelity by data)"
    best, peer_best = mean_best(ours, budget_s), mean_best(theirs, budget_s)
    if best is None or peer_best is None:
        return f"{case}: a method had no complete trial in some seed; no comparison"
    seeds = min(len(ours), len(theirs))
    if case == "fc_head":
        rate, peer_rate = statistics.mean(r.per_minute for r in ours), statistics.mean(r.per_minute for r in theirs)
        ratio = rate / peer_rate if peer_rate else float("inf")
        met = ratio >= 2 and best >= peer_best and seeds >= 3
        return (f"{case_as}: this service {rate:.2f} trials/min against plain Optuna's {peer_rate:.2f} ({ratio:.2f}x), "
                f"best validation accuracy {best:.4f} against {peer_best:.4f} ({best - peer_best:+.4f}) after "
                f"{budget_s:.0f} s, mean of {seeds} seeds (goal: at least 2x plain Optuna's trials a minute at equal "
                f"or better best validation accuracy, mean of 3 seeds: {'met' if met else 'not met'})")
    met = best > peer_best and seeds >= 2
    return (f"{case_as}: this service's best validation accuracy {best:.4f} against Keras Tuner's Hyperband's "
            f"{peer_best:.4f} ({best - peer_best:+.4f}) after {budget_s:.0f} s, mean of {seeds} seeds (goal: higher "
            f"than Keras Tuner's Hyperband at the same wall time, mean of at least 2 seeds: "
            f"{'met' if met else 'not met'})")


def describe(case: str, info: dict, budget_s: float, seeds: int, args: argparse.Namespace) -> str:
    if info.get("base"):
        data = (f"heads on {info['train']:,} cached {info['shape'][0]:,}-d features of a {info['base']} base "
                f"(its val_accuracy {_cell(info['base_val_accuracy'])}), validated on {info['val']:,}")
    else:
        data = f"{info['train']:,} training images, validated on {info['val']:,}"
    which = "seed 0" if seeds == 1 else f"seeds 0-{seeds - 1}"
    return (f"{case}, --profile quick, CIFAR-10: {data}; at most {info['max_epochs']} epochs a trial, early "
            f"stopping patience {info['patience']}; {budget_s:.0f} s of wall time a run from its process's start, "
            f"{which}, one run at a time; the study's warm start {'on' if args.warm_start else 'off'}; service: "
            f"{args.workers} workers")


# ----------------------------------------------------------------------------------------------- running


def study_file(case: str, seed: int, args: argparse.Namespace, method: str = "service") -> dict:
    """The shipped study file, TPE seeded, the trial budget unbounded, and the smoke options applied;
    for service-data, fidelity by data."""
    raw = yaml.safe_load((ROOT / "search" / "studies" / f"{case}.yaml").read_text())
    raw["sampler"] = {"name": "tpe", "seed": seed}
    raw["budget"] = {**raw.get("budget", {}), "trials": UNBOUNDED_TRIALS,
                     **({"max_epochs": args.epochs} if args.epochs else {}),
                     **({"fidelity": "data"} if method == "service-data" else {})}
    if not args.warm_start:
        raw.pop("warm_start", None)
    data = {k: v for k, v in (("max_train", args.max_train), ("max_val", args.max_val)) if v}
    if data:
        raw["data"] = {**raw.get("data", {}), **data}
    if args.base_epochs and "feature_cache" in raw:
        raw["feature_cache"] = {**raw["feature_cache"], "base_epochs": args.base_epochs}
    return raw


def study_name(case: str, seed: int, method: str = "service") -> str:
    return f"peers_{case}_s{seed}{SUFFIX.get(method, '')}"


def write_study(folder: Path, case: str, seed: int, args: argparse.Namespace, method: str = "service") -> str:
    """study_file's study as `peers_<case>_s<seed>[_data].yaml` in `folder`; its name."""
    name = study_name(case, seed, method)
    text = yaml.safe_dump(study_file(case, seed, args, method), sort_keys=False)  # the space's order matters
    (folder / f"{name}.yaml").write_text(text)
    return name


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the service's runner passes it on; its workers stop at an epoch's end), then SIGKILL for
    whatever of the process tree is left after STOP_GRACE_S: no process of one run outlives it."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=5)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=30)


def timed(argv: list[str], env: dict[str, str], log: Path, budget_s: float) -> float:
    """Run argv until it exits or the budget is spent; its start, in wall-clock seconds. An exit
    before the budget with an error fails the benchmark."""
    with log.open("w") as out:
        started = time.time()
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return started
    if code != 0:
        raise SystemExit(f"{' '.join(argv[1:4])} exited {code} before its budget:\n{log.read_text()[-4000:]}")
    return started


def service_events(name: str, url: str, started: float) -> tuple[Event, ...]:
    # A light import: search.study loads no deep-learning backend (tests/test_layout.py).
    from search.study import open_study

    states = {"COMPLETE": "complete", "PRUNED": "pruned"}
    return tuple(Event(t.datetime_complete.timestamp() - started, states.get(t.state.name, "failed"),
                       t.value if t.state.name == "COMPLETE" else None, len(t.intermediate_values))
                 for t in open_study(name, url).get_trials(deepcopy=False)
                 if t.state.is_finished() and t.datetime_complete is not None)


def peer_events(records: Path, started: float) -> tuple[Event, ...]:
    lines = records.read_text().splitlines() if records.is_file() else []
    return tuple(Event(r["t"] - started, r["state"], r["value"], r["epochs"]) for r in map(json.loads, lines))


def run_method(case: str, method: str, seed: int, args: argparse.Namespace, env: dict[str, str], work: Path) -> Run:
    name = study_name(case, seed, method)
    budget = args.budget_s or BUDGETS[case]
    log, records = work / "logs" / f"{name}-{method}.log", work / "records" / f"{name}-{method}.jsonl"
    records.unlink(missing_ok=True)
    overrides = OVERRIDES
    if method.startswith("service"):
        journal = work / "stores" / f"{name}.journal"
        journal.unlink(missing_ok=True)
        url = f"journal://{journal}"
        argv = [sys.executable, "-m", "search", "run", name, "--workers", str(args.workers),
                *(arg for key, value in overrides.items() for arg in (f"--{key}", str(value)))]
        started = timed(argv, {**env, "STORAGE": url}, log, budget)
        events = service_events(name, url, started)
    else:
        config = work / "records" / f"{name}-{method}.json"
        config.write_text(json.dumps({"study": name, "overrides": overrides, "seed": seed, "records": str(records),
                                      "directory": str(work / "keras-tuner" / name), "warm_start": args.warm_start}))
        started = timed([sys.executable, "-m", "benchmarks.peer_methods", method, str(config)], env, log, budget)
        events = peer_events(records, started)
    return Run(case, method, seed, budget, events)


def prepare(case: str, args: argparse.Namespace, env: dict[str, str], work: Path) -> dict:
    """Untimed: the data cache and, for fc_head, the base and its features, once; what the trials see."""
    out = work / "records" / f"{case}-prepared.json"
    config = work / "records" / f"{case}-prepare.json"
    config.write_text(json.dumps({"study": f"peers_{case}_s0", "overrides": OVERRIDES,
                                  "records": str(out)}))
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "benchmarks.peer_methods", "prepare", str(config)], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"preparing {case} failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
    print(f"{case}: data and feature caches ready in {time.perf_counter() - started:.0f} s (not timed)", flush=True)
    return json.loads(out.read_text())


def _version(package: str) -> str:
    """An installed package's version; tensorflow's from the build installed (tensorflow-cpu on a CPU)."""
    for name in (package, f"{package}-cpu") if package == "tensorflow" else (package,):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"


def scratch(args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    work = Path(args.workdir).resolve()
    for sub in ("studies", "stores", "logs", "records", "runs", "keras-tuner"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATA_DIR": str(Path(args.data_dir).resolve()), "DATA_OFFLINE": "1",
           "STUDIES_DIR": str(work / "studies"), "ARTIFACTS_DIR": str(work / "artifacts"), "PYTHONPATH": str(ROOT),
           "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
    return work, env


def run_case(case: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> tuple[list[Run], dict]:
    for seed in range(args.seeds):
        for method in {"service", *args.methods} & {"service", "service-data"}:
            write_study(work / "studies", case, seed, args, method)
    info = prepare(case, args, env, work)
    runs = []
    for seed in range(args.seeds):
        for method in args.methods:
            saved = work / "runs" / f"{case}-{method}-s{seed}.json"
            if args.resume and saved.is_file():
                runs.append(Run.from_json(json.loads(saved.read_text())))
            else:
                runs.append(run_method(case, method, seed, args, env, work))
                saved.write_text(json.dumps(dataclasses.asdict(runs[-1])))
            print(run_line(runs[-1]), flush=True)
    return runs, info


def case_lines(case: str, runs: list[Run], info: dict, args: argparse.Namespace, plot: Path) -> list[str]:
    budget = runs[0].budget_s
    lines = [describe(case, info, budget, args.seeds, args), *map(run_line, runs),
             "  best validation accuracy by elapsed time, mean of seeds (—: a seed had no complete trial yet), and "
             "finished trials a minute:", *table(runs, budget), f"  plot: {plot}"]
    return lines + verdicts(case, runs, budget)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["fc_head", "simple_cnn", "both"], default="both")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                        help=f"default: {' '.join(DEFAULT_METHODS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"wall-clock seconds a run (default: {', '.join(f'{k} {v}' for k, v in BUDGETS.items())})")
    parser.add_argument("--workers", type=int, default=2, help="the service's worker processes")
    parser.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=False,
                        help="the study's warm start for the service and plain Optuna (Keras Tuner cannot take one)")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--max-train", type=int, default=None, help="a smoke run: training images (data.max_train)")
    parser.add_argument("--max-val", type=int, default=None, help="a smoke run: validation images (data.max_val)")
    parser.add_argument("--epochs", type=int, default=None, help="a smoke run: the epochs cap (default: the study's)")
    parser.add_argument("--base-epochs", type=int, default=None, help="a smoke run: fc_head's base epochs")
    parser.add_argument("--workdir", default="artifacts/bench-peers")
    parser.add_argument("--plots", default="bench-out/peers", help="folder of the plots (HTML)")
    parser.add_argument("--resume", action="store_true", help="reuse the runs an interrupted invocation saved")
    parser.add_argument("--output", default="BENCHMARKS.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    args = arguments().parse_args(argv)
    work, env = scratch(args)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    packages = ("tensorflow", "keras-tuner", "optuna-integration")
    lines = ["versions: " + ", ".join(f"{package} {_version(package)}" for package in packages)]
    for case in ("fc_head", "simple_cnn") if args.case == "both" else (args.case,):
        runs, info = run_case(case, args, work, env)
        plot = Path(args.plots) / f"{case}-{stamp}.html"
        plot.parent.mkdir(parents=True, exist_ok=True)
        draw(curve_record(runs, runs[0].budget_s), f"bench-peers: {case}, mean of {args.seeds} seeds").write_html(
            plot, include_plotlyjs=True)
        lines += case_lines(case, runs, info, args, plot)
    publish(args.output, "bench-peers: this service, a plain Optuna script and Keras Tuner's Hyperband",
            os.environ.get("KERAS_BACKEND", "tensorflow"), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
