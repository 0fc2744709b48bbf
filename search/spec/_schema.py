"""The study file, declared: every field's type, default and meaning, as pydantic models.

`StudyFile.model_validate(raw, context={"name": ...})` checks a YAML-loaded study completely (knobs
against the architecture, `when` against earlier knobs, sampler and pruner options against Optuna);
search.spec._load turns the result into a StudySpec. A validator that knows a more precise place than the
field it checks raises `Problem(message, *path)`; `spec_error` reports it at that dotted path.
`study_json_schema()` is the same declaration, for editors. The parts: search.spec._schema_types (errors,
value types, Section), search.spec._schema_sources (architecture and dataset), this module (the search
space, warm starts and the other sections).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from data._augment import AugmentParams
from search.spec._fidelity import FIDELITIES
from search.spec._knobs import KNOBS, check_value, fits
from search.spec._schema_sources import Architecture, BuilderArchitecture, architecture_value
from search.spec._schema_types import (
    FEATURE_BASES,
    PRECISIONS,
    AtLeastOne,
    AtLeastThree,
    Bool,
    FeatureBase,
    Number,
    PositiveInt,
    PositiveNumber,
    Problem,
    Section,
    SubsetSize,
)
from search.spec._strategies import PRUNERS, SAMPLERS, Strategy, build_problem, options_model, options_problem

SECOND_OBJECTIVES = ("params", "train_seconds")
# What a trial's value is: the best epoch's validation metric (val_loss minimised, the others maximised).
OBJECTIVE_METRICS = ("val_accuracy", "val_loss", "val_top_k_accuracy", "val_macro_f1", "val_balanced_accuracy")
DEFAULT_TOP_K = 5


def minimized(metric: str) -> bool:
    """Whether a lower value of this objective metric is better (val_loss); every other is maximised."""
    return metric == "val_loss"


# --- the search space ---------------------------------------------------------------------------


class SpaceEntry(Section):
    """One searched knob: `choices`, or a range `low`..`high` with an optional `log` scale or `step`;
    `when` searches it only while knobs declared before it have the given values."""

    choices: list[Any] | None = Field(None, min_length=1, description="the values to choose from")
    low: Number | None = Field(None, description="the range's lower bound")
    high: Number | None = Field(None, description="the range's upper bound (included)")
    log: Bool = Field(False, description="sample on a log scale (needs low > 0)")
    step: PositiveNumber | None = Field(None, description="sample only low, low + step, ...")
    when: dict[str, Any] | None = Field(None, min_length=1, description="earlier knob -> its value (or values)")

    @field_validator("choices", mode="before")
    @classmethod
    def _choice_list(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, list) or not value):
            raise ValueError("must be a non-empty list")
        if value and len(set(map(repr, value))) != len(value):
            raise ValueError("has duplicates")
        return value

    @field_validator("when", mode="before")
    @classmethod
    def _when_mapping(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, dict) or not value):
            raise ValueError("must map an earlier knob to its value(s)")
        return value

    @model_validator(mode="after")
    def _choices_or_range(self) -> SpaceEntry:
        if self.choices is not None:
            if {"low", "high", "log", "step"} & self.model_fields_set:
                raise ValueError("give choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices, or low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high}); swap them")
        if self.log and self.low <= 0:
            raise Problem(f"a log scale needs low > 0 but got {self.low}", "low")
        if self.log and self.step is not None:
            raise ValueError("choose log or step, not both")
        return self

    def conditions(self) -> tuple[tuple[str, tuple], ...]:
        return tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in (self.when or {}).items())

    def contains(self, value: Any) -> bool:
        return fits(value, self.choices, self.low, self.high)


def _check_value(knob: str, value: Any, *path: str | int, arch: Architecture | None = None) -> None:
    problem = arch.value_problem(knob, value) if arch is not None else check_value(knob, value)
    if problem is not None:
        raise Problem(problem, *path)


def check_space_entry(knob: str, entry: SpaceEntry, earlier: dict[str, SpaceEntry],
                      arch: Architecture | None = None) -> None:
    """What depends on the knob: its `when` refers to earlier knobs, its values suit the knob (its
    type: the vocabulary's, or a builder's default's)."""
    for other, values in entry.conditions():
        if other not in earlier:
            raise Problem("must name a knob declared earlier in space", knob, "when", other)
        for value in values:
            if not earlier[other].contains(value):
                raise Problem(f"{value!r} is not a value {other} can take", knob, "when", other)
    if entry.choices is not None:
        for choice in entry.choices:
            _check_value(knob, choice, knob, "choices", arch=arch)
        return
    kind = arch.kind(knob) if arch is not None else KNOBS[knob].kind
    if kind not in ("int", "float"):
        raise Problem(f"{knob} is a {kind} knob; give choices", knob)
    if kind == "int" and not all(isinstance(v, int) for v in (entry.low, entry.high, entry.step or 1)):
        raise Problem(f"{knob} takes integers", knob)
    _check_value(knob, entry.low, knob, "low", arch=arch)
    _check_value(knob, entry.high, knob, "high", arch=arch)


def _warm_start_entry(entry: Any) -> Any:
    """Its keys are checked against the architecture's knobs by StudyFile (a builder has knobs of its own)."""
    if not isinstance(entry, dict) or not entry:
        raise ValueError("must be a non-empty mapping of knob values")
    return entry


WarmStart = Annotated[dict[str, Any], BeforeValidator(_warm_start_entry), Field(min_length=1)]


# --- sections -----------------------------------------------------------------------------------


class AugmentSection(Section):
    """The augmentation a trial trains with while its `augment` knob is on (data/_augment.py)."""

    rotation: Number = Field(0.0, description="degrees, in [0, 180]")
    width_shift: Number = Field(0.0, description="a fraction of the width, in [0, 1)")
    height_shift: Number = Field(0.0, description="a fraction of the height, in [0, 1)")
    horizontal_flip: Bool = False
    vertical_flip: Bool = False
    zoom: Number = Field(0.0, description="a fraction, in [0, 1)")
    fill_mode: Literal["nearest", "reflect", "wrap", "constant"] = "nearest"
    randaugment: Bool = Field(False, description="Keras's RandAugment on each training image")
    randaugment_ops: PositiveInt = Field(2, description="RandAugment: operations drawn per image, in [1, 14]")
    randaugment_magnitude: Number = Field(0.5, description="RandAugment: the strength of each operation, in (0, 1]")
    random_erasing: Number = Field(0.0, description="the probability that a training image gets a random rectangle "
                                                    "erased (Keras's RandomErasing); 0 is off")
    mixup: Bool = Field(False, description="Keras's MixUp on each training batch: images and labels mixed "
                                           "(validation and the test keep the integer labels)")
    mixup_alpha: Number = Field(0.2, description="MixUp: the Beta(alpha, alpha) of its mixing weights, above 0")
    cutmix: Bool = Field(False, description="Keras's CutMix on each training batch (with mixup also on: one "
                                            "of the two per batch, with p = 0.5)")
    cutmix_alpha: Number = Field(1.0, description="CutMix: the Beta(alpha, alpha) of its patch sizes, above 0")

    def params(self) -> AugmentParams:
        return AugmentParams(**self.model_dump(exclude_unset=True))

    @model_validator(mode="after")
    def _in_range(self) -> AugmentSection:
        self.params()  # AugmentParams checks the ranges; its ValueError names the field
        return self


class EvaluateSection(Section):
    """What `make evaluate` confirms before its one test evaluation; not part of the study's identity."""

    top_k: PositiveInt = Field(5, description=(
        "retrain this many of the best trials (distinct params) with `seeds` seeds each, pick the best by its "
        "confirmed mean, then test that one; 1: the search's best only (bench-confirm: the top 5 confirmed "
        "tested 0.0136 better than the search's best, at 4.3x its cost)"))
    seeds: AtLeastThree = Field(3, description="retrains of each candidate (at least 3)")


class Budget(Section):
    """How much to search: trials and timeout may change between runs; the epochs cap and the fidelity
    are part of the study's identity (its trials are compared epoch by epoch)."""

    trials: PositiveInt = Field(20, description="trials in all, across every worker")
    max_epochs: PositiveInt = Field(20, description="the most epochs one trial trains (hyperband's max_resource)")
    timeout_s: PositiveNumber | None = Field(None, description="no new trial is asked for after this many seconds")
    fidelity: Literal[FIDELITIES] = Field("epochs", description=(
        "what the pruner's early rungs save: epochs (every epoch trains on the whole training set), or data "
        "(the epochs up to the first rung train on min_data_fraction of it, stratified, each later rung's on "
        "reduction_factor times more, up to all of it; hyperband or successive_halving only)"))
    min_data_fraction: Number | None = Field(None, description=(
        "fidelity data: the share of the training set the epochs up to the first rung train on "
        "(default 1/reduction_factor^2: 1/9 with hyperband's defaults)"))

    @field_validator("min_data_fraction")
    @classmethod
    def _a_share(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 1:
            raise ValueError(f"must be between 0 and 1 (exclusive) but got {value!r}")
        return value

    @model_validator(mode="after")
    def _fraction_with_data(self) -> Budget:
        if self.min_data_fraction is not None and self.fidelity != "data":
            raise Problem("min_data_fraction applies to fidelity: data; add fidelity: data or drop it",
                          "min_data_fraction")
        return self


class EarlyStopping(Section):
    patience: AtLeastOne = Field(5, description="epochs without a better validation accuracy before a trial stops")


class Objective(Section):
    """What a trial's value is: its best epoch's validation metric (accuracy by default); pruning, early
    stopping, status, the report and evaluate follow it. A second objective makes the study multi-objective."""

    metric: Literal[OBJECTIVE_METRICS] = Field("val_accuracy", description=(
        "the validation metric trials are scored on: val_loss is minimised, the others maximised"))
    k: PositiveInt | None = Field(None, description=f"val_top_k_accuracy's k (default {DEFAULT_TOP_K})")
    second: Literal[SECOND_OBJECTIVES] | None = Field(None, description="also minimise this")

    @field_validator("metric", mode="before")
    @classmethod
    def _known_metric(cls, value: Any) -> Any:
        if value not in OBJECTIVE_METRICS:
            raise ValueError(f"{value!r} is not one of {', '.join(OBJECTIVE_METRICS)}")
        return value

    @model_validator(mode="after")
    def _k_with_top_k(self) -> Objective:
        if self.k is not None and self.metric != "val_top_k_accuracy":
            raise Problem("only val_top_k_accuracy reads k; set metric: val_top_k_accuracy or drop k", "k")
        return self

    @field_validator("second", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        if value not in (None, *SECOND_OBJECTIVES):
            raise ValueError(f"{value!r} is not one of {SECOND_OBJECTIVES} (or leave it out)")
        return value


# A study's hard limits -> the quantity each bounds, as the trial records it (constraint `<quantity>`).
CONSTRAINTS = {"max_params": "params", "max_epoch_seconds": "epoch_seconds", "max_peak_memory_mb": "peak_memory_mb"}


class Constraints(Section):
    """Hard limits, each checked as early as its quantity is known. A trial over one is infeasible:
    recorded through Optuna's constraints (samplers steer away from it), never the study's best."""

    max_params: PositiveInt | None = Field(None, description=(
        "parameters of the architecture; a model over it is built but not trained (the trial is pruned)"))
    max_epoch_seconds: PositiveNumber | None = Field(None, description=(
        "seconds of one epoch (training and validation); the first epoch over it ends the trial's training"))
    max_peak_memory_mb: PositiveNumber | None = Field(None, description=(
        "the worker's peak memory while the trial trains: the accelerator's allocator on a GPU, the "
        "process's resident set (sampled each epoch) on a CPU"))

    def limits(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.model_dump().items() if value is not None}


class DataSection(Section):
    val_fraction: Number = Field(0.1, description="the share of the training set held out for validation")
    max_train: PositiveInt | None = Field(None, description="train on a stratified subset of this many images")
    max_val: PositiveInt | None = Field(None, description="validate on a stratified subset of this many images")
    folds: int | None = Field(None, ge=2, le=20, description=(
        "score each configuration by K-fold cross-validation instead of one held-out split: the mean of its "
        "best validation value on each of K stratified folds. The first fold trains with pruning; only a "
        "configuration that survives it trains on the other K-1 (so pruned ones cost less than one training)"))

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be in (0, 1)")
        return value

    @model_validator(mode="after")
    def _one_way_to_validate(self) -> DataSection:
        if self.folds is not None and "val_fraction" in self.model_fields_set:
            raise Problem(f"with folds: {self.folds} each fold is validated on in turn and val_fraction is not "
                          "used: drop one of the two", "val_fraction")
        return self


FINE_TUNE_SPACE = {  # knob -> (kind, default entry): what a fine-tuning trial samples besides its head's params
    "unfreeze_blocks": ("int", {"choices": [1, 2]}),
    "learning_rate": ("float", {"low": 1.0e-5, "high": 1.0e-3, "log": True}),
}


class FineTuneSection(Section):
    """After the head search meets its budget, its `top_k` best heads are promoted to trials of the
    whole model (the cached base + the head, the base's last blocks unfrozen), in the same study;
    seed 003's fine-tuning of a pretrained base at a lowered learning rate. A feature-cache study only."""

    top_k: PositiveInt = Field(5, description="the best heads (distinct params, feasible) promoted to fine-tuning")
    epochs: PositiveInt = Field(5, description="epochs each fine-tuning trial trains the whole model (pruned, early "
                                               "stopped with the study's patience)")
    blocks: list[str] | None = Field(None, min_length=1, description=(
        "a base of your own: its blocks in order, each named by its first layer (unfreezing the last N makes "
        "every layer from the N-th last one on trainable); a preset names its own (a convnet's stage1.., a "
        "WRN's group1_block1..)"))
    space: dict[str, SpaceEntry] = Field(
        default_factory=lambda: {k: SpaceEntry(**entry) for k, (_, entry) in FINE_TUNE_SPACE.items()},
        description="searched per fine-tuning trial: unfreeze_blocks (int >= 1; default choices [1, 2]) and "
                    "learning_rate (default 1e-5..1e-3, log); the head's own knobs are the promoted trial's")

    @field_validator("space")
    @classmethod
    def _fine_tune_knobs(cls, space: dict[str, SpaceEntry]) -> dict[str, SpaceEntry]:
        for knob, entry in space.items():
            if knob not in FINE_TUNE_SPACE:
                raise Problem(f"unknown fine-tuning knob; known: {', '.join(FINE_TUNE_SPACE)} (the head's knobs "
                              "are the promoted trial's)", knob)
            if entry.when:
                raise Problem("fine-tuning knobs take no `when`", knob, "when")
            values = entry.choices if entry.choices is not None else [entry.low, entry.high]
            kind = FINE_TUNE_SPACE[knob][0]
            ok = (all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values) if kind == "int"
                  else all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values))
            if not ok:
                raise Problem("takes integers >= 1 (blocks of the base)" if kind == "int" else "takes rates > 0", knob)
        return {**{k: SpaceEntry(**entry) for k, (_, entry) in FINE_TUNE_SPACE.items()}, **space}

    def most_blocks(self) -> int:
        entry = self.space["unfreeze_blocks"]
        return int(max(entry.choices) if entry.choices is not None else entry.high)


class TrackingSection(Section):
    """Where trials are also recorded (dashboards/tracking.py); not part of the study's identity."""

    mlflow: str | None = Field(None, description=(
        "an MLflow tracking URI (http://host:5000, sqlite:///mlflow.db); unset: MLFLOW_TRACKING_URI, if set"))


class FeatureCacheSection(Section):
    """Train the base once (or take base_weights), cache its features, train heads on them."""

    base: FeatureBase | BuilderArchitecture | None = Field(None, description=(
        "the conv base whose flattened features heads train on: a convnet or wrn preset, or your own model "
        "{builder: \"file.py:build\"} with a flat layer named 'features' to cut at; none: the study's "
        "architecture. The final model is this base (frozen) followed by the searched head"))
    base_epochs: AtLeastOne = Field(10, description="epochs the base is trained for, once")
    base_max_train: SubsetSize | None = Field(None, description="train the base on a subset of this many images")
    base_batch_size: AtLeastOne = Field(128, description="the base's training batch size")
    base_weights: str | None = Field(None, description="a weights file for the base, which is then not trained")
    base_precision: Literal[("study", "auto", *PRECISIONS)] = Field("study", description=(
        "the Keras dtype policy the base trains under; study: the study's precision; auto: mixed_bfloat16 "
        "on a CPU with bfloat16 instructions (AVX512_BF16, AMX) and no GPU, else the study's precision"))
    search_max_train: SubsetSize | None = Field(None, description=(
        "trials train their heads on a stratified subset of this many cached training features (the "
        "validation split stays whole); `make evaluate` retrains the winner on all of them"))

    @field_validator("base", mode="before")
    @classmethod
    def _known_base(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return architecture_value(value)
        if value is not None and value not in FEATURE_BASES:
            raise ValueError(f"{value!r} is not a convnet or wrn preset; known: {', '.join(FEATURE_BASES)}; or "
                             "your own model: {builder: \"file.py:build\"}")
        return value


class _StrategyChoice(BaseModel):
    """`name`, or {name: ..., option: value, ...} with options of the Optuna class's constructor."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]
    registry: ClassVar[dict[str, Strategy]]
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, raw: Any) -> Any:
        raw = {"name": raw} if isinstance(raw, str) else raw
        if not isinstance(raw, dict) or "name" not in raw:
            raise ValueError(f"give a name: one of {', '.join(cls.registry)}")
        name = raw["name"]
        if not isinstance(name, str) or name not in cls.registry:
            raise Problem(f"unknown {cls.kind} {name!r}; known: {', '.join(cls.registry)}", "name")
        options = {k: v for k, v in raw.items() if k != "name"}
        found = options_problem(cls.kind, name, options)
        if found is not None:
            option, problem = found
            raise Problem(problem, *([option] if option else []))
        return {"name": name, "options": options}

    @property
    def strategy(self) -> Strategy:
        return self.registry[self.name]

    def check_builds(self, max_epochs: int) -> None:
        """Build it once, so that a value Optuna refuses fails now, at its option."""
        found = build_problem(self.name, self.strategy, self.options, max_epochs=max_epochs)
        if found is not None:
            raise Problem(found[1], self.kind, *([found[0]] if found[0] else []))

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        variants = [options_model(cls.kind, name).model_json_schema() for name in cls.registry]
        return {"description": cls.__doc__, "anyOf": [{"type": "string", "enum": list(cls.registry)}, *variants]}


class SamplerChoice(_StrategyChoice):
    """The sampler: a name, or {name: ..., option: value} with options of the Optuna sampler."""

    kind = "sampler"
    registry = SAMPLERS


class PrunerChoice(_StrategyChoice):
    """The pruner: a name, or {name: ..., option: value} with options of the Optuna pruner."""

    kind = "pruner"
    registry = PRUNERS


class Profile(Section):
    """What `--profile NAME` changes in any study (search/spec/profiles.yaml); a field left out changes nothing."""

    description: str = ""
    max_train: PositiveInt | None = Field(None, description="replaces the study's data.max_train")
    max_val: PositiveInt | None = Field(None, description="replaces the study's data.max_val")
    max_epochs: PositiveInt | None = Field(None, description="caps budget.max_epochs")
    base: FeatureBase | None = Field(None, description="feature_cache.base, where the study names none")
    base_epochs: PositiveInt | None = Field(None, description="caps feature_cache.base_epochs")
    base_max_train: PositiveInt | None = Field(None, description="caps feature_cache.base_max_train")
    base_precision: Literal[("auto", *PRECISIONS)] | None = Field(None, description=(
        "feature_cache.base_precision, where the study leaves it to the study's precision"))
    trials: PositiveInt | None = Field(None, description="caps budget.trials")
    search_max_train: PositiveInt | None = Field(None, description="caps feature_cache.search_max_train")
