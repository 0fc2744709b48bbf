"""INPUT_PIPELINE (issue 26, part 3): a trial trained from a split streamed out of the memory-mapped
cache (Batches over data.Rows) against the same split copied into the worker."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from helpers.synthetic import ONE_TRIAL_STUDY

from data import Rows, Splits
from search import parse_spec
from search.spec import streams
from search.spec._space import trial_config
from search.trial._batches import Batches
from search.trial._train import FitOptions, train, training_data, validation_data

CLASSES = tuple(f"c{i}" for i in range(4))


def _splits(tmp_path, stream: bool) -> Splits:
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    x = rng.normal(60, 20, (200, 8, 8, 3))
    for c in range(4):  # class c: its quadrant of the image bright
        x[y == c, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] += 120
    x = np.clip(x, 0, 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    train_idx, val_idx = np.flatnonzero(np.arange(200) % 5 != 0), np.arange(0, 200, 5)  # 160 and 40
    pick = (lambda idx: Rows(mapped, idx)) if stream else mapped.__getitem__
    return Splits(pick(train_idx), y[train_idx], pick(val_idx), y[val_idx], CLASSES, "synthetic")


def test_auto_streams_data_larger_than_a_32nd_of_memory(monkeypatch):
    gib = 2**30
    assert streams("auto", data_bytes=gib, memory_bytes=24 * gib)  # 100,000 64x64 images on this machine
    assert not streams("auto", data_bytes=138 * 2**20, memory_bytes=24 * gib)  # CIFAR-10's training split
    assert streams("stream", data_bytes=1, memory_bytes=gib) and not streams("arrays", data_bytes=gib, memory_bytes=gib)
    from search import runtime

    assert 0 < runtime.memory_bytes() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_batches_cover_every_row_once_an_epoch_shuffled_by_seed_and_validation_in_order(tmp_path):
    splits = _splits(tmp_path, stream=True)
    batches = Batches(splits.x_train, splits.y_train, 64, shuffle=True, seed=3)
    assert len(batches) == 3  # 64 + 64 + 32
    for _ in range(2):
        seen = np.concatenate([batches.rows(i) for i in range(len(batches))])
        assert sorted(seen) == list(range(160))
        x, y = batches[0]
        np.testing.assert_array_equal(x, np.asarray(splits.x_train)[batches.rows(0)])
        np.testing.assert_array_equal(y, splits.y_train[batches.rows(0)])
        first = batches.rows(0)
        batches.on_epoch_end()
    assert not np.array_equal(first, batches.rows(0))
    same_seed = [Batches(splits.x_train, splits.y_train, 64, shuffle=True, seed=3).rows(0) for _ in range(2)]
    np.testing.assert_array_equal(*same_seed)
    val, batch = validation_data(splits, "auto", 16)
    assert batch is None and isinstance(val, Batches) and len(val) == 3 and val.batch_size == 16
    np.testing.assert_array_equal(np.concatenate([val[i][0] for i in range(len(val))]), np.asarray(splits.x_val))
    assert validation_data(splits, 7, 16)[0].batch_size == 7
    with pytest.raises(ValueError, match="needs a batch size"):
        validation_data(splits, "auto")


def _dense(cfg, splits, seed):
    inputs = keras.Input(splits.input_shape, dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.Dense(16, activation="relu")(x)))


def test_a_streamed_trial_learns_as_a_copied_one(tmp_path):
    """Same data, model and seed: the two pipelines shuffle differently (Keras's adapter draws from
    TensorFlow's generator, Batches from numpy's), so the curves agree closely, not bit for bit; one
    set of weights scores the same on the validation split read either way."""
    spec = parse_spec(ONE_TRIAL_STUDY, name="stream")
    cfg = trial_config(spec, {"learning_rate": 0.01, "batch_size": 32}, input_shape=(8, 8, 3), num_classes=4)
    copied, streamed = _splits(tmp_path, False), _splits(tmp_path, True)
    results = {}
    for splits in (copied, streamed):
        assert isinstance(training_data(cfg, splits, 0)[0], Batches) is splits.streamed
        result, model = train(cfg, splits, FitOptions(max_epochs=6, patience=10), seed=0, make_model=_dense)
        results[splits.streamed] = result
        as_arrays = model.evaluate(copied.x_val, copied.y_val, verbose=0, return_dict=True)
        as_batches = model.evaluate(Batches(streamed.x_val, streamed.y_val, 32, shuffle=False), verbose=0,
                                    return_dict=True)
        assert as_batches["accuracy"] == pytest.approx(as_arrays["accuracy"])
        assert as_batches["loss"] == pytest.approx(as_arrays["loss"], rel=1e-5)
        keras.backend.clear_session()
    assert results[True].epochs_run == results[False].epochs_run == 6
    assert results[True].best_val_accuracy >= 0.9 and results[False].best_val_accuracy >= 0.9
