"""Named presets: every architecture described in ../shared/seeds/, reproduced exactly.

A preset is a function with keyword-only knobs whose defaults are the documented values. The
knobs it accepts are exactly what a study may search for that preset (`Preset.knobs`).
Where a document leaves a value out, the choice made here is written beside it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from models._params import ConvNetParams, ConvSpec, HeadParams, ModelParams, Stage, TransferParams, WRNParams

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    source: str
    summary: str
    make: Callable[..., ModelParams]

    @property
    def knobs(self) -> dict[str, object]:
        """The knobs this preset accepts, with their documented defaults."""
        sig = inspect.signature(self.make)
        return {
            n: p.default for n, p in sig.parameters.items() if n not in ("input_shape", "num_classes")
        }

    def params(self, *, input_shape: Shape, num_classes: int, **knobs: object) -> ModelParams:
        unknown = sorted(set(knobs) - set(self.knobs))
        if unknown:
            raise ValueError(
                f"preset {self.name!r} has no knob {', '.join(unknown)}; its knobs are {sorted(self.knobs)}"
            )
        return self.make(input_shape=input_shape, num_classes=num_classes, **knobs)


def doubling_stages(
    depth: int, *, base_filters: int, convs_per_stage: int, dropout: float | Sequence[float], max_filters: int = 512
) -> tuple[Stage, ...]:
    """VGG-style stages: `depth` stages of 3x3 'same' convs, filters doubling up to max_filters."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1 but got {depth!r}")
    rates = [dropout] * depth if isinstance(dropout, (int, float)) else list(dropout)
    if len(rates) < depth:
        raise ValueError(f"need {depth} stage dropout rates but got {len(rates)}")
    return tuple(
        Stage(
            tuple(ConvSpec(min(base_filters * 2**i, max_filters)) for _ in range(convs_per_stage)),
            dropout=rates[i],
        )
        for i in range(depth)
    )


# --- seed 000: CIFAR-10, Xinyi Li ------------------------------------------------------------


def s000_model_1(*, input_shape: Shape, num_classes: int, activation: str = "relu") -> ModelParams:
    """conv32-pool-conv64-pool-dense (3x3 'valid' convs): 42,442 parameters on CIFAR-10."""
    return ConvNetParams(
        input_shape=input_shape,
        num_classes=num_classes,
        stages=(Stage((ConvSpec(32, padding="valid"),)), Stage((ConvSpec(64, padding="valid"),))),
        activation=activation,
    )


def conv_blocks(
    *,
    input_shape: Shape,
    num_classes: int,
    depth: int = 3,
    base_filters: int = 32,
    convs_per_stage: int = 2,
    activation: str = "relu",
    conv_dropout: float = 0.2,
    dropout_step: float = 0.0,
    dense_units: tuple[int, ...] = (),
    dropout: float = 0.0,
    batch_norm: bool = True,
    head_batch_norm: bool = False,
    l2: float = 0.0,
    freeze_base: bool = False,
) -> ModelParams:
    """VGG-style stages of 3x3 'same' convs (filters doubling from base_filters up to 512), each
    conv optionally batch-normed, then pool and dropout (conv_dropout, rising by dropout_step per
    stage); a dense head. Seed 000's Models 2-x and 3-x and seed 003's VGG blocks are variants."""
    rates = [min(conv_dropout + dropout_step * i, 0.9) for i in range(depth)]
    return ConvNetParams(
        freeze_base=freeze_base,
        input_shape=input_shape,
        num_classes=num_classes,
        stages=doubling_stages(depth, base_filters=base_filters, convs_per_stage=convs_per_stage, dropout=rates),
        activation=activation,
        batch_norm="conv" if batch_norm else "none",
        head=HeadParams(dense_units=tuple(dense_units), activation=activation, dropout=dropout,
                        batch_norm=head_batch_norm),
        l2=l2,
    )


def wrn(
    *, input_shape: Shape, num_classes: int, depth: int = 16, width: int = 8, dropout: float = 0.0, l2: float = 0.0
) -> ModelParams:
    """WRN-d-k; seed 000 trained WRN-16-8 (86.17%) and wanted WRN-28-10 (depth=28, width=10)."""
    return WRNParams(
        input_shape=input_shape, num_classes=num_classes, depth=depth, width=width, dropout=dropout, l2=l2
    )


# --- seed 001: CIFAR-10 tutorial ---------------------------------------------------------------


