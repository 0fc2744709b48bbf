"""The training recipe (search/trial/_recipe.py): learning-rate schedules and warm-up, optimisers with
weight decay, clipping and EMA, label smoothing; and their study-file syntax."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from helpers.synthetic import ONE_TRIAL_STUDY, easy_splits

from search import StudySpecError, load_spec, parse_spec, trial_config
from search.spec import TrainParams
from search.trial import FitOptions, train
from search.trial._recipe import (
    LinearWarmup,
    SparseSmoothedCrossentropy,
    learning_rate,
    make_loss,
    make_optimizer,
    recipe_callbacks,
)


def _rate(schedule, step: int) -> float:
    return float(schedule(step)) if callable(schedule) else float(schedule)


@pytest.mark.parametrize("lr,decay", [(0.001, 1e-6), (0.0005, 1e-6), (0.01, 1e-3)])
def test_inverse_time_per_step_is_kerass_legacy_decay(lr, decay):
    """Keras 2's `rmsprop(lr=..., decay=...)`: lr / (1 + decay * iterations), at every step."""
    schedule = learning_rate(TrainParams(learning_rate=lr, lr_schedule="inverse_time", decay_rate=decay), 100, 5)
    for step in (0, 1, 99, 1000, 123_456):
        assert _rate(schedule, step) == pytest.approx(lr / (1 + decay * step), rel=1e-6)


def test_an_optimiser_after_n_training_steps_has_the_legacy_decayed_rate():
    """The rate the optimiser itself reports after it took N steps in a real fit."""
    lr, decay, n = 0.01, 0.05, 7
    optimizer = make_optimizer(TrainParams(optimizer="rmsprop", learning_rate=lr, lr_schedule="inverse_time",
                                           decay_rate=decay), steps_per_epoch=n, max_epochs=1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((7 * 8, 4), "float32"), np.zeros(7 * 8, "int32"), batch_size=8, epochs=1, verbose=0)
    assert int(optimizer.iterations) == n
    assert float(optimizer.learning_rate) == pytest.approx(lr / (1 + decay * n), rel=1e-5)


def test_cosine_warms_up_to_the_rate_then_decays_to_its_floor():
    train = TrainParams(learning_rate=0.1, lr_schedule="cosine", warmup_epochs=1, min_lr_fraction=0.1)
    schedule = learning_rate(train, steps_per_epoch=10, max_epochs=5)
    assert _rate(schedule, 0) < 0.02
    assert _rate(schedule, 10) == pytest.approx(0.1, rel=1e-5)
    assert _rate(schedule, 50) == pytest.approx(0.01, rel=1e-4)


def test_step_exponential_and_a_warm_up_in_front_of_them():
    step = learning_rate(TrainParams(learning_rate=1.0, lr_schedule="step", decay_rate=0.5, decay_epochs=2), 10, 9)
    assert [_rate(step, s) for s in (0, 19, 20, 40)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    smooth = learning_rate(TrainParams(learning_rate=1.0, lr_schedule="exponential", decay_rate=0.5, decay_epochs=2),
                           10, 9)
    assert _rate(smooth, 10) == pytest.approx(0.5 ** 0.5, rel=1e-5)
    warm = learning_rate(TrainParams(learning_rate=1.0, lr_schedule="step", decay_rate=0.5, decay_epochs=2,
                                     warmup_epochs=1), 10, 9)
    assert isinstance(warm, LinearWarmup)
    assert [_rate(warm, s) for s in (0, 4, 9, 10, 30)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 0.5])
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(warm)).warmup_steps == 10


