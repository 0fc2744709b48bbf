"""A trial's validation and compile overheads (issue 26): VALIDATION_BATCH_SIZE and the optimizer
built before fit. What they save is measured by hand (issue 26); here: that they change no result
and do what they say."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers.synthetic import FEATURE_STUDY

from data import Splits
from search import parse_spec
from search.settings import Settings
from search.spec._space import trial_config
from search.trial._features import head_model
from search.trial._train import FitOptions, compiled_model, train, validation_data

CLASSES = tuple(f"c{i}" for i in range(10))


def _features(n_train: int = 300, n_val: int = 130, dim: int = 24) -> Splits:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(10, dim)).astype(np.float32)

    def make(n):
        y = np.arange(n) % 10
        return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y

    return Splits(*make(n_train), *make(n_val), CLASSES, "features")


def _head_cfg():
    spec = parse_spec(FEATURE_STUDY, name="heads")
    values = {"optimizer": "adam", "learning_rate": 0.003, "dense_layers": 1, "dense_units_0": 32,
              "activation": "relu", "batch_size": 64}
    return trial_config(spec, values, input_shape=(32, 32, 3), num_classes=10)


def test_auto_validates_feature_vectors_in_one_batch_and_images_at_the_training_batch():
    features = _features()
    data, batch = validation_data(features, "auto")
    if keras.backend.backend() == "tensorflow":
        (x, y), = list(data)  # one batch: every validation vector
        assert batch is None
        np.testing.assert_array_equal(np.asarray(x), features.x_val)
        np.testing.assert_array_equal(np.asarray(y), features.y_val)
    else:
        assert batch == len(features.y_val)
    images = Splits(np.zeros((8, 4, 4, 3), np.uint8), np.arange(8) % 10, np.zeros((4, 4, 4, 3), np.uint8),
                    np.arange(4), CLASSES, "images")
    assert validation_data(images, "auto")[1] is None
    assert validation_data(features, "train")[1] is None
    assert validation_data(features, 7)[1] == 7
    with pytest.raises(ValueError, match="'auto', 'train' or an integer >= 1"):
        validation_data(features, 0)


def test_the_validation_batch_changes_no_result():
    """Every validation figure Keras logs (loss, accuracy, top-k), each epoch, whatever the batch."""
    features, cfg = _features(), _head_cfg()
    logged, curves = {}, {}
    for setting in ("train", "auto", 7):
        epochs = []
        record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs, out=epochs: out.append(dict(logs)))
        result, _ = train(cfg, features, FitOptions(max_epochs=3, patience=5, validation_batch=setting), seed=1,
                          make_model=head_model(), callbacks=[record])
        logged[setting], curves[setting] = epochs, result.curve
        keras.backend.clear_session()
    assert curves["auto"] == curves["train"] == curves[7]
    names = sorted(k for k in logged["train"][0] if k.startswith("val_"))
    assert "val_loss" in names and "val_accuracy" in names
    for setting in ("auto", 7):
        for ours, keras_default in zip(logged[setting], logged["train"], strict=True):
            np.testing.assert_allclose([ours[k] for k in names], [keras_default[k] for k in names], rtol=1e-5)


def test_auto_caps_a_batch_by_bytes_too(monkeypatch):
    """A wide base's features (25,088-d and more) would make one validation batch of gigabytes."""
    from search.trial import _train

    features = _features(n_train=20, n_val=40)
    monkeypatch.setattr(_train, "AUTO_VALIDATION_BYTES", 10 * features.x_val[:1].nbytes)
    data, batch = validation_data(features, "auto")
    if keras.backend.backend() == "tensorflow":
        assert batch is None and [len(y) for _, y in data] == [10, 10, 10, 10]
    else:
        assert batch == 10


def test_the_optimizer_is_built_before_fit_so_the_train_step_is_traced_once():
    features, cfg = _features(), _head_cfg()
    traces = []

    class Counting(keras.Model):
        def train_step(self, data):
            traces.append(1)
            return super().train_step(data)

    def make(c, splits, seed):
        head = head_model()(c, splits, seed)
        return Counting(head.inputs, head.outputs)

    options = FitOptions(max_epochs=2, patience=5)
    assert compiled_model(cfg, features, 1, make, options).optimizer.built
    keras.backend.clear_session()
    train(cfg, features, options, seed=1, make_model=make)
    if keras.backend.backend() == "tensorflow":
        assert len(traces) == 1  # built inside the first trace instead, TensorFlow traces it twice


def test_the_setting():
    assert Settings.from_env({}).validation_batch_size == "auto"
    assert Settings.from_env({"VALIDATION_BATCH_SIZE": "train"}).validation_batch_size == "train"
    assert Settings.from_env({"VALIDATION_BATCH_SIZE": "512"}).validation_batch_size == 512
    with pytest.raises(ValueError, match="validation_batch_size"):
        Settings.from_env({"VALIDATION_BATCH_SIZE": "0"})
