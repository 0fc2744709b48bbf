"""One study in the store, through Optuna's API: create and open it, count its budget, fail trials
for outside causes and queue their retries (lineages), and the resilient store that waits out
outages. `_store` is the only module of the service touching Optuna's private attributes.

Never imports a deep-learning backend (import-linter contract `spec-study-no-backend`).
"""

from search.study._confirm import (
    confirm_name,
    confirmation_study,
    confirmations_of,
    enqueue_confirmations,
    stage_spec,
    unfinished,
    wanted,
)
from search.study._fine_tune import (
    FINE_TUNE,
    FineTuneStage,
    StagePruner,
    best_heads,
    fine_tuning,
    promote,
    stage_lines,
    stage_summary,
)
from search.study._retries import Reaper, fail_and_retry, fail_silent, lineage, reap_worker, retries_due
from search.study._store import (
    ResilientStorage,
    fresh_trial,
    resilient,
    restart_from_epoch,
    storage_errors,
    storage_of,
    store_seconds,
    trial_id,
)
from search.study._study import (
    BUDGET_STATES,
    StudyCounts,
    budget_used,
    check_compatible,
    check_same_data,
    close_study,
    counter_line,
    counts,
    create_study,
    failure_streak,
    load_existing,
    open_study,
    stop_study,
    stopped_because,
)

__all__ = [
    "FINE_TUNE",
    "FineTuneStage",
    "StagePruner",
    "best_heads",
    "fine_tuning",
    "promote",
    "stage_lines",
    "stage_summary",
    "BUDGET_STATES",
    "Reaper",
    "ResilientStorage",
    "StudyCounts",
    "budget_used",
    "check_compatible",
    "check_same_data",
    "confirm_name",
    "confirmation_study",
    "confirmations_of",
    "enqueue_confirmations",
    "stage_spec",
    "unfinished",
    "wanted",
    "close_study",
    "counter_line",
    "counts",
    "create_study",
    "fail_and_retry",
    "fail_silent",
    "failure_streak",
    "fresh_trial",
    "lineage",
    "load_existing",
    "open_study",
    "reap_worker",
    "resilient",
    "restart_from_epoch",
    "retries_due",
    "stop_study",
    "storage_errors",
    "storage_of",
    "store_seconds",
    "stopped_because",
    "trial_id",
]
