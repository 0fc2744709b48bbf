"""The fine-tuning stage of a feature-cache study (`fine_tune:` in the study file).

Once the head search has met its budget and nothing of it runs, its `top_k` best heads (complete,
feasible, one per distinct params) are promoted: a trial per head is queued in the same study with
the head's params, `stage: fine_tune` and the number it was `promoted_from`; the workers pull them
like any trial (heartbeated, checkpointed, retried; a retry inherits the attributes), sample the
fine-tuning knobs (fine_tune_unfreeze_blocks, fine_tune_learning_rate) with the study's sampler and
train the whole model (search/trial/_fine_tune.py). Being trials of the study, they share its
dashboard, its best trial and `make evaluate`'s candidates: the best of either stage wins.

What the stage keeps apart: the head budget counts head trials only (search.study.budget_used), and
a fine-tuning trial is pruned against the other fine-tuning trials only (prune_in_stage, called by
its training's callback, not the study's pruner, which Optuna's TPE reads for Hyperband's brackets):
it starts from a trained head, so the head trials' first epochs are no yardstick for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.spec import StudySpec
from search.study._ranking import one_per_params, ranked
from storage import attrs

logger = logging.getLogger(__name__)
FINE_TUNE = "fine_tune"  # attrs.STAGE of a fine-tuning trial
StudyLock = Callable[[], contextlib.AbstractContextManager[Any]]  # held across every worker of the study


def fine_tuning(trial: FrozenTrial | optuna.Trial) -> bool:
    """Whether the trial belongs to the fine-tuning stage (promoted, a retry of one, or one a worker
    asked for when the last queued one was taken)."""
    return trial.user_attrs.get(attrs.STAGE) == FINE_TUNE


def head_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if not fine_tuning(t)]


def placeholder(trial: FrozenTrial) -> bool:
    """A trial a worker asked for when another had taken the last queued fine-tuning trial: never
    trained (pruned at once), counted nowhere."""
    return fine_tuning(trial) and attrs.PROMOTED_FROM not in trial.user_attrs


def best_heads(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best complete, feasible head trials by the study's value, one per distinct params (a
    configuration run twice, a warm start or a retry, is promoted once); the better-numbered first."""
    return one_per_params(ranked(study, head_trials(study.get_trials(deepcopy=False))), k)


def promote(study: optuna.Study, spec: StudySpec) -> list[int]:
    """Queue a fine-tuning trial for each of the best heads not promoted yet, once per study (its
    `fine_tune_promoted` records the head numbers); the numbers newly queued. Callers hold a lock
    across workers (FineTuneStage); a promotion cut short is completed by the next call."""
    if attrs.FINE_TUNE_PROMOTED in study.user_attrs:
        return []
    heads = best_heads(study, spec.fine_tune.top_k)
    queued = {t.user_attrs.get(attrs.PROMOTED_FROM) for t in study.get_trials(deepcopy=False) if fine_tuning(t)}
    new = [t.number for t in heads if t.number not in queued]
    for trial in heads:
        if trial.number in new:
            study.enqueue_trial(trial.params, user_attrs={attrs.STAGE: FINE_TUNE, attrs.PROMOTED_FROM: trial.number})
    study.set_user_attr(attrs.FINE_TUNE_PROMOTED, [t.number for t in heads])
    logger.info("study %s: the head search met its budget; promoted trials %s to fine-tuning", study.study_name,
                ", ".join(map(str, (t.number for t in heads))) or "none (no complete head)")
    return new


def queued(study: optuna.Study) -> bool:
    return any(fine_tuning(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def queued_or_running(study: optuna.Study) -> list[int]:
    """Fine-tuning trials queued or running."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
            if fine_tuning(t)]


def stage_pending(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether a study with `fine_tune:` still has its stage to run: not promoted yet, or fine-tuning
    trials queued or running (a worker starting now has work; the runner must not call it done)."""
    return spec.fine_tune is not None and (attrs.FINE_TUNE_PROMOTED not in study.user_attrs
                                           or bool(queued_or_running(study)))


def stage_summary(study: optuna.Study) -> dict[str, Any] | None:
    """The stage as `make status` shows it (None before the promotion): the heads promoted and each
    fine-tuning lineage's outcome beside its head's search value."""
    promoted = study.user_attrs.get(attrs.FINE_TUNE_PROMOTED)
    if promoted is None:
        return None
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        if fine_tuning(t) and attrs.PROMOTED_FROM in t.user_attrs:
            head = trials[t.user_attrs[attrs.PROMOTED_FROM]]
            rows.append({"trial": t.number, "promoted_from": head.number, "state": t.state.name,
                         "value": t.values[0] if t.values else None, "head_value": head.values[0]})
    return {"promoted": promoted, "trials": rows}


def stage_lines(summary: dict[str, Any]) -> list[str]:
    if not summary["promoted"]:
        return ["fine-tuning stage: no complete head to promote"]
    lines = [f"fine-tuning stage: heads {', '.join(map(str, summary['promoted']))} promoted"]
    for r in summary["trials"]:
        value = "" if r["value"] is None else f" {r['value']:.4f}"
        lines.append(f"  trial {r['trial']} (head {r['promoted_from']}, {r['head_value']:.4f}): "
                     f"{r['state'].lower()}{value}")
    return lines


class FineTuneStage:
    """What a worker's loop does with the stage: promote once the head search is settled (under
    `lock`, a lock across every worker of the study), and say whether a fine-tuning trial is queued."""

    def __init__(self, spec: StudySpec, lock: StudyLock) -> None:
        self.spec, self.lock = spec, lock

    def promote(self, study: optuna.Study) -> bool:
        """True when this call queued trials (the loop then asks again)."""
        if attrs.FINE_TUNE_PROMOTED in study.user_attrs:
            return False
        with self.lock():
            return bool(promote(study, self.spec))

    def queued(self, study: optuna.Study) -> bool:
        return queued(study)


class _StageView:
    """A study as a pruner sees it, holding only the fine-tuning trials (Optuna's percentile and
    median pruners read study.get_trials and study.direction; everything else is the study's)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if fine_tuning(t)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


# Optuna's median rule, from the second epoch and once two fine-tuning trials finished: a stage of
# top_k trials is too small for the study's hyperband brackets.
STAGE_PRUNER = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def prune_in_stage(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether a fine-tuning trial (its epochs reported) is pruned, among the fine-tuning trials only."""
    return STAGE_PRUNER.prune(_StageView(study), trial)  # type: ignore[arg-type]
