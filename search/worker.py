"""python -m search.worker NAME: pull trials of an existing study until its budget is met.

The same entry point runs as a local process (`make worker`, `make study`) and in a container.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from search._cli_common import add_study_args, overrides, setup_logging

logger = logging.getLogger("search.worker")

# Keras on TensorFlow keeps a little of every trial's traced graphs alive (about 10 MB a trial for
# a small CNN; clear_session does not free it). A worker whose resident memory has grown by more
# than this since its first finished trial replaces itself, between trials, with a fresh process
# (os.execv: same PID, same arguments), like Celery's max-memory-per-child. 0 turns it off.
MAX_RSS_GROWTH_MB = float(os.environ.get("WORKER_MAX_RSS_GROWTH_MB", "512"))
# The same for GPU memory that live arrays hold between trials (the backend allocator's count, not
# nvidia-smi's high-water mark); measured flat on an H100 (BENCHMARKS.md, "bench-gpu"). 0 turns it off.
MAX_GPU_GROWTH_MB = float(os.environ.get("WORKER_MAX_GPU_GROWTH_MB", "1024"))
RECYCLE = "recycle"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def grown_past(baseline: dict | None, now: dict, limits: dict) -> str | None:
    """Which memory (if any) has grown past its limit since the baseline; a limit of 0 is off."""
    if baseline is None:
        return None
    for key, limit in limits.items():
        if limit and now.get(key) is not None and baseline.get(key) is not None and now[key] - baseline[key] > limit:
            return (f"{key} grew {now[key] - baseline[key]:.0f} MiB since this process's first finished trial "
                    f"(limit {limit:.0f} MiB)")
    return None


def memory_now() -> dict:
    from search._runtime import accelerator_memory_mib

    gpu = accelerator_memory_mib()
    return {"rss": rss_mib(), "gpu": None if gpu is None else gpu[0], "gpu_peak": None if gpu is None else gpu[1]}


def run_worker(name: str, *, storage_url: str | None = None, worker_index: int = 0, prepare_only: bool = False,
               **spec_overrides) -> int:
    """Pull trials until the budget is met. prepare_only: train the base and cache its features (a
    feature-cache study), then exit; `python -m search run` does this once, with every CPU thread,
    before it starts workers that each get a share of the cores."""
    from data import load_dataset, train_val_splits
    from search._lifecycle import Background, StopFlag
    from search._objective import Objective
    from search._spec import load_spec
    from search._strategies import make_pruner, make_sampler
    from search._study import budget_used, check_compatible, load_existing
    from storage import artifact_root, describe, open_storage

    from search._placement import cap_tensorflow_memory, limit_cpu_threads, place_worker

    stop = StopFlag().install()
    placement = place_worker(artifact_root() / "gpu-slots")
    import keras

    if keras.backend.backend() == "tensorflow":
        cap_tensorflow_memory(placement)
    limit_cpu_threads()
    spec = load_spec(name, **spec_overrides)
    storage = open_storage(storage_url)
    study = load_existing(name, storage, sampler=make_sampler(spec, worker_index=worker_index),
                          pruner=make_pruner(spec))
    check_compatible(study, spec)
    label = f"w{worker_index}@{socket.gethostname()}:{os.getpid()}"
    if budget_used(study) >= spec.trials:
        logger.info("%s: study %s has used its budget of %d trials; nothing to do", label, name, spec.trials)
        return 0
    logger.info("%s: %s study %s in %s on %s", label, "preparing" if prepare_only else "joining", name,
                describe(storage_url), placement.describe())
    dataset = load_dataset(spec.dataset, label_mode=spec.label_mode)
    splits = train_val_splits(dataset, val_fraction=spec.val_fraction, seed=spec.seed,
                              max_train=spec.max_train, max_val=spec.max_val)
    logger.info("%s: %s train %d / val %d images (fingerprint %s)", label, spec.dataset, len(splits.y_train),
                len(splits.y_val), splits.fingerprint)
    make_model, image_shape = None, splits.input_shape
    if spec.feature_cache is not None:
        from search._features import trial_builder
        from search._lifecycle import WorkerStopping

        try:
            splits, make_model = trial_builder(spec, splits, stop=stop)
        except WorkerStopping as why:
            logger.warning("%s: %s; exiting", label, why)
            return 0
    if prepare_only:
        logger.info("%s: study %s is ready for its workers", label, name)
        return 0
    objective = Objective(spec, splits, worker=label, make_model=make_model, stop=stop,
                          checkpoint_root=artifact_root() / "checkpoints", image_shape=image_shape)
    with Background(study) as background:
        outcome = run_loop(study, spec, objective, stop, background, label)
    return outcome or 0


def run_loop(study, spec, objective, stop, background, label: str) -> str | None:
    """Ask, train, tell until the study's budget is met, surviving store outages.

    Optuna's study.optimize stops at the first storage error and has no retry around tell; this
    loop is the same ask/tell with retries, the budget check of MaxTrialsCallback (running trials
    counted), and the service's failure handling.
    """
    import time

    import optuna
    from optuna.trial import TrialState

    from search._lifecycle import TrialLost, WorkerStopping, fail_and_retry, storage_errors, with_retry
    from search._study import budget_used
    from search.errors import TrialFailure

    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
    baseline = None  # resident memory once this process has finished a trial (the backend warmed up)
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        if with_retry(lambda: budget_used(study), "count trials", stop=stop.event) >= spec.trials:
            logger.info("%s: budget of %d trials met, exiting", label, spec.trials)
            return
        trial = with_retry(study.ask, "ask for a trial", stop=stop.event)
        background.trial_id = trial._trial_id
        with_retry(background.beat_now, "record a heartbeat", stop=stop.event)
        memory = {f"worker_{key}_mib": round(v, 1) for key, v in memory_now().items() if v is not None}
        with_retry(lambda: [trial.set_user_attr(k, v) for k, v in memory.items()], "record memory", stop=stop.event)
        value, state, out_of_memory = None, TrialState.FAIL, False
        try:
            value, state = objective(trial), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialFailure as failure:  # reason recorded by the objective
            out_of_memory = failure.reason == "oom"
        except WorkerStopping as why:
            background.trial_id = None
            message = str(why)  # `why` is unbound once the except block ends; the lambda keeps this
            with_retry(lambda: fail_and_retry(study, trial.number, "interrupted", message), "queue a retry")
            logger.warning("%s: trial %d checkpointed, failed and queued for retry; exiting", label, trial.number)
            return
        except (TrialLost, optuna.exceptions.UpdateFinishedTrialError) as lost:
            background.trial_id = None
            logger.warning("%s: %s; its result is dropped and this worker goes on", label, lost)
            continue
        except storage_errors() as exc:
            background.trial_id = None
            message = f"store outage: {type(exc).__name__}"
            logger.warning("%s: trial %d lost the store mid-training (%s); it will be failed and retried",
                           label, trial.number, type(exc).__name__)
            with_retry(lambda: fail_and_retry(study, trial.number, "store", message), "queue a retry")
            continue
        except Exception as exc:  # a bug in one configuration must not stop the worker
            logger.exception("%s: trial %d raised", label, trial.number)
            message = f"{type(exc).__name__}: {exc}"[:500]
            try:
                with_retry(lambda: (trial.set_user_attr("fail_reason", "error"),
                                    trial.set_user_attr("fail_message", message)), "record the failure")
            except optuna.exceptions.UpdateFinishedTrialError:
                background.trial_id = None
                logger.warning("%s: trial %d was failed by the reaper meanwhile; its error is dropped and this "
                               "worker goes on", label, trial.number)
                continue
        background.trial_id = None
        try:
            with_retry(lambda: study.tell(trial, value, state=state), f"record trial {trial.number}")
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as conflict:
            logger.warning("%s: trial %d was failed by the reaper while this worker was paused; its result "
                           "(%s) is dropped (%s)", label, trial.number, value, conflict)
            continue
        logger.info("%s: trial %d %s%s", label, trial.number, state.name.lower(),
                    "" if value is None else f", value {value}")
        if out_of_memory:
            # TensorFlow's CPU allocator keeps what the failed trial got before it ran out, and the
            # next trial's threads and buffers can then no longer be allocated (measured: 16 GiB
            # held after a 4,000,000-unit dense layer failed; under an address-space limit the next
            # trial aborted the process). A fresh process starts from an empty allocator.
            logger.info("%s: trial %d ran out of memory: continuing in a fresh process", label, trial.number)
            return RECYCLE
        now = memory_now()
        grown = grown_past(baseline, now, {"rss": MAX_RSS_GROWTH_MB, "gpu": MAX_GPU_GROWTH_MB})
        if baseline is None and state in (TrialState.COMPLETE, TrialState.PRUNED):
            baseline = now
        elif grown:
            logger.info("%s: %s (WORKER_MAX_RSS_GROWTH_MB / WORKER_MAX_GPU_GROWTH_MB): continuing in a fresh "
                        "process", label, grown)
            return RECYCLE
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.worker")
    add_study_args(parser)
    parser.add_argument("--worker-index", type=int, default=int(os.environ.get("WORKER_INDEX", "0")))
    parser.add_argument("--prepare", action="store_true",
                        help="only train the study's base and cache its features, then exit")
    args = parser.parse_args(argv)
    setup_logging(prefix=f"[w{args.worker_index}] ")
    from search.errors import StudyMismatchError, StudySpecError
    from data import DatasetError
    from storage import StorageConfigError, StorageUnavailableError

    try:
        outcome = run_worker(args.name, storage_url=args.storage, worker_index=args.worker_index,
                             prepare_only=args.prepare, **overrides(args))
        if outcome == RECYCLE:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            # Same PID and arguments; the GPU slot lock (not inherited) is claimed afresh.
            os.execv(sys.executable, [sys.executable, "-m", "search.worker", *(argv if argv is not None else sys.argv[1:])])
        return outcome
    except (StudySpecError, StudyMismatchError, DatasetError, StorageConfigError, StorageUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
