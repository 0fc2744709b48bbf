"""Small tensor-in/tensor-out helpers that every architecture is built from.

Layer names are deterministic, derived from the caller's `name`, so two builds of the same
params give the same layer names (weights files and feature caches rely on this).
"""

from __future__ import annotations

import keras
from keras import layers

from models._params import ConvSpec, HeadParams, Stage


def _regularizer(l2: float) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(l2) if l2 > 0 else None


def conv(x, spec: ConvSpec, *, activation: str | None, l2: float, name: str):
    """Conv2D with its activation fused in (Keras's own `activation=`)."""
    return layers.Conv2D(
        spec.filters,
        spec.kernel,
        strides=spec.stride,
        padding=spec.padding,
        activation=activation,
        kernel_regularizer=_regularizer(l2),
        name=name,
    )(x)


def conv_stage(x, stage: Stage, *, activation: str, batch_norm: str, l2: float, name: str):
    """convs (each optionally batch-normed) -> batch norm once ("stage") -> pool -> dropout."""
    for i, spec in enumerate(stage.convs, start=1):
        x = conv(x, spec, activation=activation, l2=l2, name=f"{name}_conv{i}")
        if batch_norm == "conv":
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
    if batch_norm == "stage":
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if stage.pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    if stage.dropout > 0:
        x = layers.Dropout(stage.dropout, name=f"{name}_dropout")(x)
    return x


def residual_block(x, filters: int, *, stride: int, dropout: float, l2: float, name: str):
    """Pre-activation wide residual block: BN-ReLU-conv3x3 (-dropout) -BN-ReLU-conv3x3, plus shortcut."""
    pre = layers.BatchNormalization(name=f"{name}_bn1")(x)
    pre = layers.Activation("relu", name=f"{name}_relu1")(pre)
    y = conv(pre, ConvSpec(filters, 3, stride), activation=None, l2=l2, name=f"{name}_conv1")
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(y)
    if dropout > 0:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = conv(y, ConvSpec(filters, 3, 1), activation=None, l2=l2, name=f"{name}_conv2")
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(pre, ConvSpec(filters, 1, stride), activation=None, l2=l2, name=f"{name}_proj")
    return layers.Add(name=f"{name}_add")([shortcut, y])


def classifier_head(x, head: HeadParams, *, num_classes: int, l2: float, flatten: bool = True):
    """flatten -> dropout -> hidden dense layers -> softmax over num_classes."""
    if flatten:
        x = layers.Flatten(name="features")(x)
    if head.input_dropout > 0:
        x = layers.Dropout(head.input_dropout, name="head_input_dropout")(x)
    for i, units in enumerate(head.dense_units, start=1):
        x = layers.Dense(
            units, activation=head.activation, kernel_regularizer=_regularizer(l2), name=f"head_dense{i}"
        )(x)
        if head.batch_norm:
            x = layers.BatchNormalization(name=f"head_bn{i}")(x)
        if head.dropout > 0:
            x = layers.Dropout(head.dropout, name=f"head_dropout{i}")(x)
    x = layers.Dense(num_classes, kernel_regularizer=_regularizer(l2), name="logits")(x)
    # float32 softmax keeps mixed-precision training numerically safe.
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)
