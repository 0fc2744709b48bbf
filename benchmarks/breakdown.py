"""make bench-breakdown: where a trial's time goes (attrs.TIME_BREAKDOWN), and what each overhead change
saves, measured side by side in one run.

--compare overheads (the default): a baseline with the per-trial overhead changes off
(STEPS_PER_EXECUTION=1, GC_FREEZE=false), each change alone, and both (the defaults). --compare
defaults: that baseline against the settings' defaults. --compare checkpoints: a checkpoint every
epoch (CHECKPOINT_EVERY_S=0) against every 60 s. --compare validation: the validation batch
(VALIDATION_BATCH_SIZE=train, Keras's default, against auto) and the optimizer built before the first
trace (BUILD_OPTIMIZER_FIRST), each alone and together. --compare input: the split copied into the
worker for Keras's array adapter (INPUT_PIPELINE=arrays) against batches gathered from the memory-mapped
cache (stream). The settings a comparison varies are taken out of
this process's environment, so the defaults are the declared ones.

Each run is a real `python -m search run NAME --workers 1` (embedded journal store, heartbeats, the
resilient store) in a folder of its own; its trials' breakdowns are read back from the store and
summed per phase. Each case runs once per setting per repeat, the settings taking turns (baseline,
change 1, change 2, ..., baseline, ...), so that all see the same machine load; WORKER_INDEX=0 seeds
the sampler alike, so all start from the same trials (the study's warm starts, then the same random
draws).

Cases: (1) simple_cnn with --profile smoke (2,000 training / 500 validation images, at most 2
epochs); (2) fc_head's head search made to fit a CPU (--fc-trials N, 0 to skip): CIFAR-10, 5,000
training / 1,000 validation images, the s003_vgg_blocks base trained once for 1 epoch on them (in
the first run, not in any trial) and its features cached, heads trained for at most 10 epochs;
(3) --full-trials N (0 to skip): simple_cnn on the full data, at most --full-epochs epochs, one run
per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from benchmarks.machine import publish, quiet_tensorflow
from storage import attrs, open_storage

STUDIES = Path(__file__).resolve().parent.parent / "search" / "studies"
_OFF = {"STEPS_PER_EXECUTION": "1", "GC_FREEZE": "false"}
VARIED = ("STEPS_PER_EXECUTION", "GC_FREEZE", "CHECKPOINT_EVERY_S", "VALIDATION_BATCH_SIZE", "BUILD_OPTIMIZER_FIRST")  # never inherited from this process's environment
# Per comparison: label -> the environment a run gets; the first setting is the baseline.
COMPARISONS = {
    "overheads": {
        "baseline": _OFF,
        "steps/call": {**_OFF, "STEPS_PER_EXECUTION": "auto"},
        "gc freeze": {**_OFF, "GC_FREEZE": "true"},
        "both": {},
    },
    "defaults": {"baseline": _OFF, "defaults": {}},
    "checkpoints": {"every epoch": {"CHECKPOINT_EVERY_S": "0"}, "every 60 s": {"CHECKPOINT_EVERY_S": "60"}},
    "input": {"arrays": {"INPUT_PIPELINE": "arrays"}, "stream": {"INPUT_PIPELINE": "stream"}},
    "validation": {
        "baseline": {"VALIDATION_BATCH_SIZE": "train", "BUILD_OPTIMIZER_FIRST": "false"},
        "validation batch": {"VALIDATION_BATCH_SIZE": "auto", "BUILD_OPTIMIZER_FIRST": "false"},
        "optimizer first": {"VALIDATION_BATCH_SIZE": "train", "BUILD_OPTIMIZER_FIRST": "true"},
        "both": {},
    },
}
TITLES = {"overheads": "steps per call and gc.freeze, each alone and together",
          "defaults": "the overhead changes off against today's defaults",
          "checkpoints": "checkpoints every epoch vs every 60 s",
          "input": "images copied into each worker (arrays) vs streamed from the shared cache",
          "validation": "the validation batch and the optimizer built first, each alone and together"}


@dataclasses.dataclass
class Measured:
    """One run's trials: seconds per phase summed over them, their wall time, and what they trained."""

    totals: dict[str, float]
    wall: float  # sum of datetime_complete - datetime_start
    trials: int
    epochs: int
    states: dict[str, int]

    @classmethod
    def of(cls, study: optuna.Study) -> Measured:
        done = [t for t in study.get_trials(deepcopy=False)
                if t.datetime_complete and attrs.TIME_BREAKDOWN in t.user_attrs]
        totals = {p: sum(float(t.user_attrs[attrs.TIME_BREAKDOWN].get(p, 0.0)) for t in done)
                  for p in attrs.TIME_PHASES}
        states: dict[str, int] = {}
        for t in done:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        return cls(totals, sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done), len(done),
                   sum(len(t.intermediate_values) for t in done), states)

    @property
    def total(self) -> float:
        return sum(self.totals.values())


def merged(runs: list[Measured]) -> Measured:
    totals = {p: sum(r.totals[p] for r in runs) for p in attrs.TIME_PHASES}
    states: dict[str, int] = {}
    for r in runs:
        for k, v in r.states.items():
            states[k] = states.get(k, 0) + v
    return Measured(totals, sum(r.wall for r in runs), sum(r.trials for r in runs), sum(r.epochs for r in runs), states)


@dataclasses.dataclass
class Case:
    title: str
    name: str
    args: list[str]


