"""Optuna studies of Keras models: the study file (spec), the study in its store (study), one trial
(trial), one worker process (worker), the commands (`python -m search`) and the Python API
(`search.Study`, search/api.py).

The public names below are what dashboards, benchmarks and users import; the subpackages' own
`__init__` modules are each one's public surface.
"""

from search.api import Study, StudyRunError
from search.errors import FailReason, StudyMismatchError, StudySpecError, TrialFailure
from search.spec import (
                         Dimension,
                         StudySpec,
                         TrainParams,
                         TrialConfig,
                         available_studies,
                         load_spec,
                         make_pruner,
                         make_sampler,
                         parse_spec,
                         suggest,
                         trial_config,
)
from search.study import BUDGET_STATES, StudyCounts, budget_used, check_compatible, counts, create_study, load_existing

__all__ = [
    "BUDGET_STATES",
    "Dimension",
    "FailReason",
    "StudyCounts",
    "StudyMismatchError",
    "StudySpec",
    "StudySpecError",
    "Study",
    "StudyRunError",
    "TrainParams",
    "TrialConfig",
    "TrialFailure",
    "available_studies",
    "budget_used",
    "check_compatible",
    "counts",
    "create_study",
    "load_existing",
    "load_spec",
    "make_pruner",
    "make_sampler",
    "parse_spec",
    "suggest",
    "trial_config",
]
