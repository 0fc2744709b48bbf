"""Fidelity by data (issue 26, part 2): `budget: {fidelity: data}` trains the epochs up to each of the
pruner's rungs on a growing, stratified, nested share of the training set, the same for every trial."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers.synthetic import ONE_TRIAL_STUDY

from data import Splits, nested_subsets
from search import parse_spec
from search.errors import StudySpecError
from search.spec import data_fractions, describe_fractions, stages
from search.spec._space import trial_config
from search.trial._train import FitOptions, _keeping_raw_weights, compiled_model, fit_all, fit_stages, train

CLASSES = ("a", "b", "c")
HYPERBAND = ONE_TRIAL_STUDY.replace("pruner: none", "pruner: hyperband")


def _study(budget: str, pruner: str = "hyperband") -> str:
    return ONE_TRIAL_STUDY.replace("pruner: none", f"pruner: {pruner}").replace(
        "budget: {trials: 1, max_epochs: 1}", f"budget: {budget}")


def test_the_schedule_follows_the_rungs():
    # Hyperband's defaults (min_resource 1, reduction_factor 3): rungs at epochs 1, 3, 9.
    assert data_fractions(max_epochs=5, min_resource=1, reduction_factor=3) == pytest.approx(
        (1 / 9, 1 / 3, 1 / 3, 1, 1))
    # Rungs at 2 and 6; a first share of its own; capped at the whole set.
    assert data_fractions(max_epochs=8, min_resource=2, reduction_factor=3, min_fraction=0.2) == pytest.approx(
        (0.2, 0.2, 0.6, 0.6, 0.6, 0.6, 1, 1))
    assert data_fractions(max_epochs=4, min_resource=1, reduction_factor=2) == (0.25, 0.5, 1, 1)
    assert stages((0.25, 0.5, 0.5, 1, 1)) == [(0, 1, 0.25), (1, 3, 0.5), (3, 5, 1)]
    assert describe_fractions((1 / 9, 1 / 3, 1 / 3, 1)) == (
        "epoch 1: 11% of the training set; epochs 2-3: 33%; epoch 4: all of it")
    with pytest.raises(ValueError, match="reduction_factor >= 2"):
        data_fractions(max_epochs=3, min_resource=1, reduction_factor=1)


def test_a_study_file_states_it_and_it_is_part_of_the_identity():
    spec = parse_spec(_study("{trials: 4, max_epochs: 5, fidelity: data}"), name="f")
    assert spec.data_fractions == pytest.approx((1 / 9, 1 / 3, 1 / 3, 1, 1))
    epochs = parse_spec(_study("{trials: 4, max_epochs: 5}"), name="f")
    assert epochs.data_fractions == () and epochs.space_hash() != spec.space_hash()
    # The pruner's options move the rungs, so they move the schedule and the hash with it.
    halving = parse_spec(_study("{trials: 4, max_epochs: 5, fidelity: data}",
                                "{name: successive_halving, min_resource: 2, reduction_factor: 2}"), name="f")
    assert halving.data_fractions == (0.25, 0.25, 0.5, 0.5, 1) and halving.space_hash() != spec.space_hash()
    assert parse_spec(_study("{max_epochs: 3, fidelity: data, min_data_fraction: 0.5}"),
                      name="f").data_fractions == (0.5, 1, 1)


@pytest.mark.parametrize(("budget", "pruner", "where", "says"), [
    ("{fidelity: data}", "median", "budget.fidelity", "median has none; use pruner: hyperband or successive_halving"),
    ("{fidelity: data}", "none", "budget.fidelity", "none has none"),
    ("{fidelity: data}", "{name: successive_halving, min_resource: auto}", "pruner.min_resource",
     "give it as a number of epochs"),
    ("{min_data_fraction: 0.2}", "hyperband", "budget.min_data_fraction", "add fidelity: data or drop it"),
    ("{fidelity: data, min_data_fraction: 1.0}", "hyperband", "budget.min_data_fraction", "between 0 and 1"),
    ("{fidelity: samples}", "hyperband", "budget.fidelity", "'epochs' or 'data'"),
])
def test_a_fidelity_the_pruner_cannot_follow_is_refused_where_it_is_written(budget, pruner, where, says):
    with pytest.raises(StudySpecError) as caught:
        parse_spec(_study(budget, pruner), name="f")
    assert caught.value.where.endswith(where) and says in str(caught.value)


def test_subsets_are_stratified_nested_and_the_same_for_a_seed():
    y = np.repeat([0, 1, 2], [90, 30, 3])
    small, middle, whole = nested_subsets(y, [1 / 9, 1 / 3, 1.0], seed=4)
    assert np.bincount(y[small]).tolist() == [10, 3, 1]  # every class, at least one image
    assert np.bincount(y[middle]).tolist() == [30, 10, 1]
    assert whole.tolist() == list(range(len(y)))
    assert set(small) <= set(middle) <= set(whole)
    again = nested_subsets(y, [1 / 9], seed=4)[0]
    assert again.tolist() == small.tolist() and nested_subsets(y, [1 / 9], seed=5)[0].tolist() != small.tolist()
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        nested_subsets(y, [0.0], seed=0)


def _splits(n: int = 900) -> Splits:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.normal(60, 20, (n, 8, 8, 3))
    for c in range(3):  # class c: its channel bright
        x[y == c, :, :, c] += 100
    x = np.clip(x, 0, 255).astype(np.uint8)
    cut = n * 9 // 10
    return Splits(x[:cut], y[:cut], x[cut:], y[cut:], CLASSES, "synthetic")


def _dense(cfg, splits, seed):
    inputs = keras.Input(splits.input_shape, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(16, activation="relu")(x)))


class Seen(keras.callbacks.Callback):
    """What a callback sees of one training: its begin and end, and each epoch's batches."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.begins = self.ends = self._batches = 0
        self.epochs: list[tuple[int, int]] = []  # (epoch, batches)
        self.fail_after = fail_after

    def on_train_begin(self, logs=None):
        self.begins += 1

    def on_train_end(self, logs=None):
        self.ends += 1

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch, self._batches))
        self._batches = 0
        if epoch == self.fail_after:
            raise RuntimeError("the worker was killed")