def run_study(case: Case, folder: Path, shared: dict[str, str], setting: dict[str, str]) -> Measured:
    """`python -m search run` in `folder` (its own embedded journal store) with `setting` in its
    environment; the trials it ran."""
    folder.mkdir(parents=True)
    inherited = {k: v for k, v in os.environ.items() if k not in VARIED}
    env = {**inherited, **shared, **setting, "WORKER_INDEX": "0", "STORAGE": ""}
    log = folder / "run.log"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "search", "run", case.name, "--workers", "1", "--poll", "5",
                               *case.args], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{case.title}: the run failed (exit {done.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    storage = open_storage(f"journal:///{folder / 'studies.journal'}")
    return Measured.of(optuna.load_study(study_name=case.name, storage=storage))


def fc_study(studies_dir: Path, trials: int) -> None:
    """fc_head.yaml made to fit a CPU (see the module's docstring), written to studies_dir."""
    spec = yaml.safe_load((STUDIES / "fc_head.yaml").read_text())
    spec.update(dataset="cifar10", data={"max_train": 5000, "max_val": 1000},
                budget={"trials": trials, "max_epochs": 10},
                feature_cache={"base": "s003_vgg_blocks", "base_epochs": 1, "base_batch_size": 128})
    (studies_dir / "fc_head.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def compare(case: Case, root: Path, shared: dict[str, str], settings: dict[str, dict[str, str]],
            repeats: int) -> dict[str, list[Measured]]:
    runs: dict[str, list[Measured]] = {label: [] for label in settings}
    for i in range(repeats):
        for j, (label, setting) in enumerate(settings.items()):
            started = time.perf_counter()
            runs[label].append(run_study(case, root / f"{case.name}-{i}-{j}", shared, setting))
            print(f"{case.title}, {label}, repeat {i + 1}: {runs[label][-1].total:.1f} s in trials "
                  f"({time.perf_counter() - started:.0f} s in all)", flush=True)
    return runs


def _cell(seconds: float, baseline: float, first: bool) -> str:
    if first:
        return f"{seconds:.1f} s"
    return f"{seconds:.1f} s {seconds / baseline:5.2f}x" if baseline else f"{seconds:.1f} s     -"


def table(case: Case, runs: dict[str, list[Measured]]) -> list[str]:
    """Per-phase totals of each setting side by side; after the first (the baseline), the ratio to it."""
    merged_runs = {label: merged(r) for label, r in runs.items()}
    base_label = next(iter(merged_runs))
    base = merged_runs[base_label]
    n = len(runs[base_label])
    width = 20
    lines = [f"{case.title}: {base.trials // n} trials a run, {n} run(s) per setting, taking turns; "
             f"ratios to {base_label}",
             f"  {'phase':<12}" + "".join(f"{label:>{width}}" for label in merged_runs)]
    for p in [*attrs.TIME_PHASES, "all phases"]:
        cells = []
        for k, m in enumerate(merged_runs.values()):
            seconds, baseline = (m.total, base.total) if p == "all phases" else (m.totals[p], base.totals[p])
            cells.append(f"{_cell(seconds, baseline, k == 0):>{width}}")
        lines.append(f"  {p:<12}" + "".join(cells))
    for label, m in merged_runs.items():
        lines.append(f"  {label}: {m.trials} trials ({m.states}), {m.epochs} epochs; trials' wall time "
                     f"{m.wall:.1f} s, of which the breakdown covers {m.total / m.wall:.1%}")
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breakdown")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--trials", type=int, default=6, help="trials per smoke run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating")
    parser.add_argument("--fc-trials", type=int, default=8, help="trials per fc_head-like run; 0: skip the case")
    parser.add_argument("--full-trials", type=int, default=3, help="simple_cnn trials on the full data (one run "
                        "per setting); 0: skip")
    parser.add_argument("--full-epochs", type=int, default=3)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="overheads")
    parser.add_argument("--output", default="BENCHMARKS.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    args = _parser().parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    studies = root / "studies"
    shutil.copytree(STUDIES, studies)
    shared = {"DATA_DIR": str(Path(args.data_dir).resolve()), "DATA_CACHE": str(root / "cache"),
              "ARTIFACTS_DIR": str(root / "artifacts"), "STUDIES_DIR": str(studies)}
    load = os.getloadavg()[0]
    settings = COMPARISONS[args.compare]
    smoke = Case("simple_cnn, --profile smoke", "simple_cnn", ["--profile", "smoke", "--trials", str(args.trials)])
    lines = table(smoke, compare(smoke, root, shared, settings, args.repeats))
    if args.fc_trials:
        fc_study(studies, args.fc_trials)
        fc = Case("fc_head-like head search (CIFAR-10, 5,000 / 1,000 images, s003 base)", "fc_head", [])
        lines += table(fc, compare(fc, root, shared, settings, args.repeats))
    if args.full_trials:
        full = Case(f"simple_cnn, full data (45,000 / 5,000 images, at most {args.full_epochs} epochs)", "simple_cnn",
                    ["--trials", str(args.full_trials), "--epochs", str(args.full_epochs)])
        lines += table(full, compare(full, root / "full", shared, settings, 1))
    lines.append(f"load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
                 f"on {os.cpu_count()} cores")
    import keras

    publish(args.output, f"bench-breakdown: where a trial's time goes, {TITLES[args.compare]}",
            keras.backend.backend(), lines)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
