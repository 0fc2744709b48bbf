"""What the code reads of a study: StudySpec (frozen, hashed), its searched Dimensions and its feature cache.

search.spec._study_file declares and validates the file; search.spec._load reads it into this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import DatasetRef
from data._augment import AugmentParams
from search.settings import STUDIES_DIR as SETTINGS_STUDIES_DIR
from search.spec._fidelity import data_fractions, rung_options
from search.spec._knobs import KNOBS, fits
from search.spec._schema import DEFAULT_TOP_K, FeatureCacheSection, minimized
from search.spec._schema_types import PRECISIONS  # noqa: F401 - re-exported: search.spec.PRECISIONS
from search.spec._strategies import PRUNERS

logger = logging.getLogger(__name__)
AUGMENT_FIELDS = frozenset(f.name for f in dataclasses.fields(AugmentParams))

STUDIES_DIR = SETTINGS_STUDIES_DIR  # one definition: search/settings.py
PROFILES_FILE = Path(__file__).parent / "profiles.yaml"


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


_CACHE_FIELDS = FeatureCacheSection.model_fields


@dataclass(frozen=True)
class FeatureCacheSpec:
    """The study file's feature_cache section as the code reads it: FeatureCacheSection's fields (their
    meaning and defaults are declared there, once), with `base` resolved to a preset or builder name."""

    base: str | None = None
    base_epochs: int = _CACHE_FIELDS["base_epochs"].default
    base_max_train: int | None = _CACHE_FIELDS["base_max_train"].default
    base_batch_size: int = _CACHE_FIELDS["base_batch_size"].default
    base_weights: str | None = _CACHE_FIELDS["base_weights"].default
    base_precision: str = _CACHE_FIELDS["base_precision"].default
    search_max_train: int | None = _CACHE_FIELDS["search_max_train"].default


FINE_TUNE_PREFIX = "fine_tune_"  # a fine-tuning trial's own params: fine_tune_unfreeze_blocks, fine_tune_learning_rate


@dataclass(frozen=True)
class FineTuneSpec:
    """The study file's fine_tune section (search.spec._schema.FineTuneSection): `space` holds the
    fine-tuning knobs as the params a fine-tuning trial samples (fine_tune_unfreeze_blocks, ...)."""

    top_k: int = 5
    epochs: int = 5
    blocks: tuple[str, ...] | None = None  # a user base's blocks (their first layers); None: the preset's
    space: tuple[Dimension, ...] = ()


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
    metric: str = "val_accuracy"  # the objective (OBJECTIVE_METRICS)
    top_k: int = DEFAULT_TOP_K  # val_top_k_accuracy's k
    constraints: dict[str, float] = field(default_factory=dict)  # max_params, ... -> limit (set ones only)
    training: dict[str, str] = field(default_factory=dict)  # callbacks/loss -> the user's function reference
    training_files: dict[str, str] = field(default_factory=dict)  # each such reference -> its file's sha256
    mlflow: str | None = None  # tracking.mlflow: trials also recorded there (not hashed: it changes nothing)
    evaluate_top_k: int = 5  # evaluate.top_k: candidates `make evaluate` confirms (not hashed)
    evaluate_seeds: int = 3  # evaluate.seeds: retrains of each
    warm_start: tuple[dict[str, Any], ...] = ()
    val_fraction: float = 0.1
    folds: int | None = None  # data.folds: each trial's value is the mean over K folds
    seed: int = 0
    profile: str | None = None
    max_train: int | None = None
    max_val: int | None = None
    feature_cache: FeatureCacheSpec | None = None
    fine_tune: FineTuneSpec | None = None  # promote the best heads to fine-tuning trials (feature-cache studies)
    max_consecutive_failures: int = 5
    builder_files: dict[str, str] = field(default_factory=dict)  # each user builder used -> its file's sha256
    precision: str = "float32"  # a Keras dtype policy (PRECISIONS)
    jit_compile: bool = False  # True: XLA for every trial; False: Keras's own choice ("auto")
    fidelity: str = "epochs"  # budget.fidelity: "data" grows the training set at the pruner's rungs
    min_data_fraction: float | None = None  # budget.min_data_fraction (None: 1/reduction_factor^2)
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
        if not self.fixed.get("augment", True):
            return False
        # A searched policy (mixup: {choices: [true, false]}, rotation: {low: ...}) may switch it on.
        searched = any(KNOBS[d.name].target == "augment" for d in self.space if d.name in KNOBS)
        fixed = {k: v for k, v in self.fixed.items() if k in AUGMENT_FIELDS}
        return searched or dataclasses.replace(self.augment, **fixed).enabled

    @property
    def directions(self) -> list[str]:
        return [self.direction] + (["minimize"] if self.second_objective else [])

    @property
    def direction(self) -> str:
        """The objective metric's: val_loss is minimised, every other metric maximised."""
        return "minimize" if minimized(self.metric) else "maximize"

    def representative_knobs(self) -> dict[str, Any]:
        """The fixed values and, for each searched knob, its first choice or its low end: a trial's knobs
        as `create` calls the study's own training functions with them, once."""
        return {**{d.name: d.choices[0] if d.choices else d.low for d in self.space}, **self.fixed}

    def classes_problem(self, num_classes: int) -> str | None:
        """What the objective cannot do with this many classes (None: nothing)."""
        if self.metric == "val_top_k_accuracy" and self.top_k >= num_classes:
            return (f"val_top_k_accuracy with k={self.top_k} on {num_classes} classes is always 1; "
                    f"choose k below {num_classes}")
        return None

    @property
    def data_fractions(self) -> tuple[float, ...]:
        """With fidelity data, the share of the training set each epoch trains on (search.spec._fidelity);
        () when every epoch trains on all of it."""
        rungs = rung_options(self.pruner, self.pruner_options, PRUNERS[self.pruner].defaults)
        if self.fidelity != "data" or rungs is None:  # no rungs (a benchmark's pruner: none): every epoch on all
            return ()
        return data_fractions(max_epochs=self.max_epochs, min_fraction=self.min_data_fraction, **rungs)

    def dimension(self, name: str) -> Dimension | None:
        return next((d for d in self.space if d.name == name), None)

    def hashed_fields(self) -> dict[str, Any]:
        """What makes trials comparable (not the budget, sampler, pruner or failure limit); for a study
        with a builder of its own, also its file's content (a preset study's hash is as it always was)."""
        fields = {k: _jsonable(getattr(self, k)) for k in _HASHED}
        fields["augment"] = self.augment.hashed()  # its policies only when set, as _HASHED_IF_SET
        fields["dataset"] = self.dataset_ref.study_value()  # a name, as it always was; else the mapping
        if self.builder_files:
            fields["builder_files"] = {ref: f"sha256:{sha[:16]}" for ref, sha in self.builder_files.items()}
        if self.training_files:
            fields["training_files"] = {ref: f"sha256:{sha[:16]}" for ref, sha in self.training_files.items()}
        if self.feature_cache is not None and self.feature_cache.base_precision == "study":
            del fields["feature_cache"]["base_precision"]  # the default: studies written before it keep their hash
        if self.fine_tune is not None:  # how many heads are promoted is a budget, not an identity
            fields["fine_tune"] = {k: v for k, v in _jsonable(self.fine_tune).items() if k != "top_k"}
        if self.fidelity != "epochs":  # what each epoch trains on, as the pruner compares trials by epoch
            fields["data_fractions"] = [round(f, 6) for f in self.data_fractions]
        # Only when not the default, so that the studies written before them keep their hash.
        fields.update({k: getattr(self, k) for k, default in _HASHED_IF_SET.items() if getattr(self, k) != default})
        return fields

    def space_hash(self) -> str:
        """A worker whose hash differs from the study's must not join it."""
        return hashlib.sha256(json.dumps(self.hashed_fields(), sort_keys=True).encode()).hexdigest()[:16]


_HASHED = ("architecture", "dataset", "label_mode", "normalization", "space", "fixed", "augment",
           "max_epochs", "patience", "second_objective", "val_fraction", "seed", "max_train", "max_val",
           "feature_cache")
_HASHED_IF_SET = {"precision": "float32", "jit_compile": False, "metric": "val_accuracy", "top_k": DEFAULT_TOP_K,
                  "constraints": {}, "folds": None}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