def s001_model_1(
    *, input_shape: Shape, num_classes: int, activation: str = "relu", dense_units: tuple[int, ...] = (512,),
    dropout: float = 0.5,
) -> ModelParams:
    """5x5 stride-2 convs (32, 32), pool, dropout 0.25, dense 512: 181,162 parameters."""
    return ConvNetParams(
        input_shape=input_shape,
        num_classes=num_classes,
        stages=(
            Stage((ConvSpec(32, 5, 2, "same"), ConvSpec(32, 5, 2, "valid")), dropout=0.25),
        ),
        activation=activation,
        head=HeadParams(dense_units=tuple(dense_units), activation=activation, dropout=dropout),
    )


def s001_model_2(
    *, input_shape: Shape, num_classes: int, activation: str = "relu", dense_units: tuple[int, ...] = (512,),
    dropout: float = 0.5,
) -> ModelParams:
    """conv5-conv5-pool-conv3-conv3-pool, dropout 0.5, dense 512: 252,378 parameters."""
    return ConvNetParams(
        input_shape=input_shape,
        num_classes=num_classes,
        stages=(
            Stage((ConvSpec(32, 5, 1, "same"), ConvSpec(32, 5, 1, "valid")), dropout=0.5),
            Stage((ConvSpec(32, 3, 1, "valid"), ConvSpec(16, 3, 1, "valid")), dropout=0.5),
        ),
        activation=activation,
        head=HeadParams(dense_units=tuple(dense_units), activation=activation, dropout=dropout),
    )


# --- seed 002: CIFAR-100, randomized grid search over the head ---------------------------------


def s002_vgg_base(
    *,
    input_shape: Shape,
    num_classes: int,
    dense_units: tuple[int, ...] = (512,),
    activation: str = "sigmoid",
    dropout: float = 0.5,
    freeze_base: bool = False,
) -> ModelParams:
    """VGG-like base 64x2,128x2,256x3,512x3 (BN once per block), flatten, dropout 0.5, dense 512.

    8,739,492 parameters on CIFAR-100, 1,920 non-trainable. The head's activation is the grid
    search's best (sigmoid); `freeze_base` trains only the head, as the fc_head study does.
    """
    widths = ((64, 2), (128, 2), (256, 3), (512, 3))
    return ConvNetParams(
        input_shape=input_shape,
        num_classes=num_classes,
        stages=tuple(Stage(tuple(ConvSpec(f) for _ in range(n))) for f, n in widths),
        batch_norm="stage",
        head=HeadParams(dense_units=tuple(dense_units), activation=activation, input_dropout=dropout),
        freeze_base=freeze_base,
    )


# --- seed 003: MNIST and CIFAR-10, Laczko & Joshi ------------------------------------------------


def s003_simple_cnn(
    *, input_shape: Shape, num_classes: int, activation: str = "relu", dense_units: tuple[int, ...] = (100,),
    dropout: float = 0.0,
) -> ModelParams:
    """conv-pool-conv-conv-pool-dense-dense: the MNIST CNN (dropout 0) and, with dropout 0.2
    before and after the dense layer, the CIFAR-10 'simple CNN + dropout'.

    Not in the document: filters 32/64/64 3x3 'valid', dense 100.
    """
    return ConvNetParams(
        input_shape=input_shape,
        num_classes=num_classes,
        stages=(
            Stage((ConvSpec(32, padding="valid"),)),
            Stage((ConvSpec(64, padding="valid"), ConvSpec(64, padding="valid"))),
        ),
        activation=activation,
        head=HeadParams(
            dense_units=tuple(dense_units), activation=activation, input_dropout=dropout, dropout=dropout
        ),
    )


def _transfer(base: str):
    def make(
        *,
        input_shape: Shape,
        num_classes: int,
        weights: str | None = None,
        trainable_base: bool = False,
        dense_units: tuple[int, ...] = (512,),
        activation: str = "relu",
        dropout: float = 0.5,
        batch_norm: bool = True,
    ) -> ModelParams:
        return TransferParams(
            input_shape=input_shape,
            num_classes=num_classes,
            base=base,  # type: ignore[arg-type]
            weights=weights,
            trainable_base=trainable_base,
            head=HeadParams(
                dense_units=tuple(dense_units), activation=activation, dropout=dropout, batch_norm=batch_norm
            ),
        )

    return make


# --- seed 004: VGG16 on CIFAR-10 ---------------------------------------------------------------


