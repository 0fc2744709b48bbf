"""Fidelity by data (`budget: {fidelity: data}`): the share of the training set each epoch trains on.

Hyperband and successive halving judge trials at rungs: epochs min_resource * reduction_factor**k.
With fidelity by data, the epochs up to the first rung train on `min_data_fraction` of the training
set (a stratified subset, the same for every trial; default 1 / reduction_factor**2), the epochs up
to each later rung on reduction_factor times more, until all of it: with the defaults (min_resource 1,
reduction_factor 3) epoch 1 trains on 1/9 of the images, epochs 2-3 on 1/3 and every later epoch on
all of them. Every trial follows the same schedule, so at each rung the pruner compares trials that
trained on the same images for the same epochs: a trial pruned at the first rung cost 1/9 of an epoch
instead of one, at the second 0.78 instead of 3. The subsets are nested (each holds the smaller
ones), so a trial that goes on keeps training on the images it has seen and more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FIDELITIES = ("epochs", "data")
RUNG_PRUNERS = ("hyperband", "successive_halving")  # the pruners whose rungs the schedule follows


def default_min_fraction(reduction_factor: int) -> float:
    """Two rungs on part of the data: 1/9 of it at the first, 1/3 at the second (reduction_factor 3)."""
    return 1.0 / reduction_factor ** 2


def data_fractions(*, max_epochs: int, min_resource: int, reduction_factor: int,
                   min_fraction: float | None = None) -> tuple[float, ...]:
    """The share of the training set each epoch (1 to max_epochs) trains on."""
    if min_resource < 1 or reduction_factor < 2:
        raise ValueError(f"rungs need min_resource >= 1 and reduction_factor >= 2, got {min_resource} and "
                         f"{reduction_factor}")
    first = default_min_fraction(reduction_factor) if min_fraction is None else float(min_fraction)
    if not 0.0 < first <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1] but got {min_fraction!r}")
    fractions = []
    for epoch in range(1, max_epochs + 1):
        rung = 0  # the first rung at or after this epoch
        while min_resource * reduction_factor ** rung < epoch:
            rung += 1
        fractions.append(min(1.0, first * reduction_factor ** rung))
    return tuple(fractions)


def pruner_rungs(pruner: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[Any, Any]:
    """(min_resource, reduction_factor) of a rung pruner, as the study gives them or as defaulted."""
    merged = {**defaults, **options}
    return merged.get("min_resource"), merged.get("reduction_factor")


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
    """'epoch 1: 11% of the training set; epochs 2-3: 33%; epochs 4-15: all of it'."""
    parts = []
    for i, (first, end, fraction) in enumerate(stages(fractions)):
        epochs = f"epoch {first + 1}" if end == first + 1 else f"epochs {first + 1}-{end}"
        share = "all of it" if fraction >= 1 else f"{fraction:.0%}" + (" of the training set" if i == 0 else "")
        parts.append(f"{epochs}: {share}")
    return "; ".join(parts) or "no epoch"
