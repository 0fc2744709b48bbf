"""TensorBoard (dashboards/tensorboard_export.py): each finished trial a run with its hparams and
per-epoch curves, the HParams experiment at the top, written once; served by a real `tensorboard`
on 127.0.0.1 (what `make tensorboard` starts)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import optuna
from helpers.processes import free_port
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from dashboards.tensorboard_export import export
from storage import attrs


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for curve, state in [([0.4, 0.6], TrialState.COMPLETE), ([0.2], TrialState.PRUNED), ([], TrialState.FAIL)]:
        trial = study.ask()
        trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("optimizer", ["adam", "sgd"])
        trial.suggest_int("dense_units", 8, 64)
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
        trial.set_user_attr(attrs.VAL_ACCURACY_CURVE, curve)
        trial.set_user_attr(attrs.TIME_BREAKDOWN, {"train": 1.5, "validate": 0.25})
        study.tell(trial, max(curve) if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # running: not exported until it finishes
    return study


def _scalars(folder, tag):
    """TensorBoard 2's scalars are tensor summaries (scalar_pb), read as the scalars plugin reads them."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    if tag not in acc.Tags()["tensors"]:
        return []
    return [(e.step, round(float(tensor_util.make_ndarray(e.tensor_proto)), 6)) for e in acc.Tensors(tag)]


def test_each_finished_trial_is_a_run_with_its_curves_and_hparams_written_once(tmp_path):
    study = _study()
    folder = tmp_path / "tb"
    assert export(study, folder) == 3 and export(study, folder) == 0
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["trial-0000", "trial-0001", "trial-0002"]
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1  # the latest HParams config only
    assert _scalars(folder / "trial-0000", "epoch/val_accuracy") == [(0, 0.4), (1, 0.6)]
    assert _scalars(folder / "trial-0000", "value") == [(1, 0.6)]
    assert _scalars(folder / "trial-0000", "time/train_s") == [(1, 1.5)]
    assert _scalars(folder / "trial-0001", "epoch/val_accuracy") == [(0, 0.2)]
    acc = EventAccumulator(str(folder / "trial-0000"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["optimizer"].string_value == study.trials[0].params["optimizer"]
    assert hparams["dense_units"].number_value == study.trials[0].params["dense_units"]
    study.tell(study.trials[3].number, 0.5)  # the running trial finishes: the next export writes it
    assert export(study, folder) == 1


def test_make_tensorboard_serves_the_runs_on_loopback(tmp_path):
    folder = tmp_path / "tb"
    export(_study(), folder)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline, runs = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=2) as r:
                    runs = json.load(r)
                if len(runs) >= 3:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert {"trial-0000", "trial-0001", "trial-0002"} <= set(runs), runs
        assert "epoch/val_accuracy" in runs["trial-0000"]
    finally:
        server.terminate()
        server.wait(timeout=30)
