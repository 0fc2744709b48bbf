"""Study files: YAML (safe-loaded), validated as a StudyFile (whose parts search._schema,
search._schema_sources and search._schema_types declare) into a StudySpec before anything touches a
store. Every error names the field (`space.learning_rate.low`) and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from data import DATASETS, DatasetRef
from data._augment import AugmentParams
from models import PRESETS
from search._knobs import KNOBS, fits, knob_problem, parameter_knob, parameter_problem
from search._schema import (AugmentSection, Budget, DataSection, EarlyStopping, FeatureCacheSection, Objective,
                            Profile, PrunerChoice, SamplerChoice, SpaceEntry, WarmStart, check_space_entry)
from search._schema_sources import (Architecture, BuilderArchitecture, DatasetLocation, NamedDataset,
                                    PresetArchitecture, architecture_value, dataset_value)
from search._schema_types import Bool, FailureStreak, NonNegativeInt, Problem, Section, Text, spec_error
from search._strategies import objectives_problem
from search.errors import StudySpecError
from storage import check_study_name

logger = logging.getLogger(__name__)

STUDIES_DIR = Path(__file__).parent / "studies"
PROFILES_FILE = Path(__file__).parent / "profiles.yaml"
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies a study may train under


@dataclass(frozen=True)
class Dimension:
    """One searched knob: choices, or a numeric range; optionally only `when` others match."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple], ...] = ()

    def contains(self, value: object) -> bool:
        return fits(value, self.choices, self.low, self.high)


@dataclass(frozen=True)
class FeatureCacheSpec:
    """Train the base once (or take base_weights), cache its features, train heads on them
    (each field is described in search._schema.FeatureCacheSection)."""

    base: str | None = None
    base_epochs: int = 10
    base_max_train: int | None = None
    base_batch_size: int = 128
    base_weights: str | None = None
    search_max_train: int | None = None


@dataclass(frozen=True)
class StudySpec:
    name: str
    architecture: str
    dataset: str
    space: tuple[Dimension, ...]
    description: str = ""
    source: str = ""
    label_mode: str = "fine"
    normalization: str = "scale"
    fixed: dict[str, Any] = field(default_factory=dict)
    augment: AugmentParams = AugmentParams()
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "hyperband"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    trials: int = 20
    max_epochs: int = 20
    timeout_s: float | None = None
    patience: int = 5
    second_objective: str | None = None
    warm_start: tuple[dict[str, Any], ...] = ()
    val_fraction: float = 0.1
    seed: int = 0
    profile: str | None = None
    max_train: int | None = None
    max_val: int | None = None
    feature_cache: FeatureCacheSpec | None = None
    max_consecutive_failures: int = 5
    builder_files: dict[str, str] = field(default_factory=dict)  # each user builder used -> its file's sha256
    precision: str = "float32"  # a Keras dtype policy (PRECISIONS)
    jit_compile: bool = False  # True: XLA for every trial; False: Keras's own choice ("auto")
    dataset_ref: DatasetRef | None = None  # where and how to read `dataset` (None: by name; set after __init__)

    def __post_init__(self) -> None:
        if self.dataset_ref is None:
            object.__setattr__(self, "dataset_ref", DatasetRef(name=self.dataset))

    @property
    def augments(self) -> bool:
        """Whether any trial of this study may train on augmented images."""
        dim = self.dimension("augment")
        if dim is not None:
            return True in (dim.choices or ())
        return bool(self.fixed.get("augment", self.augment.enabled)) and self.augment.enabled

    @property
    def directions(self) -> list[str]:
        return ["maximize"] + (["minimize"] if self.second_objective else [])

    def dimension(self, name: str) -> Dimension | None:
        return next((d for d in self.space if d.name == name), None)

    def hashed_fields(self) -> dict[str, Any]:
        """What makes trials comparable (not the budget, sampler, pruner or failure limit); for a study
        with a builder of its own, also its file's content (a preset study's hash is as it always was)."""
        fields = {k: _jsonable(getattr(self, k)) for k in _HASHED}
        fields["dataset"] = self.dataset_ref.study_value()  # a name, as it always was; else the mapping
        if self.builder_files:
            fields["builder_files"] = {ref: f"sha256:{sha[:16]}" for ref, sha in self.builder_files.items()}
        # Only when not the default, so that the studies written before them keep their hash.
        fields.update({k: getattr(self, k) for k, default in _HASHED_IF_SET.items() if getattr(self, k) != default})
        return fields

    def space_hash(self) -> str:
        """A worker whose hash differs from the study's must not join it."""
        return hashlib.sha256(json.dumps(self.hashed_fields(), sort_keys=True).encode()).hexdigest()[:16]


