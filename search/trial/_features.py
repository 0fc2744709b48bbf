"""Frozen-base feature cache (fc_head): train the conv base once, run it once over the data,
then every trial trains only the head on the cached features; no conv layer runs in a trial.

Keys: base weights by (preset, dataset, labels, seed, base training setup, training data);
features by (sha256 of the base weights file, the split's fingerprint). A different base or
dataset can never reuse features. Both live under the artifact directory shared by workers, or in
object storage (ARTIFACTS_URL) with a copy on each worker's machine (storage.Artifacts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from data import Rows, Splits, publish_file, publish_folder, stratified_subset
from data.preprocessing import normalization_layer, training_model
from models import architecture, build, is_builder_reference
from models._blocks import classifier_head
from search import runtime
from search.errors import WorkerStopping
from search.spec import StudySpec, TrainParams, TrialConfig
from search.trial._base_estimate import SlowBase, base_estimate
from search.trial._batches import Batches
from search.trial._train import FitOptions, ModelBuilder, image_model, release, train
from storage import Artifacts, build_lock

logger = logging.getLogger(__name__)


BASE_FILES = ("base.json", "base.weights.h5")  # the weights last: a base is finished when they exist
FEATURE_FILES = ("x_train.npy", "x_val.npy", "meta.json")  # meta.json last


@dataclass(frozen=True)
class FeatureCache:
    base_weights: Path
    key: str
    splits: Splits  # x_* are feature vectors, float32


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _temp_name() -> str:
    """A temporary name no other builder, on this machine or another, can pick (PIDs repeat across
    containers). Entries are written under one and renamed into place, so a builder killed mid-write
    leaves a temporary file, never a finished-looking one."""
    return f"tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_unfinished(parent: Path, pattern: str) -> None:
    """Temporary files of builders that died mid-write. Only the build lock's holder writes them,
    so any found while holding it are dead."""
    stale = sorted(parent.glob(pattern))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        logger.warning("removed %d unfinished file(s) a killed builder left: %s", len(stale),
                       ", ".join(path.name for path in stale))


def base_preset(spec: StudySpec) -> str:
    """The conv base whose features heads train on: feature_cache.base (a preset, or a user's builder
    "file.py:build" cut at its layer 'features'), else the study's architecture."""
    return spec.feature_cache.base or spec.architecture


def _base_label(spec: StudySpec) -> str:
    """The base's name in folder and model names: a preset's, or user_<file>_<function> for a builder."""
    base = base_preset(spec)
    if not is_builder_reference(base):
        return base
    location, _, function = base.rpartition(":")
    return re.sub(r"[^A-Za-z0-9_]", "_", f"user_{Path(location).stem}_{function}")


def base_params(spec: StudySpec, splits: Splits):
    """The base with its knobs' defaults (a builder as the study validated it)."""
    base = base_preset(spec)
    return architecture(base, sha256=spec.builder_files.get(base)).params(input_shape=splits.input_shape,
                                                                          num_classes=splits.num_classes)


def _base_training(fc) -> dict:
    """What decides the base's weights: not how trials later use its features."""
    setup = dataclasses.asdict(fc)
    setup.pop("search_max_train", None)
    return setup


def base_precision(spec: StudySpec) -> str:
    """The Keras dtype policy the base trains under: feature_cache.base_precision, `study` the study's
    precision, `auto` mixed_bfloat16 on a CPU that computes bfloat16 natively with no GPU visible."""
    setting = spec.feature_cache.base_precision
    if setting == "study":
        return spec.precision
    if setting == "auto":
        return "mixed_bfloat16" if runtime.cpu_bfloat16() and runtime.device().startswith("cpu") else spec.precision
    return setting


def base_key(spec: StudySpec, splits: Splits) -> str:
    fc = spec.feature_cache
    key = {"preset": base_preset(spec), "dataset": spec.dataset, "labels": spec.label_mode, "seed": spec.seed,
           "normalization": spec.normalization, "training": _base_training(fc), "data": splits.fingerprint}
    if base_preset(spec) in spec.builder_files:  # a builder's weights are those of one version of its file
        key["builder_sha256"] = spec.builder_files[base_preset(spec)]
    # `auto` is keyed as written, not as this machine resolves it: every machine of the study takes the
    # one base the first builder trained (its precision is in base.json), as the space hash says they do.
    precision = "auto" if spec.feature_cache.base_precision == "auto" else base_precision(spec)
    if precision != "float32":  # float32: keys as before
        key["precision"] = precision
    blob = json.dumps(key, sort_keys=True, default=str)
    return f"{_base_label(spec)}-{spec.dataset}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class _StopBetweenEpochs(keras.callbacks.Callback):
    """SIGTERM during the one-time base training: stop at the epoch boundary and cache nothing."""

    def __init__(self, stop) -> None:
        super().__init__()
        self.stop = stop

    def on_epoch_end(self, epoch, logs=None):
        if self.stop is not None and self.stop.is_set():
            raise WorkerStopping(f"stopped during the base's epoch {epoch + 1}; nothing was cached")


