"""Ranking a study's trials: the best complete, feasible ones, one per distinct configuration. Shared
by `make evaluate`'s candidates (search.commands._evaluate) and the fine-tuning stage's promotion
(search.study._fine_tune); params_key also matches a confirmation to the trial it confirms."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def params_key(params: Mapping[str, Any]) -> str:
    """A configuration's identity: its params as sorted JSON (a retry, a warm start or a confirmation
    of it has the same)."""
    return json.dumps(params, sort_keys=True, default=str)


def ranked(study: optuna.Study, trials: Iterable[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """The complete, feasible (as Optuna's best trial) trials among `trials` (default: the study's), best
    first by the study's first objective; the lower-numbered first among equals."""
    minimize = study.directions[0] == optuna.study.StudyDirection.MINIMIZE
    pool = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if trials is None else trials
    done = [t for t in pool if t.state == TrialState.COMPLETE and t.values is not None
            and all(v <= 0.0 for v in t.constraints.values())]
    return sorted(done, key=lambda t: (t.values[0] if minimize else -t.values[0], t.number))


def one_per_params(trials: Iterable[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The first `k` of `trials` with distinct params, in their order."""
    picked, seen = [], set()
    for trial in trials:
        key = params_key(trial.params)
        if key not in seen:
            seen.add(key)
            picked.append(trial)
        if len(picked) == k:
            break
    return picked
