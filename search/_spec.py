"""Study files: YAML (safe-loaded), validated into a StudySpec before anything touches a store.

Every error names the field (`space.learning_rate.low`) and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data import DATASETS
from data._augment import AugmentParams
from models import PRESETS
from search._knobs import KNOBS, check_value
from search.errors import StudySpecError
from storage import check_study_name

logger = logging.getLogger(__name__)

STUDIES_DIR = Path(__file__).parent / "studies"
SAMPLERS = {
    "tpe": {"seed", "n_startup_trials", "multivariate", "group", "constant_liar"},
    "random": {"seed"},
    "grid": {"seed"},
    "cmaes": {"seed", "n_startup_trials", "sigma0"},
    "gp": {"seed", "n_startup_trials"},
    "nsga2": {"seed", "population_size"},
}
PRUNERS = {
    "hyperband": {"min_resource", "reduction_factor"},
    "successive_halving": {"min_resource", "reduction_factor", "min_early_stopping_rate"},
    "median": {"n_startup_trials", "n_warmup_steps"},
    "none": set(),
}
SECOND_OBJECTIVES = ("params", "train_seconds")
# smoke: a CPU demo in a minute. quick: a feature-cache study made to fit a 2-core CPU: unless the
# study file names a base, the conv base is the lighter s003_vgg_blocks (about 330 training images/s
# there against about 25 for seed 002's VGG base, and the same 2,048-d features), trained once for 8
# epochs on 20,000 images; heads are searched on 5,000 of its cached training features (evaluation
# retrains on all).
PROFILES = {
    "smoke": {"max_train": 2000, "max_val": 500, "max_epochs": 2, "base_epochs": 1, "base_max_train": 2000},
    "quick": {"base": "s003_vgg_blocks", "base_epochs": 8, "base_max_train": 20000, "search_max_train": 5000},
}
TOP_LEVEL = {
    "name", "description", "source", "architecture", "dataset", "label_mode", "normalization", "space",
    "fixed", "augment", "sampler", "pruner", "budget", "early_stopping", "objective", "warm_start", "data", "seed",
    "feature_cache",
}


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
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high  # type: ignore[operator]


@dataclass(frozen=True)
class FeatureCacheSpec:
    """Train the base once (or take base_weights), cache its features, train heads on them."""

    # The conv base whose flattened features heads train on: a preset name; None means the study's
    # architecture. The final model is this base (frozen) followed by the searched head.
    base: str | None = None
    base_epochs: int = 10
    base_max_train: int | None = None
    base_batch_size: int = 128
    base_weights: str | None = None
    # Trials train their heads on a stratified subset of this many cached training features (the
    # validation split stays whole); `make evaluate` retrains the winner on all of them.
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
        """What makes trials comparable (not the budget, sampler or pruner)."""
        return {k: _jsonable(getattr(self, k)) for k in _HASHED}

    def space_hash(self) -> str:
        """A worker whose hash differs from the study's must not join it."""
        return hashlib.sha256(json.dumps(self.hashed_fields(), sort_keys=True).encode()).hexdigest()[:16]


_HASHED = ("architecture", "dataset", "label_mode", "normalization", "space", "fixed", "augment",
           "max_epochs", "patience", "second_objective", "val_fraction", "seed", "max_train", "max_val",
           "feature_cache")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --- loading ----------------------------------------------------------------------------------


def check_name(name: str) -> str:
    try:
        return check_study_name(name)
    except ValueError as exc:
        raise StudySpecError("name", str(exc)) from None


def study_path(name: str) -> Path:
    return Path(os.environ.get("STUDIES_DIR") or STUDIES_DIR) / f"{check_name(name)}.yaml"


def available_studies() -> list[str]:
    folder = Path(os.environ.get("STUDIES_DIR") or STUDIES_DIR)
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_spec(name: str, **overrides: Any) -> StudySpec:
    """Read and validate search/studies/<name>.yaml, applying command-line overrides
    (dataset, trials, epochs, profile)."""
    path = study_path(name)
    if not path.is_file():
        raise StudySpecError("name", f"no study file {path}; known studies: {', '.join(available_studies())}")
    return parse_spec(path.read_text(), name=name, where=str(path), **overrides)


