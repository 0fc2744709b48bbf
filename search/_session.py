"""One worker process's session: placement, the study, the data, then the trial loop.

Everything a worker reads from its environment arrives here as one Settings object.
"""

from __future__ import annotations

import logging
from typing import Any

from search._lifecycle import Background, Liveness, StopFlag
from search.settings import Settings

logger = logging.getLogger("search.worker")


class WorkerSession:
    def __init__(self, name: str, settings: Settings, *, storage_url: str | None = None, worker_index: int = 0,
                 **spec_overrides: Any) -> None:
        self.name, self.settings, self.worker_index = name, settings, worker_index
        self.storage_url = settings.store_url(storage_url)
        self.overrides = spec_overrides
        self.stop = StopFlag()
        self.make_model = None

    def __enter__(self) -> WorkerSession:
        from search._loop import worker_label

        self.stop.install()
        self._place()
        self._open()
        self.label = worker_label(self.worker_index)
        return self

    def __exit__(self, *exc: object) -> None:
        from storage import close_storage

        close_storage(self.raw_storage)

    def _place(self) -> None:
        import keras

        from search._placement import cap_tensorflow_memory, limit_cpu_threads, place_worker
        from storage import artifact_root

        self.artifacts = artifact_root(self.settings.artifacts_dir)
        self.placement = place_worker(self.artifacts / "gpu-slots", per_gpu=self.settings.workers_per_gpu,
                                      cuda_visible_devices=self.settings.cuda_visible_devices)
        if keras.backend.backend() == "tensorflow":
            cap_tensorflow_memory(self.placement)
        limit_cpu_threads(self.settings.worker_threads)

    def _open(self) -> None:
        from search._spec import load_spec
        from search._store import resilient
        from search._strategies import make_pruner, make_sampler
        from search._study import check_compatible, load_existing
        from storage import open_storage

        self.spec = load_spec(self.name, studies_dir=self.settings.studies_dir, **self.overrides)
        self.raw_storage = open_storage(self.storage_url)
        storage = resilient(self.raw_storage, max_backoff=self.settings.store_max_backoff)
        self.study = load_existing(self.name, storage, sampler=make_sampler(self.spec, worker_index=self.worker_index),
                                   pruner=make_pruner(self.spec))
        check_compatible(self.study, self.spec)

    def budget_met(self) -> bool:
        from optuna.trial import TrialState

        from search._study import budget_used

        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if budget_used(self.study) < self.spec.trials or running:
            return False  # running trials elsewhere may still need a retry: the loop waits for them
        logger.info("%s: study %s has used its budget of %d trials; nothing to do", self.label, self.name,
                    self.spec.trials)
        return True

    def prepare(self, *, only: bool = False) -> bool:
        """Load the data (and, for a feature-cache study, the base and its features); False if a
        signal arrived meanwhile. only: the runner's one-time preparation, no trials follow."""
        from data import load_dataset, train_val_splits
        from search._study import check_same_data
        from storage import describe

        logger.info("%s: %s study %s in %s on %s", self.label, "preparing" if only else "joining", self.name,
                    describe(self.storage_url), self.placement.describe())
        spec, s = self.spec, self.settings
        dataset = load_dataset(spec.dataset_ref, label_mode=spec.label_mode, data_dir=s.data_dir,
                               cache_dir=s.data_cache, allow_download=not s.data_offline)
        check_same_data(self.study, spec, dataset.fingerprint)
        self.splits = train_val_splits(dataset, val_fraction=spec.val_fraction, seed=spec.seed,
                                       max_train=spec.max_train, max_val=spec.max_val)
        self.image_shape = self.splits.input_shape
        logger.info("%s: %s train %d / val %d images (fingerprint %s)", self.label, spec.dataset,
                    len(self.splits.y_train), len(self.splits.y_val), self.splits.fingerprint)
        return spec.feature_cache is None or self._prepare_features()

    def _prepare_features(self) -> bool:
        from search._features import trial_builder
        from search.errors import WorkerStopping

        try:
            self.splits, self.make_model = trial_builder(self.spec, self.splits, stop=self.stop,
                                                         artifacts=self.artifacts, store_url=self.storage_url)
        except WorkerStopping as why:
            logger.warning("%s: %s; exiting", self.label, why)
            return False
        return True

    def loop(self) -> str | None:
        from search._loop import LoopLimits, run_loop
        from search._objective import Objective
        from search._train import freeze_setup

        s = self.settings
        objective = Objective(self.spec, self.splits, worker=self.label, make_model=self.make_model, stop=self.stop,
                              checkpoint_root=self.artifacts / "checkpoints", image_shape=self.image_shape,
                              checkpoint_every_s=s.checkpoint_every_s, steps_per_execution=s.steps_per_execution)
        if s.gc_freeze:
            freeze_setup()
        liveness = Liveness(s.heartbeat_interval, s.grace_period, s.max_stale_retries)
        limits = LoopLimits(s.worker_max_rss_growth_mb, s.worker_max_gpu_growth_mb, poll_s=s.heartbeat_interval)
        with Background(self.study, liveness) as background:
            return run_loop(self.study, self.spec, objective, self.stop, background, self.label, limits)
