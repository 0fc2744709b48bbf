"""A trial's overheads (issue 18, part 2): several training steps per call, and the per-trial garbage
collection after gc.freeze(). What they save is measured by `make bench-breakdown` (BENCHMARKS.md);
here: that they change no result, are recorded, are timed as training, and do what they say."""

from __future__ import annotations

import gc

import keras
import numpy as np
import optuna
import pytest
from helpers.synthetic import ONE_TRIAL_STUDY, easy_splits

from search import create_study, make_pruner, make_sampler, parse_spec
from search.settings import Settings
from search.spec._space import trial_config
from search.trial._objective import Objective
from search.trial._timing import PhaseCallback, TrialTimer
from search.trial._train import (
    LONG_EPOCH_BATCHES,
    SMALL_MODEL_PARAMS,
    SMALL_MODEL_STEPS,
    FitOptions,
    freeze_setup,
    steps_per_execution,
    train,
)
from storage import attrs


def _cfg(spec):
    return trial_config(spec, {"learning_rate": 0.01, "batch_size": 32}, input_shape=(32, 32, 3), num_classes=10)


def _dense_with_dropout(cfg, splits, seed):
    inputs = keras.Input(splits.input_shape, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dropout(0.3, seed=seed)(keras.layers.Dense(16, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def test_auto_runs_small_models_with_long_epochs_many_steps_a_call_and_the_others_one():
    assert steps_per_execution("auto", SMALL_MODEL_PARAMS, LONG_EPOCH_BATCHES) == SMALL_MODEL_STEPS > 1
    assert steps_per_execution("auto", SMALL_MODEL_PARAMS + 1, LONG_EPOCH_BATCHES) == 1
    assert steps_per_execution("auto", SMALL_MODEL_PARAMS, LONG_EPOCH_BATCHES - 1) == 1
    assert steps_per_execution(4, 10**9, 1) == 4
    with pytest.raises(ValueError, match="'auto' or an integer >= 1"):
        steps_per_execution(0, 10, 10)
    assert Settings.from_env({"STEPS_PER_EXECUTION": "8"}).steps_per_execution == 8
    assert Settings.from_env({}).steps_per_execution == "auto"
    with pytest.raises(ValueError, match="steps_per_execution"):
        Settings.from_env({"STEPS_PER_EXECUTION": "0"})


def test_many_steps_a_call_train_the_same_weights_as_one():
    """600 images in batches of 32: 19 batches an epoch, run 1, 3 (3 x 6 + 1) and 16 (16 + 3) steps a
    call, the epoch's last call running the steps left: same batches, same dropout masks, same weights
    and validation curve."""
    spec = parse_spec(ONE_TRIAL_STUDY, name="tiny")
    splits = easy_splits(600, 40)
    weights, curves = {}, {}
    for steps in (1, 3, 16):
        result, model = train(_cfg(spec), splits, FitOptions(max_epochs=2, patience=5, steps=steps), seed=3,
                              make_model=_dense_with_dropout)
        assert model.steps_per_execution == steps
        weights[steps], curves[steps] = model.get_weights(), result.curve
        keras.backend.clear_session()
    for steps in (3, 16):
        assert curves[steps] == curves[1]
        for one, many in zip(weights[1], weights[steps], strict=True):
            np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)


def test_every_trial_records_how_many_steps_it_ran_a_call_pruned_ones_too():
    spec = parse_spec(ONE_TRIAL_STUDY, name="tiny")
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    study.optimize(Objective(spec, easy_splits(64, 32), fit=FitOptions.for_study(spec, steps=3)), n_trials=1)
    study.pruner = optuna.pruners.ThresholdPruner(lower=1.1)  # no accuracy reaches it: pruned at epoch 1
    # 128 batches of 32 an epoch, a small preset: auto runs 16 a call
    study.optimize(Objective(spec, easy_splits(32 * LONG_EPOCH_BATCHES, 32)), n_trials=1)
    study.optimize(Objective(spec, easy_splits(64, 32)), n_trials=1)  # 2 batches an epoch: auto runs 1
    complete, pruned, short = study.trials
    assert complete.state == optuna.trial.TrialState.COMPLETE, complete.user_attrs
    assert pruned.state == short.state == optuna.trial.TrialState.PRUNED, (pruned.user_attrs, short.user_attrs)
    assert complete.user_attrs[attrs.STEPS_PER_EXECUTION] == 3
    assert pruned.user_attrs[attrs.STEPS_PER_EXECUTION] == SMALL_MODEL_STEPS
    assert short.user_attrs[attrs.STEPS_PER_EXECUTION] == 1


def test_the_first_call_s_other_steps_move_from_compile_to_train_at_a_later_call_s_pace():
    """6 steps an epoch at 4 a call: the first call (steps 0-3) took 10 s, tracing included; the
    second ran the 2 steps left (Keras still says 4-7) in 1 s, 0.5 s a step. The first call's 3
    later steps, 1.5 s, are training."""
    now = [0.0]
    timer = TrialTimer(clock=lambda: now[0])
    timer.switch("compile")
    phases = PhaseCallback(timer)
    phases.set_params({"steps": 6, "epochs": 1, "verbose": 0})
    for begin, end, at in ((0, 3, 10.0), (4, 7, 11.0)):
        phases.on_train_batch_begin(begin)
        now[0] = at
        phases.on_train_batch_end(end)
    phases.on_train_end()
    breakdown = timer.breakdown()
    assert breakdown["compile"] == pytest.approx(8.5) and breakdown["train"] == pytest.approx(2.5)


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