def test_constant_and_plateau_keep_a_plain_rate_and_plateau_adds_its_callback():
    assert learning_rate(TrainParams(learning_rate=0.2), 10, 3) == 0.2
    plateau = TrainParams(learning_rate=0.2, lr_schedule="plateau", plateau_patience=2, plateau_factor=0.3,
                          min_lr_fraction=0.05)
    assert learning_rate(plateau, 10, 3) == 0.2
    [callback] = recipe_callbacks(plateau)
    assert isinstance(callback, keras.callbacks.ReduceLROnPlateau)
    assert (callback.patience, callback.factor, callback.min_lr, callback.monitor) == (2, 0.3, pytest.approx(0.01),
                                                                                      "val_accuracy")
    assert recipe_callbacks(TrainParams()) == []
    # It follows the objective metric, which Keras cannot always tell the direction of by its name.
    assert [recipe_callbacks(plateau, m)[0].mode for m in ("val_accuracy", "val_macro_f1", "val_loss")] == [
        "max", "max", "min"]


def test_ema_scores_the_trial_on_the_averaged_weights():
    """Keras's SwapEMAWeights validates on the moving average and leaves it in the model: a short
    training whose average still lags far behind scores differently from the raw weights."""
    splits = easy_splits(600, 200)
    spec = parse_spec(ONE_TRIAL_STUDY, name="ema")
    results = {}
    for ema in (False, True):
        cfg = trial_config(spec, {}, input_shape=splits.input_shape, num_classes=10)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema=ema, learning_rate=0.003))
        results[ema], model = train(cfg, splits, FitOptions(max_epochs=3, patience=3), seed=0)
    assert any(isinstance(c, keras.callbacks.SwapEMAWeights) for c in recipe_callbacks(TrainParams(ema=True)))
    # 57 steps at momentum 0.99: the average is still near the initial weights while the raw ones learned.
    assert results[True].curve != results[False].curve
    assert max(results[True].curve) < max(results[False].curve)


def test_step_and_exponential_need_their_decay_knobs():
    with pytest.raises(StudySpecError, match=r"fixed.lr_schedule: lr_schedule step needs decay_rate and decay_epochs"):
        parse_spec(ONE_TRIAL_STUDY + "fixed: {lr_schedule: step}\n", name="bad")
    with pytest.raises(StudySpecError, match=r"space.lr_schedule: lr_schedule exponential needs decay_rate"):
        parse_spec(ONE_TRIAL_STUDY.replace("  batch_size: {choices: [32]}\n",
                                           "  batch_size: {choices: [32]}\n  lr_schedule: {choices: [constant, exponential]}\n"),
                   name="bad")
    parse_spec(ONE_TRIAL_STUDY + "fixed: {lr_schedule: step, decay_rate: 0.5, decay_epochs: 2}\n", name="good")


def test_adamw_lion_weight_decay_clipping_and_ema():
    adamw = make_optimizer(TrainParams(optimizer="adamw", weight_decay=0.05, clipnorm=1.0, ema=True))
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert (adamw.weight_decay, adamw.clipnorm, adamw.use_ema) == (0.05, 1.0, True)
    assert make_optimizer(TrainParams(optimizer="adamw")).weight_decay == 0.004  # AdamW's own default kept
    lion = make_optimizer(TrainParams(optimizer="lion", learning_rate=1e-4))
    assert isinstance(lion, keras.optimizers.Lion) and not lion.use_ema


def test_label_smoothing_changes_the_loss_not_the_accuracy():
    assert make_loss(TrainParams()) == "sparse_categorical_crossentropy"
    loss = make_loss(TrainParams(label_smoothing=0.1))
    y, p = np.array([0, 2]), np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    smoothed = np.eye(3)[y] * (1 - 0.1) + 0.1 / 3  # Keras's label smoothing: y (1 - s) + s / classes
    expected = -(smoothed * np.log(p)).sum(axis=1).mean()
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)
    assert isinstance(keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss)),
                      SparseSmoothedCrossentropy)
    # A trial trained with it: validation accuracy is the share of hard labels predicted.
    spec = parse_spec(ONE_TRIAL_STUDY + "fixed: {label_smoothing: 0.2, lr_schedule: cosine, warmup_epochs: 0.5}\n",
                      name="smooth")
    splits = easy_splits(200, 100)
    cfg = trial_config(spec, {}, input_shape=splits.input_shape, num_classes=10)
    assert (cfg.train.label_smoothing, cfg.train.lr_schedule) == (0.2, "cosine")
    result, model = train(cfg, splits, FitOptions(max_epochs=1, patience=1), seed=0)
    predicted = model.predict(splits.x_val, verbose=0).argmax(axis=1)
    assert result.best_val_accuracy == pytest.approx(float((predicted == splits.y_val).mean()), abs=1e-6)


