"""An example of your own model for the search service (see docs: "Your own Keras model").

A study names it `architecture: {builder: "models_dir/example_net.py:build"}`. The keyword-only
parameters after `*` are the knobs a study may search (`space:`) or fix (`fixed:`), each typed by its
default. Return an uncompiled model whose output is a softmax over `num_classes`.
"""

from __future__ import annotations

import keras
from keras import layers


def build(input_shape, num_classes, *, filters: int = 32, dense_units: int = 128, dropout: float = 0.25,
          activation: str = "relu") -> keras.Model:
    """Two conv blocks (filters, then 2 x filters), a dense layer, dropout, softmax."""
    inputs = keras.Input(input_shape)
    x = inputs
    for width in (filters, 2 * filters):
        x = layers.Conv2D(width, 3, padding="same", activation=activation)(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten(name="features")(x)  # the cut point when this model is a feature_cache.base
    x = layers.Dense(dense_units, activation=activation)(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="example_net")
