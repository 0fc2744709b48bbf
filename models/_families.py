"""Architecture families: one builder per family, every variant a parameter.

A builder takes a typed params object and returns an uncompiled keras.Model whose input is
float32 images of `input_shape` (scaling, normalisation and augmentation are the data
layer's job, see `data.preprocessing`).
"""

from __future__ import annotations

import os

import keras
from keras import layers

from models._blocks import classifier_head, conv, conv_stage, residual_block
from models._params import ConvNetParams, ConvSpec, ModelParams, TransferParams, WRNParams


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and cannot be had on this machine."""


def build_convnet(params: ConvNetParams, *, name: str = "convnet") -> keras.Model:
    inputs = keras.Input(params.input_shape, name="images")
    x = inputs
    for i, stage in enumerate(params.stages, start=1):
        x = conv_stage(
            x, stage, activation=params.activation, batch_norm=params.batch_norm, l2=params.l2, name=f"stage{i}"
        )
    outputs = classifier_head(x, params.head, num_classes=params.num_classes, l2=params.l2)
    model = keras.Model(inputs, outputs, name=name)
    if params.freeze_base:
        for layer in model.layers:
            if layer.name.startswith("stage"):
                layer.trainable = False
    return model


def build_wrn(params: WRNParams, *, name: str = "wrn") -> keras.Model:
    blocks_per_group = (params.depth - 4) // 6
    inputs = keras.Input(params.input_shape, name="images")
    x = conv(inputs, ConvSpec(16), activation=None, l2=params.l2, name="stem_conv")
    for group, (base, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for block in range(1, blocks_per_group + 1):
            x = residual_block(
                x,
                base * params.width,
                stride=stride if block == 1 else 1,
                dropout=params.dropout,
                l2=params.l2,
                name=f"group{group}_block{block}",
            )
    x = layers.BatchNormalization(name="final_bn")(x)
    x = layers.Activation("relu", name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = classifier_head(x, params.head, num_classes=params.num_classes, l2=params.l2, flatten=False)
    return keras.Model(inputs, outputs, name=name)


_APPLICATIONS = {
    "vgg19": ("VGG19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50": ("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


def _application_base(params: TransferParams) -> keras.Model:
    class_name, weights_file = _APPLICATIONS[params.base]
    factory = getattr(keras.applications, class_name)
    weights = params.weights
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise WeightsUnavailableError(
            f"weights file {weights!r} for {class_name} does not exist; pass the path of "
            f"{weights_file} (Keras's ImageNet no-top weights), 'imagenet' to download, or none"
        )
    try:
        return factory(include_top=False, weights=weights, input_shape=params.input_shape)
    except Exception as exc:  # Keras raises a bare Exception when the download fails.
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"ImageNet weights for {class_name} could not be downloaded ({exc}). On a machine with "
            f"network access fetch {weights_file} (keras.utils.get_file or the Keras release page), "
            f"copy it here and pass its path as weights=/path/to/{weights_file}"
        ) from exc


def build_transfer(params: TransferParams, *, name: str = "transfer") -> keras.Model:
    base = _application_base(params)
    base.trainable = params.trainable_base
    inputs = keras.Input(params.input_shape, name="images")
    # The base expects its own preprocessing of 0..255 images; our inputs are scaled to 0..1.
    x = layers.Rescaling(255.0, name="to_0_255")(inputs)
    x = base(x, training=False if not params.trainable_base else None)
    outputs = classifier_head(x, params.head, num_classes=params.num_classes, l2=params.l2)
    return keras.Model(inputs, outputs, name=name)


def build(params: ModelParams, *, name: str | None = None) -> keras.Model:
    """Build the uncompiled model that `params` describes."""
    if isinstance(params, ConvNetParams):
        return build_convnet(params, name=name or "convnet")
    if isinstance(params, WRNParams):
        return build_wrn(params, name=name or f"wrn_{params.depth}_{params.width}")
    if isinstance(params, TransferParams):
        return build_transfer(params, name=name or f"transfer_{params.base}")
    raise TypeError(f"build() takes ConvNetParams, WRNParams or TransferParams but got {type(params).__name__}")
