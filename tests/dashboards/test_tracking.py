"""MLflow (dashboards/tracking.py) against a real `mlflow server` started by the test: one parent run per
study, one nested run per finished trial, written once; a server that is down fails nothing, and a
later sync writes what it missed."""

from __future__ import annotations

import logging

import optuna
import pytest
from helpers.mlflow_server import mlflow_server
from helpers.processes import free_port
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from dashboards.tracking import EXPERIMENT, MlflowTracker
from storage import attrs


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def _study(name: str) -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="maximize")
    for n, (curve, state) in enumerate([([0.4, 0.6], TrialState.COMPLETE), ([0.2], TrialState.PRUNED),
                                        ([], TrialState.FAIL)]):
        trial = study.ask()
        trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
        trial.set_user_attr(attrs.VAL_ACCURACY_CURVE, curve)
        trial.set_user_attr(attrs.TIME_BREAKDOWN, {"train": 1.5 + n, "validate": 0.25})
        if state == TrialState.FAIL:
            trial.set_user_attr(attrs.FAIL_REASON, "nan")
        study.tell(trial, max(curve) if state == TrialState.COMPLETE else None, state=state)
    return study


def test_a_study_is_a_parent_run_and_each_finished_trial_a_nested_run_written_once(mlflow_uri):
    study = _study("tracked")
    tracker = MlflowTracker(mlflow_uri, "tracked")
    assert tracker.sync(study) == 3
    assert tracker.sync(study) == 0  # written once
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = {r.data.tags.get("cnn_search.trial", "study"): r for r in client.search_runs([experiment])}
    assert set(runs) == {"study", "0", "1", "2"}
    parent = runs["study"].info.run_id
    assert all(runs[n].data.tags["mlflow.parentRunId"] == parent for n in ("0", "1", "2"))
    complete = runs["0"]
    assert complete.data.tags["state"] == "COMPLETE" and complete.info.status == "FINISHED"
    assert float(complete.data.params["learning_rate"]) == study.trials[0].params["learning_rate"]
    assert complete.data.metrics["value"] == 0.6 and complete.data.metrics["time_train_s"] == 1.5
    history = client.get_metric_history(complete.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.4), (1, 0.6)]
    assert runs["1"].data.tags["state"] == "PRUNED" and runs["1"].data.metrics["value"] == 0.2  # Optuna's: its last
    assert runs["2"].data.tags["fail_reason"] == "nan" and runs["2"].info.status == "FAILED"


def test_a_server_that_is_down_fails_nothing_and_a_later_sync_catches_up(mlflow_uri, caplog):
    study = _study("missed")
    down = MlflowTracker(f"http://127.0.0.1:{free_port()}", "missed")
    with caplog.at_level(logging.WARNING, logger="dashboards.tracking"):
        assert down.trial_finished(study, 0) is None  # what a worker calls after each trial
        assert down.trial_finished(study, 1) is None
        assert down.sync(study) is None
    warnings = [r for r in caplog.records if "MLflow at" in r.getMessage()]
    assert len(warnings) == 1 and "python -m dashboards.tracking missed" in warnings[0].getMessage()
    up = MlflowTracker(mlflow_uri, "missed")  # the server is back (here: the one that was up all along)
    assert up.sync(study) == 3
    assert up.trial_finished(study, 0) is not None  # and a worker's own call logs its trial at once
