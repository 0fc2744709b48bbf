"""The vocabulary of search knobs: what each one means, its type and where it goes.

target "train": the optimiser and batch; "model": a keyword of the architecture preset;
"augment": the augmentation pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from models import ACTIVATIONS

# The one list of optimisers: each name a study may give -> (its class in keras.optimizers, whether
# it takes the momentum knob). Training (search/trial/_train.py) builds them from this table.
OPTIMIZERS: dict[str, tuple[str, bool]] = {
    "sgd": ("SGD", True), "adam": ("Adam", False), "adamax": ("Adamax", False), "adagrad": ("Adagrad", False),
    "adadelta": ("Adadelta", False), "rmsprop": ("RMSprop", True), "nadam": ("Nadam", False),
    "adamw": ("AdamW", False), "lion": ("Lion", False),
}

# Learning-rate schedules (search/trial/_recipe.py builds them from Keras 3's) -> the knobs each one reads.
# A schedule knob searched or fixed while no schedule the study may pick reads it is a study-file error.
LR_SCHEDULES: dict[str, frozenset[str]] = {
    "constant": frozenset(),
    "cosine": frozenset({"warmup_epochs", "min_lr_fraction"}),
    "step": frozenset({"warmup_epochs", "decay_rate", "decay_epochs"}),
    "exponential": frozenset({"warmup_epochs", "decay_rate", "decay_epochs"}),
    "inverse_time": frozenset({"warmup_epochs", "decay_rate", "decay_epochs"}),
    "plateau": frozenset({"min_lr_fraction", "plateau_patience", "plateau_factor"}),
}
SCHEDULE_KNOBS = frozenset().union(*LR_SCHEDULES.values())


@dataclass(frozen=True)
class Knob:
    kind: str  # "float", "int", "bool", "str"
    target: str  # "train", "model", "augment"
    allowed: tuple = ()  # for "str" knobs: the only values that mean anything
    min_value: float | None = None
    max_value: float | None = None  # exclusive for rates
    doc: str = ""


KNOBS: dict[str, Knob] = {
    "optimizer": Knob("str", "train", tuple(OPTIMIZERS), doc="the optimiser: " + ", ".join(OPTIMIZERS)),
    "learning_rate": Knob("float", "train", min_value=0.0, doc="the optimiser's learning rate"),
    "momentum": Knob("float", "train", min_value=0.0, max_value=1.0,
                     doc="momentum of " + " and ".join(n for n, (_, takes) in OPTIMIZERS.items() if takes)),
    "batch_size": Knob("int", "train", min_value=1),
    "lr_schedule": Knob("str", "train", tuple(LR_SCHEDULES), doc="the learning-rate schedule: " + ", ".join(LR_SCHEDULES)),
    "warmup_epochs": Knob("float", "train", min_value=0.0, doc="linear warm-up from 0 over this many epochs"),
    "decay_rate": Knob("float", "train", min_value=0.0, doc=(
        "step/exponential: the factor per decay_epochs; inverse_time: lr / (1 + rate * steps / decay steps)")),
    "decay_epochs": Knob("float", "train", min_value=0.0, doc="epochs per decay step (unset: every step, "
                                                              "as Keras's legacy `decay` argument)"),
    "min_lr_fraction": Knob("float", "train", min_value=0.0, max_value=1.0,
                            doc="cosine: the final rate; plateau: the lowest rate, as a fraction of learning_rate"),
    "plateau_patience": Knob("int", "train", min_value=1, doc="plateau: epochs without improvement before a cut"),
    "plateau_factor": Knob("float", "train", min_value=0.0, max_value=1.0, doc="plateau: the cut's factor"),
    "weight_decay": Knob("float", "train", min_value=0.0, doc="decoupled weight decay of the optimiser"),
    "clipnorm": Knob("float", "train", min_value=0.0, doc="clip each gradient to this norm"),
    "label_smoothing": Knob("float", "train", min_value=0.0, max_value=1.0),
    "ema": Knob("bool", "train", doc="keep an exponential moving average of the weights (the optimiser's use_ema)"),
    "dense_layers": Knob("int", "model", min_value=0, max_value=8, doc="number of hidden dense layers"),
    "dense_units": Knob("int", "model", min_value=1, doc="width of each hidden dense layer (dense_units_0, _1, ...)"),
    "activation": Knob("str", "model", ACTIVATIONS),
    "dropout": Knob("float", "model", min_value=0.0, max_value=1.0, doc="the head's dropout rate"),
    "conv_dropout": Knob("float", "model", min_value=0.0, max_value=1.0, doc="dropout after each conv block"),
    "depth": Knob("int", "model", min_value=1, doc="conv blocks, or WRN depth (6n+4)"),
    "width": Knob("int", "model", min_value=1, doc="WRN widen factor"),
    "base_filters": Knob("int", "model", min_value=1),
    "batch_norm": Knob("bool", "model"),
    "l2": Knob("float", "model", min_value=0.0),
    "augment": Knob("bool", "augment", doc="augmentation on/off"),
    "rotation": Knob("float", "augment", min_value=0.0, max_value=180.0, doc="degrees"),
    "width_shift": Knob("float", "augment", min_value=0.0, max_value=1.0),
    "height_shift": Knob("float", "augment", min_value=0.0, max_value=1.0),
    "zoom": Knob("float", "augment", min_value=0.0, max_value=1.0),
    "horizontal_flip": Knob("bool", "augment"),
    "vertical_flip": Knob("bool", "augment"),
    "randaugment": Knob("bool", "augment", doc="Keras's RandAugment on or off"),
    "randaugment_ops": Knob("int", "augment", min_value=1, max_value=14, doc="RandAugment's operations per image"),
    "randaugment_magnitude": Knob("float", "augment", min_value=0.0, max_value=1.0, doc="RandAugment's factor"),
    "random_erasing": Knob("float", "augment", min_value=0.0, max_value=1.0, doc="RandomErasing's probability"),
    "mixup": Knob("bool", "augment", doc="MixUp on the training batches on or off"),
    "mixup_alpha": Knob("float", "augment", min_value=0.0, doc="MixUp's Beta(alpha, alpha)"),
    "cutmix": Knob("bool", "augment", doc="CutMix on the training batches on or off"),
    "cutmix_alpha": Knob("float", "augment", min_value=0.0, doc="CutMix's Beta(alpha, alpha)"),
}


def check_value(name: str, value: object) -> str | None:
    """None if `value` is a valid value for knob `name`, else what is wrong with it."""
    knob = KNOBS[name]
    if knob.kind == "bool":
        ok = isinstance(value, bool)
    elif knob.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif knob.kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        return f"{value!r} is not a {knob.kind}"
    if knob.allowed and value not in knob.allowed:
        return f"{value!r} is not one of {', '.join(map(str, knob.allowed))}"
    if knob.min_value is not None and value < knob.min_value:  # type: ignore[operator]
        return f"{value!r} is below the minimum {knob.min_value}"
    if knob.max_value is not None and value >= knob.max_value and knob.kind == "float":  # type: ignore[operator]
        return f"{value!r} must be below {knob.max_value}"
    if knob.max_value is not None and knob.kind == "int" and value > knob.max_value:  # type: ignore[operator]
        return f"{value!r} is above the maximum {knob.max_value}"
    return None


def fits(value: object, choices: tuple | list | None, low: float | None, high: float | None) -> bool:
    """Whether a knob with these choices (or this range) can take `value`."""
    if choices is not None:
        return value in choices
    return isinstance(value, (int, float)) and low <= value <= high  # type: ignore[operator]


def model_keyword(knob: str) -> str:
    """The architecture keyword a model knob sets (dense_layers sets how many dense_units there are)."""
    return "dense_units" if knob == "dense_layers" else knob


def knob_problem(knob: object, architecture: str | None, keywords: Collection[str]) -> str | None:
    """None if a study may search or fix `knob` for an architecture taking these keywords."""
    if knob not in KNOBS:
        return f"unknown knob {knob!r}; knobs: {', '.join(KNOBS)}"
    keyword = model_keyword(knob)  # type: ignore[arg-type]
    if KNOBS[knob].target == "model" and architecture is not None and keyword not in keywords:
        return f"architecture {architecture} has no knob {keyword!r}; its knobs: {sorted(keywords)}"
    return None


def parameter_knob(key: object) -> object:
    """The knob a trial's parameter belongs to: itself, or dense_units for dense_units_<i>."""
    return re.sub(r"_\d+$", "", key) if isinstance(key, str) and key.startswith("dense_units_") else key


def parameter_problem(key: object) -> str | None:
    """None if `key` names a trial's parameter: a knob, or one dense layer's width dense_units_<i>."""
    if parameter_knob(key) not in KNOBS:
        return f"unknown knob {key!r}"
    if key == "dense_units":
        return ("a warm start names each dense layer's width: dense_units_0, dense_units_1, ... "
                "(the trial's parameters), not dense_units")
    return None
