"""A trial's training recipe from Keras 3's parts: the learning-rate schedule (with warm-up), the
optimiser with its weight decay, gradient clipping and EMA, and the loss with label smoothing.

Each knob is declared in search.spec._knobs (target "train") and arrives in TrainParams; this module
is the one place that turns them into Keras objects. Our own code is the linear warm-up in front of
a schedule that has none (Keras's CosineDecay has its own `warmup_steps`; the others do not) and the
sparse loss with label smoothing (Keras's SparseCategoricalCrossentropy takes no `label_smoothing`).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from search.spec import OPTIMIZERS, TrainParams, minimized


@keras.saving.register_keras_serializable(package="cnn_search")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """0 -> `after`'s first rate over `warmup_steps` steps, then `after` (counted from the warm-up's end)."""

    def __init__(self, after: keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int) -> None:
        self.after, self.warmup_steps = after, int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = ops.cast(self.warmup_steps, "float32")
        peak = ops.cast(self.after(0), "float32")
        return ops.where(step < warm, peak * (step + 1.0) / ops.maximum(warm, 1.0), self.after(ops.maximum(step - warm, 0.0)))

    def get_config(self) -> dict:
        return {"after": keras.saving.serialize_keras_object(self.after), "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config: dict) -> LinearWarmup:
        return cls(keras.saving.deserialize_keras_object(config["after"]), config["warmup_steps"])


def learning_rate(train: TrainParams, steps_per_epoch: int, max_epochs: int):
    """The optimiser's learning rate: a float (constant, plateau: ReduceLROnPlateau changes it) or a
    Keras schedule over the trial's steps. `decay_epochs` None decays per step, as Keras's legacy
    `decay` argument did: inverse_time with decay_rate d is lr / (1 + d * iterations)."""
    lr, schedule = train.learning_rate, train.lr_schedule
    if schedule in ("constant", "plateau"):
        return lr
    warmup = int(round(train.warmup_epochs * steps_per_epoch))
    total = max(max_epochs * steps_per_epoch - warmup, 1)
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, decay_steps=total, alpha=train.min_lr_fraction,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    decay_steps = 1 if train.decay_epochs is None else max(int(round(train.decay_epochs * steps_per_epoch)), 1)
    if schedule == "inverse_time":
        after = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps, train.decay_rate)
    else:  # step: multiplied by decay_rate every decay_steps; exponential: smoothly
        after = keras.optimizers.schedules.ExponentialDecay(lr, decay_steps, train.decay_rate,
                                                            staircase=schedule == "step")
    return LinearWarmup(after, warmup) if warmup else after


def make_optimizer(train: TrainParams, steps_per_epoch: int = 1, max_epochs: int = 1) -> keras.optimizers.Optimizer:
    """The study's optimiser, by its entry in search.spec.OPTIMIZERS (Keras class, takes momentum), with
    the schedule, weight decay, clipping and EMA the trial asks for (each passed only when set, so an
    optimiser keeps its own default: AdamW's weight decay is 0.004 unless the study says otherwise)."""
    if train.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {train.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    class_name, takes_momentum = OPTIMIZERS[train.optimizer]
    options: dict = {"momentum": train.momentum} if takes_momentum else {}
    if train.weight_decay is not None:
        options["weight_decay"] = train.weight_decay
    if train.clipnorm is not None:
        options["clipnorm"] = train.clipnorm
    if train.ema:
        options["use_ema"] = True
    return getattr(keras.optimizers, class_name)(learning_rate(train, steps_per_epoch, max_epochs), **options)


@keras.saving.register_keras_serializable(package="cnn_search")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy against integer labels with label smoothing: the labels one-hot encoded inside."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_smoothed_crossentropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_loss(train: TrainParams) -> str | keras.losses.Loss:
    if not train.label_smoothing:
        return "sparse_categorical_crossentropy"
    return SparseSmoothedCrossentropy(train.label_smoothing)


def recipe_callbacks(train: TrainParams, monitor: str = "val_accuracy") -> list[keras.callbacks.Callback]:
    """What the recipe needs beside the optimiser, placed before early stopping: with `ema`, Keras's
    SwapEMAWeights validates each epoch on the averaged weights and leaves them in the model at the
    epoch's end (so the trial is scored on them, and early stopping keeps them); ReduceLROnPlateau for
    `plateau`, on the objective metric."""
    callbacks: list[keras.callbacks.Callback] = []
    if train.ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if train.lr_schedule != "plateau":
        return callbacks
    return [*callbacks, keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, mode="min" if minimized(monitor) else "max", factor=train.plateau_factor,
        patience=train.plateau_patience, min_lr=train.learning_rate * train.min_lr_fraction)]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(math.ceil(n_train / batch_size), 1)