_HASHED = ("architecture", "dataset", "label_mode", "normalization", "space", "fixed", "augment",
           "max_epochs", "patience", "second_objective", "val_fraction", "seed", "max_train", "max_val",
           "feature_cache")
_HASHED_IF_SET = {"precision": "float32", "jit_compile": False}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --- the study file -----------------------------------------------------------------------------


def _knob_problem(knob: Any, arch: Architecture | None) -> str | None:
    return arch.knob_problem(knob) if arch is not None else knob_problem(knob, None, ())


def _check_fixed(fixed: dict, arch: Architecture | None, space: dict) -> None:
    allowed = arch.fixable() if arch is not None else set(KNOBS)
    unknown = sorted(set(fixed) - allowed, key=str)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    for knob, value in fixed.items():
        checked = arch is not None and (knob in KNOBS or isinstance(arch, BuilderArchitecture))
        problem = (_knob_problem(knob, arch) or arch.value_problem(knob, value)) if checked else None
        if problem:
            raise Problem(problem, knob)
        if knob in space:
            raise Problem("is also in space; keep it in one place", knob)


class StudyFile(Section):
    """A study: what is searched (architecture, dataset, space) and how (sampler, pruner, budget)."""

    model_config = ConfigDict(title="Study file")

    name: str | None = Field(None, description="optional; when given, the file's own name (without .yaml)")
    description: Text = Field("", description="one line on what the study searches")
    source: Text = Field("", description="where the setup comes from (e.g. seed 000)")
    architecture: PresetArchitecture | BuilderArchitecture = Field(description=(
        f"the model: a preset, one of {', '.join(PRESETS)}; or your own, {{builder: \"file.py:build\"}}"))
    dataset: NamedDataset | DatasetLocation = Field(description=(
        f"a name: {', '.join(DATASETS)}, or a folder or file in DATA_DIR; or your own by location, "
        "{path: ..., image_size: [h, w], skip_unreadable: false, test_fraction: 0.2}"))
    label_mode: Literal["fine", "coarse"] = Field("fine", description="cifar100's 100 fine or 20 coarse classes")
    normalization: Literal["scale", "zscore"] = Field("scale", description="pixels to [0, 1], or z-scores per channel")
    space: dict[str, SpaceEntry] = Field(description=(
        "the searched knobs (at least one), in order: a knob's `when` names knobs declared before it"))
    fixed: dict[str, Any] = Field(default_factory=dict, description=(
        "knobs held at one value: search knobs, or keyword arguments of the architecture"))
    augment: AugmentSection = Field(default_factory=AugmentSection)
    sampler: SamplerChoice = Field("tpe", validate_default=True)
    pruner: PrunerChoice = Field("hyperband", validate_default=True)
    budget: Budget = Field(default_factory=Budget)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    objective: Objective = Field(default_factory=Objective)
    data: DataSection = Field(default_factory=DataSection)
    seed: NonNegativeInt = Field(0, description="seeds the split, the sampler (plus the worker index) and training")
    feature_cache: FeatureCacheSection | None = Field(None, json_schema_extra=lambda s: s["anyOf"].append(
        {"type": "boolean", "description": "true: the defaults; false: no feature cache"}))
    warm_start: list[WarmStart] = Field(default_factory=list, description=(
        "trials enqueued first, as a trial's parameters (dense_units_0, dense_units_1, ...); one that does "
        "not fit the space is left out"))
    max_consecutive_failures: FailureStreak = Field(5, description=(
        "workers stop the study once its last N trials all failed for the same reason"))
    precision: Literal[PRECISIONS] = Field("float32", description=(
        "the Keras dtype policy trials train under (mixed_*: float16/bfloat16 compute, float32 weights and output)"))
    jit_compile: Bool = Field(False, description=(
        "true: compile every trial's steps with XLA; false: Keras decides (XLA on a TensorFlow GPU, not on a CPU)"))

    @field_validator("name")
    @classmethod
    def _is_the_files(cls, value: str | None, info: ValidationInfo) -> str | None:
        expected = (info.context or {}).get("name")
        if value is not None and expected is not None and value != expected:
            raise ValueError(f"the file says {value!r} but is named {expected!r}")
        return value

    @field_validator("architecture", mode="before")
    @classmethod
    def _architecture(cls, value: Any) -> Any:
        return architecture_value(value)  # a preset's name, or {builder: ...} (imported and checked here)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, value: Any) -> Any:
        return dataset_value(value)  # a name, or {path: ..., options}

    @field_validator("label_mode", mode="before")
    @classmethod
    def _label_mode(cls, value: Any, info: ValidationInfo) -> Any:
        dataset = info.data.get("dataset")
        if value not in (dataset.label_modes if dataset else ("fine", "coarse")):
            raise ValueError(f"{value!r}: 'coarse' applies only to cifar100, otherwise 'fine'")
        return value

    @field_validator("space", mode="before")
    @classmethod
    def _knobs_exist(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("needs at least one knob to search (a mapping knob: {...})")
        for knob in value:
            problem = _knob_problem(knob, info.data.get("architecture"))
            if problem:
                raise Problem(problem, knob)
        return value

    @field_validator("space")
    @classmethod
    def _values_suit_knobs(cls, space: dict[str, SpaceEntry], info: ValidationInfo) -> dict[str, SpaceEntry]:
        items = list(space.items())
        for i, (knob, entry) in enumerate(items):
            check_space_entry(knob, entry, dict(items[:i]), info.data.get("architecture"))
        return space

    @field_validator("fixed", mode="before")
    @classmethod
    def _fixed_knobs(cls, value: Any, info: ValidationInfo) -> Any:
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping but got {type(value).__name__}")
        _check_fixed(value, info.data.get("architecture"), info.data.get("space") or {})
        return value

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _feature_cache(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value is False:
            return None
        arch = info.data.get("architecture")
        if arch is not None and not arch.freezable_base:
            raise ValueError(f"needs a convnet preset with a freezable base (freeze_base), not {arch.name}")
        return {} if value is True else value

    @field_validator("warm_start", mode="before")
    @classmethod
    def _warm_start(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not isinstance(value, list):
            raise ValueError("must be a list of {knob: value} mappings")
        arch = info.data.get("architecture")
        for i, entry in enumerate(value or []):
            for key in entry if isinstance(entry, dict) else ():
                problem = arch.parameter_problem(key) if arch is not None else parameter_problem(key)
                if problem:
                    raise Problem(problem, i, key)
        return value or []

    @model_validator(mode="after")
    def _fits_together(self) -> StudyFile:
        if self.sampler.name == "grid":
            for knob, entry in self.space.items():
                if entry.choices is None and (entry.step is None or entry.log):
                    raise Problem("the grid sampler needs choices or a step (and no log scale) for every knob",
                                  "space", knob)
        found = self.objective.second and objectives_problem(self.sampler.name, self.pruner.name)
        if found:
            raise Problem(found[1], found[0])
        self.sampler.check_builds(self.budget.max_epochs)
        self.pruner.check_builds(self.budget.max_epochs)
        return self


def study_json_schema() -> dict[str, Any]:
    """The study file's JSON Schema (draft 2020-12), for editors and for checking files offline."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **StudyFile.model_json_schema()}


# --- loading ------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    try:
        return check_study_name(name)
    except ValueError as exc:
        raise StudySpecError("name", str(exc)) from None


def study_path(name: str, studies_dir: Path | None = None) -> Path:
    """<studies_dir>/<name>.yaml; studies_dir None: the studies shipped in search/studies."""
    return Path(studies_dir or STUDIES_DIR) / f"{check_name(name)}.yaml"


def available_studies(studies_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in Path(studies_dir or STUDIES_DIR).glob("*.yaml"))


def load_spec(name: str, *, studies_dir: Path | None = None, **overrides: Any) -> StudySpec:
    """Read and validate <studies_dir>/<name>.yaml, with the command line's dataset, trials, epochs, profile."""
    path = study_path(name, studies_dir)
    if not path.is_file():
        known = ", ".join(available_studies(studies_dir))
        raise StudySpecError("name", f"no study file {path}; known studies: {known}")
    return parse_spec(path.read_text(), name=name, where=str(path), **overrides)


def parse_spec(text: str, *, name: str, where: str = "<study>", **overrides: Any) -> StudySpec:
    raw = _safe_load(text, where)
    check_name(name)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        study = StudyFile.model_validate(_with_overrides(raw, overrides), context={"name": name})
    except ValidationError as exc:
        raise spec_error(exc, where) from None
    spec = _to_spec(study, name)
    return spec if "profile" not in overrides else _with_profile(spec, overrides["profile"])


def _safe_load(text: str, where: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise StudySpecError(where, f"YAML tag not allowed ({exc.problem}); study files are plain data, "
                             "tags that construct Python objects are refused") from None
    except yaml.YAMLError as exc:
        raise StudySpecError(where, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise StudySpecError(where, "a study file is a YAML mapping of fields")
    return raw


def _with_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """--dataset, --trials and --epochs, put where the file gives them: a bad one is reported there."""
    raw = {**raw, **{k: v for k, v in overrides.items() if k == "dataset"}}
    budget = {key: overrides[flag] for flag, key in (("trials", "trials"), ("epochs", "max_epochs"))
              if flag in overrides}
    if budget and isinstance(raw.get("budget") or {}, dict):
        raw["budget"] = {**(raw.get("budget") or {}), **budget}
    return raw


# --- from the validated file to a StudySpec -------------------------------------------------------


def _to_spec(study: StudyFile, name: str) -> StudySpec:
    cache = study.feature_cache
    spec = StudySpec(
        name=name, architecture=study.architecture.name, dataset=study.dataset.ref.label,
        dataset_ref=study.dataset.ref,
        space=tuple(_dimension(knob, entry) for knob, entry in study.space.items()),
        description=study.description, source=study.source, label_mode=study.label_mode,
        normalization=study.normalization, fixed=dict(study.fixed), augment=study.augment.params(),
        sampler=study.sampler.name, sampler_options=dict(study.sampler.options), pruner=study.pruner.name,
        pruner_options=dict(study.pruner.options), trials=study.budget.trials, max_epochs=study.budget.max_epochs,
        timeout_s=study.budget.timeout_s, patience=study.early_stopping.patience,
        second_objective=study.objective.second, val_fraction=study.data.val_fraction, seed=study.seed,
        max_train=study.data.max_train, max_val=study.data.max_val,
        feature_cache=None if cache is None else FeatureCacheSpec(**{**cache.model_dump(), "base": _name(cache.base)}),
        max_consecutive_failures=study.max_consecutive_failures, builder_files=_builder_files(study),
        precision=study.precision, jit_compile=study.jit_compile,
    )
    return dataclasses.replace(spec, warm_start=_fitting(study.warm_start, spec))


def _name(arch: Architecture | str | None) -> str | None:
    return arch.name if isinstance(arch, BuilderArchitecture) else arch


def _builder_files(study: StudyFile) -> dict[str, str]:
    """Each builder of the user's the study uses (architecture, feature_cache.base) -> its file's sha256."""
    used = (study.architecture, study.feature_cache and study.feature_cache.base)
    return {a.name: a.loaded.sha256 for a in used if isinstance(a, BuilderArchitecture)}


def _dimension(knob: str, entry: SpaceEntry) -> Dimension:
    if entry.choices is not None:
        return Dimension(knob, choices=tuple(entry.choices), when=entry.conditions())
    return Dimension(knob, low=entry.low, high=entry.high, log=entry.log, step=entry.step, when=entry.conditions())


def _fitting(warm_start: list[dict[str, Any]], spec: StudySpec) -> tuple[dict[str, Any], ...]:
    """The warm starts that fit the space; each value that does not is logged."""
    kept = []
    for i, entry in enumerate(warm_start):
        misfits = [(key, value) for key, value in entry.items()
                   if not ((dim := spec.dimension(parameter_knob(key))) and dim.contains(value))]
        for key, value in misfits:
            logger.info("warm_start[%d]: %s=%r does not fit the space of %s; not enqueued", i, key, value, spec.name)
        if not misfits:
            kept.append(dict(entry))
    return tuple(kept)


@functools.cache
def profiles() -> dict[str, Profile]:
    """search/profiles.yaml: what each `--profile NAME` changes."""
    raw = yaml.safe_load(PROFILES_FILE.read_text())
    return {name: Profile.model_validate(body) for name, body in raw.items()}


def _with_profile(spec: StudySpec, name: str) -> StudySpec:
    if name not in profiles():
        raise StudySpecError("profile", f"unknown profile {name!r}; known: {', '.join(profiles())}")
    p = profiles()[name]
    cache = spec.feature_cache
    if cache is not None and not cache.base_weights:
        cache = dataclasses.replace(cache, base=cache.base or p.base,
                                    base_epochs=_cap(cache.base_epochs, p.base_epochs),
                                    base_max_train=_cap(cache.base_max_train, p.base_max_train))
    if cache is not None:
        cache = dataclasses.replace(cache, search_max_train=_cap(cache.search_max_train, p.search_max_train))
    return dataclasses.replace(
        spec, profile=name, max_epochs=_cap(spec.max_epochs, p.max_epochs), feature_cache=cache,
        max_train=spec.max_train if p.max_train is None else p.max_train,
        max_val=spec.max_val if p.max_val is None else p.max_val)


def _cap(value: int | None, limit: int | None) -> int | None:
    """`value` held to at most `limit`; a missing value takes the limit, a missing limit changes nothing."""
    if limit is None:
        return value
    return limit if value is None else min(value, limit)
