"""One trial's training: compile, fit with early stopping, measure. Backend-agnostic Keras 3."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from data import Splits, nested_subsets
from data.preprocessing import normalization_layer, training_model
from models import BuilderChangedError, BuilderError, BuilderParams, build
from search.errors import FATAL, FailReason, TrialFailure
from search.spec import DEFAULT_TOP_K, PRECISIONS, StudySpec, TrialConfig, minimized, percent, stages
from search.study import restart_from_epoch
from search.trial._batches import Batches
from search.trial._constraints import architecture_params
from search.trial._extras import extras_of, user_callbacks, user_loss
from search.trial._metrics import BalancedAccuracy, MacroF1
from search.trial._mixing import HardLabelAccuracy, HardLabelTopK, MixedBatches, MixedLabelCrossentropy
from search.trial._recipe import make_loss, make_optimizer, recipe_callbacks, steps_per_epoch

logger = logging.getLogger(__name__)


class NanGuard(keras.callbacks.Callback):
    """After Keras's TerminateOnNaN stops an epoch, fail the trial with reason 'nan' (before
    any pruner sees the epoch)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrialFailure(FailReason.NAN, f"training loss became {loss} at epoch {epoch + 1}")


class EpochLog(keras.callbacks.Callback):
    """One progress line per epoch: trial, epoch, validation accuracy, seconds per epoch."""

    def __init__(self, label: str, max_epochs: int, metric: str = "val_accuracy",
                 fractions: Sequence[float] = ()) -> None:
        super().__init__()
        self.label, self.max_epochs, self.metric, self.fractions = label, max_epochs, metric, tuple(fractions)
        self.best = 0.0
        self.curve: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        acc = float(logs.get("val_accuracy", float("nan")))
        self.curve.append(acc)
        self.best = max(self.best, acc) if math.isfinite(acc) else self.best
        objective = "" if self.metric == "val_accuracy" else f" {self.metric}={float(logs.get(self.metric, 'nan')):.4f}"
        share = self.fractions[epoch] if epoch < len(self.fractions) else 1.0
        part = "" if share >= 1 else f" (on {percent(share)} of the training set)"
        logger.info("%s epoch %d/%d%s val_accuracy=%.4f best=%.4f%s loss=%.4f %.1fs/epoch", self.label, epoch + 1,
                    self.max_epochs, part, acc, self.best, objective, float(logs.get("loss", float("nan"))),
                    time.perf_counter() - self._t0)


@dataclass
class TrainResult:
    best_val_accuracy: float  # the highest validation accuracy of any epoch
    best_epoch: int  # the objective metric's best epoch (1-based)
    epochs_run: int
    train_seconds: float
    images_per_s: float
    n_params: int
    curve: list[float] = field(default_factory=list)
    best_value: float | None = None  # the objective metric at best_epoch (val_accuracy: best_val_accuracy)

    def __post_init__(self) -> None:
        if self.best_value is None:
            self.best_value = self.best_val_accuracy


_OOM_MARKS = ("ResourceExhausted", "RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM when allocating")


def is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, MemoryError) or any(mark in text for mark in _OOM_MARKS) or "out of memory" in text.lower()


