"""Studies, samplers, pruners, the objective and workers."""

from search._space import TrainParams, TrialConfig, suggest, trial_config
from search._spec import Dimension, StudySpec, available_studies, load_spec, parse_spec
from search._strategies import make_pruner, make_sampler
from search._study import BUDGET_STATES, budget_used, check_compatible, counts, create_study, load_existing
from search.errors import StudyMismatchError, StudySpecError, TrialFailure

__all__ = [
    "BUDGET_STATES",
    "Dimension",
    "StudyMismatchError",
    "StudySpec",
    "StudySpecError",
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
