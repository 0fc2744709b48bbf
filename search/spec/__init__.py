"""What a study is: the study file (YAML, safe-loaded) validated by a pydantic schema into a StudySpec,
the knobs it may search, the samplers and pruners it may name, and a trial's typed configuration.

Never imports a deep-learning backend (import-linter contract `spec-study-no-backend`): a study file
is checked, and `status` runs, without Keras.
"""

from search.spec._data import load_data, study_folds, study_splits
from search.spec._knobs import KNOBS, LR_SCHEDULES, OPTIMIZERS, parameter_knob
from search.spec._load import available_studies, load_spec, parse_spec, profiles, study_path
from search.spec._schema import CONSTRAINTS, DEFAULT_TOP_K, OBJECTIVE_METRICS, minimized
from search.spec._space import TrainParams, TrialConfig, check_builders, suggest, trial_config
from search.spec._spec import PRECISIONS, STUDIES_DIR, Dimension, FeatureCacheSpec, StudySpec
from search.spec._strategies import PRUNERS, make_pruner, make_sampler
from search.spec._study_file import StudyFile, study_json_schema

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_TOP_K",
    "KNOBS",
    "OBJECTIVE_METRICS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PRUNERS",
    "PRECISIONS",
    "Dimension",
    "FeatureCacheSpec",
    "StudyFile",
    "StudySpec",
    "STUDIES_DIR",
    "TrainParams",
    "TrialConfig",
    "available_studies",
    "check_builders",
    "load_data",
    "load_spec",
    "minimized",
    "make_pruner",
    "make_sampler",
    "parameter_knob",
    "parse_spec",
    "profiles",
    "study_json_schema",
    "study_folds",
    "study_splits",
    "study_path",
    "suggest",
    "trial_config",
]
