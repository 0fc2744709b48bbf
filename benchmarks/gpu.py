"""python -m benchmarks.gpu: GPU placement and GPU memory across trials, on a GPU box (`make bench-gpu`).

Runs real studies through the service's own entry point (`python -m search run NAME --workers N`),
on a throwaway journal store and artifact folder, and reads back what the workers recorded:
1. one worker per GPU (the default): its placement, trials per minute, GPU memory per trial;
2. WORKERS_PER_GPU workers packed on each GPU under the per-process cap: the same figures per
   worker, and each process's memory as nvidia-smi saw it against its cap;
3. a trial too large for the cap fails as `oom` and the worker finishes its next trial.
Figures are printed and appended to BENCHMARKS.md with the machine. Needs nvidia-smi and a GPU.
BENCH_LOG_DIR, when set, keeps each phase's log (workers' output) there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from search.worker._placement import memory_fraction

STUDY = """description: bench-gpu, seed 003's MNIST CNN on a subset
architecture: s003_mnist_cnn
dataset: mnist
space:
  optimizer: {choices: [sgd, adam, rmsprop]}
  learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
  dense_units: {choices: [DENSE]}
  activation: {choices: [relu, elu, tanh]}
  dropout: {low: 0.0, high: 0.5}
  batch_size: {choices: [32, 64, 128]}
sampler: {name: tpe, seed: 0}
budget: {trials: TRIALS, max_epochs: EPOCHS}
early_stopping: {patience: 5}
data: {max_train: MAX_TRAIN, max_val: 2000}
WARM"""

# Seed 003's MNIST CNN flattens 4x4x64 = 1,024 features: 4,000,000 dense units hold 4.1e9 weights,
# 15.3 GiB, which fit under a 30% cap of an 80 GiB card; with their gradients (30.5 GiB) they do not.
OVER_CAP_UNITS = 4_000_000


@dataclass
class Sampler:
    """nvidia-smi's per-process GPU memory, every `every` seconds, in a thread."""

    every: float = 1.0
    peaks: dict = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, mib in smi_processes():
                self.peaks[pid] = max(self.peaks.get(pid, 0), mib)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def smi_processes() -> list[tuple[int, int]]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=20).stdout
    rows = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1])))
    return rows