def test_the_seeds_warm_starts_carry_their_legacy_decay():
    """Seeds 000 (Model 3-2) and 001 trained with rmsprop(..., decay=1e-6): dropping the decay fails here."""
    simple = load_spec("simple_cnn").warm_start[0]
    assert (simple["optimizer"], simple["learning_rate"], simple["lr_schedule"], simple["decay_rate"]) == (
        "rmsprop", 0.0005, "inverse_time", 1e-6)
    vgg = load_spec("vgg_bn").warm_start[0]
    assert (vgg["optimizer"], vgg["learning_rate"], vgg["lr_schedule"], vgg["decay_rate"]) == (
        "rmsprop", 0.001, "inverse_time", 1e-6)
    assert "decay_epochs" not in simple  # per step, as the legacy argument


@pytest.mark.parametrize("extra,where", [
    ("space:\n  learning_rate: {choices: [0.001]}\n  decay_rate: {low: 1.0e-7, high: 1.0e-5}\n", "space.decay_rate"),
    ("fixed: {plateau_patience: 3}\n", "fixed.plateau_patience"),
    ("fixed: {lr_schedule: cosine, decay_epochs: 2}\n", "fixed.decay_epochs"),
])
def test_a_schedule_knob_without_its_schedule_is_refused_at_its_field(extra, where):
    text = ONE_TRIAL_STUDY.replace("space:\n  learning_rate: {choices: [0.001]}\n", "space:\n  learning_rate: "
                                   "{choices: [0.001]}\n") + extra
    if extra.startswith("space:"):
        text = ONE_TRIAL_STUDY.replace("  learning_rate: {choices: [0.001]}\n",
                                       "  learning_rate: {choices: [0.001]}\n  decay_rate: {low: 1.0e-7, high: 1.0e-5}\n")
    with pytest.raises(StudySpecError, match=rf"{where}: only the lr_schedule .* reads"):
        parse_spec(text, name="bad")


def test_unknown_schedules_and_optimisers_name_the_known_ones():
    with pytest.raises(StudySpecError, match=r"lr_schedule.*'linear' is not one of constant, cosine, step"):
        parse_spec(ONE_TRIAL_STUDY + "fixed: {lr_schedule: linear}\n", name="bad")
    with pytest.raises(StudySpecError, match=r"adamw, lion"):
        parse_spec(ONE_TRIAL_STUDY + "fixed: {optimizer: adamx}\n", name="bad")


# --- the objective metric ---------------------------------------------------------------------------


def test_macro_f1_and_balanced_accuracy_match_scikit_learns_definitions():
    from search.trial._metrics import BalancedAccuracy, MacroF1

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 2, 2])  # class 3 never predicted; no class 4 at all
    probs = np.eye(5, dtype="float32")[pred]
    confusion = np.zeros((5, 5))
    np.add.at(confusion, (y, pred), 1)
    tp, labels, guesses = confusion.diagonal(), confusion.sum(1), confusion.sum(0)
    f1 = 2 * tp / np.maximum(labels + guesses, 1)
    expected_f1 = f1[(labels + guesses) > 0].mean()
    expected_balanced = (tp / np.maximum(labels, 1))[labels > 0].mean()
    # By hand (scikit-learn's definitions): per-class F1 2/3, 0.8, 0.75, 0 over the classes present in the labels
    # or predictions (class 4 is in neither); recall 2/3, 1, 0.75, 0 over the classes in the labels.
    assert (round(expected_f1, 4), round(expected_balanced, 4)) == (0.5542, 0.6042)
    for metric, expected in ((MacroF1(5), expected_f1), (BalancedAccuracy(5), expected_balanced)):
        metric.update_state(y[:6], probs[:6])  # in two batches, as the evaluation step feeds it
        metric.update_state(y[6:], probs[6:])
        assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
        metric.reset_state()
        assert float(metric.result()) == 0.0


