"""MixUp and CutMix: Keras 3's layers on the training batches, with the labels they mix.

The other augmentation runs inside the model graph (data.preprocessing), but a model never sees its
labels, and these two mix them: each training batch is drawn here, its images and one-hot labels
mixed by keras.layers.MixUp or keras.layers.CutMix (one of the two per batch, p = 0.5, when both are
on, as timm's Mixup does), and fed to fit as a PyDataset. Validation and the test keep their integer
labels, so the loss and the metrics below take either: soft labels in training, hard ones in
validation, and every accuracy is computed against a hard label (the argmax of a mixed one).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from data.preprocessing import AugmentParams
from search.trial._batches import Batches
from search.trial._recipe import SparseSmoothedCrossentropy


def _is_soft(y_true, y_pred) -> bool:
    """Static: one-hot or mixed labels (batch, classes) rather than integer ones (batch,) or (batch, 1)."""
    return len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == y_pred.shape[-1] != 1


def hard_labels(y_true, y_pred):
    """Integer labels: the argmax of soft ones, integer ones as they are."""
    return ops.argmax(y_true, axis=-1) if _is_soft(y_true, y_pred) else y_true


@keras.saving.register_keras_serializable(package="cnn_search")
class MixedLabelCrossentropy(SparseSmoothedCrossentropy):
    """The recipe's smoothed cross-entropy against integer labels (validation), and against mixed
    one-hot labels as they are (training), with label smoothing on top of the mixing."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "mixed_label_crossentropy", **kwargs) -> None:
        super().__init__(label_smoothing, name=name, **kwargs)

    def call(self, y_true, y_pred):
        if _is_soft(y_true, y_pred):
            return keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)
        return super().call(y_true, y_pred)


class _OnHardLabels:
    """A Keras metric of integer labels, fed the argmax of mixed ones."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(hard_labels(y_true, y_pred), y_pred, sample_weight)  # type: ignore[misc]


@keras.saving.register_keras_serializable(package="cnn_search")
class HardLabelAccuracy(_OnHardLabels, keras.metrics.SparseCategoricalAccuracy):
    pass


@keras.saving.register_keras_serializable(package="cnn_search")
class HardLabelTopK(_OnHardLabels, keras.metrics.SparseTopKCategoricalAccuracy):
    pass


class MixedBatches(Batches):
    """Shuffled training batches, each mixed by MixUp or CutMix; reshuffled every epoch (seeded).

    Images come back in the training arrays' dtype (uint8 pixels rounded after mixing), labels as
    float32 one-hot rows mixed in the same proportions as the pixels."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, augment: AugmentParams,
                 *, seed: int) -> None:
        if not augment.soft_labels:
            raise ValueError("MixedBatches needs mixup or cutmix on")
        super().__init__(x, y, batch_size, shuffle=True, seed=seed)
        self.num_classes = int(num_classes)
        self.mixers = ([keras.layers.MixUp(alpha=augment.mixup_alpha, seed=seed)] if augment.mixup else []) + (
            [keras.layers.CutMix(factor=augment.cutmix_alpha, seed=seed + 1)] if augment.cutmix else [])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rows(index)
        images = self.x[idx].astype("float32")
        labels = keras.utils.to_categorical(self.y[idx], self.num_classes).astype("float32")
        mixer = self.mixers[0] if len(self.mixers) == 1 else self.mixers[int(self.rng.random() < 0.5)]
        mixed = mixer({"images": images, "labels": labels}, training=True)
        images = ops.convert_to_numpy(mixed["images"])
        if np.issubdtype(self.x.dtype, np.integer):
            info = np.iinfo(self.x.dtype)
            images = np.clip(np.rint(images), info.min, info.max).astype(self.x.dtype)
        return images, ops.convert_to_numpy(mixed["labels"]).astype("float32")
