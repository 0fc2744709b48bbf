"""A fine-tuning trial on Keras (search.trial._fine_tune): the whole model is the trained head on the
cached base, the last blocks thawed; the trial is pruned and scored on the second fit only."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from helpers.synthetic import FEATURE_STUDY, easy_splits

from search import TrialFailure, make_pruner, make_sampler, parse_spec
from search.spec import trial_config
from search.study import promote
from search.trial import FineTuning, FitOptions, train
from search.trial._features import trial_builder
from search.trial._fine_tune import trained_head, unfreeze_last
from search.trial._objective import Objective
from storage import attrs

SPEC = parse_spec(FEATURE_STUDY + "fine_tune: {top_k: 2, epochs: 2, space: {unfreeze_blocks: {choices: [1]}}}\n",
                  name="feat")
HEAD = {"optimizer": "adam", "learning_rate": 0.009, "dense_layers": 1, "activation": "relu", "batch_size": 64,
        "dense_units_0": 64}


@pytest.fixture
def artifacts():
    return Path.cwd() / "artifacts"


@pytest.fixture
def prepared(artifacts):
    splits = easy_splits(300, 100)
    features, make_model = trial_builder(SPEC, splits)
    return splits, features, make_model, FineTuning.for_study(SPEC, splits)


def test_the_whole_model_scores_what_its_head_did_and_thaws_only_the_last_blocks(prepared):
    splits, features, make_model, fine = prepared
    assert fine.blocks() == ("stage1", "stage2", "stage3")  # s000_model_3_1's, from the preset
    cfg = trial_config(SPEC, HEAD, input_shape=splits.input_shape, num_classes=10)
    fit = FitOptions.for_study(SPEC)
    head_result, model = train(cfg, features, fit, seed=0, make_model=make_model)
    ft_cfg, ft_fit, make = fine.plan(cfg, {"learning_rate": 1e-4, "unfreeze_blocks": 1}, trained_head(model), fit)
    assert (ft_cfg.train.learning_rate, ft_cfg.train.lr_schedule, ft_cfg.train.optimizer) == (1e-4, "constant", "adam")
    assert ft_fit.max_epochs == 2
    whole = make(ft_cfg, fine.images, 0)
    assert whole.input.dtype == "uint8"  # usable on raw images, as evaluate's final models are
    whole.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, accuracy = whole.evaluate(fine.images.x_val, fine.images.y_val, verbose=0)
    assert accuracy == pytest.approx(head_result.best_val_accuracy, abs=1e-6)  # the same features, the same head
    base = next(layer for layer in whole.layers[-1].layers if layer.name.startswith("base_"))
    thawed = {layer.name.split("_")[0] for layer in base.layers if layer.trainable and layer.weights}
    assert thawed == {"stage3"}


def _tiny_base() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="block1_conv")(inputs)
    x = keras.layers.Conv2D(4, 3, name="block2_conv")(x)
    x = keras.layers.BatchNormalization(name="block2_bn")(x)
    return keras.Model(inputs, keras.layers.Flatten(name="features")(x))


def test_a_base_of_ones_own_is_thawed_from_the_layer_that_names_the_block():
    base = _tiny_base()
    base.trainable = False
    unfreeze_last(base, ["block1_conv", "block2_conv"], 1)
    assert [layer.name for layer in base.layers if layer.trainable and layer.weights] == ["block2_conv", "block2_bn"]
    unfreeze_last(base, ["block1_conv", "block2_conv"], 2)
    assert [layer.name for layer in base.layers if layer.trainable and layer.weights] == [
        "block1_conv", "block2_conv", "block2_bn"]


@pytest.mark.parametrize("blocks, n, match", [
    (["block1_conv", "block2_conv"], 3, r"fine_tune_unfreeze_blocks=3, but the base has 2 block\(s\)"),
    (["block1_conv", "conv9"], 1, r"the base has no layer 'conv9' \(fine_tune.blocks .*\); its layers: .*block2_conv"),
])
def test_a_block_that_is_not_there_fails_the_trial_as_a_build_failure(blocks, n, match):
    with pytest.raises(TrialFailure, match=match) as failure:
        unfreeze_last(_tiny_base(), blocks, n)
    assert failure.value.reason.value == "build"


def test_a_promoted_trial_trains_its_head_then_the_whole_model_and_reports_only_that(prepared):
    splits, features, make_model, fine = prepared
    study = optuna.create_study(direction="maximize", sampler=make_sampler(SPEC), pruner=make_pruner(SPEC))
    objective = Objective(SPEC, features, make_model=make_model, image_shape=splits.input_shape, fine_tuning=fine)
    study.optimize(objective, n_trials=2, catch=(TrialFailure,))
    heads = list(study.trials)
    assert promote(study, SPEC)
    study.optimize(objective, n_trials=2, catch=(TrialFailure,))
    tuned = study.trials[2:]
    assert [t.user_attrs[attrs.PROMOTED_FROM] for t in tuned] == [h.number for h in sorted(
        heads, key=lambda h: (-h.value, h.number))]
    for t in tuned:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert sorted(t.intermediate_values) == [0, 1]  # fine_tune.epochs: the head's fit reports nothing
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
        assert t.params["fine_tune_unfreeze_blocks"] == 1 and 1e-5 <= t.params["fine_tune_learning_rate"] <= 1e-3
        # Its head trained again with the promoted trial's seed: as it was when it was promoted.
        promoted = study.trials[t.user_attrs[attrs.PROMOTED_FROM]]
        assert t.user_attrs[attrs.FINE_TUNE_HEAD_VALUE] == pytest.approx(promoted.value, abs=0.02)
        assert t.user_attrs[attrs.N_PARAMS] > t.user_attrs[attrs.FINE_TUNE_TRAINABLE] > 0
        assert t.user_attrs[attrs.N_PARAMS] > study.trials[t.user_attrs[attrs.PROMOTED_FROM]].user_attrs[attrs.N_PARAMS]


def test_evaluate_retrains_a_fine_tuning_candidate_as_it_was_trained(prepared):
    from search.commands._evaluate import _EvaluationData, _retrain

    splits, features, make_model, fine = prepared
    data = _EvaluationData(None, splits, features, make_model, fine.weights, fine)
    values = {**HEAD, "fine_tune_unfreeze_blocks": 1, "fine_tune_learning_rate": 1e-4}
    cfg = trial_config(SPEC, values, input_shape=splits.input_shape, num_classes=10)
    results, model = _retrain(SPEC, data, cfg, (0,))
    assert results[0].epochs_run <= 2 and model.input.dtype == "uint8"  # the fine-tuned model, on images
    probs = model.predict(splits.x_val[:8], verbose=0)
    assert probs.shape == (8, 10) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert any(layer.name.startswith("train_fine_tuned") or "fine_tuned" in layer.name for layer in [model, *model.layers])
