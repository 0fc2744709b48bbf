"""make bench-data: our augmentation layers against ImageDataGenerator, seed 000's settings.

1. images/s producing augmented CIFAR-10 training batches of 128 (rotation 15, shifts 0.1,
   horizontal flip), 5 repeats each;
2. seconds per epoch of the Model 3-2 preset trained on a 10,000-image CIFAR-10 subset with each
   pipeline (epoch 1 includes graph tracing and is not counted; the mean of epochs 2-3 is).
Prints each figure and the ratios, and appends them with the machine to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.machine import publish, quiet_tensorflow
from data import load_dataset, stratified_subset

BATCH = 128


def _idg():
    from tensorflow.keras.preprocessing.image import ImageDataGenerator  # the legacy baseline

    return ImageDataGenerator(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1,
                              horizontal_flip=True)


def idg_images_per_s(x: np.ndarray, y: np.ndarray, n_batches: int) -> float:
    it = _idg().flow(x.astype(np.float32), y, batch_size=BATCH, seed=0)
    next(it)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * BATCH / (time.perf_counter() - start)


def layers_images_per_s(x: np.ndarray, n_batches: int) -> float:
    import keras
    import tensorflow as tf

    from data.preprocessing import SEED000_AUGMENT, augmentation_layers

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("part 1 compiles the layers with tf.function: run with KERAS_BACKEND=tensorflow")
    stack = keras.Sequential(augmentation_layers(SEED000_AUGMENT, seed=0))

    @tf.function
    def augment(batch):
        return stack(tf.cast(batch, tf.float32), training=True)

    augment(x[:BATCH]).numpy()
    start = time.perf_counter()
    for i in range(n_batches):
        lo = (i * BATCH) % (len(x) - BATCH)
        augment(x[lo:lo + BATCH]).numpy()
    return n_batches * BATCH / (time.perf_counter() - start)


class _EpochTimer:
    def __init__(self):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.t0 = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.times.append(time.perf_counter() - cb.t0)

        self.times: list[float] = []
        self.callback = Timer()


def epoch_seconds(x: np.ndarray, y: np.ndarray, pipeline: str, epochs: int) -> list[float]:
    import keras

    from data.preprocessing import SEED000_AUGMENT, normalization_layer, training_model
    from models import build, get_preset

    keras.utils.set_random_seed(0)
    arch = build(get_preset("s000_model_3_2").params(input_shape=(32, 32, 3), num_classes=10))
    timer = _EpochTimer()
    if pipeline == "idg":
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), arch])
        model.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(_idg().flow(x.astype(np.float32), y, batch_size=BATCH, seed=0), epochs=epochs, verbose=0,
                  callbacks=[timer.callback])
    else:
        model = training_model(arch, normalization=normalization_layer("scale"), augment=SEED000_AUGMENT, seed=0)
        model.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer.callback])
    keras.backend.clear_session()
    return timer.times[1:]


def _fmt(values: list[float], unit: str, digits: int = 0) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):,.{digits}f} ± {spread:,.{digits}f} {unit} (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--batches", type=int, default=40, help="batches per throughput repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the first is not counted")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    import keras

    ds = load_dataset("cifar10", data_dir=args.data_dir)
    idx = stratified_subset(ds.y_train, args.subset, seed=0)
    x, y = ds.x_train[idx], ds.y_train[idx]

    idg_rates = [idg_images_per_s(x, y, args.batches) for _ in range(args.repeats)]
    ours_rates = [layers_images_per_s(x, args.batches) for _ in range(args.repeats)]
    ratio1 = statistics.mean(ours_rates) / statistics.mean(idg_rates)
    idg_epochs = epoch_seconds(x, y, "idg", args.epochs)
    ours_epochs = epoch_seconds(x, y, "layers", args.epochs)
    ratio2 = statistics.mean(idg_epochs) / statistics.mean(ours_epochs)

    lines = [
        f"1. augmented batches of {BATCH} (rotation 15, shifts 0.1, horizontal flip), {args.batches} batches a repeat:",
        f"   ImageDataGenerator: {_fmt(idg_rates, 'images/s')}",
        f"   our RandomAffine:   {_fmt(ours_rates, 'images/s')}",
        f"   ratio (ours / ImageDataGenerator): {ratio1:.1f}x (goal: at least 5x)",
        f"2. Model 3-2 (s000_model_3_2), one epoch on {len(x):,} CIFAR-10 images, batch {BATCH}, RMSprop:",
        f"   with ImageDataGenerator: {_fmt(idg_epochs, 's/epoch', 1)}",
        f"   with RandomAffine:       {_fmt(ours_epochs, 's/epoch', 1)}",
        f"   ratio (ImageDataGenerator / ours, time per epoch): {ratio2:.2f}x",
    ]
    publish(args.output, "bench-data: augmentation pipeline vs ImageDataGenerator", keras.backend.backend(), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