def oom_message(exc: BaseException) -> str:
    """The allocator's own line: XLA on a GPU reports an autotuning failure first and the OOM lines after."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    line = next((line for line in lines if any(mark in line for mark in _OOM_MARKS)), lines[0])
    return f"out of memory: {line[:300]}"


ModelBuilder = Callable[[TrialConfig, Splits, int], keras.Model]

# STEPS_PER_EXECUTION=auto (search/settings.py): a model this small spends much of each step in the
# framework's per-call overhead, so it runs SMALL_MODEL_STEPS steps a call; but the looped function
# costs more to trace (train and validation), which only epochs of many batches earn back. Measured
# on a CPU (BENCHMARKS.md, 2026-12-02): 16 a call made smoke trials of at most 63 batches an epoch
# 1.13x slower, fc_head heads 0.90x and full-data simple_cnn (176+ batches) 0.79x; one epoch of a
# small CNN took 0.91-1.51x as long at 4-64 batches and 0.73x at 128.
SMALL_MODEL_PARAMS = 2_000_000
SMALL_MODEL_STEPS = 16
LONG_EPOCH_BATCHES = 128


# VALIDATION_BATCH_SIZE=auto (search/settings.py): a head on cached features validated its 5,000
# feature vectors at its training batch size through Keras's array adapter, which gathers every batch
# anew each epoch: 20.7% of fc_head-like head trials on a 2-core CPU, 132 ms an epoch after the first.
# One batch of a tensor made once per worker: 40 ms an epoch (the first layer's matmul, 51 ms alone
# for a 2048x512 head, is most of it), 9.0% of the trials, the same validation curves (issue 26).
# Images keep their training batch: a whole validation set's conv activations would not fit a GPU.
AUTO_VALIDATION_ROWS = 16_384  # auto's largest validation batch of feature vectors ...
AUTO_VALIDATION_BYTES = 256 * 2**20  # ... and of bytes (a wide base's features: fewer rows a batch)
_validation_tensors: dict[int, tuple[weakref.ref, weakref.ref, tuple]] = {}


def validation_data(splits: Splits, setting: int | Literal["auto", "train"],
                    batch_size: int | None = None) -> tuple[object, int | None]:
    """fit's validation_data and validation_batch_size under VALIDATION_BATCH_SIZE `setting`: "train"
    (None: fit's training batch size), an integer, or "auto" (see AUTO_VALIDATION_ROWS). Streamed
    splits (INPUT_PIPELINE=stream) validate from Batches of `batch_size` (the training batch) or the
    setting's integer."""
    if splits.streamed:
        rows = setting if isinstance(setting, int) and not isinstance(setting, bool) else batch_size
        if rows is None:
            raise ValueError("a streamed validation split needs a batch size")
        return Batches(splits.x_val, splits.y_val, rows, shuffle=False), None
    arrays = (splits.x_val, splits.y_val)
    if setting == "train":
        return arrays, None
    if setting != "auto":
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
            raise ValueError(f"validation_batch_size must be 'auto', 'train' or an integer >= 1 but got {setting!r}")
        return arrays, setting
    if splits.x_val.ndim != 2:  # images (or any input of more than one axis a sample): the training batch
        return arrays, None
    row_bytes = max(1, splits.x_val[:1].nbytes)
    rows = max(1, min(len(splits.y_val), AUTO_VALIDATION_ROWS, AUTO_VALIDATION_BYTES // row_bytes))
    if keras.backend.backend() != "tensorflow":
        return arrays, rows
    import tensorflow as tf  # only on the TensorFlow backend (JAX runs without it installed)

    x, y = arrays
    cached = _validation_tensors.get(id(x))
    if cached is None or cached[0]() is not x or cached[1]() is not y:
        with tf.device("/cpu:0"):  # where Keras's adapter keeps them too: no GPU memory held between trials
            # Floats as Keras's array adapter casts them (floatx); labels as they are.
            x_tensor = tf.convert_to_tensor(x, dtype=keras.backend.floatx() if x.dtype.kind == "f" else None)
            cached = (weakref.ref(x), weakref.ref(y), (x_tensor, tf.convert_to_tensor(y)))
        _validation_tensors[id(x)] = cached
        weakref.finalize(x, _validation_tensors.pop, id(x), None)
    tensors = cached[2]
    if len(y) <= rows:
        return tf.data.Dataset.from_tensors(tensors), None
    return tf.data.Dataset.from_tensor_slices(tensors).batch(rows), None


def steps_per_execution(setting: int | Literal["auto"], n_params: int, batches: int) -> int:
    """Training steps per call into the compiled train function, for a model of `n_params` whose epoch
    has `batches` batches. It changes no result: the same batches in the same order; only batch-level
    callbacks (TerminateOnNaN, the timer) see every `steps`-th batch. The last call of an epoch runs
    the steps that are left."""
    if setting == "auto":
        small, long = n_params <= SMALL_MODEL_PARAMS, batches >= LONG_EPOCH_BATCHES
        return SMALL_MODEL_STEPS if small and long else 1
    if not isinstance(setting, int) or setting < 1:
        raise ValueError(f"steps_per_execution must be 'auto' or an integer >= 1 but got {setting!r}")
    return setting


def image_model(normalization: str = "scale") -> ModelBuilder:
    """Images in: the architecture behind normalisation and (training-only) augmentation. A model the
    trial's knobs cannot build fails the trial with reason 'build': a preset's ValueError, anything a
    user's builder raises, or a result that breaks its contract. An import that fails stays fatal and
    an allocation that fails is 'oom' (train() tells)."""

    def make(cfg: TrialConfig, splits: Splits, seed: int) -> keras.Model:
        own = isinstance(cfg.model, BuilderParams)
        try:
            arch = build(cfg.model)
        except ImportError as exc:
            # The service's own import failing (a broken install), or the builder file edited since the
            # study was validated (BuilderChangedError): every trial fails alike, so it stays fatal.
            if not own or isinstance(exc, BuilderChangedError):
                raise
            # The builder file imported at `create`; an import inside build() that fails for some knob
            # values (an optional backbone package, say) is this configuration's failure, capped by the
            # failure streak like any other, not a fatal error that stops every worker popping its retry.
            raise TrialFailure(FailReason.BUILD, f"the architecture cannot be built: builder {cfg.model.builder} "
                                                 f"raised {type(exc).__name__}: {exc} (knobs {cfg.model.knobs})"
                               ) from exc
        except FATAL:
            raise
        except Exception as exc:
            if is_oom(exc) or not (own or isinstance(exc, ValueError)):
                raise
            why = str(exc) if not own or isinstance(exc, BuilderError) else (
                f"builder {cfg.model.builder} raised {type(exc).__name__}: {exc} (knobs {cfg.model.knobs})")
            raise TrialFailure(FailReason.BUILD, f"the architecture cannot be built: {why}") from exc
        return training_model(arch, normalization=normalization_layer(normalization, splits.x_train),
                              augment=cfg.augment, seed=seed)

    return make


@dataclass(frozen=True)
class FitOptions:
    """How a study's models are fitted, the same for each of its trials: built once (`for_study`) and
    passed whole, so a new training option is a field here and a line where it is used.

    `steps` is STEPS_PER_EXECUTION; 1 by default, which the base training relies on (its time
    estimate, search.trial._base_estimate, counts one batch per on_train_batch_end)."""

    max_epochs: int
    patience: int
    precision: str = "float32"
    jit_compile: bool = False
    steps: int | Literal["auto"] = 1
    verbose: int = 0  # Keras's own progress output (1: a bar, for the base training on a terminal)
    validation_batch: int | Literal["auto", "train"] = "auto"  # VALIDATION_BATCH_SIZE (validation_data())
    build_optimizer: bool = True  # BUILD_OPTIMIZER_FIRST (compiled_model())
    metric: str = "val_accuracy"  # the objective: early stopping, pruning and the trial's value follow it
    top_k: int = DEFAULT_TOP_K
    extras: dict[str, tuple[str, str]] = field(default_factory=dict)  # the study's training: {kind: (ref, sha256)}
    # budget.fidelity data: the share of the training set each epoch trains on (() or 1.0: all of it), the
    # stratified subsets drawn with data_seed (the study's seed: the same images for every trial).
    data_fractions: tuple[float, ...] = ()
    data_seed: int = 0

    @classmethod
    def for_study(cls, spec: StudySpec, **changes: object) -> FitOptions:
        """The study's options (epochs, patience, precision, XLA, objective metric), with `changes` on top."""
        return dataclasses.replace(cls(max_epochs=spec.max_epochs, patience=spec.patience, precision=spec.precision,
                                       jit_compile=spec.jit_compile, metric=spec.metric, top_k=spec.top_k,
                                       extras=extras_of(spec), data_fractions=spec.data_fractions,
                                       data_seed=spec.seed),
                                   **changes)

    @property
    def mode(self) -> str:
        return "min" if minimized(self.metric) else "max"

    def fractions(self, epochs: int) -> tuple[float, ...]:
        """The share of the training set each of `epochs` epochs trains on (all of it past the schedule)."""
        return (*self.data_fractions[:epochs], *(1.0,) * max(0, epochs - len(self.data_fractions)))


def train(cfg: TrialConfig, splits: Splits, options: FitOptions, *, seed: int, label: str = "trial",
          callbacks: Sequence[keras.callbacks.Callback] = (),
          make_model: ModelBuilder | None = None) -> tuple[TrainResult, keras.Model]:
    """Fit the config on splits.train, validate on splits.val every epoch; keep the best epoch.

    Returns the result and the trained model (best weights restored); the caller drops it.
    """
    keras.utils.set_random_seed(seed)
    try:
        model = compiled_model(cfg, splits, seed, make_model, options)
        log = EpochLog(label, options.max_epochs, options.metric, options.fractions(options.max_epochs))
        stop = keras.callbacks.EarlyStopping(monitor=options.metric, mode=options.mode, patience=options.patience,
                                             restore_best_weights=True)
        val_data, val_batch = validation_data(splits, options.validation_batch, cfg.train.batch_size)
        started = time.perf_counter()
        history, images = fit_stages(
            model, cfg, splits, options, seed=seed, epochs=options.max_epochs,
            callbacks=[keras.callbacks.TerminateOnNaN(), NanGuard(), log, *recipe_callbacks(cfg.train, options.metric),
                       *callbacks, *user_callbacks(options.extras, cfg.knobs), stop],
            validation_data=val_data, validation_batch_size=val_batch)
        seconds = time.perf_counter() - started
        accs = [a if math.isfinite(a) else 0.0 for a in history.history.get("val_accuracy", [])]
        if not accs:
            raise TrialFailure(FailReason.ERROR, "training ran no epoch")
        values = history.history.get(options.metric, accs)
        best = best_epoch(values, options.mode)
        result = TrainResult(
            best_val_accuracy=float(max(accs)), best_epoch=best + 1, epochs_run=len(accs), best_value=float(values[best]),
            train_seconds=seconds, images_per_s=images / max(seconds, 1e-9),
            n_params=architecture_params(model), curve=log.curve,
        )
        return result, model
    except TrialFailure:
        raise
    except Exception as exc:
        if is_oom(exc):
            raise TrialFailure(FailReason.OOM, oom_message(exc)) from exc
        raise


def fit_all(cfg: TrialConfig, splits: Splits, options: FitOptions, *, epochs: int, seed: int,
            make_model: ModelBuilder | None = None) -> keras.Model:
    """The configuration trained on every image of splits.x_train for `epochs` epochs, validated on
    nothing (scikit-learn's refit): no early stopping, and a `plateau` schedule, which follows the
    validation metric, keeps its rate. Every epoch trains on all the images, fidelity by data or not:
    this is the final model, not a rung. Raises TrialFailure when the loss diverges."""
    keras.utils.set_random_seed(seed)
    # Compiled with the study's max_epochs, so that a schedule (cosine, warm-up) is where it was at the
    # best epoch in the search, not spread over the refit's epochs. (With fidelity by data the search's
    # early epochs were shorter: the refit's schedule, over full epochs, is a little further along.)
    options = dataclasses.replace(options, data_fractions=())
    model = compiled_model(cfg, splits, seed, make_model, options)
    callbacks = [c for c in recipe_callbacks(cfg.train, options.metric)
                 if not isinstance(c, keras.callbacks.ReduceLROnPlateau)]
    history, _ = fit_stages(model, cfg, splits, options, seed=seed, epochs=epochs,
                            callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks,
                                       *user_callbacks(options.extras, cfg.knobs)])
    losses = history.history.get("loss", [])
    if not losses or not math.isfinite(losses[-1]):
        raise TrialFailure(FailReason.NAN, f"the loss diverged ({losses[-1:] or 'no epoch'}) training on all the data")
    return model


class OneTraining(keras.callbacks.CallbackList):
    """One CallbackList across the fit calls of a staged training (fidelity by data): its callbacks see
    one training of all the epochs, on_train_begin before the first stage's first epoch and on_train_end
    after the last stage, so EarlyStopping keeps its patience and best weights, BackupAndRestore its
    checkpoint (and restores it once), History every epoch."""

    def __init__(self, callbacks: Sequence[keras.callbacks.Callback], model: keras.Model, *, epochs: int,
                 verbose: int) -> None:
        super().__init__(list(callbacks), add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose,
                         epochs=epochs, steps=None)
        self.begun = self.ending = False

    @property
    def history(self) -> keras.callbacks.History:
        return next(c for c in self.callbacks if isinstance(c, keras.callbacks.History))

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self.begun:
            self.begun = True
            super().on_train_begin(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.ending:
            super().on_train_end(logs)


@contextlib.contextmanager
def _keeping_raw_weights(optimizer: keras.optimizers.Optimizer | None) -> Iterator[None]:
    """Keras's fit ends by writing the optimizer's moving averages into the weights (EMA's
    finalize_variable_values); a stage that is not the last must leave them training."""
    if optimizer is None:
        yield
        return
    optimizer.finalize_variable_values = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del optimizer.finalize_variable_values


def fit_stages(model: keras.Model, cfg: TrialConfig, splits: Splits, options: FitOptions, *, seed: int, epochs: int,
               callbacks: Sequence[keras.callbacks.Callback], **validation: object) -> tuple[keras.callbacks.History, int]:
    """model.fit for `epochs` epochs; with fidelity by data (options.data_fractions), one fit call per
    run of epochs on one share of the training set (search.spec._fidelity), continuing the epoch count
    (initial_epoch), the callbacks seeing one training (OneTraining). A checkpoint restored at the
    training's start (BackupAndRestore) resumes at its epoch, with that epoch's share. Returns fit's
    History and the images trained on."""
    shares = options.fractions(epochs)
    if all(share >= 1 for share in shares):
        data = training_data(cfg, splits, seed)
        history = model.fit(*data, shuffle=shuffled(data), epochs=epochs, verbose=options.verbose,
                            callbacks=list(callbacks), **validation)
        return history, len(history.epoch) * len(splits.y_train)
    plan = stages(shares)
    subsets = nested_subsets(splits.y_train, [share for *_, share in plan], options.data_seed)
    sizes = [len(index) for (first, end, _), index in zip(plan, subsets) for _ in range(first, end)]
    together = OneTraining(callbacks, model, epochs=epochs, verbose=options.verbose)
    # Begun here, not by the first fit: a restored checkpoint's epoch (Keras keeps it in the model's
    # _initial_epoch, which every later fit would start from) is where the stages resume.
    together.on_train_begin()
    resume = int(getattr(model, "_initial_epoch", None) or 0)
    restart_from_epoch(model, 0)
    last = len(plan) - 1
    for i, ((first, end, share), index) in enumerate(zip(plan, subsets)):
        if end <= resume and i != last:
            continue
        together.ending = i == last
        data = training_data(cfg, splits if share >= 1 else splits.train_subset(index), seed)
        batches = len(data[0]) if data[1] is None else steps_per_epoch(len(data[1]), cfg.train.batch_size)
        together.set_params({**together.params, "steps": batches})  # the progress bar's, the timer's
        with contextlib.nullcontext() if together.ending else _keeping_raw_weights(model.optimizer):
            model.fit(*data, shuffle=shuffled(data), initial_epoch=max(first, resume), epochs=end,
                      verbose=options.verbose, callbacks=together, **validation)
        if model.stop_training and not together.ending:  # early stopping: end the training as fit would
            if model.optimizer is not None:
                model.optimizer.finalize_variable_values(model.trainable_weights)
            together.ending = True
            together.on_train_end({key: values[-1] for key, values in together.history.history.items()})
            break
    history = together.history
    return history, sum(sizes[e] for e in history.epoch if e < len(sizes))


def load_model(path: Path) -> keras.Model:
    """A model the service saved (`refit`, `evaluate`), for predicting: its layers, losses and metrics
    are registered by importing this package; the training's optimizer state is not loaded."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.saving.load_model(path, compile=False)


def training_data(cfg: TrialConfig, splits: Splits, seed: int) -> tuple:
    """fit's training data: the arrays and a batch size, batches mixed by MixUp/CutMix (soft labels), or
    batches gathered from the shared cache (a streamed split)."""
    if soft_labels(cfg):
        return (MixedBatches(splits.x_train, splits.y_train, splits.num_classes, cfg.train.batch_size, cfg.augment,
                             seed=seed), None, None)
    if splits.streamed:
        return Batches(splits.x_train, splits.y_train, cfg.train.batch_size, shuffle=True, seed=seed), None, None
    return splits.x_train, splits.y_train, cfg.train.batch_size


def shuffled(data: tuple) -> bool:
    """fit's `shuffle` for training_data's output: arrays are shuffled by Keras's adapter; Batches shuffle
    themselves (seeded), and Keras would shuffle their order again with Python's global `random`."""
    return not isinstance(data[0], Batches)


def soft_labels(cfg: TrialConfig) -> bool:
    return cfg.augment is not None and cfg.augment.soft_labels


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Keras's global dtype policy set to `precision` (a study's `precision`), the previous one restored after."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} but got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_output(model: keras.Model) -> keras.Model:
    """A model whose output is not float32 (a user's builder under a mixed policy) gets a float32 linear
    activation on top, so that the loss is computed in float32; presets' softmax is float32 already."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1 or keras.backend.standardize_dtype(outputs[0].dtype) == "float32":
        return model
    out = keras.layers.Activation("linear", dtype="float32", name="float32_output")(outputs[0])
    return keras.Model(model.inputs, out, name=model.name)


def compiled_model(cfg: TrialConfig, splits: Splits, seed: int, make_model: ModelBuilder | None,
                   options: FitOptions) -> keras.Model:
    """The trial's model, built under the study's dtype policy (its output float32) and compiled to run
    steps_per_execution(steps, its parameters, its batches an epoch) steps a call, its optimizer built.
    jit_compile False leaves Keras's own choice ("auto": XLA on a TensorFlow GPU, none on a CPU; JAX
    always compiles): a literal False would run JAX op by op and turn off XLA where it runs today."""
    with dtype_policy(options.precision):
        model = float32_output((make_model or image_model())(cfg, splits, seed))
        batches = steps_per_epoch(len(splits.y_train), cfg.train.batch_size)
        # A schedule spans max_epochs of the batches each epoch has: fewer in the epochs of fidelity by data.
        shares = options.fractions(options.max_epochs)
        schedule_batches = max(1, round(sum(steps_per_epoch(max(1, round(f * len(splits.y_train))),
                                                            cfg.train.batch_size) for f in shares) / len(shares)))
        # Accuracy against the integer labels, whatever the loss (label smoothing one-hot encodes inside it;
        # MixUp/CutMix train on mixed one-hot labels, and validate on the integer ones).
        soft = soft_labels(cfg)
        loss = user_loss(options.extras, cfg.knobs) or (
            MixedLabelCrossentropy(cfg.train.label_smoothing) if soft else make_loss(cfg.train))
        model.compile(optimizer=make_optimizer(cfg.train, schedule_batches, options.max_epochs), loss=loss,
                      metrics=objective_metrics(options, splits.num_classes, soft=soft),
                      jit_compile=True if options.jit_compile else "auto",
                      steps_per_execution=steps_per_execution(options.steps, architecture_params(model), batches))
    # The optimizer's variables made now, as Keras's BackupAndRestore does before it restores: left to
    # the first call of the train function, they are made while it is traced, and TensorFlow then
    # traces the train step a second time (tf.function's variable-creation protocol). Built first,
    # simple_cnn smoke trials spent 2.0x less in compile (42% of their time to 26%), with the same
    # results (issue 26).
    if options.build_optimizer and model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model


def objective_metrics(options: FitOptions, num_classes: int, *, soft: bool = False) -> list[keras.metrics.Metric]:
    """Accuracy always (every trial records it), and the objective's own metric when it is another.
    `soft`: training labels mixed by MixUp/CutMix; each metric reads their argmax (the hard label)."""
    accuracy, top_k = (HardLabelAccuracy, HardLabelTopK) if soft else (
        keras.metrics.SparseCategoricalAccuracy, keras.metrics.SparseTopKCategoricalAccuracy)
    metrics: list[keras.metrics.Metric] = [accuracy(name="accuracy")]
    if options.metric == "val_top_k_accuracy":
        metrics.append(top_k(k=options.top_k, name="top_k_accuracy"))
    elif options.metric == "val_macro_f1":
        metrics.append(MacroF1(num_classes))
    elif options.metric == "val_balanced_accuracy":
        metrics.append(BalancedAccuracy(num_classes))
    return metrics


def best_epoch(values: Sequence[float], mode: str) -> int:
    """The index of the best finite value (the first of equals), as EarlyStopping restores it."""
    finite = [v if math.isfinite(v) else (math.inf if mode == "min" else -math.inf) for v in values]
    return int(np.argmin(finite) if mode == "min" else np.argmax(finite))


def release() -> None:
    """Free what the last trial built: Keras's global state, then Python garbage (clear_session's
    free_memory runs gc.collect(); a second collection found nothing more and cost as much again)."""
    keras.backend.clear_session(free_memory=True)


def freeze_setup() -> None:
    """After a worker's set-up (imports, data, feature cache): collect once, then gc.freeze() what is
    left, so that each later collection walks only the objects trials create. With TensorFlow and Keras
    imported that is ~300,000 objects fewer a collection (GC_FREEZE; BENCHMARKS.md, bench-breakdown)."""
    gc.collect()
    gc.freeze()