@pytest.mark.parametrize("metric,direction", [("val_loss", "minimize"), ("val_macro_f1", "maximize"),
                                              ("val_balanced_accuracy", "maximize"),
                                              ("val_top_k_accuracy", "maximize")])
def test_the_objective_metric_sets_the_direction_early_stopping_and_the_trials_value(metric, direction):
    from search import create_study, make_pruner, make_sampler
    from search.trial import Objective

    text = ONE_TRIAL_STUDY.replace("budget: {trials: 1, max_epochs: 1}", "budget: {trials: 1, max_epochs: 2}")
    spec = parse_spec(text + f"objective: {{metric: {metric}}}\n", name="metric")
    assert spec.direction == direction and spec.directions == [direction]
    assert parse_spec(text, name="metric").space_hash() != spec.space_hash()  # part of the drift guard when set
    import optuna

    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    study.optimize(Objective(spec, easy_splits(200, 100)), n_trials=1)
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    curve = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
    best = min(curve) if direction == "minimize" else max(curve)
    assert trial.value == pytest.approx(best)  # the reported (pruned-on) metric's best epoch
    if metric == "val_loss":
        assert trial.value > 1.0  # a loss, not an accuracy


def test_bad_objectives_are_refused_at_their_field():
    with pytest.raises(StudySpecError, match=r"objective.metric: .*'val_f1' is not one of val_accuracy, val_loss"):
        parse_spec(ONE_TRIAL_STUDY + "objective: {metric: val_f1}\n", name="bad")
    with pytest.raises(StudySpecError, match=r"objective.k: val_top_k_accuracy with k=10 on 10 classes"):
        parse_spec(ONE_TRIAL_STUDY + "objective: {metric: val_top_k_accuracy, k: 10}\n", name="bad")
    with pytest.raises(StudySpecError, match=r"objective.k: only val_top_k_accuracy reads k"):
        parse_spec(ONE_TRIAL_STUDY + "objective: {metric: val_loss, k: 3}\n", name="bad")


def test_top_k_on_data_of_ones_own_is_checked_when_create_reads_it(tmp_path):
    """Five classes of one's own and the default k=5: refused by `create`, before the store is touched."""
    from helpers.datasets import write_npz
    from helpers.processes import run_cli

    data = write_npz(tmp_path / "bugs.npz", n=50)
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "own.yaml").write_text(ONE_TRIAL_STUDY.replace("dataset: cifar10", f"dataset: {{path: {data}}}")
                                      + "objective: {metric: val_top_k_accuracy}\n")
    journal = tmp_path / "studies.journal"
    run = run_cli("create", "own", env={"STUDIES_DIR": str(studies), "STORAGE": f"journal://{journal}"}, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "objective.k: val_top_k_accuracy with k=5 on 5 classes is always 1" in run.stderr
    assert not journal.exists()


def test_evaluate_scores_the_test_split_with_the_trials_metrics():
    """The same example by hand: macro-F1 0.5542, balanced accuracy 0.6042; the second guess is the next
    class, which rescues index 9 only (true 3, guessed 2 then 3): top-2 accuracy 0.8."""
    from search.commands._evaluate import test_metrics

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 2, 2])
    probs = (np.eye(5, dtype="float32")[pred] * 0.6 + np.eye(5, dtype="float32")[(pred + 1) % 5] * 0.4)
    figures = test_metrics(probs, y, tuple("abcde"), top_k=2)
    assert round(figures["test_macro_f1"], 4) == 0.5542 and round(figures["test_balanced_accuracy"], 4) == 0.6042
    assert figures["test_top_2_accuracy"] == pytest.approx(0.8)
    assert figures["test_accuracy"] == pytest.approx(0.7)
