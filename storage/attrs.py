"""The names of the attributes the service writes on studies and trials: one vocabulary for the
writers (`search/`) and the readers (`dashboards/`, `benchmarks/`). A string literal for one of
these anywhere else is a bug waiting for a rename.
"""

from __future__ import annotations

# --- study user attributes (written once by create_study) ----------------------------------
STUDY_UID = "uid"  # a unique id per study instance (checkpoint folders are keyed by it)
STUDY_SPACE_HASH = "space_hash"  # the drift guard's hash of the comparable spec fields
STUDY_SPEC = "spec"  # those fields, so a mismatch can be explained field by field
STUDY_DESCRIPTION = "description"
STUDY_BUDGET = "budget"  # the trial budget of the last `create`
STUDY_DATASET = "dataset_description"  # shape, classes and class names of the study's data
STUDY_STOPPED = "stopped"  # why the study's workers stopped early (consecutive failures)
FINAL_EVALUATION = "final_evaluation"  # artifact id of `make evaluate`'s record
FINAL_CONFUSION_MATRIX = "final_confusion_matrix"

# --- trial user attributes -------------------------------------------------------------------
FAIL_REASON = "fail_reason"  # nan, oom, build, error, stale, interrupted, store
FAIL_MESSAGE = "fail_message"
VAL_ACCURACY_CURVE = "val_accuracy_curve"  # validation accuracy per epoch
EPOCHS_RUN = "epochs_run"
BEST_EPOCH = "best_epoch"
N_PARAMS = "n_params"
TRAIN_SECONDS = "train_seconds"
IMAGES_PER_S = "images_per_s"
RETRY_OF = "retry_of"  # the number of the first trial of a retried lineage
RESUMED_FROM_EPOCH = "resumed_from_epoch"
CHECKPOINT_UNREADABLE = "checkpoint_unreadable"
WARM_START = "warm_start"
WORKER = "worker"
DATASET_FINGERPRINT = "dataset_fingerprint"
SPACE_HASH = "space_hash"
CODE_VERSION = "code_version"
BACKEND = "backend"
DEVICE = "device"
WORKER_RSS_MIB = "worker_rss_mib"
WORKER_GPU_MIB = "worker_gpu_mib"
WORKER_GPU_PEAK_MIB = "worker_gpu_peak_mib"

# Trial results the objective records on success, in the order the report lists them.
RESULT_ATTRS = (EPOCHS_RUN, BEST_EPOCH, N_PARAMS, TRAIN_SECONDS, IMAGES_PER_S)

# --- trial system attributes (the service's bookkeeping, not shown to users) -------------------
HEARTBEAT = "cnn_search:heartbeat"
STALE_FAILURES = "cnn_search:stale_failures"
RETRY_HISTORY = "retry_history"  # Optuna's RetryHeartbeatStaleTrialCallback writes it