def _config(budget: str, **values):
    spec = parse_spec(_study(budget), name="f")
    cfg = trial_config(spec, {"learning_rate": 0.01, "batch_size": 30, **values}, input_shape=(8, 8, 3),
                       num_classes=3)
    return spec, cfg


def test_each_epoch_trains_on_its_share_and_the_callbacks_see_one_training():
    spec, cfg = _config("{max_epochs: 6, fidelity: data}")
    splits, seen = _splits(), Seen()  # 810 training images: 90, 270, then 810 (3, 9, 27 batches of 30)
    result, model = train(cfg, splits, FitOptions.for_study(spec, patience=10), seed=0, callbacks=[seen],
                          make_model=_dense)
    assert seen.epochs == [(0, 3), (1, 9), (2, 9), (3, 27), (4, 27), (5, 27)]
    assert (seen.begins, seen.ends) == (1, 1)
    assert result.epochs_run == 6 and len(result.curve) == 6 and result.best_val_accuracy >= 0.9
    assert result.images_per_s * result.train_seconds == pytest.approx(90 + 2 * 270 + 3 * 810)
    # The same study with fidelity by epochs: every epoch on all 810.
    spec, cfg = _config("{max_epochs: 2}")
    seen = Seen()
    train(cfg, splits, FitOptions.for_study(spec, patience=10), seed=0, callbacks=[seen], make_model=_dense)
    assert seen.epochs == [(0, 27), (1, 27)]


def test_early_stopping_counts_its_patience_across_the_shares():
    """A rate of 0 never improves: patience 1 stops after epoch 2, in the middle of the 1/3 share; the
    training ends there, once, and the best epoch's weights are restored."""
    spec, cfg = _config("{max_epochs: 6, fidelity: data}", learning_rate=0.0)
    seen = Seen()
    result, _ = train(cfg, _splits(), FitOptions.for_study(spec, patience=1), seed=0, callbacks=[seen],
                      make_model=_dense)
    assert [epoch for epoch, _ in seen.epochs] == [0, 1] and result.epochs_run == 2
    assert (seen.begins, seen.ends) == (1, 1) and result.best_epoch == 1


def test_a_resumed_training_goes_on_with_the_share_of_its_epoch(tmp_path):
    """Killed after epoch 5 (on all the data) with Keras's BackupAndRestore, the next attempt restores
    it once and trains epochs 5-6 on all the data, not the first stages' shares again."""
    spec, cfg = _config("{max_epochs: 6, fidelity: data}")
    options = FitOptions.for_study(spec, patience=10)
    first = Seen(fail_after=4)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, _splits(), options, seed=0, make_model=_dense,
              callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), first])
    assert [epoch for epoch, _ in first.epochs] == [0, 1, 2, 3, 4]
    keras.backend.clear_session()
    again = Seen()
    result, _ = train(cfg, _splits(), options, seed=0, make_model=_dense,
                      callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), again])
    assert again.epochs == [(5, 27)] and (again.begins, again.ends) == (1, 1) and result.epochs_run == 1


def test_a_refit_past_the_schedule_trains_its_later_epochs_on_everything():
    """fit_all's path (no validation): epochs past max_epochs train on all the data."""
    spec, cfg = _config("{max_epochs: 3, fidelity: data}")
    options, seen = FitOptions.for_study(spec), Seen()
    splits = _splits()
    model = compiled_model(cfg, splits, 0, _dense, options)
    history, images = fit_stages(model, cfg, splits, options, seed=0, epochs=5, callbacks=[seen])
    assert seen.epochs == [(0, 3), (1, 9), (2, 9), (3, 27), (4, 27)] and history.epoch == [0, 1, 2, 3, 4]
    assert images == 90 + 2 * 270 + 2 * 810 and (seen.begins, seen.ends) == (1, 1)
    assert options.fractions(5) == pytest.approx((1 / 9, 1 / 3, 1 / 3, 1, 1))
    assert isinstance(fit_all(cfg, splits, options, epochs=4, seed=0, make_model=_dense), keras.Model)


def test_a_stage_before_the_last_leaves_the_moving_averages_out_of_the_weights():
    """EMA: Keras's fit ends by writing the averages into the weights; between two shares it must not."""
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras.optimizers.Adam(use_ema=True)
    optimizer.build([variable])
    variable.assign(np.full(2, 5.0, "float32"))  # trained on; its average is not
    with _keeping_raw_weights(optimizer):
        optimizer.finalize_variable_values([variable])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), 5.0)
    optimizer.finalize_variable_values([variable])  # the last stage's fit: the average written in
    average = optimizer._model_variables_moving_average[0]
    assert (keras.ops.convert_to_numpy(variable) != 5.0).all()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), keras.ops.convert_to_numpy(average))
