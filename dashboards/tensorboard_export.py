"""TensorBoard: each finished trial's curves and the HParams plugin's table, from the store.

    python -m dashboards.tensorboard_export NAME [--serve --port 6006]     (make tensorboard NAME=...)

Under ARTIFACTS_DIR/tensorboard/NAME/: the HParams experiment (every searched knob with its domain,
the objective as the metric) at the top, and one run per finished trial (`trial-0007/`) with its
hparams, its per-epoch validation accuracy and objective, and its final value, state and time
breakdown as scalars at the last epoch. Exported from what the store holds, like the MLflow runs
(dashboards/tracking.py): nothing is streamed from training, so the workers need no TensorBoard and
no backend-specific summary writer (Keras's TensorBoard callback writes through TensorFlow; the
workers may run on JAX). A trial is written once, when it has finished; `--serve` runs
`tensorboard --logdir` on 127.0.0.1 and exports what finished since every `--every` seconds.
The event files are written with TensorBoard's own writer and summary protos (no TensorFlow op runs).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from search.settings import Settings
from storage import attrs, open_storage

logger = logging.getLogger(__name__)


def logdir(settings: Settings, name: str) -> Path:
    return settings.artifacts_dir / "tensorboard" / name


def _writer(folder: Path) -> EventFileWriter:
    folder.mkdir(parents=True, exist_ok=True)
    return EventFileWriter(str(folder))


def _event(summary, step: int = 0) -> Event:
    return Event(summary=summary, step=step, wall_time=time.time())


def _scalar(tag: str, value: float):
    return scalar_pb(tag, float(value))


def _domain(distribution):
    if isinstance(distribution, CategoricalDistribution):
        return hp.Discrete([c if isinstance(c, (str, bool, float)) else float(c) if isinstance(c, int) else str(c)
                            for c in distribution.choices])
    if isinstance(distribution, IntDistribution):
        return hp.IntInterval(int(distribution.low), int(distribution.high))
    if isinstance(distribution, FloatDistribution):
        return hp.RealInterval(float(distribution.low), float(distribution.high))
    return None


def _hparam_value(value):
    return value if isinstance(value, (str, bool, float)) else float(value) if isinstance(value, int) else str(value)


def export(study: optuna.Study, folder: Path, *, metric: str = "val_accuracy") -> int:
    """Write every finished trial that has no run yet, and the experiment's HParams config; how many."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    distributions = {}
    for trial in trials:
        distributions.update(trial.distributions)
    config = hp.hparams_config_pb(
        hparams=[hp.HParam(name, _domain(d)) for name, d in sorted(distributions.items())],
        metrics=[hp.Metric("value", display_name=f"{metric} (the trial's value)"),
                 hp.Metric(f"epoch/{metric}", display_name=f"{metric} per epoch")])
    # The domains grow as trials finish: one config file at the top, the latest.
    old = list(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
    root = _writer(folder)
    root.add_event(_event(config))
    root.close()
    for path in old:
        path.unlink(missing_ok=True)
    written = 0
    for trial in trials:
        run = folder / f"trial-{trial.number:04d}"
        if run.exists():
            continue
        _write_trial(trial, run, metric)
        written += 1
    return written


def _write_trial(trial: FrozenTrial, run: Path, metric: str) -> None:
    partial = run.with_name(run.name + ".partial")
    writer = _writer(partial)
    writer.add_event(_event(hp.hparams_pb({k: _hparam_value(v) for k, v in trial.params.items()},
                                          trial_id=str(trial.number))))
    curve = trial.user_attrs.get(attrs.VAL_ACCURACY_CURVE, [])
    for epoch, value in enumerate(curve):
        writer.add_event(_event(_scalar("epoch/val_accuracy", value), epoch))
    if metric != "val_accuracy":  # the objective's own curve, when it is another metric
        for epoch, value in sorted(trial.intermediate_values.items()):
            writer.add_event(_event(_scalar(f"epoch/{metric}", value), int(epoch)))
    last = max(len(curve) - 1, max(trial.intermediate_values, default=0), 0)
    if trial.values:
        writer.add_event(_event(_scalar("value", trial.values[0]), last))
    writer.add_event(_event(_scalar("state/complete", trial.state == TrialState.COMPLETE), last))
    for phase, seconds in (trial.user_attrs.get(attrs.TIME_BREAKDOWN) or {}).items():
        writer.add_event(_event(_scalar(f"time/{phase}_s", seconds), last))
    writer.close()
    partial.rename(run)  # a run folder exists only complete: an export cut off is redone next time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.tensorboard_export", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--serve", action="store_true", help="run tensorboard on 127.0.0.1 and keep exporting")
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between exports while serving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env()
    study = optuna.load_study(study_name=args.name, storage=open_storage(settings.store_url(args.storage)))
    metric = str(study.user_attrs.get(attrs.STUDY_SPEC, {}).get("metric", "val_accuracy"))
    folder = logdir(settings, args.name)
    print(f"study {args.name}: {export(study, folder, metric=metric)} trial run(s) written to {folder}", flush=True)
    if not args.serve:
        return 0
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host",
                               "127.0.0.1", "--port", str(args.port)])
    print(f"TensorBoard on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        while server.poll() is None:
            time.sleep(args.every)
            if written := export(study, folder, metric=metric):
                print(f"study {args.name}: {written} more trial run(s)", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
