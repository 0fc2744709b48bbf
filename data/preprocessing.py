"""Normalisation and augmentation as Keras 3 layers, so they run inside the compiled train
step (on the accelerator, on the TensorFlow and JAX backends alike) with no per-image Python.

Augmentation is one layer, RandomAffine: per image it draws a flip, a rotation, a shift and a
zoom, composes them into one affine transform and resamples once with
keras.ops.image.affine_transform. Compared with keras.preprocessing.image.ImageDataGenerator
(seed 000's settings: rotation_range=15, width/height_shift_range=0.1, horizontal_flip=True):
- the same knobs with the same meaning: rotation uniform in [-r, r] degrees, shifts uniform in
  [-s, s] x width/height, zoom uniform in [1 - z, 1 + z] (< 1 zooms in), flips with p = 0.5;
- the same single resampling (IDG also composes its transforms into one matrix), bilinear;
- fill "nearest" by default, IDG's default (Keras's own Random* layers default to "reflect");
- rotation about the image centre ((w - 1) / 2, (h - 1) / 2), as IDG;
- IDG draws its parameters in NumPy per image on the CPU, one image at a time; RandomAffine draws
  them for the whole batch with keras.random (seeded) and transforms the batch in one op.
"""

from __future__ import annotations

from typing import Literal

import keras
import numpy as np
from keras import ops

NormMode = Literal["scale", "zscore"]


from data._augment import SEED000_AUGMENT, AugmentParams

__all__ = ["SEED000_AUGMENT", "AugmentParams", "RandomAffine", "augmentation_layers", "channel_stats",
           "normalization_layer", "training_model"]


@keras.saving.register_keras_serializable(package="cnn_search")
class RandomAffine(keras.layers.Layer):
    """Flip, rotate, shift and zoom each image with one affine resampling (training only)."""

    def __init__(self, rotation: float = 0.0, width_shift: float = 0.0, height_shift: float = 0.0,
                 horizontal_flip: bool = False, vertical_flip: bool = False, zoom: float = 0.0,
                 fill_mode: str = "nearest", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.params = AugmentParams(rotation, width_shift, height_shift, horizontal_flip, vertical_flip, zoom,
                                    fill_mode)  # only its affine part is this layer's
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n, bound):
        return keras.random.uniform((n,), -bound, bound, seed=self.seed_generator)

    def _sign(self, n, enabled: bool):
        if not enabled:
            return ops.ones((n,))
        return ops.where(keras.random.uniform((n,), seed=self.seed_generator) < 0.5, -1.0, 1.0)

    def call(self, images, training=None):
        if not training:
            return images
        p = self.params
        n = ops.shape(images)[0]
        h, w = images.shape[1], images.shape[2]
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        theta = self._uniform(n, p.rotation * np.pi / 180.0)
        z = 1.0 + self._uniform(n, p.zoom)
        sx, sy = self._sign(n, p.horizontal_flip), self._sign(n, p.vertical_flip)
        tx, ty = self._uniform(n, p.width_shift * w), self._uniform(n, p.height_shift * h)
        cos, sin = ops.cos(theta) * z, ops.sin(theta) * z
        # Output pixel (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2), about the centre.
        a0, a1, b0, b1 = cos * sx, -sin * sy, sin * sx, cos * sy
        a2 = cx + tx - a0 * cx - a1 * cy
        b2 = cy + ty - b0 * cx - b1 * cy
        zeros = ops.zeros_like(a0)
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return ops.image.affine_transform(images, ops.cast(transform, images.dtype), interpolation="bilinear",
                                          fill_mode=p.fill_mode)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **self.params.affine, "seed": self.seed}


def augmentation_layers(aug: AugmentParams, *, seed: int) -> list:
    """The in-graph augmentation for `aug`, seeded (empty when none is enabled): RandomAffine, then
    Keras's RandAugment and RandomErasing on the 0-255 pixels. MixUp and CutMix mix labels too, so
    they run on the batches instead (search.trial._mixing)."""
    layers = []
    if aug.affine_enabled:
        layers.append(RandomAffine(**aug.affine, seed=seed, name="augment"))
    if aug.randaugment:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), num_ops=aug.randaugment_ops,
                                               factor=aug.randaugment_magnitude, seed=seed + 1, name="randaugment"))
    if aug.random_erasing:
        layers.append(keras.layers.RandomErasing(factor=aug.random_erasing, value_range=(0, 255), seed=seed + 2,
                                                 name="random_erasing"))
    return layers


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of uint8 images, in chunks (no full float copy)."""
    total = np.zeros(x.shape[-1]); total_sq = np.zeros(x.shape[-1]); n = 0
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].reshape(-1, x.shape[-1]).astype(np.float64)
        total += part.sum(0); total_sq += (part ** 2).sum(0); n += len(part)
    mean = total / n
    return mean, np.maximum(total_sq / n - mean**2, 1e-12)


def normalization_layer(mode: NormMode, x_train: np.ndarray | None = None):
    """'scale': pixels / 255 -> [0, 1]. 'zscore': per-channel (x - mean) / std from training
    statistics (seed 004)."""
    from keras import layers

    if mode == "scale":
        return layers.Rescaling(1.0 / 255.0, name="normalize")
    if mode == "zscore":
        if x_train is None:
            raise ValueError("zscore normalisation needs the training images for its statistics")
        mean, var = channel_stats(x_train)
        return layers.Normalization(mean=mean.tolist(), variance=var.tolist(), name="normalize")
    raise ValueError(f"normalization must be 'scale' or 'zscore' but got {mode!r}")


def training_model(architecture, *, normalization, augment: AugmentParams | None = None, seed: int = 0):
    """uint8 pixels -> float -> augmentation (training only) -> normalisation -> architecture."""
    import keras
    from keras import layers

    inputs = keras.Input(architecture.input_shape[1:], dtype="uint8", name="pixels")
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    for layer in augmentation_layers(augment or AugmentParams(), seed=seed):
        x = layer(x)
    x = normalization(x)
    return keras.Model(inputs, architecture(x), name=f"train_{architecture.name}")