def s004_vgg16(
    *,
    input_shape: Shape,
    num_classes: int,
    l2: float = 5e-4,
    dense_units: tuple[int, ...] = (512,),
    activation: str = "relu",
    dropout: float = 0.5,
    batch_norm: bool = True,
    freeze_base: bool = False,
) -> ModelParams:
    """VGG16's 13 convs (64x2,128x2,256x3,512x3,512x3) at 32x32 with BN and L2 kernel
    regularization. Not in the document: L2 5e-4, dense 512, dropout 0.5."""
    widths = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
    return ConvNetParams(
        freeze_base=freeze_base,
        input_shape=input_shape,
        num_classes=num_classes,
        stages=tuple(Stage(tuple(ConvSpec(f) for _ in range(n))) for f, n in widths),
        batch_norm="conv" if batch_norm else "none",
        head=HeadParams(dense_units=tuple(dense_units), activation=activation, dropout=dropout, batch_norm=batch_norm),
        l2=l2,
    )


def variant(make: Callable[..., ModelParams], **defaults: object) -> Callable[..., ModelParams]:
    """The same maker with other documented defaults (a depth, a dropout rate)."""

    def made(**kwargs: object) -> ModelParams:
        return make(**{**defaults, **kwargs})

    sig = inspect.signature(make)
    made.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(default=defaults.get(p.name, p.default)) for p in sig.parameters.values()]
    )
    made.__doc__ = make.__doc__
    return made


# Seed 000 Models 2-x: one conv per block, dropout 0.25, dense 512 with dropout 0.5, no batch norm.
# Not in the document (chosen after its reference [4], Keras's cifar10_cnn example).
S000_MODEL_2 = variant(conv_blocks, convs_per_stage=1, conv_dropout=0.25, dense_units=(512,), dropout=0.5,
                       batch_norm=False)
# Seed 000 Models 3-x: pairs of conv-act-BN, dropout rising 0.2, 0.3, 0.4, ... (after its reference
# [6]), flatten-softmax. Default depth 4 is Model 3-2.
S000_MODEL_3 = variant(conv_blocks, depth=4, dropout_step=0.1)
# Seed 003: three VGG blocks (BN after each conv) with dropout 0.2 and a dense block (dense 128,
# BN, dropout 0.2): 84.42%, 87.11% with shift/flip augmentation. Filters and width are ours.
S003_VGG_BLOCKS = variant(conv_blocks, dense_units=(128,), dropout=0.2, head_batch_norm=True)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("s000_model_1", "convnet", "000", "Model 1: conv32-pool-conv64-pool-dense", s000_model_1),
        Preset("s000_model_2_1", "convnet", "000", "Model 2-1: 3 conv blocks + dense", variant(S000_MODEL_2, depth=3)),
        Preset("s000_model_2_2", "convnet", "000", "Model 2-2: 4 conv blocks + dense", variant(S000_MODEL_2, depth=4)),
        Preset("s000_model_2_3", "convnet", "000", "Model 2-3: 5 conv blocks + dense", variant(S000_MODEL_2, depth=5)),
        Preset("s000_model_3_1", "convnet", "000", "Model 3-1: 3 VGG pairs + BN", variant(S000_MODEL_3, depth=3)),
        Preset("s000_model_3_2", "convnet", "000", "Model 3-2: 4 VGG pairs + BN (best, 89.38%)", variant(S000_MODEL_3, depth=4)),
        Preset("s000_model_3_3", "convnet", "000", "Model 3-3: 5 VGG pairs + BN", variant(S000_MODEL_3, depth=5)),
        Preset("s000_wrn_16_8", "wrn", "000", "WRN-16-8 (WRN-d-k family)", wrn),
        Preset("s001_model_1", "convnet", "001", "model_1: 5x5 stride-2 convs", s001_model_1),
        Preset("s001_model_2", "convnet", "001", "model_2: conv5 x2, conv3 x2", s001_model_2),
        Preset("s002_vgg_base", "convnet", "002", "VGG-like base + dense head (fc_head)", s002_vgg_base),
        Preset("s003_mnist_cnn", "convnet", "003", "MNIST CNN", s003_simple_cnn),
        Preset("s003_simple_cnn_dropout", "convnet", "003", "simple CNN + dropout", variant(s003_simple_cnn, dropout=0.2)),
        Preset("s003_vgg_blocks", "convnet", "003", "VGG blocks + dropout + BN", S003_VGG_BLOCKS),
        Preset("s003_vgg19_transfer", "transfer", "003", "VGG19 base + new head", _transfer("vgg19")),
        Preset("s003_resnet50_transfer", "transfer", "003", "ResNet50 base + new head", _transfer("resnet50")),
        Preset("s004_vgg16", "convnet", "004", "VGG16 at 32x32, BN, L2", s004_vgg16),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
