"""`python -m search create NAME`: validate the study file and its data, then create the study (idempotent)."""

from __future__ import annotations

import argparse

import optuna

from data import Dataset, dataset_spec
from models import build
from search._cli import add_study_args, overrides
from search._tracking import tracker
from search.errors import StudySpecError
from search.settings import Settings
from search.spec import StudySpec, check_builders, load_data, load_spec, trial_config
from search.study import create_study
from storage import check_roles, describe, ensure_roles, open_storage

HELP = "create the study (idempotent) and enqueue warm starts"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    add_study_args(sub.add_parser("create", help=HELP), settings)


def run(args: argparse.Namespace, settings: Settings) -> int:
    create(args, settings)
    return 0


def create(args: argparse.Namespace, settings: Settings, spec: StudySpec | None = None,
           data: Dataset | None = None) -> optuna.Study:
    """A bad file, dataset or builder fails here, before the store is touched."""
    spec = spec or load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    if data is None and (spec.builder_files or not spec.dataset_ref.named):
        data = load_data(spec, settings)
    if data is not None and (problem := spec.classes_problem(data.num_classes)):
        raise StudySpecError("objective.k", problem)  # a named dataset's classes were checked with the file
    if spec.builder_files:  # a model of the user's: built once on the data's shape, before the store is touched
        check_builders(spec, input_shape=data.input_shape, num_classes=data.num_classes)
    elif data is not None and not spec.dataset_ref.named:
        _check_preset_fits(spec, data)
    if spec.training:
        # Keras loads here, and only for a study with training extras: they are called once to check them.
        from search.trial import check_extras

        check_extras(spec, spec.representative_knobs())
    url = settings.store_url(args.storage)
    roles = settings.store_roles()
    check_roles(url, roles)  # a bad role setting fails here too, before the store is touched
    settings.artifacts().check(url)  # ARTIFACTS_URL: the bucket answers, and the store suits it
    described = (data.description if data is not None
                 else dataset_spec(spec.dataset, label_mode=spec.label_mode).describe())
    study = create_study(spec, open_storage(url, create_schema=True), dataset_description=described)
    if roles:
        print(f"store roles: {', '.join(ensure_roles(url, roles))}")
    tracked = tracker(spec.name, spec.mlflow, settings)
    if tracked is not None and tracked.safely("creating the study's run", tracked.parent, study) is not None:
        print(f"study {spec.name}: trials are recorded in MLflow at {tracked.uri} (experiment cnn-search)")
    base = spec.feature_cache and spec.feature_cache.base
    print(f"study {spec.name}: {spec.architecture}{f' (conv base: {base})' if base else ''} on {spec.dataset}, "
          f"budget {spec.trials} trials, <= {spec.max_epochs} epochs each, sampler {spec.sampler}, "
          f"pruner {spec.pruner}; {describe(url)}")
    return study


def _check_preset_fits(spec: StudySpec, data: Dataset) -> None:
    """A preset built once on the user's data with its default knobs: images too small for its
    downsampling fail here, before the store is touched, rather than in every trial."""
    try:
        build(trial_config(spec, {}, input_shape=data.input_shape, num_classes=data.num_classes).model)
    except ValueError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "output size" in line), lines[0] if lines else type(exc).__name__)
        raise StudySpecError("architecture", (
            f"{spec.architecture} cannot be built on the {'x'.join(map(str, data.input_shape))} images of "
            f"{spec.dataset_ref} ({why[:200]}); choose an architecture with fewer downsampling stages, or give "
            "the dataset a larger image_size")) from None
