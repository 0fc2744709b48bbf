"""Fidelity by data (`budget: {fidelity: data}`): the share of the training set each epoch trains on.

Hyperband and successive halving judge a trial at rungs: the first report at a step of at least
min_resource * reduction_factor**(min_early_stopping_rate + k), steps counted as Keras counts epochs,
from 0 (optuna-integration's KerasPruningCallback reports epoch e at step e). With fidelity by data,
the epochs up to the first rung train on `min_data_fraction` of the training set (a stratified subset,
the same for every trial; default 1 / reduction_factor**2), the epochs up to each later rung on
reduction_factor times more, until all of it. With Hyperband's defaults (min_resource 1,
reduction_factor 3; rungs at steps 1, 3, 9) epochs 1-2 train on 1/9 of the images, epochs 3-4 on 1/3
and every later epoch on all of them. Every trial follows the same schedule, so at each rung the pruner
compares trials that trained on the same images for the same epochs: a trial pruned at the first rung
cost 2/9 of an epoch instead of 2, at the second 0.89 instead of 4. The subsets are nested (each holds
the smaller ones), so a trial that goes on keeps training on the images it has seen and more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FIDELITIES = ("epochs", "data")
RUNG_PRUNERS = ("hyperband", "successive_halving")  # the pruners whose rungs the schedule follows


def default_min_fraction(reduction_factor: int) -> float:
    """Two rungs on part of the data: 1/9 of it at the first, 1/3 at the second (reduction_factor 3)."""
    return 1.0 / reduction_factor ** 2


def data_fractions(*, max_epochs: int, min_resource: int, reduction_factor: int, min_fraction: float | None = None,
                   min_early_stopping_rate: int = 0) -> tuple[float, ...]:
    """The share of the training set each epoch trains on, epoch 1 to max_epochs (steps 0 to max_epochs - 1)."""
    if min_resource < 1 or reduction_factor < 2 or min_early_stopping_rate < 0:
        raise ValueError(f"rungs need min_resource >= 1, reduction_factor >= 2 and min_early_stopping_rate >= 0, "
                         f"got {min_resource}, {reduction_factor} and {min_early_stopping_rate}")
    first = default_min_fraction(reduction_factor) if min_fraction is None else float(min_fraction)
    if not 0.0 < first <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1] but got {min_fraction!r}")
    fractions = []
    for step in range(max_epochs):
        rung = 0  # the rung this step leads to: the first at or after it
        while min_resource * reduction_factor ** (min_early_stopping_rate + rung) < step:
            rung += 1
        share = first * reduction_factor ** rung
        fractions.append(1.0 if share >= 1.0 - 1e-9 else share)  # 1/49 * 49 is 0.9999999999999999
    return tuple(fractions)


def rung_options(pruner: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """min_resource, reduction_factor and min_early_stopping_rate of a rung pruner, as the study gives
    them or as defaulted (Hyperband's brackets share one grid of rungs: rate 0); None for another pruner."""
    if pruner not in RUNG_PRUNERS:
        return None
    merged = {"min_early_stopping_rate": 0, **defaults, **options}
    return {"min_resource": merged.get("min_resource"), "reduction_factor": merged.get("reduction_factor"),
            "min_early_stopping_rate": merged["min_early_stopping_rate"] if pruner == "successive_halving" else 0}


def stages(fractions: Sequence[float]) -> list[tuple[int, int, float]]:
    """Consecutive epochs of one share as (first epoch, epoch after the last, share), counted from 0
    as Keras's fit counts them (initial_epoch, epochs)."""
    out: list[tuple[int, int, float]] = []
    for epoch, fraction in enumerate(fractions):
        if out and out[-1][2] == fraction:
            out[-1] = (out[-1][0], epoch + 1, fraction)
        else:
            out.append((epoch, epoch + 1, fraction))
    return out


def describe_fractions(fractions: Sequence[float]) -> str:
    """'epochs 1-2: 11% of the training set; epochs 3-4: 33%; epochs 5-15: all of it'."""
    parts = []
    for i, (first, end, fraction) in enumerate(stages(fractions)):
        epochs = f"epoch {first + 1}" if end == first + 1 else f"epochs {first + 1}-{end}"
        share = "all of it" if fraction >= 1 else percent(fraction) + (" of the training set" if i == 0 else "")
        parts.append(f"{epochs}: {share}")
    return "; ".join(parts) or "no epoch"


def percent(share: float) -> str:
    """11%, or 0.25% for a share below 1% (a whole percent would round it to 0%)."""
    return f"{share:.0%}" if share >= 0.01 else f"{share:.2%}"


def full_data_epoch(fractions: Sequence[float]) -> int | None:
    """The first epoch (from 1) that trains on all the training set; None if none does."""
    return next((i + 1 for i, f in enumerate(fractions) if f >= 1), None)
