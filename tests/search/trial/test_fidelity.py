"""Fidelity by data (issue 26, part 2): `budget: {fidelity: data}` trains the epochs up to each of the
pruner's rungs on a growing, stratified, nested share of the training set, the same for every trial."""

from __future__ import annotations

import keras
import numpy as np
import optuna
import pytest
from helpers.synthetic import ONE_TRIAL_STUDY

from data import Splits, nested_subsets
from search import parse_spec
from search.errors import StudySpecError
from search.spec import PRUNERS, data_fractions, describe_fractions, stages
from search.spec._fidelity import rung_options
from search.spec._space import trial_config
from search.trial import _train
from search.trial._train import FitOptions, _keeping_raw_weights, compiled_model, fit_all, fit_stages, train

CLASSES = ("a", "b", "c")
HYPERBAND = ONE_TRIAL_STUDY.replace("pruner: none", "pruner: hyperband")


def _study(budget: str, pruner: str = "hyperband") -> str:
    return ONE_TRIAL_STUDY.replace("pruner: none", f"pruner: {pruner}").replace(
        "budget: {trials: 1, max_epochs: 1}", f"budget: {budget}")


def test_the_schedule_follows_the_rungs():
    # Hyperband's defaults (min_resource 1, reduction_factor 3): rungs at steps 1, 3, 9 (epochs 2, 4, 10).
    assert data_fractions(max_epochs=6, min_resource=1, reduction_factor=3) == pytest.approx(
        (1 / 9, 1 / 9, 1 / 3, 1 / 3, 1, 1))
    # Rungs at steps 2 and 6; a first share of its own; capped at the whole set.
    assert data_fractions(max_epochs=8, min_resource=2, reduction_factor=3, min_fraction=0.2) == pytest.approx(
        (0.2, 0.2, 0.2, 0.6, 0.6, 0.6, 0.6, 1))
    assert data_fractions(max_epochs=4, min_resource=1, reduction_factor=2) == (0.25, 0.25, 0.5, 1)
    # successive_halving's min_early_stopping_rate moves its first rung: steps 3 and 9.
    assert data_fractions(max_epochs=11, min_resource=1, reduction_factor=3, min_early_stopping_rate=1) == (
        pytest.approx((*[1 / 9] * 4, *[1 / 3] * 6, 1)))
    assert stages((0.25, 0.5, 0.5, 1, 1)) == [(0, 1, 0.25), (1, 3, 0.5), (3, 5, 1)]
    assert describe_fractions((1 / 9, 1 / 9, 1 / 3, 1)) == (
        "epochs 1-2: 11% of the training set; epoch 3: 33%; epoch 4: all of it")
    assert describe_fractions((0.004, 1)) == "epoch 1: 0.40% of the training set; epoch 2: all of it"
    assert data_fractions(max_epochs=9, min_resource=1, reduction_factor=7)[-1] == 1.0  # not 0.9999999999999999
    with pytest.raises(ValueError, match="reduction_factor >= 2"):
        data_fractions(max_epochs=3, min_resource=1, reduction_factor=1)


@pytest.mark.parametrize(("name", "options"), [
    ("successive_halving", {}),
    ("successive_halving", {"min_resource": 2, "reduction_factor": 2, "min_early_stopping_rate": 1}),
    ("hyperband", {"max_resource": 12}),
])
def test_each_share_ends_at_the_step_optunas_pruner_judges_its_rung(name, options):
    """Reported as KerasPruningCallback reports (epoch e at step e), a trial passes rung k at the last
    epoch of the k-th share: the pruner compares trials exactly when they finish a share. The
    schedule from the study's path (rung_options), the pruner from Optuna."""
    rungs = rung_options(name, {k: v for k, v in options.items() if k != "max_resource"}, PRUNERS[name].defaults)
    shares = data_fractions(max_epochs=12, **rungs)
    ends = [end - 1 for _, end, share in stages(shares) if share < 1]
    pruner = PRUNERS[name].build(options)
    study = optuna.create_study(study_name="rungs", pruner=pruner, direction="maximize")
    brackets = set()
    for number in range(8):  # trials enough that Hyperband's first bracket has some
        trial = study.ask()
        judged = {}
        for step in range(12):
            trial.report(0.1 * number + 0.01 * step, step)
            trial.should_prune()
            attrs = study._storage.get_trial(trial._trial_id).system_attrs
            for key in {k for k in attrs if k.startswith("completed_rung_")} - set(judged):
                judged[key] = step
        study.tell(trial, 0.5)
        # Hyperband's bracket b starts at its b-th rung of the same grid.
        bracket = pruner._get_bracket_id(study, trial) if name == "hyperband" else 0
        brackets.add(bracket)
        expected = ends[bracket:]
        assert sorted(judged.values())[:len(expected)] == expected
    assert 0 in brackets and ends  # the first rung's step was checked


