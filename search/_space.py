"""From a study's space to a trial's values (through optuna), and from values to a typed config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from data._augment import AugmentParams
from models import ModelParams, get_preset
from search._knobs import KNOBS
from search._spec import Dimension, StudySpec


@dataclass(frozen=True)
class TrainParams:
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9  # used by sgd and rmsprop ("sgd with momentum")
    batch_size: int = 128


@dataclass(frozen=True)
class TrialConfig:
    model: ModelParams
    train: TrainParams
    augment: AugmentParams | None


def _suggest_one(trial: optuna.Trial, name: str, dim: Dimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, list(dim.choices))
    if KNOBS[dim.name].kind == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(name, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def _active(dim: Dimension, values: dict[str, Any]) -> bool:
    return all(values.get(knob) in allowed for knob, allowed in dim.when)


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample every active knob. dense_units becomes dense_units_0..n-1 for n dense layers."""
    values: dict[str, Any] = {}
    for dim in spec.space:
        if dim.name != "dense_units" and _active(dim, values):
            values[dim.name] = _suggest_one(trial, dim.name, dim)
    units = spec.dimension("dense_units")
    if units is not None and _active(units, values):
        for i in range(_dense_layers(spec, values)):
            values[f"dense_units_{i}"] = _suggest_one(trial, f"dense_units_{i}", units)
    return values


def _dense_layers(spec: StudySpec, values: dict[str, Any]) -> int:
    if "dense_layers" in values:
        return int(values["dense_layers"])
    if "dense_layers" in spec.fixed:
        return int(spec.fixed["dense_layers"])
    return len(get_preset(spec.architecture).knobs.get("dense_units") or ())


def grid_space(spec: StudySpec) -> dict[str, list]:
    """GridSampler's search space (validated: every knob has choices or a step)."""
    out: dict[str, list] = {}
    for dim in spec.space:
        if dim.choices is not None:
            grid = list(dim.choices)
        else:
            n = int(round((dim.high - dim.low) / dim.step)) + 1  # type: ignore[operator]
            grid = [dim.low + i * dim.step for i in range(n)]  # type: ignore[operator]
        if dim.name == "dense_units":
            layers_dim = spec.dimension("dense_layers")
            if layers_dim is None:
                n_max = _dense_layers(spec, {})
            else:
                n_max = int(max(layers_dim.choices) if layers_dim.choices else layers_dim.high)  # type: ignore[arg-type]
            out.update({f"dense_units_{i}": grid for i in range(n_max)})
        else:
            out[dim.name] = grid
    return out


def trial_config(spec: StudySpec, values: dict[str, Any], *, input_shape, num_classes: int) -> TrialConfig:
    """The typed config a trial trains: fixed values, then the sampled ones, over the preset's defaults."""
    merged = {**spec.fixed, **values}
    preset = get_preset(spec.architecture)
    train = TrainParams(**{f.name: merged[f.name] for f in dataclasses.fields(TrainParams) if f.name in merged})

    model_kwargs = {k: v for k, v in merged.items() if k in preset.knobs and k != "dense_units"}
    if "dense_units" in preset.knobs:
        default = tuple(merged.get("dense_units") or preset.knobs["dense_units"] or ())
        n = _dense_layers(spec, values)
        width = default[0] if default else 512
        model_kwargs["dense_units"] = tuple(
            merged.get(f"dense_units_{i}", default[i] if i < len(default) else width) for i in range(n)
        )
    model = preset.params(input_shape=tuple(input_shape), num_classes=num_classes, **model_kwargs)

    aug_fields = {f.name for f in dataclasses.fields(AugmentParams)}
    aug_values = {k: v for k, v in merged.items() if k in aug_fields}
    augment = dataclasses.replace(spec.augment, **aug_values)
    enabled = merged.get("augment", augment.enabled)
    return TrialConfig(model=model, train=train, augment=augment if enabled and augment.enabled else None)
