"""A study's own training extras: `training: {callbacks: "file.py:callbacks", loss: "file.py:loss"}`,
checked at create time, hashed into the drift guard, and run with the service's own callbacks."""

from __future__ import annotations

import pytest
from helpers.processes import run_cli
from helpers.synthetic import ONE_TRIAL_STUDY, easy_splits, memory_study
from optuna.trial import TrialState

from search import StudySpecError, parse_spec
from search.trial import Objective

EXTRAS = '''
import keras


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def callbacks(knobs):
    return [StopAfterFirstEpoch()] if knobs.get("learning_rate", 0) < 0.01 else []


def loss(knobs):
    return keras.losses.SparseCategoricalCrossentropy(name="users_loss")


def not_a_list(knobs):
    return "nope"


def two_arguments(knobs, other):
    return []
'''
STUDY = ONE_TRIAL_STUDY.replace("budget: {trials: 1, max_epochs: 1}", "budget: {trials: 1, max_epochs: 3}")


@pytest.fixture
def extras(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "extras.py").write_text(EXTRAS)
    return tmp_path / "extras.py"


def test_the_users_callback_stops_training_and_the_services_callbacks_still_run(extras):
    spec, study = memory_study(STUDY + 'training: {callbacks: "extras.py:callbacks", loss: "extras.py:loss"}\n')
    assert spec.training == {"callbacks": "extras.py:callbacks", "loss": "extras.py:loss"}
    study.optimize(Objective(spec, easy_splits(200, 100)), n_trials=1)
    [trial] = study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["epochs_run"] == 1  # of 3: the user's callback stopped it (learning_rate 0.001)
    assert list(trial.intermediate_values) == [0]  # the pruning callback reported the epoch it ran
    assert sum(trial.user_attrs["time_breakdown"].values()) > 0  # and the timer timed it


def test_extras_are_part_of_the_drift_guard(extras):
    plain = parse_spec(STUDY, name="x").space_hash()
    with_extras = parse_spec(STUDY + 'training: {loss: "extras.py:loss"}\n', name="x").space_hash()
    assert plain != with_extras
    extras.write_text(EXTRAS + "\n# edited\n")
    assert parse_spec(STUDY + 'training: {loss: "extras.py:loss"}\n', name="x").space_hash() != with_extras


@pytest.mark.parametrize("section,where,message", [
    ('{callbacks: "extras.py:nothing"}', "training.callbacks", "has no function 'nothing'"),
    ('{callbacks: "missing.py:callbacks"}', "training.callbacks", "missing.py not found"),
    ('{loss: "extras.py:two_arguments"}', "training.loss", "must take one argument, the trial's knobs"),
    ('{optimizer: "extras.py:loss"}', "training", "unknown field"),
    ('{loss: "extras.py:loss"}\nfixed: {label_smoothing: 0.1}', "training.loss", "replaces the built-in loss"),
])
def test_a_bad_reference_is_refused_at_its_field(extras, section, where, message):
    with pytest.raises(StudySpecError, match=rf"{where}.*{message}"):
        parse_spec(STUDY + f"training: {section}\n", name="bad")


def test_create_calls_the_extras_and_refuses_a_wrong_return_type_before_the_store_is_touched(extras, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "own.yaml").write_text(STUDY + 'training: {callbacks: "extras.py:not_a_list"}\n')
    journal = tmp_path / "studies.journal"
    run = run_cli("create", "own", env={"STUDIES_DIR": str(studies), "STORAGE": f"journal://{journal}"}, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "training.callbacks: extras.py:not_a_list returned str 'nope'; return a list of keras.callbacks.Callback" \
        in run.stderr
    assert not journal.exists()


def test_the_users_loss_is_compiled_with_the_trials_knobs(extras):
    from search import trial_config
    from search.trial import FitOptions, train

    spec = parse_spec(STUDY + 'training: {loss: "extras.py:loss"}\n', name="x")
    splits = easy_splits(64, 32)
    cfg = trial_config(spec, {}, input_shape=splits.input_shape, num_classes=10)
    _, model = train(cfg, splits, FitOptions.for_study(spec, max_epochs=1), seed=0)
    assert model.loss.name == "users_loss"


def test_the_feature_cache_base_is_not_a_trial_and_runs_without_the_extras(extras, tmp_path):
    """The one-time base trains for its own epochs with the built-in loss: a user callback that stops
    trials after one epoch does not stop it."""
    import json

    from helpers.synthetic import FEATURE_STUDY

    from search.trial._features import ensure_base

    text = FEATURE_STUDY.replace("feature_cache: {base_epochs: 1}", "feature_cache: {base_epochs: 2}")
    spec = parse_spec(text + 'training: {callbacks: "extras.py:callbacks", loss: "extras.py:loss"}\n', name="fc")
    weights = ensure_base(spec, easy_splits(200, 100), artifacts=tmp_path / "artifacts")
    assert json.loads((weights.parent / "base.json").read_text())["epochs"] == 2