def test_a_study_file_states_it_and_it_is_part_of_the_identity():
    spec = parse_spec(_study("{trials: 4, max_epochs: 5, fidelity: data}"), name="f")
    assert spec.data_fractions == pytest.approx((1 / 9, 1 / 9, 1 / 3, 1 / 3, 1))
    epochs = parse_spec(_study("{trials: 4, max_epochs: 5}"), name="f")
    assert epochs.data_fractions == () and epochs.space_hash() != spec.space_hash()
    # The pruner's options move the rungs, so they move the schedule and the hash with it.
    halving = parse_spec(_study("{trials: 4, max_epochs: 6, fidelity: data}",
                                "{name: successive_halving, min_resource: 2, reduction_factor: 2}"), name="f")
    assert halving.data_fractions == (0.25, 0.25, 0.25, 0.5, 0.5, 1) and halving.space_hash() != spec.space_hash()
    assert parse_spec(_study("{max_epochs: 3, fidelity: data, min_data_fraction: 0.5}"),
                      name="f").data_fractions == (0.5, 0.5, 1)


def test_a_budget_that_ends_before_the_whole_training_set_is_said(caplog):
    with caplog.at_level("WARNING"):
        spec = parse_spec(_study("{max_epochs: 6, fidelity: data}"), name="f", profile="smoke")  # 2 epochs
    assert spec.data_fractions == pytest.approx((1 / 9, 1 / 9))
    assert "no epoch trains on all the training set (at most 11% of it)" in caplog.text


@pytest.mark.parametrize(("budget", "pruner", "where", "says"), [
    ("{fidelity: data}", "median", "budget.fidelity",
     "pruner median has no rungs; use pruner: hyperband or successive_halving"),
    ("{fidelity: data}", "none", "budget.fidelity", "pruner none has no rungs"),
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
        self.steps: list[int | None] = []  # each epoch's params["steps"]
        self.fail_after = fail_after

    def on_train_begin(self, logs=None):
        self.begins += 1

    def on_train_end(self, logs=None):
        self.ends += 1

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch, self._batches))
        self.steps.append(self.params.get("steps"))
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
    assert seen.epochs == [(0, 3), (1, 3), (2, 9), (3, 9), (4, 27), (5, 27)]
    assert (seen.begins, seen.ends) == (1, 1) and seen.steps == [3, 3, 9, 9, 27, 27]  # the progress bar's target
    assert result.epochs_run == 6 and len(result.curve) == 6 and result.best_val_accuracy >= 0.9
    assert result.images_per_s * result.train_seconds == pytest.approx(2 * 90 + 2 * 270 + 2 * 810)
    # The same study with fidelity by epochs: every epoch on all 810.
    spec, cfg = _config("{max_epochs: 2}")
    seen = Seen()
    train(cfg, splits, FitOptions.for_study(spec, patience=10), seed=0, callbacks=[seen], make_model=_dense)
    assert seen.epochs == [(0, 27), (1, 27)]
    # One epoch, on a share: a single stage still trains on its share.
    spec, cfg = _config("{max_epochs: 1, fidelity: data}")
    seen = Seen()
    train(cfg, splits, FitOptions.for_study(spec, patience=10), seed=0, callbacks=[seen], make_model=_dense)
    assert seen.epochs == [(0, 3)]