def ensure_base(spec: StudySpec, splits: Splits, stop=None, *, artifacts: Artifacts | Path | None = None,
                store_url: str | None = None, slow: SlowBase | None = None) -> Path:
    """The base weights file: given in the study file, cached, or trained now (once).
    `stop` (the worker's StopFlag): a signal ends the training at the next epoch, caching nothing.
    `artifacts`: the shared folder, or object storage with this machine's copy (storage.Artifacts).
    `store_url`: a PostgreSQL store serialises builders with an advisory lock (storage.build_lock).
    `slow`: when to warn that the training will take long (default: on a CPU, past 15 minutes)."""
    fc = spec.feature_cache
    if fc.base_weights:
        path = Path(fc.base_weights)
        if not path.is_file():
            raise FileNotFoundError(f"feature_cache.base_weights {path} does not exist")
        return path
    artifacts = Artifacts.of(artifacts)
    folder = artifacts.cache("bases", base_key(spec, splits))
    target = folder / BASE_FILES[-1]
    with build_lock(store_url, "bases", folder.name, folder):
        if artifacts.fetch(folder, BASE_FILES):
            logger.info("reusing trained base %s", target)
            return target
        if folder.is_dir():
            _remove_unfinished(folder, ".tmp-*")
        idx = stratified_subset(splits.y_train, fc.base_max_train, spec.seed) if fc.base_max_train else slice(None)
        base_splits = dataclasses.replace(splits, x_train=splits.x_train[idx], y_train=splits.y_train[idx])
        logger.info("training the %s base once: %d epochs on %d images under %s (cached as %s)", base_preset(spec),
                    fc.base_epochs, len(base_splits.y_train), base_precision(spec), target)
        cfg = TrialConfig(base_params(spec, splits), TrainParams("adam", 1e-3, batch_size=fc.base_batch_size), None)
        # The base is not a trial: validation accuracy and the built-in loss, whatever the study's
        # objective metric and training extras; its own precision (base_precision) and the study's XLA setting.
        options = FitOptions(max_epochs=fc.base_epochs, patience=fc.base_epochs, precision=base_precision(spec),
                             jit_compile=spec.jit_compile, verbose=1 if sys.stderr.isatty() else 0)
        result, model = train(cfg, base_splits, options, seed=spec.seed, label="base",
                              make_model=image_model(spec.normalization),
                              callbacks=[_StopBetweenEpochs(stop), *base_estimate(spec, len(base_splits.y_train), slow)])
        arch = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name()
        (folder / f".{tmp}.json").write_text(json.dumps({"val_accuracy": result.best_val_accuracy,
                                                         "epochs": result.epochs_run, "seconds": result.train_seconds,
                                                         "precision": options.precision}))
        publish_file(folder / f".{tmp}.json", folder / "base.json")
        arch.save_weights(folder / f".{tmp}.weights.h5")
        publish_file(folder / f".{tmp}.weights.h5", target)  # last: a base is finished when this file exists
        if not artifacts.publish(folder, BASE_FILES):
            logger.warning("another worker published base %s first (its build lock was not shared): using its weights",
                           folder.name)
        release()
        logger.info("base trained: val_accuracy %.4f in %.0fs", result.best_val_accuracy, result.train_seconds)
    return target


def frozen_base(spec: StudySpec, splits: Splits, weights: Path) -> keras.Model:
    """The trained base up to its flattened `features` layer, weights loaded, frozen (batch norm
    runs in inference mode). Normalised float images in, feature vectors out."""
    arch = build(base_params(spec, splits))
    arch.load_weights(weights)
    base = keras.Model(arch.inputs, arch.get_layer("features").output, name=f"base_{_base_label(spec)}")
    base.trainable = False
    return base


