"""The study file, declared: every field's type, default and meaning, as pydantic models.

`StudyFile.model_validate(raw, context={"name": ...})` checks a YAML-loaded study completely (knobs
against the architecture, `when` against earlier knobs, sampler and pruner options against Optuna);
search._spec turns the result into a StudySpec. A validator that knows a more precise place than the
field it checks raises `Problem(message, *path)`; `spec_error` reports it at that dotted path.
`study_json_schema()` is the same declaration, for editors.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, RootModel, ValidationError,
                      WithJsonSchema, field_validator, model_validator)

from data import DATASETS, DEFAULT_TEST_FRACTION, DatasetRef
from data._augment import AugmentParams
from models import PRESETS, Builder, BuilderError, load_builder
from search._knobs import KNOBS, check_value, fits, knob_problem, parameter_problem
from search._strategies import PRUNERS, SAMPLERS, Strategy, build_problem, options_model, options_problem
from search.errors import StudySpecError

SECOND_OBJECTIVES = ("params", "train_seconds")
_FEATURE_BASES = tuple(sorted(n for n, p in PRESETS.items() if p.family in ("convnet", "wrn")))


class Problem(ValueError):
    """What is wrong and how to fix it, at `path` below the value a validator checks."""

    def __init__(self, problem: str, *path: str | int) -> None:
        super().__init__(problem)
        self.path = path


def spec_error(exc: ValidationError, where: str) -> StudySpecError:
    """The first error, at its dotted path (`where`, the file, for the top level)."""
    err = exc.errors()[0]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, Exception):
        path, problem = (*err["loc"], *getattr(cause, "path", ())), str(cause)
    else:
        path, problem = err["loc"], f"{err['msg']} but got {err['input']!r}"
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return StudySpecError(dotted or where, problem)


# --- value types: numbers keep the type the file gives (the space hash is over these values) -----


def _finite(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number but got {value!r}")
    return value


def _positive(value: Any) -> Any:
    if _finite(value) <= 0:
        raise ValueError("must be positive")
    return value


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _int_at_least(minimum: int, problem: str, fix: str = "") -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{problem} but got {value!r}{fix}")
        return value

    return Annotated[int, BeforeValidator(check), Field(ge=minimum)]


Number = Annotated[int | float, BeforeValidator(_finite), WithJsonSchema({"type": "number"})]
PositiveNumber = Annotated[int | float, BeforeValidator(_positive),
                           WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str, BeforeValidator(lambda v: "" if v is None else str(v))]
PositiveInt = _int_at_least(1, "must be a positive integer")
AtLeastOne = _int_at_least(1, "must be >= 1")
NonNegativeInt = _int_at_least(0, "must be a non-negative integer")
SubsetSize = _int_at_least(10, "must be an integer >= 10 or absent")
FailureStreak = _int_at_least(1, "must be an integer >= 1", "; give how many failures in a row, all for one "
                              "reason, stop the study (or leave it out for 5)")
KnobName = Literal[tuple(KNOBS)]
FeatureBase = Literal[_FEATURE_BASES]


class Section(BaseModel):
    """A mapping of the study file: null means empty; an unknown or a missing key is named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping but got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(cls.model_fields), key=str)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(cls.model_fields)}")
        for key, field in cls.model_fields.items():
            if field.is_required() and key not in raw:
                raise Problem(f"missing; give {field.description}", key)
        return raw


# --- what is trained on what. Each is its own small model so that a dataset by path and a user's
# builder ({builder: "file.py:build"}) can join as further kinds with the same properties. --------


def _named(value: Any, known: dict, what: str) -> Any:
    if not isinstance(value, str) or value not in known:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")
    return value


class PresetArchitecture(RootModel[Annotated[Literal[tuple(PRESETS)],
                                             BeforeValidator(lambda v: _named(v, PRESETS, "architecture"))]]):
    """A documented architecture by name (models/_presets.py); its keyword-only arguments are the
    model knobs a study may search or fix."""

    model_config = ConfigDict(frozen=True)

    @property
    def name(self) -> str:
        return self.root

    @property
    def knobs(self) -> frozenset[str]:
        return frozenset(PRESETS[self.root].knobs)

    @property
    def freezable_base(self) -> bool:
        return PRESETS[self.root].family == "convnet" and "freeze_base" in self.knobs

    def knob_problem(self, knob: object) -> str | None:
        return knob_problem(knob, self.root, self.knobs)

    def value_problem(self, knob: str, value: Any) -> str | None:
        return check_value(knob, value) if knob in KNOBS else None

    def kind(self, knob: str) -> str:
        return KNOBS[knob].kind

    def fixable(self) -> set[str]:
        return set(KNOBS) | self.knobs

    def parameter_problem(self, key: object) -> str | None:
        return parameter_problem(key)


