"""A trial's overheads (issue 18, part 2): steps per execution, training data converted once per worker,
and the per-trial garbage collection after gc.freeze(). What they save is measured by `make
bench-breakdown` (BENCHMARKS.md); here: that they change no result and do what they say."""

from __future__ import annotations

import gc

import keras
import numpy as np
import optuna
import pytest

from search import create_study, make_pruner, make_sampler, parse_spec
from search._objective import Objective
from search._space import trial_config
from search._train import SMALL_MODEL_PARAMS, SMALL_MODEL_STEPS, FitArrays, freeze_setup, steps_per_execution, train
from search.settings import Settings
from storage import attrs
from synthetic import ONE_TRIAL_STUDY, easy_splits


def _cfg(spec):
    return trial_config(spec, {"learning_rate": 0.01, "batch_size": 32}, input_shape=(32, 32, 3), num_classes=10)


def _dense_with_dropout(cfg, splits, seed):
    inputs = keras.Input(splits.input_shape, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dropout(0.3, seed=seed)(keras.layers.Dense(16, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def test_auto_runs_small_models_many_steps_a_call_and_large_ones_one():
    assert steps_per_execution("auto", SMALL_MODEL_PARAMS) == SMALL_MODEL_STEPS > 1
    assert steps_per_execution("auto", SMALL_MODEL_PARAMS + 1) == 1
    assert steps_per_execution(4, 10**9) == 4
    with pytest.raises(ValueError, match="'auto' or an integer >= 1"):
        steps_per_execution(0, 10)
    assert Settings.from_env({"STEPS_PER_EXECUTION": "8"}).steps_per_execution == 8
    assert Settings.from_env({}).steps_per_execution == "auto"
    with pytest.raises(ValueError, match="steps_per_execution"):
        Settings.from_env({"STEPS_PER_EXECUTION": "0"})


def test_many_steps_a_call_train_the_same_weights_as_one():
    """100 images in batches of 32 (the last one short) at 1 and 5 steps a call (the epoch's last call
    runs the steps left): same batches, same dropout masks, same weights."""
    spec = parse_spec(ONE_TRIAL_STUDY, name="tiny")
    splits = easy_splits(100, 40)
    weights, accuracies = {}, {}
    for steps in (1, 5):
        result, model = train(_cfg(spec), splits, max_epochs=2, patience=5, seed=3, make_model=_dense_with_dropout,
                              steps=steps)
        assert model.steps_per_execution == steps == result.steps_per_execution
        weights[steps], accuracies[steps] = model.get_weights(), result.curve
        keras.backend.clear_session()
    assert accuracies[1] == accuracies[5]
    for one, five in zip(weights[1], weights[5], strict=True):
        np.testing.assert_allclose(one, five, rtol=1e-5, atol=1e-6)


def test_resident_arrays_are_the_backend_s_tensors_and_train_like_numpy():
    spec = parse_spec(ONE_TRIAL_STUDY, name="tiny")
    splits = easy_splits(96, 32)
    resident = FitArrays.of(splits, resident=True)
    for name in ("x_train", "y_train", "x_val", "y_val"):
        value = getattr(resident, name)
        assert keras.ops.is_tensor(value) and not isinstance(value, np.ndarray)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(value), getattr(splits, name))
    assert isinstance(FitArrays.of(splits).x_train, np.ndarray)
    curves = []
    for arrays in (None, resident):
        result, _ = train(_cfg(spec), splits, max_epochs=2, patience=5, seed=1, make_model=_dense_with_dropout,
                          arrays=arrays)
        curves.append(result.curve)
        keras.backend.clear_session()
    assert curves[0] == curves[1]


def test_a_trial_records_how_many_steps_it_ran_a_call():
    spec = parse_spec(ONE_TRIAL_STUDY, name="tiny")
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    for steps, expected in ((3, 3), ("auto", SMALL_MODEL_STEPS)):
        study.optimize(Objective(spec, easy_splits(64, 32), steps_per_execution=steps), n_trials=1)
        trial = study.trials[-1]
        assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs
        assert trial.user_attrs[attrs.STEPS_PER_EXECUTION] == expected


def test_after_freeze_setup_a_collection_walks_only_what_was_made_since():
    try:
        freeze_setup()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # pytest, numpy, Keras and TensorFlow's objects
        made = [[i] for i in range(1000)]  # tracked containers made after the freeze
        tracked = len(gc.get_objects())
        assert tracked < frozen and tracked >= len(made)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