def parse_spec(text: str, *, name: str, where: str = "<study>", **overrides: Any) -> StudySpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise StudySpecError(where, f"YAML tag not allowed ({exc.problem}); study files are plain data, "
                             "tags that construct Python objects are refused") from None
    except yaml.YAMLError as exc:
        raise StudySpecError(where, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise StudySpecError(where, "a study file is a YAML mapping of fields")
    return _build(raw, name=name, where=where, overrides={k: v for k, v in overrides.items() if v is not None})


def _expect(cond: bool, where: str, problem: str) -> None:
    if not cond:
        raise StudySpecError(where, problem)


def _mapping(raw: Any, where: str, allowed: set[str]) -> dict:
    if raw is None:
        return {}
    _expect(isinstance(raw, dict), where, f"expected a mapping but got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    _expect(not unknown, where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return raw


def _number(value: Any, where: str) -> float:
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            where, f"expected a finite number but got {value!r}")
    return value


def _build(raw: dict, *, name: str, where: str, overrides: dict[str, Any]) -> StudySpec:
    _mapping(raw, where, TOP_LEVEL)
    check_name(name)
    _expect(raw.get("name", name) == name, "name", f"the file says {raw.get('name')!r} but is named {name!r}")

    arch = raw.get("architecture")
    _expect(arch in PRESETS, "architecture", f"unknown architecture {arch!r}; known: {', '.join(PRESETS)}")
    preset_knobs = set(PRESETS[arch].knobs)

    dataset = overrides.get("dataset", raw.get("dataset"))
    _expect(dataset in DATASETS, "dataset", f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    label_mode = raw.get("label_mode", "fine")
    _expect(label_mode in ("fine", "coarse") and (label_mode == "fine" or dataset == "cifar100"),
            "label_mode", f"{label_mode!r}: 'coarse' applies only to cifar100, otherwise 'fine'")
    normalization = raw.get("normalization", "scale")
    _expect(normalization in ("scale", "zscore"), "normalization", f"{normalization!r} is not 'scale' or 'zscore'")

    def knob_ok(knob: str, at: str) -> None:
        _expect(knob in KNOBS, at, f"unknown knob {knob!r}; knobs: {', '.join(KNOBS)}")
        if KNOBS[knob].target == "model":
            model_name = "dense_units" if knob == "dense_layers" else knob
            _expect(model_name in preset_knobs, at,
                    f"architecture {arch} has no knob {model_name!r}; its knobs: {sorted(preset_knobs)}")

    space = _space(raw.get("space"), knob_ok)
    fixed = _mapping(raw.get("fixed"), "fixed", set(KNOBS) | set(preset_knobs))
    for knob, value in fixed.items():
        if knob in KNOBS:
            knob_ok(knob, f"fixed.{knob}")
            problem = check_value(knob, value)
            _expect(problem is None, f"fixed.{knob}", str(problem))
        _expect(knob not in {d.name for d in space}, f"fixed.{knob}", "is also in space; keep it in one place")

    augment = _augment(raw.get("augment"))
    sampler, sampler_options = _strategy(raw.get("sampler", "tpe"), "sampler", SAMPLERS)
    pruner, pruner_options = _strategy(raw.get("pruner", "hyperband"), "pruner", PRUNERS)
    if sampler == "grid":
        for d in space:
            _expect(d.choices is not None or (d.step is not None and not d.log), f"space.{d.name}",
                    "the grid sampler needs choices or a step (and no log scale) for every knob")

    budget = _mapping(raw.get("budget"), "budget", {"trials", "max_epochs", "timeout_s"})
    trials = overrides.get("trials", budget.get("trials", 20))
    max_epochs = overrides.get("epochs", budget.get("max_epochs", 20))
    _expect(isinstance(trials, int) and trials >= 1, "budget.trials", f"must be a positive integer but got {trials!r}")
    _expect(isinstance(max_epochs, int) and max_epochs >= 1, "budget.max_epochs",
            f"must be a positive integer but got {max_epochs!r}")
    timeout = budget.get("timeout_s")
    if timeout is not None:
        _expect(_number(timeout, "budget.timeout_s") > 0, "budget.timeout_s", "must be positive")

    early = _mapping(raw.get("early_stopping"), "early_stopping", {"patience"})
    patience = early.get("patience", 5)
    _expect(isinstance(patience, int) and patience >= 1, "early_stopping.patience", f"must be >= 1 but got {patience!r}")

    objective = _mapping(raw.get("objective"), "objective", {"second"})
    second = objective.get("second")
    _expect(second in (None, *SECOND_OBJECTIVES), "objective.second",
            f"{second!r} is not one of {SECOND_OBJECTIVES} (or leave it out)")
    if second:
        _expect(pruner == "none", "pruner", "pruning needs one objective; with objective.second set, use pruner: none")
        _expect(sampler not in ("cmaes", "gp"), "sampler", f"{sampler} handles one objective; use tpe, nsga2 or random")

    data = _mapping(raw.get("data"), "data", {"val_fraction", "max_train", "max_val"})
    val_fraction = data.get("val_fraction", 0.1)
    _expect(0 < _number(val_fraction, "data.val_fraction") < 1, "data.val_fraction", "must be in (0, 1)")
    seed = raw.get("seed", 0)
    _expect(isinstance(seed, int) and seed >= 0, "seed", f"must be a non-negative integer but got {seed!r}")

    profile = overrides.get("profile")
    max_train, max_val = data.get("max_train"), data.get("max_val")
    feature_cache = _feature_cache(raw.get("feature_cache"), arch)
    if profile is not None:
        _expect(profile in PROFILES, "profile", f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
        p = PROFILES[profile]
        max_train, max_val = p.get("max_train", max_train), p.get("max_val", max_val)
        max_epochs = min(max_epochs, p.get("max_epochs", max_epochs))
        if feature_cache is not None and not feature_cache.base_weights:
            feature_cache = dataclasses.replace(
                feature_cache, base=feature_cache.base or p.get("base"),
                base_epochs=min(feature_cache.base_epochs, p["base_epochs"]),
                base_max_train=min(feature_cache.base_max_train or p["base_max_train"], p["base_max_train"]))
        if feature_cache is not None and "search_max_train" in p:
            feature_cache = dataclasses.replace(feature_cache, search_max_train=min(
                feature_cache.search_max_train or p["search_max_train"], p["search_max_train"]))

    spec = StudySpec(
        name=name, architecture=arch, dataset=dataset, space=space, description=str(raw.get("description", "")),
        source=str(raw.get("source", "")), label_mode=label_mode, normalization=normalization, fixed=dict(fixed),
        augment=augment, sampler=sampler, sampler_options=sampler_options, pruner=pruner,
        pruner_options=pruner_options, trials=trials, max_epochs=max_epochs, timeout_s=timeout,
        patience=patience, second_objective=second, val_fraction=val_fraction, seed=seed, profile=profile,
        max_train=max_train, max_val=max_val, feature_cache=feature_cache,
    )
    return dataclasses.replace(spec, warm_start=_warm_start(raw.get("warm_start"), spec))


def _space(raw: Any, knob_ok) -> tuple[Dimension, ...]:
    _expect(isinstance(raw, dict) and raw, "space", "needs at least one knob to search (a mapping knob: {...})")
    dims: list[Dimension] = []
    for knob, body in raw.items():
        at = f"space.{knob}"
        knob_ok(knob, at)
        body = _mapping(body, at, {"choices", "low", "high", "log", "step", "when"})
        when = _when(body.get("when"), at, dims)
        if "choices" in body:
            choices = body["choices"]
            _expect(isinstance(choices, list) and choices, f"{at}.choices", "must be a non-empty list")
            _expect(not {"low", "high", "log", "step"} & set(body), at, "give choices or low/high, not both")
            for c in choices:
                problem = check_value(knob, c)
                _expect(problem is None, f"{at}.choices", str(problem))
            _expect(len(set(map(repr, choices))) == len(choices), f"{at}.choices", "has duplicates")
            dims.append(Dimension(knob, choices=tuple(choices), when=when))
            continue
        _expect("low" in body and "high" in body, at, "needs choices, or low and high")
        low, high = _number(body["low"], f"{at}.low"), _number(body["high"], f"{at}.high")
        _expect(low <= high, at, f"low ({low}) is greater than high ({high}); swap them")
        log = body.get("log", False)
        _expect(isinstance(log, bool), f"{at}.log", "must be true or false")
        _expect(not log or low > 0, f"{at}.low", f"a log scale needs low > 0 but got {low}")
        step = body.get("step")
        if step is not None:
            _expect(_number(step, f"{at}.step") > 0, f"{at}.step", "must be positive")
            _expect(not log, at, "choose log or step, not both")
        kind = KNOBS[knob].kind
        _expect(kind in ("int", "float"), at, f"{knob} is a {kind} knob; give choices")
        if kind == "int":
            _expect(all(isinstance(v, int) for v in (low, high, step or 1)), at, f"{knob} takes integers")
        for bound, value in (("low", low), ("high", high)):
            problem = check_value(knob, value)
            _expect(problem is None, f"{at}.{bound}", str(problem))
        dims.append(Dimension(knob, low=low, high=high, log=log, step=step, when=when))
    return tuple(dims)


def _when(raw: Any, at: str, earlier: list[Dimension]) -> tuple[tuple[str, tuple], ...]:
    if raw is None:
        return ()
    _expect(isinstance(raw, dict) and raw, f"{at}.when", "must map an earlier knob to its value(s)")
    out = []
    for knob, values in raw.items():
        dim = next((d for d in earlier if d.name == knob), None)
        _expect(dim is not None, f"{at}.when.{knob}", "must name a knob declared earlier in space")
        values = tuple(values) if isinstance(values, list) else (values,)
        for v in values:
            _expect(dim.contains(v), f"{at}.when.{knob}", f"{v!r} is not a value {knob} can take")
        out.append((knob, values))
    return tuple(out)


def _augment(raw: Any) -> AugmentParams:
    fields = {f.name for f in dataclasses.fields(AugmentParams)}
    raw = _mapping(raw, "augment", fields)
    try:
        return AugmentParams(**raw)
    except (TypeError, ValueError) as exc:
        raise StudySpecError("augment", str(exc)) from None


def _strategy(raw: Any, where: str, known: dict[str, set[str]]) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, str):
        raw = {"name": raw}
    _expect(isinstance(raw, dict) and "name" in raw, where, f"give a name: one of {', '.join(known)}")
    name = raw["name"]
    _expect(name in known, f"{where}.name", f"unknown {where} {name!r}; known: {', '.join(known)}")
    options = {k: v for k, v in raw.items() if k != "name"}
    unknown = sorted(set(options) - known[name])
    _expect(not unknown, where, f"{name} takes no option(s) {unknown}; it takes {sorted(known[name])}")
    return name, options


def _feature_cache(raw: Any, arch: str) -> FeatureCacheSpec | None:
    if raw is None or raw is False:
        return None
    raw = _mapping({} if raw is True else raw, "feature_cache", {f.name for f in dataclasses.fields(FeatureCacheSpec)})
    _expect(PRESETS[arch].family == "convnet" and "freeze_base" in PRESETS[arch].knobs, "feature_cache",
            f"needs a convnet preset with a freezable base (freeze_base), not {arch}")
    base = raw.get("base")
    _expect(base is None or (base in PRESETS and PRESETS[base].family in ("convnet", "wrn")), "feature_cache.base",
            f"{base!r} is not a convnet or wrn preset; known: "
            f"{', '.join(sorted(n for n, p in PRESETS.items() if p.family in ('convnet', 'wrn')))}")
    for key in ("base_epochs", "base_batch_size"):
        value = raw.get(key, 1)
        _expect(isinstance(value, int) and value >= 1, f"feature_cache.{key}", f"must be >= 1 but got {value!r}")
    for key in ("base_max_train", "search_max_train"):
        value = raw.get(key)
        _expect(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 10),
                f"feature_cache.{key}", f"must be an integer >= 10 or absent but got {value!r}")
    return FeatureCacheSpec(**raw)


def _warm_start(raw: Any, spec: StudySpec) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    _expect(isinstance(raw, list), "warm_start", "must be a list of {knob: value} mappings")
    kept = []
    for i, entry in enumerate(raw):
        at = f"warm_start[{i}]"
        _expect(isinstance(entry, dict) and entry, at, "must be a non-empty mapping of knob values")
        fits = True
        for key, value in entry.items():
            base = re.sub(r"_\d+$", "", key) if key.startswith("dense_units_") else key
            _expect(base in KNOBS, f"{at}.{key}", f"unknown knob {key!r}")
            _expect(key != "dense_units", f"{at}.{key}",
                    "a warm start names each dense layer's width: dense_units_0, dense_units_1, ... "
                    "(the trial's parameters), not dense_units")
            dim = spec.dimension(base)
            if dim is None or not dim.contains(value):
                fits = False
                logger.info("%s: %s=%r does not fit the space of %s; not enqueued", at, key, value, spec.name)
        if fits:
            kept.append(dict(entry))
    return tuple(kept)