# Knobs the service applies to any model (the optimiser, the batch, augmentation): a builder's
# own keyword-only parameters are its model knobs, and may not take these names.
TRAINING_KNOBS = tuple(name for name, knob in KNOBS.items() if knob.target != "model")


class BuilderArchitecture(Section):
    """Your own Keras model: a function build(input_shape, num_classes, *, knob=default, ...) that returns
    an uncompiled keras.Model, by "path/to/file.py:build" (relative to the working directory, or absolute)
    or "package.module:build". Its keyword-only parameters are the model knobs a study may search or fix,
    typed by their defaults; the training knobs apply as to any model."""

    builder: str = Field(description='"path/to/file.py:function" or "package.module:function"')
    _loaded: Builder | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _loads(self) -> BuilderArchitecture:
        try:
            self._loaded = load_builder(self.builder)
        except BuilderError as exc:
            raise Problem(str(exc), "builder") from None
        clash = sorted(set(self._loaded.knobs) & set(TRAINING_KNOBS))
        if clash:
            raise Problem(f"knob(s) {clash} of {self.builder} are training knobs the service sets for any "
                          "model; rename them in the builder", "builder")
        return self

    @property
    def name(self) -> str:
        return self.builder

    @property
    def loaded(self) -> Builder:
        return self._loaded

    @property
    def knobs(self) -> frozenset[str]:
        return frozenset(self._loaded.knobs)

    freezable_base: ClassVar[bool] = False  # heads are a preset's HeadParams; a builder may be feature_cache.base

    def knob_problem(self, knob: object) -> str | None:
        if knob in TRAINING_KNOBS:
            return None
        if knob not in self.knobs:
            return (f"builder {self.builder} has no knob {knob!r}; its knobs: {sorted(self.knobs)}; "
                    f"training knobs: {', '.join(TRAINING_KNOBS)}")
        return self._loaded.knob_problem(knob)  # type: ignore[arg-type]

    def value_problem(self, knob: str, value: Any) -> str | None:
        return self._loaded.value_problem(knob, value) if knob in self.knobs else check_value(knob, value)

    def kind(self, knob: str) -> str:
        return self._loaded.kinds.get(knob) or KNOBS[knob].kind

    def fixable(self) -> set[str]:
        return set(TRAINING_KNOBS) | self.knobs

    def parameter_problem(self, key: object) -> str | None:
        return None if key in self.fixable() else f"unknown knob {key!r}; knobs: {sorted(self.fixable())}"


Architecture = PresetArchitecture | BuilderArchitecture


def _one_of(value: Any, mapping: type[BaseModel], name: type[BaseModel], hint: str = "") -> Any:
    """`value` as `mapping`'s model when it is a mapping, else as `name`'s; a failure is a Problem at
    the failing field (`hint` added to a problem with a plain name)."""
    try:
        return (mapping if isinstance(value, dict) else name).model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = err.get("ctx", {}).get("error")
        if not isinstance(cause, Exception):
            raise Problem(f"{err['msg']} but got {err['input']!r}", *err["loc"]) from None
        own = "" if isinstance(value, dict) else hint
        raise Problem(f"{cause}{own}", *err["loc"], *getattr(cause, "path", ())) from None


def architecture_value(value: Any) -> Architecture:
    """The file's `architecture` (or `feature_cache.base`): a preset's name, or {builder: ...}."""
    if isinstance(value, (PresetArchitecture, BuilderArchitecture)):
        return value
    return _one_of(value, BuilderArchitecture, PresetArchitecture,
                   '; or your own model: {builder: "path/to/file.py:build"}')


def _dataset_name(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected a dataset name ({', '.join(DATASETS)}, or a folder or file in DATA_DIR) or a "
                         f"mapping {{path: ..., image_size: [h, w], ...}} but got {value!r}")
    DatasetRef(name=value)  # its ValueError says what a name may hold
    return value


class NamedDataset(RootModel[Annotated[str, BeforeValidator(_dataset_name)]]):
    """A dataset by name: one the service knows (data/_specs.py), or a folder or file <name>, <name>.npz,
    <name>.tar.gz or <name>.tgz in DATA_DIR."""

    model_config = ConfigDict(frozen=True)

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(name=self.root)

    @property
    def name(self) -> str:
        return self.root

    @property
    def label_modes(self) -> tuple[str, ...]:
        return ("fine", "coarse") if self.root == "cifar100" else ("fine",)