def gpu_description() -> tuple[int, str, int]:
    """(GPUs, a line naming them, MiB on the first)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()
    name, total, driver = (p.strip() for p in out[0].split(","))
    return len(out), f"{len(out)} x {name} ({int(total):,} MiB, driver {driver})", int(total)


def run_phase(name: str, workdir: Path, *, workers: int, per_gpu: int, trials: int, epochs: int, dense: str,
              max_train: int, data_dir: str, timeout: float, warm: str = "") -> dict:
    studies = workdir / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    text = (STUDY.replace("DENSE", dense).replace("TRIALS", str(trials)).replace("EPOCHS", str(epochs))
            .replace("MAX_TRAIN", str(max_train)).replace("WARM", warm))
    (studies / f"{name}.yaml").write_text(text)
    store = f"journal:///{workdir / (name + '.journal')}".replace("////", "///")
    env = {**os.environ, "STUDIES_DIR": str(studies), "ARTIFACTS_DIR": str(workdir / "artifacts"),
           "WORKERS_PER_GPU": str(per_gpu), "DATA_DIR": data_dir, "STORAGE": store}
    log = workdir / f"{name}.log"
    started = time.monotonic()
    with Sampler() as smi, open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "search", "run", name, "--workers", str(workers), "--poll", "5"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # stop it as `docker stop` would: running trials are re-queued
            proc.terminate()
            rc = f"{proc.wait()} (stopped at the {timeout:.0f}-s limit)"
    wall = time.monotonic() - started
    import optuna

    from storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(store))
    return {"name": name, "rc": rc, "wall_s": wall, "trials": study.get_trials(deepcopy=False),
            "smi_peaks": dict(smi.peaks), "log": log.read_text()}


def summarize(phase: dict, total_mib: int, per_gpu: int) -> list[str]:
    """Lines for one phase: placement, pace, and GPU memory per worker across its trials."""
    trials = phase["trials"]
    states = Counter(t.state.name.lower() for t in trials)
    finished = [t for t in trials if t.datetime_complete and t.datetime_start]
    lines = [f"{phase['name']}: exit {phase['rc']}, {len(trials)} trials "
             f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}) in {phase['wall_s']:.0f} s"]
    placements = sorted({line.split("placement: ", 1)[1].strip() for line in phase["log"].splitlines()
                         if "placement: " in line})
    lines.append(f"  placements: {'; '.join(placements) or 'none logged'}")
    devices = sorted({t.user_attrs.get("device", "?") for t in trials})
    lines.append(f"  device recorded by trials: {', '.join(devices)}")
    by_worker: dict[str, list] = {}
    for t in sorted(finished, key=lambda t: t.datetime_start):
        by_worker.setdefault(t.user_attrs.get("worker", "?"), []).append(t)
    for worker, ts in sorted(by_worker.items()):
        in_use = [t.user_attrs["worker_gpu_mib"] for t in ts if "worker_gpu_mib" in t.user_attrs]
        peak = [t.user_attrs["worker_gpu_peak_mib"] for t in ts if "worker_gpu_peak_mib" in t.user_attrs]
        secs = [(t.datetime_complete - t.datetime_start).total_seconds() for t in ts]
        memory = (f"GPU MiB in use at trial start: first {in_use[0]:.1f}, after warm-up {in_use[min(1, len(in_use) - 1)]:.1f}, "
                  f"last {in_use[-1]:.1f}, max {max(in_use):.1f}; allocator peak so far {max(peak):.0f}"
                  if in_use else "no GPU memory recorded")
        lines.append(f"  {worker}: {len(ts)} trials, median {statistics.median(secs):.1f} s a trial; {memory}")
    cap = memory_fraction(per_gpu)
    if phase["smi_peaks"]:
        peaks = ", ".join(f"{mib:,}" for mib in sorted(phase["smi_peaks"].values()))
        cap_text = f" (cap {cap:.0%} of {total_mib:,} = {int(total_mib * cap):,} MiB)" if cap else " (no cap: one worker per GPU)"
        lines.append(f"  nvidia-smi peak per process, MiB: {peaks}{cap_text}")
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    if done and phase["wall_s"]:
        lines.append(f"  pace: {60 * len(done) / phase['wall_s']:.1f} finished trials a minute (wall time, start-up included)")
    failed = [t for t in trials if t.user_attrs.get("fail_reason")]
    for t in failed[:3]:
        lines.append(f"  trial {t.number} failed ({t.user_attrs['fail_reason']}): "
                     f"{t.user_attrs.get('fail_message', '')[:160]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR") or "../shared/datasets")
    parser.add_argument("--per-gpu", type=int, default=3, help="workers packed on each GPU in phase 2")
    parser.add_argument("--trials", type=int, default=24, help="trials per phase")
    parser.add_argument("--epochs", type=int, default=4, help="most epochs a trial")
    parser.add_argument("--max-train", type=int, default=20000, help="MNIST training images a trial sees")
    parser.add_argument("--timeout", type=float, default=240, help="seconds a phase may run")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    try:
        gpus, gpu, total = gpu_description()
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as exc:
        print(f"error: bench-gpu needs an NVIDIA GPU and nvidia-smi ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    lines = [gpu, f"MNIST, seed 003's CNN, {args.max_train:,} training images, <= {args.epochs} epochs a trial, "
             f"{args.trials} trials a phase; `python -m search run` on a journal store"]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        common = dict(epochs=args.epochs, max_train=args.max_train, data_dir=args.data_dir, timeout=args.timeout)
        phases = [
            (run_phase("one_per_gpu", work, workers=gpus, per_gpu=1, trials=args.trials, dense="64, 100, 128, 256",
                       **common), 1),
            (run_phase("packed", work, workers=gpus * args.per_gpu, per_gpu=args.per_gpu, trials=args.trials,
                       dense="64, 100, 128, 256", **common), args.per_gpu),
            # A first trial too large for the cap, then an ordinary one in the same worker.
            (run_phase("over_cap", work, workers=1, per_gpu=args.per_gpu, trials=2, dense=f"64, {OVER_CAP_UNITS}",
                       warm=f"warm_start:\n  - {{dense_units_0: {OVER_CAP_UNITS}}}\n  - {{dense_units_0: 64}}\n",
                       **{**common, "epochs": 1}), args.per_gpu),
        ]
        for phase, per_gpu in phases:
            lines += summarize(phase, total, per_gpu)
            (Path(os.environ.get("BENCH_LOG_DIR", tmp)) / f"{phase['name']}.log").write_text(phase["log"])
    from benchmarks.machine import publish

    publish(args.out, "bench-gpu: GPU placement and GPU memory across trials",
            os.environ.get("KERAS_BACKEND", "tensorflow"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
