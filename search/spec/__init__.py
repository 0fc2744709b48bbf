"""What a study is: the study file (YAML, safe-loaded) validated by a pydantic schema into a StudySpec,
the knobs it may search, the samplers and pruners it may name, and a trial's typed configuration.

Never imports a deep-learning backend (import-linter contract `spec-study-no-backend`): a study file
is checked, and `status` runs, without Keras.
"""

from search.spec._data import load_data, streams, study_folds, study_splits
from search.spec._fidelity import FIDELITIES, data_fractions, describe_fractions, full_data_epoch, percent, stages
from search.spec._knobs import KNOBS, LR_SCHEDULES, OPTIMIZERS, parameter_knob
from search.spec._load import available_studies, load_spec, parse_spec, profiles, study_path
from search.spec._schema import CONSTRAINTS, DEFAULT_TOP_K, OBJECTIVE_METRICS, minimized
from search.spec._space import (
    TrainParams,
    TrialConfig,
    check_builders,
    split_fine_tune,
    suggest,
    suggest_fine_tune,
    trial_config,
)
from search.spec._spec import (
    FINE_TUNE_PREFIX,
    PRECISIONS,
    STUDIES_DIR,
    Dimension,
    FeatureCacheSpec,
    FineTuneSpec,
    StudySpec,
)
from search.spec._strategies import PRUNERS, make_pruner, make_sampler
from search.spec._study_file import StudyFile, study_json_schema

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_TOP_K",
    "FIDELITIES",
    "FINE_TUNE_PREFIX",
    "KNOBS",
    "OBJECTIVE_METRICS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PRUNERS",
    "PRECISIONS",
    "Dimension",
    "FeatureCacheSpec",
    "FineTuneSpec",
    "StudyFile",
    "StudySpec",
    "STUDIES_DIR",
    "TrainParams",
    "TrialConfig",
    "available_studies",
    "check_builders",
    "data_fractions",
    "describe_fractions",
    "full_data_epoch",
    "load_data",
    "load_spec",
    "minimized",
    "make_pruner",
    "make_sampler",
    "parameter_knob",
    "parse_spec",
    "percent",
    "profiles",
    "study_json_schema",
    "streams",
    "study_folds",
    "study_splits",
    "study_path",
    "split_fine_tune",
    "stages",
    "suggest",
    "suggest_fine_tune",
    "trial_config",
]
