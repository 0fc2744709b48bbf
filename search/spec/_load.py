"""Study files: YAML (safe-loaded), validated as a StudyFile, turned into a StudySpec (with the command
line's overrides and profile) before anything touches a store. Every error names the field
(`space.learning_rate.low`) and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from search.errors import StudySpecError
from search.spec._fidelity import full_data_epoch, percent
from search.spec._knobs import parameter_knob
from search.spec._schema import (
    DEFAULT_TOP_K,
    Profile,
    SpaceEntry,
)
from search.spec._schema_sources import (
    Architecture,
    BuilderArchitecture,
)
from search.spec._schema_types import spec_error
from search.spec._spec import (
    FINE_TUNE_PREFIX,
    PROFILES_FILE,
    STUDIES_DIR,
    Dimension,
    FeatureCacheSpec,
    FineTuneSpec,
    StudySpec,
)
from search.spec._study_file import StudyFile
from storage import check_study_name

logger = logging.getLogger(__name__)



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
    spec = spec if "profile" not in overrides else _with_profile(spec, overrides["profile"],
                                                                 trials_given="trials" in overrides)
    if spec.data_fractions and full_data_epoch(spec.data_fractions) is None:
        logger.warning("%s: with fidelity: data and max_epochs %d no epoch trains on all the training set (at most %s "
                       "of it): raise budget.max_epochs or min_data_fraction for trials that see all of it", name,
                       spec.max_epochs, percent(max(spec.data_fractions)))
    return spec


MAX_ALIASES = 100  # a study file may reuse a mapping with &anchor / *alias; "a billion laughs" may not


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing more than MAX_ALIASES aliases: nested aliases expand
    exponentially once the data is walked (validated, hashed, dumped)."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name): a study file this large in "
                                     "expansion is refused; write the values out")
        return super().compose_node(parent, index)


def _safe_load(text: str, where: str) -> dict:
    try:
        raw = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506  # nosec B506 - a SafeLoader subclass
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
        second_objective=study.objective.second,
        metric=study.objective.metric, top_k=study.objective.k or DEFAULT_TOP_K, constraints=study.constraints.limits(),
        training=study.training.references(), training_files=study.training.files(), val_fraction=study.data.val_fraction, seed=study.seed,
        max_train=study.data.max_train, max_val=study.data.max_val, folds=study.data.folds,
        feature_cache=None if cache is None else FeatureCacheSpec(**{**cache.model_dump(), "base": _name(cache.base)}),
        fine_tune=_fine_tune(study),
        max_consecutive_failures=study.max_consecutive_failures, builder_files=_builder_files(study),
        precision=study.precision, jit_compile=study.jit_compile, mlflow=study.tracking.mlflow,
        fidelity=study.budget.fidelity, min_data_fraction=study.budget.min_data_fraction,
        evaluate_top_k=study.evaluate.top_k, evaluate_seeds=study.evaluate.seeds,
    )
    return dataclasses.replace(spec, warm_start=_fitting(study.warm_start, spec))


def _fine_tune(study: StudyFile) -> FineTuneSpec | None:
    ft = study.fine_tune
    if ft is None:
        return None
    return FineTuneSpec(top_k=ft.top_k, epochs=ft.epochs, blocks=tuple(ft.blocks) if ft.blocks else None,
                        space=tuple(_dimension(f"{FINE_TUNE_PREFIX}{knob}", e) for knob, e in ft.space.items()))


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
    """search/spec/profiles.yaml: what each `--profile NAME` changes."""
    raw = yaml.safe_load(PROFILES_FILE.read_text())
    return {name: Profile.model_validate(body) for name, body in raw.items()}


def _with_profile(spec: StudySpec, name: str, *, trials_given: bool = False) -> StudySpec:
    """The profile's changes; a trial budget given on the command line (--trials, TRIALS) is kept."""
    if name not in profiles():
        raise StudySpecError("profile", f"unknown profile {name!r}; known: {', '.join(profiles())}")
    p = profiles()[name]
    cache = spec.feature_cache
    if cache is not None and not cache.base_weights:
        cache = dataclasses.replace(cache, base=cache.base or p.base,
                                    base_epochs=_cap(cache.base_epochs, p.base_epochs),
                                    base_max_train=_cap(cache.base_max_train, p.base_max_train),
                                    base_precision=_unless_set(cache.base_precision, p.base_precision))
    if cache is not None:
        cache = dataclasses.replace(cache, search_max_train=_cap(cache.search_max_train, p.search_max_train))
    return dataclasses.replace(
        spec, profile=name, max_epochs=_cap(spec.max_epochs, p.max_epochs),
        trials=spec.trials if trials_given else _cap(spec.trials, p.trials), feature_cache=cache,
        max_train=spec.max_train if p.max_train is None else p.max_train,
        max_val=spec.max_val if p.max_val is None else p.max_val)


def _unless_set(value: str, profile: str | None) -> str:
    """The profile's base precision where the study leaves the base to the study's precision."""
    return profile if profile is not None and value == "study" else value


def _cap(value: int | None, limit: int | None) -> int | None:
    """`value` held to at most `limit`; a missing value takes the limit, a missing limit changes nothing."""
    if limit is None:
        return value
    return limit if value is None else min(value, limit)
