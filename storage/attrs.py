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
STUDY_STREAK_FROM = "failure_streak_from"  # trial number a failure streak counts from (set on resume)
FINAL_EVALUATION = "final_evaluation"  # artifact id of `make evaluate`'s record
FINAL_CONFUSION_MATRIX = "final_confusion_matrix"
TEST_ACCESSES = "test_accesses"  # each time the test split was read: [{who, when, trial}], by `make evaluate`
CONFIRMS_STUDY = "confirms_study"  # on a confirmation study (NAME.confirm): the search study it confirms (name, uid)
CONFIRM_WANTED = "confirm_wanted"  # and the [trial, seed] pairs the last `make evaluate` asked for
FINE_TUNE_PROMOTED = "fine_tune_promoted"  # the head trials promoted to fine-tuning (study file `fine_tune:`)

# --- trial user attributes of the confirmation stage (`make evaluate` with evaluate.top_k > 1) ---
STAGE = "stage"  # "confirm": a retraining of a search trial's configuration on evaluate's data
CONFIRMS = "confirms"  # the number of the search trial it confirms
CONFIRM_SEED = "confirm_seed"  # the seed it trains with (evaluate's seeds: 0, 1, 2...)
# ... and of the fine-tuning stage (STAGE "fine_tune", search.study._fine_tune)
PROMOTED_FROM = "promoted_from"  # the head trial whose params it fine-tunes
FINE_TUNE_HEAD_VALUE = "fine_tune_head_value"  # the head's best value, retrained, before the base was unfrozen
FINE_TUNE_TRAINABLE = "fine_tune_trainable_params"  # the parameters fine-tuning trained (head + unfrozen blocks)

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
OBJECTIVE_CURVE = "objective_curve"  # a two-objective trial's first objective, each epoch
FOLD_VALUES = "fold_values"  # data.folds: the best validation value on each fold; the trial's value is their mean
FOLD_BEST_EPOCHS = "fold_best_epochs"  # and the epoch each was reached at
INFEASIBLE = "infeasible"  # why a trial was not trained: a quantity over its constraint (max_params)
# The worker's memory as a trial starts, by search.worker's memory_now() keys.
WORKER_MEMORY = {"rss": WORKER_RSS_MIB, "gpu": WORKER_GPU_MIB, "gpu_peak": WORKER_GPU_PEAK_MIB}

# Trial results the objective records on success, in the order the report lists them.
RESULT_ATTRS = (EPOCHS_RUN, BEST_EPOCH, N_PARAMS, TRAIN_SECONDS, IMAGES_PER_S)

# --- trial system attributes (the service's bookkeeping, not shown to users) -------------------
HEARTBEAT = "cnn_search:heartbeat"
STALE_FAILURES = "cnn_search:stale_failures"
# Written with a failure whose retry follows (two store calls later): a worker whose budget is met
# waits for that retry rather than leave it stranded (search.study.retries_due).
RETRY_DUE = "cnn_search:retry_due"
RETRY_HISTORY = "retry_history"  # Optuna's RetryHeartbeatStaleTrialCallback writes it
# On a retry: the storage id of the failed trial it retries. One retry per failed trial: on the RDB
# layout a partial unique index over this key (storage._rdb) makes a second insert fail atomically,
# so a queuing retried after a lost acknowledgement cannot run the configuration twice.
RETRY_OF_TRIAL = "cnn_search:retry_of_trial"
ONE_RETRY_INDEX = "cnn_search_one_retry_per_trial"  # that index's name, which its violation names

# --- trial user attributes of warm starts imported from an old scikit-learn search (import-cv) ---
# The old scores are never a trial's value: they were measured on CV folds, not on the study's split.
CV_MEAN_TEST_SCORE = "cv_mean_test_score"
CV_STD_TEST_SCORE = "cv_std_test_score"
CV_RANK = "cv_rank"  # rank_test_score in the old search
CV_SOURCE = "cv_source"  # the name of the file the row came from

# --- trial system attributes Optuna writes, read by the report -------------------------------------
FIXED_PARAMS = "fixed_params"  # an enqueued trial's parameters, until it runs

# --- where a trial's time went (written by the objective on every trial it ran, whatever its end) ----
# TIME_BREAKDOWN holds {phase: seconds}, one key per TIME_PHASES entry; the phases are exclusive, so
# their sum is the trial's wall time (datetime_complete - datetime_start) less the final tell.
TIME_BREAKDOWN = "time_breakdown"
TIME_PHASES = (
    "idle",  # from the trial's start in the store (ask) to the model build, less store calls: asking, marking
    "build",  # the model built from the trial's knobs
    "compile",  # compile(), fit's set-up and the first training step (graph tracing), less checkpoint restore;
    # with several steps a call, the first call less its other steps at the pace of a later call
    "train",  # training batches of every epoch after the first step, plus epoch-end bookkeeping
    "validate",  # Keras's validation pass inside fit (on_test_begin -> on_test_end), its tracing included
    "checkpoint",  # ResumableBackup: restoring at the start, writing at epoch ends
    "store",  # the training thread's round trips to the store: reports, prune checks, attribute writes
    "cleanup",  # after the last epoch: best weights restored, Keras session cleared, garbage collected
)

# --- trial user attributes of how a trial trained and what it held on its GPU ----------------------
PRECISION = "precision"  # the study's Keras dtype policy: float32, mixed_bfloat16 or mixed_float16
JIT_COMPILE = "jit_compile"  # whether the study asked for XLA (true) or left it to Keras (false)
STEPS_PER_EXECUTION = "steps_per_execution"  # training steps per compiled call (STEPS_PER_EXECUTION; no result changes)
WORKER_GPU_PEAK_END_MIB = "worker_gpu_peak_end_mib"  # the worker's allocator peak as the trial ended (packing)
