"""Study-file `precision` and `jit_compile`: how trials are built and compiled, and what they record.
All on the CPU: bfloat16 runs there (slowly), which is enough to check policies and dtypes."""

from __future__ import annotations

import keras
import optuna
import pytest
from helpers.synthetic import ONE_TRIAL_STUDY, easy_splits

from search import StudySpecError, create_study, make_pruner, make_sampler, parse_spec
from search.spec._space import trial_config
from search.trial._objective import Objective
from search.trial._train import FitOptions, image_model, train
from storage import attrs

TINY = ONE_TRIAL_STUDY


def _cfg(spec):
    return trial_config(spec, {"learning_rate": 0.001, "batch_size": 32}, input_shape=(32, 32, 3), num_classes=10)


def test_a_trial_trains_an_epoch_under_mixed_bfloat16_with_float32_outputs_and_records_it():
    spec = parse_spec(TINY + "precision: mixed_bfloat16\n", name="tiny")
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    built = []

    def spy(cfg, splits, seed):
        built.append(image_model()(cfg, splits, seed))
        return built[-1]

    study.optimize(Objective(spec, easy_splits(64, 32), make_model=spy), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs
    assert trial.user_attrs[attrs.PRECISION] == "mixed_bfloat16" and trial.user_attrs[attrs.JIT_COMPILE] is False
    arch = next(layer for layer in built[0].layers if isinstance(layer, keras.Model))
    conv = next(layer for layer in arch.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.dtype_policy.name == "mixed_bfloat16" and conv.compute_dtype == "bfloat16"
    assert conv.kernel.dtype == "float32"  # weights stay float32
    assert keras.backend.standardize_dtype(built[0].outputs[0].dtype) == "float32"
    assert keras.config.dtype_policy().name == "float32"  # restored after the trial


def test_a_model_whose_output_is_not_float32_gets_a_float32_activation_on_top():
    def half_output(cfg, splits, seed):
        inputs = keras.Input(splits.input_shape, dtype="uint8")
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))  # bfloat16 under the policy

    spec = parse_spec(TINY, name="tiny")
    result, model = train(_cfg(spec), easy_splits(64, 32), FitOptions(max_epochs=1, patience=1, precision="mixed_bfloat16"),
                          seed=0, make_model=half_output)
    assert model.layers[-1].name == "float32_output" and model.layers[-2].compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    assert result.epochs_run == 1


@pytest.mark.parametrize("jit_compile", [True, False])
def test_jit_compile_is_passed_to_compile(jit_compile):
    def dense(cfg, splits, seed):
        inputs = keras.Input(splits.input_shape, dtype="uint8")
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))

    spec = parse_spec(TINY, name="tiny")
    _, model = train(_cfg(spec), easy_splits(64, 32), FitOptions(max_epochs=1, patience=1, jit_compile=jit_compile),
                     seed=0, make_model=dense)
    assert model.jit_compile is jit_compile  # False: Keras's "auto", which is no XLA on a CPU


def test_precision_and_jit_compile_are_part_of_the_hash_only_when_set():
    plain = parse_spec(TINY, name="tiny")
    defaults = parse_spec(TINY + "precision: float32\njit_compile: false\n", name="tiny")
    mixed = parse_spec(TINY + "precision: mixed_float16\n", name="tiny")
    jit = parse_spec(TINY + "jit_compile: true\n", name="tiny")
    assert plain.space_hash() == defaults.space_hash()  # files written before these fields keep their hash
    assert "precision" not in plain.hashed_fields() and mixed.hashed_fields()["precision"] == "mixed_float16"
    assert len({plain.space_hash(), mixed.space_hash(), jit.space_hash()}) == 3
    assert (mixed.precision, jit.jit_compile) == ("mixed_float16", True)


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(StudySpecError, match=r"precision: .*'float32', 'mixed_bfloat16' or 'mixed_float16'.*'float16'"):
        parse_spec(TINY + "precision: float16\n", name="tiny")
    with pytest.raises(StudySpecError, match="jit_compile: must be true or false"):
        parse_spec(TINY + "jit_compile: sometimes\n", name="tiny")