class Zeroed(keras.callbacks.Callback):
    """Puts zeros into the weights at the end of epoch `at` (before EarlyStopping's turn)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_train_begin(self, logs=None):
        self.initial = [np.array(w) for w in self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])


def test_early_stopping_counts_its_patience_across_the_shares_and_restores_the_best_weights():
    """A rate of 0 never improves: patience 2 stops after epoch 3, in the middle of the 1/3 share (epochs
    3-4); the training ends there, once, and EarlyStopping's end restores the best (first) epoch's
    weights over the zeros a callback wrote at epoch 3."""
    spec, cfg = _config("{max_epochs: 6, fidelity: data}", learning_rate=0.0)
    seen, zeroed = Seen(), Zeroed(at=2)
    result, model = train(cfg, _splits(), FitOptions.for_study(spec, patience=2), seed=0, callbacks=[seen, zeroed],
                          make_model=_dense)
    assert [epoch for epoch, _ in seen.epochs] == [0, 1, 2] and result.epochs_run == 3
    assert (seen.begins, seen.ends) == (1, 1) and result.best_epoch == 1
    for restored, initial in zip(model.get_weights(), zeroed.initial):
        np.testing.assert_array_equal(restored, initial)


@pytest.mark.parametrize("killed_after", [0, 1, 2, 4])
def test_a_resumed_training_goes_on_from_its_epoch_with_that_epochs_share(tmp_path, killed_after):
    """Killed after an epoch with Keras's BackupAndRestore, the next attempt restores it once and
    trains each remaining epoch once, on its own share: not the first stages' shares again, nor an
    epoch twice (Keras's fit starts every call at the restored epoch unless told otherwise)."""
    spec, cfg = _config("{max_epochs: 6, fidelity: data}")
    options = FitOptions.for_study(spec, patience=10)
    first = Seen(fail_after=killed_after)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, _splits(), options, seed=0, make_model=_dense,
              callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), first])
    assert [epoch for epoch, _ in first.epochs] == list(range(killed_after + 1))
    keras.backend.clear_session()
    again = Seen()
    result, _ = train(cfg, _splits(), options, seed=0, make_model=_dense,
                      callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), again])
    batches = [3, 3, 9, 9, 27, 27]
    assert again.epochs == [(e, batches[e]) for e in range(killed_after + 1, 6)]
    assert (again.begins, again.ends) == (1, 1) and result.epochs_run == 5 - killed_after


def test_a_refit_trains_every_epoch_on_all_the_data_and_fit_stages_past_the_schedule_too(monkeypatch):
    spec, cfg = _config("{max_epochs: 3, fidelity: data}")
    options, seen = FitOptions.for_study(spec), Seen()
    splits = _splits()
    model = compiled_model(cfg, splits, 0, _dense, options)
    history, images = fit_stages(model, cfg, splits, options, seed=0, epochs=5, callbacks=[seen])
    assert seen.epochs == [(0, 3), (1, 3), (2, 9), (3, 27), (4, 27)] and history.epoch == [0, 1, 2, 3, 4]
    assert images == 2 * 90 + 270 + 2 * 810 and (seen.begins, seen.ends) == (1, 1)
    assert options.fractions(5) == pytest.approx((1 / 9, 1 / 9, 1 / 3, 1, 1))
    refit = Seen()

    def counted(model, cfg, splits, options, *, callbacks, **kwargs):
        return fit_stages(model, cfg, splits, options, callbacks=[*callbacks, refit], **kwargs)

    monkeypatch.setattr(_train, "fit_stages", counted)
    fit_all(cfg, splits, options, epochs=2, seed=0, make_model=_dense)
    assert refit.epochs == [(0, 27), (1, 27)]


class Averages(keras.callbacks.Callback):
    """At the start of each epoch: whether the weights equal the optimizer's moving averages."""

    def __init__(self) -> None:
        super().__init__()
        self.equal: list[bool] = []

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        pairs = [(v, optimizer._model_variables_moving_average[optimizer._get_variable_index(v)])
                 for v in self.model.trainable_variables]
        self.equal.append(all(np.array_equal(keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(a))
                              for v, a in pairs))


def test_a_share_before_the_last_leaves_the_moving_averages_out_of_the_weights():
    """EMA: Keras's fit ends by writing the averages into the weights; between two shares it must not."""
    spec, cfg = _config("{max_epochs: 5, fidelity: data}", ema=True)
    averages = Averages()
    train(cfg, _splits(), FitOptions.for_study(spec, patience=10), seed=0, callbacks=[averages], make_model=_dense)
    assert averages.equal == [False] * 5  # epochs 3 and 5 begin new shares: the weights still the raw ones


def test_keeping_raw_weights_is_undone_after_its_stage():
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras.optimizers.Adam(use_ema=True)
    optimizer.build([variable])
    variable.assign(np.full(2, 5.0, "float32"))  # trained on; its average is not
    with _keeping_raw_weights(optimizer):
        optimizer.finalize_variable_values([variable])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), 5.0)
    optimizer.finalize_variable_values([variable])  # the last stage's fit: the average written in
    assert (keras.ops.convert_to_numpy(variable) != 5.0).all()
