"""One worker process's session: the study, the data (and a feature-cache study's base), then the loop.

Imported by search.worker.__main__ only after the worker's placement is decided: importing this
module loads Keras (through search.trial). `WorkerSession.open` builds a session complete; every
setting arrives as one Settings object.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import keras
import optuna
from optuna.trial import TrialState

from data import Splits
from search import runtime
from search._tracking import tracker
from search.errors import WorkerStopping
from search.settings import Settings
from search.spec import StudySpec, load_data, load_spec, make_pruner, make_sampler, streams, study_folds
from search.study import (
    FineTuneStage,
    budget_used,
    check_compatible,
    check_same_data,
    close_study,
    confirm_name,
    open_study,
    stage_pending,
    stage_spec,
)
from search.trial import Checkpoints, FineTuning, FitOptions, ModelBuilder, Objective, freeze_setup, trial_builder
from search.worker._liveness import Background, Liveness
from search.worker._loop import LoopLimits, run_loop, worker_label
from search.worker._placement import Placement, cap_tensorflow_memory, limit_cpu_threads
from search.worker._signals import StopFlag
from storage import Artifacts, attrs, build_lock, describe

logger = logging.getLogger("search.worker")


@dataclasses.dataclass
class WorkerSession:
    """What one worker holds for its whole life. `splits` (with `data.folds`, the first fold's, and
    `other_folds` the rest) and `make_model` are set by `prepare`."""

    name: str
    settings: Settings
    spec: StudySpec
    study: optuna.Study
    placement: Placement
    artifacts: Artifacts
    storage_url: str
    label: str
    stop: StopFlag
    splits: Splits | None = None
    other_folds: list[Splits] = dataclasses.field(default_factory=list)
    make_model: ModelBuilder | None = None
    image_shape: tuple[int, ...] | None = None
    confirming: bool = False  # the confirmation stage (NAME.confirm): evaluate's data, nothing pruned
    fine_tuning: FineTuning | None = None  # a study with `fine_tune:`: the images and base its fine-tuning trials train

    @classmethod
    def open(cls, name: str, settings: Settings, placement: Placement, artifacts: Artifacts, *,
             storage_url: str | None = None, worker_index: int = 0, stage: str = "search",
             **spec_overrides: object) -> WorkerSession:
        """Signals handled, the backend capped to its placement, the study opened behind the resilient
        store and checked against this worker's study file. stage "confirm": the study's confirmation
        stage (search.study._confirm), whose budget is the trials `make evaluate` queued there."""
        stop = StopFlag().install()
        if keras.backend.backend() == "tensorflow":
            cap_tensorflow_memory(placement)
        limit_cpu_threads(settings.worker_threads)
        spec = load_spec(name, studies_dir=settings.studies_dir, **spec_overrides)
        url = settings.store_url(storage_url)
        artifacts.check(url)
        confirming = stage == "confirm"
        # The confirmation stage's trials are all queued with their parameters: nothing is sampled or pruned.
        study = open_study(confirm_name(name) if confirming else name, url, max_backoff=settings.store_max_backoff,
                           settle_deadline=settings.journal_settle_deadline,
                           sampler=make_sampler(spec, worker_index=worker_index),
                           pruner=optuna.pruners.NopPruner() if confirming else make_pruner(spec))
        check_compatible(study, spec)
        if confirming:
            spec = stage_spec(spec, study)
        return cls(name, settings, spec, study, placement, artifacts, url, worker_label(worker_index), stop,
                   confirming=confirming)

    def __enter__(self) -> WorkerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        close_study(self.study)

    def budget_met(self) -> bool:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if budget_used(self.study) < self.spec.trials or running:
            return False  # running trials elsewhere may still need a retry: the loop waits for them
        if not self.confirming and stage_pending(self.study, self.spec):
            return False  # the fine-tuning stage is to be promoted, or has trials left
        logger.info("%s: study %s has used its budget of %d trials; nothing to do", self.label, self.name,
                    self.spec.trials)
        return True

    def prepare(self, *, only: bool = False) -> bool:
        """Load the data (and, for a feature-cache study, the base and its features); False if a
        signal arrived meanwhile. only: the runner's one-time preparation, no trials follow."""
        logger.info("%s: %s study %s in %s on %s", self.label, "preparing" if only else "joining", self.name,
                    describe(self.storage_url), self.placement.describe())
        spec = self.spec
        dataset = load_data(spec, self.settings)
        check_same_data(self.study, spec, dataset.fingerprint)
        stream = streams(self.settings.input_pipeline, data_bytes=dataset.x_train.nbytes,
                         memory_bytes=runtime.memory_bytes())
        self.splits, *self.other_folds = study_folds(spec, dataset, stream=stream)
        if self.confirming:  # evaluate's retraining: the one split (the first fold's), not the folds
            self.other_folds = []
        self.image_shape = self.splits.input_shape
        logger.info("%s: %s train %d / val %d images (fingerprint %s)%s, %s", self.label, spec.dataset,
                    len(self.splits.y_train), len(self.splits.y_val), self.splits.fingerprint,
                    f", the first of {spec.folds} folds" if spec.folds else "",
                    "streamed from the shared cache" if self.splits.streamed else "copied into this worker")
        return spec.feature_cache is None or self._prepare_features()

    def _prepare_features(self) -> bool:
        images = self.splits
        try:
            # A confirmation trains on every cached feature, as evaluate does, not the search's subset.
            self.splits, self.make_model = trial_builder(self.spec, self.splits, stop=self.stop,
                                                         search=not self.confirming, artifacts=self.artifacts,
                                                         store_url=self.storage_url)
            if self.spec.fine_tune is not None:
                self.fine_tuning = FineTuning.for_study(self.spec, images, search=not self.confirming, stop=self.stop,
                                                        artifacts=self.artifacts, store_url=self.storage_url)
        except WorkerStopping as why:
            logger.warning("%s: %s; exiting", self.label, why)
            return False
        return True

    def loop(self) -> str | None:
        s = self.settings
        objective = Objective(self.spec, self.splits, fit=FitOptions.for_study(self.spec, steps=s.steps_per_execution,
                                                                           validation_batch=s.validation_batch_size,
                                                                           build_optimizer=s.build_optimizer_first),
                              checkpoints=Checkpoints(self.artifacts.root / "checkpoints", self.spec.name,
                                                      every_s=s.checkpoint_every_s,
                                                      remote=self.artifacts.checkpoints()),
                              make_model=self.make_model, stop=self.stop, worker=self.label,
                              image_shape=self.image_shape, other_folds=self.other_folds, confirming=self.confirming,
                              fine_tuning=self.fine_tuning)
        if s.gc_freeze:
            freeze_setup()
        tracked = None if self.confirming else tracker(self.name, self.spec.mlflow, s)  # evaluate logs the pick
        stage = None if self.confirming or self.spec.fine_tune is None else FineTuneStage(
            self.spec, functools.partial(self._study_lock, "fine_tune"))
        with Background(self.study, Liveness.from_settings(s)) as background:
            return run_loop(self.study, self.spec, objective, self.stop, background, self.label,
                            LoopLimits.from_settings(s), after_trial=tracked and tracked.trial_finished, stage=stage,
                            lock=functools.partial(self._study_lock, "budget"))

    def _study_lock(self, kind: str):
        """One worker of the study's (on any machine) at a time, to promote its heads, to ask for a
        trial within the budget or to queue a retry its failing process did not: the store's advisory
        lock on PostgreSQL, else a file lock in the artifact folder every worker shares (storage.build_lock)."""
        study = self.study.study_name
        folder = self.artifacts.root / "locks" / f"{kind}-{study}-{self.study.user_attrs.get(attrs.STUDY_UID)}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        return build_lock(self.storage_url, kind, folder.name, folder)
