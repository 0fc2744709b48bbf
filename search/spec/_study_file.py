"""The study file, whole: StudyFile, whose parts search.spec._schema, search.spec._schema_sources and
search.spec._schema_types declare, with the checks across its fields; and its JSON Schema.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from data import DATASETS, dataset_spec
from models import PRESETS, base_blocks
from search.spec._fidelity import RUNG_PRUNERS, rung_options
from search.spec._knobs import KNOBS, LR_SCHEDULES, SCHEDULE_KNOBS, knob_problem, parameter_problem
from search.spec._schema import (
    DEFAULT_TOP_K,
    AugmentSection,
    Budget,
    Constraints,
    DataSection,
    EarlyStopping,
    EvaluateSection,
    FeatureCacheSection,
    FineTuneSection,
    Objective,
    PrunerChoice,
    SamplerChoice,
    SpaceEntry,
    TrackingSection,
    WarmStart,
    check_space_entry,
)
from search.spec._schema_sources import (
    Architecture,
    BuilderArchitecture,
    DatasetLocation,
    NamedDataset,
    PresetArchitecture,
    TrainingSection,
    architecture_value,
    dataset_value,
)
from search.spec._schema_types import PRECISIONS, Bool, FailureStreak, NonNegativeInt, Problem, Section, Text
from search.spec._strategies import PRUNERS, objectives_problem

# The schedules whose rate a missing knob would ruin (ExponentialDecay with rate 0 is 0 after one decay step).
NEEDS = {"step": ("decay_rate", "decay_epochs"), "exponential": ("decay_rate",)}

logger = logging.getLogger(__name__)


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
    constraints: Constraints = Field(default_factory=Constraints)
    training: TrainingSection = Field(default_factory=TrainingSection)
    data: DataSection = Field(default_factory=DataSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    seed: NonNegativeInt = Field(0, description=(
        "seeds the split, the sampler (worker 0 with it, worker i with a seed drawn from it and i) and training"))
    feature_cache: FeatureCacheSection | None = Field(None, json_schema_extra=lambda s: s["anyOf"].append(
        {"type": "boolean", "description": "true: the defaults; false: no feature cache"}))
    fine_tune: FineTuneSection | None = Field(None, description=(
        "a feature-cache study only: after the head search, fine-tune its best heads with the base's last "
        "blocks unfrozen, as trials of the same study (attribute stage: fine_tune)"))
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
        if self.data.folds is not None and self.feature_cache is not None:
            raise Problem("a feature-cache study trains its base once on one training split, so each fold's "
                          "validation images would have been seen by the base: drop folds (or the feature cache)",
                          "data", "folds")
        self._schedule_knobs_have_their_schedule()
        self._objective_fits_the_classes()
        self._fine_tune_fits()
        if self.training.loss and ("label_smoothing" in self.space or "label_smoothing" in self.fixed):
            raise Problem("the study's own training.loss replaces the built-in loss, which is what label_smoothing "
                          "smooths; smooth the labels in your loss instead", "training", "loss")
        mixing = [k for k in ("mixup", "cutmix") if getattr(self.augment, k) or k in self.space or self.fixed.get(k)]
        if self.training.loss and mixing:
            raise Problem(f"{' and '.join(mixing)} train on mixed one-hot labels, which the built-in loss takes "
                          f"beside the integer validation labels; the study's own training.loss would get both: "
                          f"drop {mixing[0]} or the loss", "training", "loss")
        self.sampler.check_builds(self.budget.max_epochs)
        self.pruner.check_builds(self.budget.max_epochs)
        self._fidelity_fits()
        return self

    def _fidelity_fits(self) -> None:
        """fidelity: data follows the rungs of hyperband or successive_halving, counted in epochs."""
        if self.budget.fidelity != "data":
            return
        rungs = rung_options(self.pruner.name, self.pruner.options, PRUNERS[self.pruner.name].defaults)
        if rungs is None:
            raise Problem(f"fidelity: data grows the training set at the pruner's rungs, and pruner {self.pruner.name} "
                          f"has no rungs; use pruner: {' or '.join(RUNG_PRUNERS)}, or fidelity: epochs",
                          "budget", "fidelity")
        min_resource = rungs["min_resource"]
        if not isinstance(min_resource, int):
            raise Problem(f"fidelity: data needs the first rung in epochs, but min_resource is {min_resource!r}; "
                          "give it as a number of epochs (e.g. 1)", "pruner", "min_resource")


    def _fine_tune_fits(self) -> None:
        """fine_tune promotes heads of a feature cache's base; what it unfreezes must exist."""
        ft = self.fine_tune
        if ft is None:
            return
        if self.feature_cache is None:
            raise Problem("fine-tuning starts from the heads a feature-cache study searched on its cached base; add "
                          "feature_cache (with a convnet or wrn base, or your own), or drop fine_tune", "fine_tune")
        if self.objective.second:
            raise Problem("a two-objective study has no single best head to promote; drop objective.second or "
                          "fine_tune", "fine_tune")
        if self.sampler.name == "grid":
            raise Problem("the grid sampler cannot sample the fine-tuning knobs, which are not in its grid; choose "
                          "another sampler or drop fine_tune", "fine_tune")
        base = self.feature_cache.base or self.architecture
        if isinstance(base, BuilderArchitecture):
            if ft.blocks is None:
                raise Problem(f"your base {base.name} has no blocks the service knows: list them in order, each by "
                              "the name of its first layer, e.g. blocks: [block1_conv1, block2_conv1]",
                              "fine_tune", "blocks")
            blocks = len(ft.blocks)
        else:
            name = base if isinstance(base, str) else base.name
            blocks = len(ft.blocks) if ft.blocks else len(base_blocks(PRESETS[name].params(input_shape=(32, 32, 3),
                                                                                            num_classes=10)))
        if ft.most_blocks() > blocks:
            raise Problem(f"unfreeze_blocks goes up to {ft.most_blocks()} but the base has {blocks} block(s); "
                          f"choose at most {blocks}", "fine_tune", "space", "unfreeze_blocks")

    def _objective_fits_the_classes(self) -> None:
        """A named dataset's classes are known now; data of one's own is checked when `create` reads it."""
        ref = self.dataset.ref
        if self.objective.metric != "val_top_k_accuracy" or not ref.named:
            return
        classes = dataset_spec(ref.name, label_mode=self.label_mode).num_classes
        k = self.objective.k or DEFAULT_TOP_K
        if k >= classes:
            raise Problem(f"val_top_k_accuracy with k={k} on {classes} classes is always 1; choose k below {classes}",
                          "objective", "k")

    def _schedule_knobs_have_their_schedule(self) -> None:
        """A schedule's knob (decay_rate, warmup_epochs, ...) searched or fixed where no lr_schedule the
        study may pick reads it would silently change nothing."""
        entry = self.space.get("lr_schedule")
        schedules = set(entry.choices or ()) if entry is not None else {self.fixed.get("lr_schedule", "constant")}
        for schedule in sorted(map(str, schedules) & NEEDS.keys()):
            missing = [k for k in NEEDS[schedule] if k not in self.space and k not in self.fixed]
            if missing:
                where = ("space", "lr_schedule") if entry is not None else ("fixed", "lr_schedule")
                raise Problem(f"lr_schedule {schedule} needs {' and '.join(missing)} (without, the rate would drop "
                              f"to 0 at the first decay); add it to fixed or to the space", *where)
        for section, knobs in (("space", self.space), ("fixed", self.fixed)):
            for knob in knobs:
                if knob in SCHEDULE_KNOBS and not any(knob in LR_SCHEDULES.get(s, ()) for s in schedules):
                    readers = sorted(s for s, read in LR_SCHEDULES.items() if knob in read)
                    raise Problem(f"only the lr_schedule {' or '.join(readers)} reads {knob}, and this study's "
                                  f"lr_schedule is {' or '.join(sorted(map(str, schedules)))}; add "
                                  f"`lr_schedule: {readers[0]}` to fixed (or to the space's choices)", section, knob)


def study_json_schema() -> dict[str, Any]:
    """The study file's JSON Schema (draft 2020-12), for editors and for checking files offline."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **StudyFile.model_json_schema()}