def _pixels_in(spec: StudySpec, splits: Splits):
    """uint8 pixels -> float -> the study's normalisation, as trial models do."""
    inputs = keras.Input(splits.input_shape, dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    return inputs, normalization_layer(spec.normalization, splits.x_train)(x)


def feature_extractor(spec: StudySpec, splits: Splits, weights: Path) -> keras.Model:
    """uint8 images -> the base's flattened features, with the study's normalisation."""
    inputs, x = _pixels_in(spec, splits)
    return keras.Model(inputs, frozen_base(spec, splits, weights)(x), name="feature_extractor")


def extract(extractor: keras.Model, x: np.ndarray | Rows, batch_size: int = 256) -> np.ndarray:
    started = time.perf_counter()
    if isinstance(x, Rows):  # streamed from the shared cache (INPUT_PIPELINE=stream): batch by batch
        data, batch = Batches(x, np.zeros(len(x), np.int64), batch_size, shuffle=False), None
    else:
        data, batch = x, batch_size
    out = np.asarray(extractor.predict(data, batch_size=batch, verbose=1 if sys.stderr.isatty() else 0),
                     dtype=np.float32)
    logger.info("features of %d images in %.0fs (%.0f images/s)", len(x), time.perf_counter() - started,
                len(x) / max(time.perf_counter() - started, 1e-9))
    return out


def ensure_features(spec: StudySpec, splits: Splits, stop=None, *, artifacts: Artifacts | Path | None = None,
                    store_url: str | None = None) -> FeatureCache:
    artifacts = Artifacts.of(artifacts)
    weights = ensure_base(spec, splits, stop, artifacts=artifacts, store_url=store_url)
    key = hashlib.sha256(f"{_sha256(weights)}|{splits.fingerprint}|{spec.normalization}".encode()).hexdigest()[:20]
    folder = artifacts.cache("features", key)
    with build_lock(store_url, "features", key, folder):
        if not artifacts.fetch(folder, FEATURE_FILES):
            logger.info("computing base features once for %d train and %d validation images",
                        len(splits.y_train), len(splits.y_val))
            folder.parent.mkdir(parents=True, exist_ok=True)
            _remove_unfinished(folder.parent, f".{key}.tmp-*")
            extractor = feature_extractor(spec, splits, weights)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.{_temp_name()}-", dir=folder.parent))
            np.save(tmp / "x_train.npy", extract(extractor, splits.x_train))
            np.save(tmp / "x_val.npy", extract(extractor, splits.x_val))
            (tmp / "meta.json").write_text(json.dumps({"weights": str(weights), "splits": splits.fingerprint}))
            publish_folder(tmp, folder, replace=True)
            if not artifacts.publish(folder, FEATURE_FILES):
                logger.warning("another worker published features %s first: using its copy", key)
            release()
        else:
            logger.info("reusing cached features %s", folder)
    features = dataclasses.replace(
        splits, x_train=np.load(folder / "x_train.npy"), x_val=np.load(folder / "x_val.npy"),
        fingerprint=f"{splits.fingerprint}:features:{key}",
    )
    return FeatureCache(weights, key, features)


def _head(cfg: TrialConfig, n_features: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(n_features, name="features_in")
    outputs = classifier_head(inputs, cfg.model.head, num_classes=num_classes, l2=cfg.model.l2, flatten=False)
    return keras.Model(inputs, outputs, name="head")


def head_model() -> ModelBuilder:
    """Feature vectors in: only the dense head trains. No conv layer exists in this model."""

    def make(cfg: TrialConfig, splits: Splits, seed: int) -> keras.Model:
        return _head(cfg, splits.x_train.shape[1:], splits.num_classes)

    return make


def frozen_base_model(spec: StudySpec, weights: Path) -> ModelBuilder:
    """Images in, for studies that augment: the frozen base runs every batch, then the same head
    as on cached features."""

    def make(cfg: TrialConfig, splits: Splits, seed: int) -> keras.Model:
        base = frozen_base(spec, splits, weights)
        inputs = keras.Input(splits.input_shape, name="images")
        head = _head(cfg, base.output_shape[1:], splits.num_classes)
        # training=False: the base's batch norm and dropout behave as when its features were cached.
        arch = keras.Model(inputs, head(base(inputs, training=False)), name="frozen_base_head")
        return training_model(arch, normalization=normalization_layer(spec.normalization, splits.x_train),
                              augment=cfg.augment, seed=seed)

    return make


def full_model(spec: StudySpec, splits: Splits, weights: Path, head: keras.Model) -> keras.Model:
    """The usable model on images: the frozen base, then a head trained on its features."""
    inputs, x = _pixels_in(spec, splits)
    features = frozen_base(spec, splits, weights)(x, training=False)
    return keras.Model(inputs, head(features), name=f"final_{spec.name}")


def search_subset(spec: StudySpec, features: Splits) -> Splits:
    """The training features trials see: a stratified, seeded subset when the study asks for one."""
    n = spec.feature_cache.search_max_train
    if not n or n >= len(features.y_train):
        return features
    idx = stratified_subset(features.y_train, n, spec.seed)
    logger.info("trials train on a stratified subset of %d of the %d cached training features "
                "(feature_cache.search_max_train); validation uses all %d; `make evaluate` retrains on all",
                len(idx), len(features.y_train), len(features.y_val))
    return dataclasses.replace(features, x_train=features.x_train[idx], y_train=features.y_train[idx],
                               fingerprint=f"{features.fingerprint}:search{len(idx)}")


def trial_builder(spec: StudySpec, splits: Splits, *, search: bool = True, stop=None,
                  artifacts: Artifacts | Path | None = None, store_url: str | None = None) -> tuple[Splits, ModelBuilder]:
    """What the workers of a feature-cache study train on, and how they build trial models.
    `search=False` (final evaluation): every cached training feature, whatever the study searched on.
    `store_url`: the study's store, which decides how one-time builds are locked (storage.build_lock)."""
    if spec.augments:
        weights = ensure_base(spec, splits, stop, artifacts=artifacts, store_url=store_url)
        logger.warning("study %s augments its images, so the feature cache cannot apply: the frozen base "
                       "runs on every batch of every trial", spec.name)
        return splits, frozen_base_model(spec, weights)
    cache = ensure_features(spec, splits, stop, artifacts=artifacts, store_url=store_url)
    logger.info("study %s trains only the head on cached %d-d features of the %s base; no conv layer runs in a "
                "trial", spec.name, cache.splits.x_train.shape[1], base_preset(spec))
    return (search_subset(spec, cache.splits) if search else cache.splits), head_model()
