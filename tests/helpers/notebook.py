"""A builder function as a notebook defines it (in __main__, in no file), for the Python API's tests."""

from __future__ import annotations

import linecache

NOTEBOOK_CELL = '''
import keras
from keras import layers

def build(input_shape, num_classes, *, dense_units: int = 16, dropout: float = 0.1):
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
'''


def notebook_function(source: str = NOTEBOOK_CELL, name: str = "build"):
    """A function as a notebook defines it: in __main__, in no file, its cell's source in linecache
    (where IPython keeps it)."""
    cell = f"<ipython-input-{abs(hash(source))}>"
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    namespace = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    return namespace[name]