class DatasetLocation(Section):
    """Data of your own by location (or by name in DATA_DIR), and how to read it (docs: own data)."""

    path: str | None = Field(None, description=(
        "a folder of images (train/<class>/..., optional test/<class>/..., or <class>/...), a .tar.gz/.tgz of "
        "one, an .npz (x_train, y_train, optional x_test, y_test, class_names) or a CIFAR-style pickle folder; "
        "relative to the working directory, or absolute"))
    name: str | None = Field(None, description="instead of path: a folder or file in DATA_DIR")
    image_size: tuple[PositiveInt, PositiveInt] | None = Field(None, description=(
        "[height, width]: every image is resized to it once, when decoded (needed when sizes differ)"))
    skip_unreadable: Bool = Field(False, description="skip files that are not decodable images (counted) "
                                  "rather than fail")
    test_fraction: Number = Field(DEFAULT_TEST_FRACTION, description=(
        "the share of each class held out (seeded) as the test split when the data has none"))

    @field_validator("image_size", mode="before")
    @classmethod
    def _height_width(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, list) or len(value) != 2):
            raise ValueError(f"must be [height, width], two positive integers, but got {value!r}")
        return value

    @field_validator("test_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"must be in (0, 1) but got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_dataset(self) -> DatasetLocation:
        try:
            self.ref
        except ValueError as exc:
            raise Problem(str(exc)) from None
        return self

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(name=self.name, path=self.path, image_size=self.image_size,
                          skip_unreadable=self.skip_unreadable, test_fraction=self.test_fraction)

    @property
    def label_modes(self) -> tuple[str, ...]:
        return ("fine", "coarse") if self.name == "cifar100" else ("fine",)


def dataset_value(value: Any) -> NamedDataset | DatasetLocation:
    """The file's `dataset`: a name, or {path: ..., options} (or {name: ..., options})."""
    if isinstance(value, (NamedDataset, DatasetLocation)):
        return value
    return _one_of(value, DatasetLocation, NamedDataset)


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

    def params(self) -> AugmentParams:
        return AugmentParams(**self.model_dump(exclude_unset=True))

    @model_validator(mode="after")
    def _in_range(self) -> AugmentSection:
        self.params()  # AugmentParams checks the ranges; its ValueError names the field
        return self


class Budget(Section):
    """How much to search. Not part of the study's identity: it may change between runs."""

    trials: PositiveInt = Field(20, description="trials in all, across every worker")
    max_epochs: PositiveInt = Field(20, description="the most epochs one trial trains (hyperband's max_resource)")
    timeout_s: PositiveNumber | None = Field(None, description="no new trial is asked for after this many seconds")


class EarlyStopping(Section):
    patience: AtLeastOne = Field(5, description="epochs without a better validation accuracy before a trial stops")


class Objective(Section):
    """Validation accuracy is maximised; a second objective makes the study multi-objective."""

    second: Literal[SECOND_OBJECTIVES] | None = Field(None, description="also minimise this")

    @field_validator("second", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        if value not in (None, *SECOND_OBJECTIVES):
            raise ValueError(f"{value!r} is not one of {SECOND_OBJECTIVES} (or leave it out)")
        return value


class DataSection(Section):
    val_fraction: Number = Field(0.1, description="the share of the training set held out for validation")
    max_train: PositiveInt | None = Field(None, description="train on a stratified subset of this many images")
    max_val: PositiveInt | None = Field(None, description="validate on a stratified subset of this many images")

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be in (0, 1)")
        return value


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
    search_max_train: SubsetSize | None = Field(None, description=(
        "trials train their heads on a stratified subset of this many cached training features (the "
        "validation split stays whole); `make evaluate` retrains the winner on all of them"))

    @field_validator("base", mode="before")
    @classmethod
    def _known_base(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return architecture_value(value)
        if value is not None and value not in _FEATURE_BASES:
            raise ValueError(f"{value!r} is not a convnet or wrn preset; known: {', '.join(_FEATURE_BASES)}; or "
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
    """What `--profile NAME` changes in any study (search/profiles.yaml); a field left out changes nothing."""

    description: str = ""
    max_train: PositiveInt | None = Field(None, description="replaces the study's data.max_train")
    max_val: PositiveInt | None = Field(None, description="replaces the study's data.max_val")
    max_epochs: PositiveInt | None = Field(None, description="caps budget.max_epochs")
    base: FeatureBase | None = Field(None, description="feature_cache.base, where the study names none")
    base_epochs: PositiveInt | None = Field(None, description="caps feature_cache.base_epochs")
    base_max_train: PositiveInt | None = Field(None, description="caps feature_cache.base_max_train")
    search_max_train: PositiveInt | None = Field(None, description="caps feature_cache.search_max_train")
