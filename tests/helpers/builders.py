"""A user's own Keras builder, written to a file for a test, and a study file naming it."""

from __future__ import annotations

from pathlib import Path

NET = '''
import keras
from keras import layers


def build(input_shape, num_classes, *, filters=8, dense_units=16, dropout=0.1, activation="relu",
          batch_norm=False, widths=(8,)):
    if filters > 32:
        raise ValueError(f"filters={filters} is too wide for this test")
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(filters, 3, activation=activation)(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten(name="features")(x)
    x = layers.Dense(dense_units, activation=activation)(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
'''

def builder_file(folder: Path, body: str = NET, name: str = "net.py", function: str = "build") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(body)
    return f"{folder / name}:{function}"

def study(ref: str, space: str = "  filters: {choices: [4, 8]}\n", extra: str = "") -> str:
    return (f'architecture: {{builder: "{ref}"}}\ndataset: cifar10\nspace:\n{space}'
            "  learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
            f"sampler: {{name: random, seed: 0}}\npruner: none\nbudget: {{trials: 2, max_epochs: 1}}\n{extra}")
