"""What a study trains on what: the architecture (a preset by name, or a user's builder) and the
dataset (a name, or a location with reading options), as pydantic models of the study file."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from data import DATASETS, DEFAULT_TEST_FRACTION, DatasetRef
from models import PRESETS, Builder, BuilderError, UserFunction, load_builder, load_function
from search.spec._knobs import KNOBS, check_value, knob_problem, parameter_problem
from search.spec._schema_types import Bool, Number, PositiveInt, Problem, Section

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


class TrainingSection(Section):
    """Your own training extras, functions of the trial's knobs (a dict of every searched and fixed
    value), by "path/to/file.py:function" or "package.module:function", checked and hashed like a
    builder: `callbacks(knobs)` returns a list of keras.callbacks.Callback that run after the
    service's own (pruning, checkpoints, timing and early stopping always run; a callback of yours
    that stops training is respected); `loss(knobs)` returns the Keras loss to compile with."""

    callbacks: str | None = Field(None, description='"path/to/file.py:callbacks": callbacks(knobs) -> list of callbacks')
    loss: str | None = Field(None, description='"path/to/file.py:loss": loss(knobs) -> a keras loss')
    _loaded: dict[str, UserFunction] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _loads(self) -> TrainingSection:
        for kind in ("callbacks", "loss"):
            reference = getattr(self, kind)
            if reference is None:
                continue
            try:
                loaded = load_function(reference)
            except BuilderError as exc:
                raise Problem(str(exc).replace("builder ", "", 1), kind) from None
            required = [p for p in inspect.signature(loaded.function).parameters.values()
                        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if len(required) != 1:
                raise Problem(f"{reference} must take one argument, the trial's knobs: def {kind}(knobs): ...", kind)
            self._loaded[kind] = loaded
        return self

    def references(self) -> dict[str, str]:
        return {kind: fn.reference for kind, fn in self._loaded.items()}

    def files(self) -> dict[str, str]:
        """Each function's reference -> its file's sha256 (the drift guard hashes them)."""
        return {fn.reference: fn.sha256 for fn in self._loaded.values()}
