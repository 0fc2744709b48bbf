"""Architectures: typed params -> uncompiled Keras models. Knows nothing of optuna.

Two kinds, one interface (knobs from the signature, `params(input_shape=..., num_classes=...,
**knobs)`, `build(params)`): the presets (models/_presets.py) and a user's own builders,
"file.py:build" or "package.module:build" (models/_builders.py); `architecture(name)` gives either.
"""

from __future__ import annotations

import math

from models._builders import (
    Builder,
    BuilderChangedError,
    BuilderError,
    BuilderParams,
    UserFunction,
    architecture,
    build,
    check_model,
    is_builder_reference,
    load_builder,
    load_function,
)
from models._params import (
    ACTIVATIONS,
    ConvNetParams,
    ConvSpec,
    HeadParams,
    ModelParams,
    Stage,
    TransferParams,
    WRNParams,
    base_blocks,
)
from models._presets import PRESETS, Preset, doubling_stages, get_preset

__all__ = [
    "ACTIVATIONS",
    "Builder",
    "BuilderChangedError",
    "BuilderError",
    "BuilderParams",
    "ConvNetParams",
    "ConvSpec",
    "HeadParams",
    "ModelParams",
    "PRESETS",
    "Preset",
    "Stage",
    "TransferParams",
    "WRNParams",
    "WeightsUnavailableError",
    "architecture",
    "base_blocks",
    "build",
    "check_model",
    "doubling_stages",
    "get_preset",
    "count_params",
    "is_builder_reference",
    "UserFunction",
    "load_builder",
    "load_function",
]


def count_params(model) -> tuple[int, int]:
    """(total, trainable) parameter counts, as Keras's summary reports them."""
    # From the shapes: reading the values would copy every weight off the accelerator.
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return trainable + sum(math.prod(w.shape) for w in model.non_trainable_weights), trainable


def __getattr__(name: str):
    # Keras is imported on first use of the builders, not by `import models`: the study-file
    # validation, the store and the dashboards read presets without paying for TensorFlow.
    if name == "WeightsUnavailableError":
        from models import _families

        return getattr(_families, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
