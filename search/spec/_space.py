"""From a study's space to a trial's values (through optuna), and from values to a typed config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from data._augment import AugmentParams
from models import Builder, BuilderError, BuilderParams, ModelParams, Preset, architecture, check_model, get_preset
from search.errors import StudySpecError
from search.spec._knobs import KNOBS
from search.spec._schema import FINE_TUNE_SPACE
from search.spec._spec import FINE_TUNE_PREFIX, Dimension, StudySpec


@dataclass(frozen=True)
class TrainParams:
    """The training knobs (target "train" in search.spec._knobs); the defaults train as before they existed."""

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9  # used by sgd and rmsprop ("sgd with momentum")
    batch_size: int = 128
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    decay_rate: float = 0.0
    decay_epochs: float | None = None  # None: decay every step
    min_lr_fraction: float = 0.0
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    weight_decay: float | None = None  # None: the optimiser's own default
    clipnorm: float | None = None
    label_smoothing: float = 0.0
    ema: bool = False


@dataclass(frozen=True)
class TrialConfig:
    model: ModelParams | BuilderParams
    train: TrainParams
    augment: AugmentParams | None
    knobs: dict[str, Any] = dataclasses.field(default_factory=dict)  # every fixed and sampled value (user extras)


def study_architecture(spec: StudySpec) -> Preset | Builder:
    """The study's preset, or its own builder as the study validated it."""
    return architecture(spec.architecture, sha256=spec.builder_files.get(spec.architecture))


def _kind(spec: StudySpec, knob: str) -> str:
    arch = study_architecture(spec)
    return arch.kinds[knob] if isinstance(arch, Builder) and knob in arch.kinds else KNOBS[knob].kind


def _suggest_one(trial: optuna.Trial, name: str, dim: Dimension, kind: str) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, list(dim.choices))
    if kind == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(name, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def _active(dim: Dimension, values: dict[str, Any]) -> bool:
    return all(values.get(knob) in allowed for knob, allowed in dim.when)


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample every active knob. A preset's dense_units becomes dense_units_0..n-1 for n dense layers
    (a builder's own dense_units is a knob like any other)."""
    values: dict[str, Any] = {}
    per_layer = not spec.builder_files.get(spec.architecture)
    for dim in spec.space:
        if (dim.name != "dense_units" or not per_layer) and _active(dim, values):
            values[dim.name] = _suggest_one(trial, dim.name, dim, _kind(spec, dim.name))
    units = spec.dimension("dense_units")
    if per_layer and units is not None and _active(units, values):
        for i in range(_dense_layers(spec, values)):
            values[f"dense_units_{i}"] = _suggest_one(trial, f"dense_units_{i}", units, _kind(spec, "dense_units"))
    return values


def suggest_fine_tune(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """A fine-tuning trial's own knobs (fine_tune_unfreeze_blocks, fine_tune_learning_rate), sampled
    after its head's, which are the promoted trial's (enqueued)."""
    return {d.name: _suggest_one(trial, d.name, d, FINE_TUNE_SPACE[d.name.removeprefix(FINE_TUNE_PREFIX)][0])
            for d in spec.fine_tune.space}


def split_fine_tune(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's params as (the head's, the fine-tuning knobs by their short names: unfreeze_blocks, ...);
    a head trial's second part is empty."""
    head = {k: v for k, v in values.items() if not k.startswith(FINE_TUNE_PREFIX)}
    return head, {k.removeprefix(FINE_TUNE_PREFIX): v for k, v in values.items() if k.startswith(FINE_TUNE_PREFIX)}


def _dense_layers(spec: StudySpec, values: dict[str, Any]) -> int:
    if "dense_layers" in values:
        return int(values["dense_layers"])
    if "dense_layers" in spec.fixed:
        return int(spec.fixed["dense_layers"])
    return len(get_preset(spec.architecture).knobs.get("dense_units") or ())


def trial_config(spec: StudySpec, values: dict[str, Any], *, input_shape, num_classes: int) -> TrialConfig:
    """The typed config a trial trains: fixed values, then the sampled ones, over the preset's defaults."""
    merged = {**spec.fixed, **values}
    preset = study_architecture(spec)
    train = TrainParams(**{f.name: merged[f.name] for f in dataclasses.fields(TrainParams) if f.name in merged})

    own = isinstance(preset, Builder)  # a user's builder takes its knobs as they are
    model_kwargs = {k: v for k, v in merged.items() if k in preset.knobs and (own or k != "dense_units")}
    if "dense_units" in preset.knobs and not own:
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
    return TrialConfig(model=model, train=train, augment=augment if enabled and augment.enabled else None,
                       knobs=merged)


def check_builders(spec: StudySpec, *, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Build each model of the user's the study names, once, on the data's shape with the knobs' defaults
    (and the study's fixed values), and check its contract (models.check_model); a StudySpecError naming
    the builder and the fix. For `create`, before anything is written to the store; presets pass."""
    for reference in spec.builder_files:
        as_base = spec.architecture != reference
        if as_base:
            params = architecture(reference, sha256=spec.builder_files[reference]).params(
                input_shape=tuple(input_shape), num_classes=num_classes)
        else:
            params = trial_config(spec, {}, input_shape=input_shape, num_classes=num_classes).model
        where = "feature_cache.base.builder" if as_base else "architecture.builder"
        try:
            check_model(params, features=as_base)
        except BuilderError as exc:
            raise StudySpecError(where, str(exc)) from None
