from __future__ import annotations

import keras
import numpy as np
import pytest

from data.preprocessing import (
    SEED000_AUGMENT,
    AugmentParams,
    RandomAffine,
    augmentation_layers,
    channel_stats,
    normalization_layer,
    training_model,
)

IMAGES = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3)).astype("float32")


def test_flip_only_gives_each_image_or_its_exact_mirror():
    (layer,) = augmentation_layers(AugmentParams(horizontal_flip=True), seed=1)
    out = np.asarray(layer(IMAGES, training=True))
    same = [np.allclose(o, x, atol=1e-3) for o, x in zip(out, IMAGES)]
    mirrored = [np.allclose(o, x[:, ::-1], atol=1e-3) for o, x in zip(out, IMAGES)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54  # about half


def test_inactive_at_inference_and_nothing_when_disabled():
    layer = RandomAffine(rotation=15, horizontal_flip=True, seed=0)
    np.testing.assert_array_equal(np.asarray(layer(IMAGES, training=False)), IMAGES)
    assert augmentation_layers(AugmentParams(), seed=0) == []


def test_seeded_and_changing_between_batches():
    a = RandomAffine(rotation=15, width_shift=0.1, height_shift=0.1, horizontal_flip=True, seed=7)
    b = RandomAffine(rotation=15, width_shift=0.1, height_shift=0.1, horizontal_flip=True, seed=7)
    first_a, first_b = np.asarray(a(IMAGES, training=True)), np.asarray(b(IMAGES, training=True))
    np.testing.assert_allclose(first_a, first_b)
    assert not np.allclose(np.asarray(a(IMAGES, training=True)), first_a)
    assert first_a.shape == IMAGES.shape and not np.allclose(first_a, IMAGES)


def test_shift_moves_content_by_about_the_range():
    """A pure shift of at most 10% moves a bright square by at most 3.2 pixels."""
    img = np.zeros((16, 32, 32, 1), "float32")
    img[:, 12:20, 12:20] = 255.0
    out = np.asarray(RandomAffine(width_shift=0.1, height_shift=0.1, fill_mode="constant", seed=3)(img, training=True))
    ys, xs = np.mgrid[0:32, 0:32]
    for o in out:
        w = o[..., 0] / o.sum()
        cy, cx = (w * ys).sum(), (w * xs).sum()
        assert abs(cy - 15.5) <= 3.3 and abs(cx - 15.5) <= 3.3


def test_zscore_uses_training_statistics():
    x = np.random.default_rng(1).integers(0, 256, (100, 8, 8, 3), dtype=np.uint8)
    mean, var = channel_stats(x, chunk=7)
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(var, x.reshape(-1, 3).var(0))
    out = np.asarray(normalization_layer("zscore", x)(x.astype("float32")))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), 0, atol=1e-4)
    with pytest.raises(ValueError, match="needs the training images"):
        normalization_layer("zscore")


def test_training_model_takes_uint8_and_saves_with_its_augmentation(tmp_path):
    arch = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model = training_model(arch, normalization=normalization_layer("scale"), augment=SEED000_AUGMENT, seed=0)
    assert model.input.dtype == "uint8"
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    x = IMAGES[:4].astype("uint8")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
