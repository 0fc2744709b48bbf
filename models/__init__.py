"""Architectures: typed params -> uncompiled Keras models. Knows nothing of optuna."""

from models._params import (
    ACTIVATIONS,
    ConvNetParams,
    ConvSpec,
    HeadParams,
    ModelParams,
    Stage,
    TransferParams,
    WRNParams,
)
from models._presets import PRESETS, Preset, doubling_stages, get_preset

__all__ = [
    "ACTIVATIONS",
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
    "build",
    "doubling_stages",
    "get_preset",
    "count_params",
]


def count_params(model) -> tuple[int, int]:
    """(total, trainable) parameter counts, as Keras's summary reports them."""
    trainable = sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.trainable_weights)
    total = trainable + sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.non_trainable_weights)
    return total, trainable


def __getattr__(name: str):
    # Keras is imported on first use of the builders, not by `import models`: the study-file
    # validation, the store and the dashboards read presets without paying for TensorFlow.
    if name in ("build", "WeightsUnavailableError"):
        from models import _families

        return getattr(_families, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
