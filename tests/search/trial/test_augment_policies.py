"""Augmentation policies (#23 part 3): Keras 3's RandAugment and RandomErasing inside the model graph,
MixUp and CutMix on the batches with the labels they mix (search/trial/_mixing.py), and their
study-file syntax."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers.synthetic import ONE_TRIAL_STUDY, easy_splits

from data.preprocessing import AugmentParams, augmentation_layers
from search import StudySpecError, parse_spec, trial_config
from search.trial import FitOptions, train
from search.trial._metrics import MacroF1
from search.trial._mixing import HardLabelAccuracy, MixedBatches, MixedLabelCrossentropy


def _spec(extra: str, name: str = "policies"):
    return parse_spec(ONE_TRIAL_STUDY + extra, name=name)


def test_each_policy_is_a_keras_layer_in_the_graph_or_a_batch_mixer():
    aug = AugmentParams(horizontal_flip=True, randaugment=True, randaugment_ops=3, randaugment_magnitude=0.3,
                        random_erasing=0.25, mixup=True)
    layers = augmentation_layers(aug, seed=4)
    assert [type(layer).__name__ for layer in layers] == ["RandomAffine", "RandAugment", "RandomErasing"]
    assert (layers[1].num_ops, layers[1].factor, layers[1].value_range) == (3, (0, 0.3), (0, 255))
    assert layers[2].factor == (0, 0.25)  # the probability an image is erased
    assert augmentation_layers(AugmentParams(mixup=True), seed=0) == []  # MixUp mixes batches, not in the graph
    assert AugmentParams(cutmix=True).enabled and AugmentParams(cutmix=True).soft_labels
    assert not AugmentParams(randaugment=True).soft_labels


def test_in_graph_policies_change_training_images_only():
    x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype("float32")
    inputs = keras.Input((32, 32, 3))
    out = inputs
    for layer in augmentation_layers(AugmentParams(randaugment=True, random_erasing=1.0), seed=0):
        out = layer(out)
    model = keras.Model(inputs, out)
    assert np.abs(model(x, training=True).numpy() - x).mean() > 1.0
    np.testing.assert_array_equal(model(x, training=False).numpy(), x)


@pytest.mark.parametrize("policy", [dict(mixup=True, mixup_alpha=0.4), dict(cutmix=True),
                                    dict(mixup=True, cutmix=True)])
def test_mixed_batches_mix_images_and_labels_in_the_same_proportions(policy):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3)).astype(np.uint8)
    y = np.arange(40) % 4
    data = MixedBatches(x, y, 4, 16, AugmentParams(**policy), seed=1)
    assert len(data) == 3
    images, labels = data[0]
    assert images.dtype == np.uint8 and images.shape == (16, 8, 8, 3)
    assert labels.shape == (16, 4) and np.allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert (labels.max(axis=1) < 0.999).any()  # some labels are mixed
    seen = np.concatenate([data[i][1] for i in range(len(data))])
    assert len(seen) == 40
    first = data[0][1]
    data.on_epoch_end()
    assert not np.allclose(first, data[0][1])  # reshuffled each epoch


def test_the_loss_takes_mixed_labels_in_training_and_integer_labels_in_validation():
    loss = MixedLabelCrossentropy(label_smoothing=0.0)
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    soft = np.array([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]], "float32")
    assert float(loss(soft, p)) == pytest.approx(-(soft * np.log(p)).sum(axis=1).mean(), rel=1e-5)
    assert float(loss(np.array([0, 2]), p)) == pytest.approx(-(np.log(0.7) + np.log(0.8)) / 2, rel=1e-5)
    accuracy = HardLabelAccuracy()
    accuracy.update_state(soft, p)  # argmax of the mixed label: 0 and 2, both predicted
    assert float(accuracy.result()) == 1.0
    f1 = MacroF1(3)
    f1.update_state(soft, p)
    f1.update_state(np.array([1]), p[:1])  # an integer label the model gets wrong
    assert 0 < float(f1.result()) < 1


def test_a_trial_with_mixup_scores_validation_against_the_hard_labels():
    """The issue's check: with MixUp and CutMix the loss trains on mixed labels, while accuracy is
    the share of integer validation labels the model predicts."""
    spec = _spec("augment: {mixup: true, cutmix: true, randaugment: true, random_erasing: 0.2}\n"
                 "fixed: {label_smoothing: 0.1}\n", name="mixed")
    splits = easy_splits(200, 100)
    cfg = trial_config(spec, {}, input_shape=splits.input_shape, num_classes=10)
    assert cfg.augment.soft_labels and cfg.augment.randaugment
    result, model = train(cfg, splits, FitOptions(max_epochs=2, patience=2, metric="val_macro_f1"), seed=0)
    predicted = model.predict(splits.x_val, verbose=0).argmax(axis=1)
    assert result.best_val_accuracy == pytest.approx(float((predicted == splits.y_val).mean()), abs=1e-6)
    assert result.epochs_run == 2


def test_policies_are_knobs_a_study_searches_and_switches():
    spec = _spec("augment: {randaugment_ops: 3}\n"
                 "space:\n  learning_rate: {choices: [0.001]}\n  mixup: {choices: [true, false]}\n"
                 "  mixup_alpha: {low: 0.1, high: 0.4}\n  random_erasing: {low: 0.0, high: 0.5}\n"
                 "  randaugment: {choices: [true, false]}\n")
    cfg = trial_config(spec, {"mixup": True, "mixup_alpha": 0.3, "random_erasing": 0.25, "randaugment": True},
                       input_shape=(32, 32, 3), num_classes=10)
    assert (cfg.augment.mixup, cfg.augment.mixup_alpha, cfg.augment.random_erasing) == (True, 0.3, 0.25)
    assert cfg.augment.randaugment_ops == 3
    off = trial_config(spec, {"mixup": False, "mixup_alpha": 0.3, "random_erasing": 0.0, "randaugment": False},
                       input_shape=(32, 32, 3), num_classes=10)
    assert off.augment is None  # nothing on: no augmentation at all
    assert spec.augments  # so a feature-cache study of it runs its base on every batch


def test_a_study_without_policies_keeps_its_hash():
    """Written before the policies existed: same hash, so its workers still join it."""
    plain = _spec("augment: {horizontal_flip: true}\n")
    assert "mixup" not in plain.hashed_fields()["augment"]
    assert plain.hashed_fields()["augment"]["horizontal_flip"] is True
    assert _spec("augment: {horizontal_flip: true, mixup: true}\n").space_hash() != plain.space_hash()


@pytest.mark.parametrize("extra,where", [
    ("augment: {mixup_alpha: 0}\n", "augment"),
    ("augment: {random_erasing: 1.5}\n", "augment"),
    ("augment: {randaugment_ops: 20}\n", "augment"),
    ("augment: {cutmix: maybe}\n", "augment.cutmix"),
])
def test_a_bad_policy_is_refused_at_its_field(extra, where):
    with pytest.raises(StudySpecError) as err:
        _spec(extra)
    assert where in str(err.value)


def test_a_loss_of_ones_own_beside_mixup_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "extras.py").write_text("import keras\n\ndef loss(knobs):\n    return keras.losses.CategoricalCrossentropy()\n")
    with pytest.raises(StudySpecError) as err:
        _spec("space:\n  learning_rate: {choices: [0.001]}\n  cutmix: {choices: [true, false]}\n"
              "training: {loss: extras.py:loss}\n")
    assert "training.loss" in str(err.value) and "cutmix train on mixed one-hot labels" in str(err.value)
