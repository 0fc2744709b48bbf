"""Typed parameter objects: what a builder needs to build one architecture.

These are plain frozen dataclasses. They validate themselves on construction and say what
they got, so a bad value fails where it is made, not deep inside Keras.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

ACTIVATIONS = ("relu", "elu", "selu", "gelu", "tanh", "sigmoid", "hard_sigmoid", "linear")
BatchNormMode = Literal["none", "conv", "stage"]


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1) but got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive but got {value!r}")


@dataclass(frozen=True)
class ConvSpec:
    """One Conv2D layer."""

    filters: int
    kernel: int = 3
    stride: int = 1
    padding: Literal["same", "valid"] = "same"

    def __post_init__(self) -> None:
        _check_positive("filters", self.filters)
        _check_positive("kernel", self.kernel)
        _check_positive("stride", self.stride)
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid' but got {self.padding!r}")


@dataclass(frozen=True)
class Stage:
    """Convolutions, then optional 2x2 max pooling, then optional dropout."""

    convs: tuple[ConvSpec, ...]
    pool: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.convs:
            raise ValueError("a stage needs at least one convolution but got none")
        _check_rate("stage dropout", self.dropout)


@dataclass(frozen=True)
class HeadParams:
    """The classifier on top of the features.

    flatten -> dropout(input_dropout) -> [dense(units, activation) -> batch norm? -> dropout]*
    -> dense(num_classes) -> softmax.
    """

    dense_units: tuple[int, ...] = ()
    activation: str = "relu"
    input_dropout: float = 0.0
    dropout: float = 0.0
    batch_norm: bool = False

    def __post_init__(self) -> None:
        for units in self.dense_units:
            _check_positive("dense units", units)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} but got {self.activation!r}")
        _check_rate("input_dropout", self.input_dropout)
        _check_rate("dropout", self.dropout)


@dataclass(frozen=True)
class _Common:
    input_shape: tuple[int, int, int]
    num_classes: int
    head: HeadParams = HeadParams()
    l2: float = 0.0

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or min(self.input_shape) <= 0:
            raise ValueError(f"input_shape must be (height, width, channels) but got {self.input_shape!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 but got {self.num_classes!r}")
        if self.l2 < 0:
            raise ValueError(f"l2 cannot be negative but got {self.l2!r}")


@dataclass(frozen=True)
class ConvNetParams(_Common):
    """Plain stacks of convolution stages: seed 000's Models 1-3, seed 001, 002, 003, 004's VGG16.

    batch_norm: "none"; "conv" (after every convolution, seeds 000/003/004); "stage" (once per
    stage after its convolutions, seed 002). freeze_base makes every convolution stage
    non-trainable (seed 002's frozen base under a searched head).
    """

    stages: tuple[Stage, ...] = ()
    activation: str = "relu"
    batch_norm: BatchNormMode = "none"
    freeze_base: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.stages:
            raise ValueError("a ConvNet needs at least one stage but got none")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} but got {self.activation!r}")
        if self.batch_norm not in ("none", "conv", "stage"):
            raise ValueError(f"batch_norm must be 'none', 'conv' or 'stage' but got {self.batch_norm!r}")


@dataclass(frozen=True)
class WRNParams(_Common):
    """Wide residual network WRN-depth-width (Zagoruyko & Komodakis 2016)."""

    depth: int = 16
    width: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40) but got {self.depth!r}")
        _check_positive("width", self.width)
        _check_rate("dropout", self.dropout)


@dataclass(frozen=True)
class TransferParams(_Common):
    """A keras.applications base (include_top=False) under a new head.

    weights: None (random), "imagenet" (needs network or Keras's cache), or a local file path.
    """

    base: Literal["vgg19", "resnet50"] = "vgg19"
    weights: str | None = None
    trainable_base: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base not in ("vgg19", "resnet50"):
            raise ValueError(f"base must be 'vgg19' or 'resnet50' but got {self.base!r}")
        height, width, channels = self.input_shape
        if channels != 3 or height < 32 or width < 32:
            raise ValueError(
                f"{self.base} needs 3-channel input of at least 32x32 but got {self.input_shape!r}"
            )


ModelParams = ConvNetParams | WRNParams | TransferParams


def replace(params: ModelParams, **changes: object) -> ModelParams:
    """dataclasses.replace that re-validates."""
    return dataclasses.replace(params, **changes)


def base_blocks(params: ModelParams) -> tuple[str, ...]:
    """A preset's conv base as blocks, in order, each named by the prefix its layers' names share
    (models/_families.py): a convnet's stages, a WRN's residual blocks. Fine-tuning unfreezes the
    last N (search/trial/_fine_tune.py); a keras.applications base has no blocks of ours."""
    if isinstance(params, ConvNetParams):
        return tuple(f"stage{i}" for i in range(1, len(params.stages) + 1))
    if isinstance(params, WRNParams):
        per_group = (params.depth - 4) // 6
        return tuple(f"group{g}_block{b}" for g in (1, 2, 3) for b in range(1, per_group + 1))
    raise ValueError(f"a {type(params).__name__} base has no blocks to unfreeze; name them with fine_tune.blocks")
