"""A fine-tuning trial of a feature-cache study (the stage: search.study._fine_tune).

Two fits, as Keras's transfer-learning guide does it: the promoted head is trained again on the
cached features (as its head trial was: the study's epochs, early stopping, best weights restored;
seconds on features), then the whole model -- uint8 pixels, the study's normalisation, the cached
base with its last `unfreeze_blocks` blocks trainable, that head -- is trained on the images at the
trial's `fine_tune_learning_rate` (a constant rate, the head's optimiser) for fine_tune.epochs.
The base runs in inference mode (training=False): its batch-norm statistics stay those the head
learnt on while the unfrozen weights move. Only the second fit is pruned and checkpointed; its best
epoch is the trial's value, on the same validation images as the head trials'.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna

from data import Splits
from data.preprocessing import normalization_layer, training_model
from models import base_blocks
from search.errors import FailReason, TrialFailure
from search.spec import StudySpec, TrialConfig
from search.study import fresh_trial, prune_in_stage
from search.trial._features import base_params, ensure_base, frozen_base, search_subset
from search.trial._train import FitOptions, ModelBuilder, TrainResult, train
from storage import Artifacts

logger = logging.getLogger(__name__)


def unfreeze_last(base: keras.Model, blocks: Sequence[str], n: int) -> None:
    """Every layer of `base` from the first layer of its n-th last block on made trainable, those before
    it frozen. A block is named by its first layer, or by the prefix its layers share (a preset's
    stage2 is stage2_conv1, stage2_bn, ...)."""
    if not 1 <= n <= len(blocks):
        raise TrialFailure(FailReason.BUILD, f"fine_tune_unfreeze_blocks={n}, but the base has {len(blocks)} "
                                             f"block(s): {', '.join(blocks)}")
    first = blocks[-n]
    names = [layer.name for layer in base.layers]
    start = next((i for i, name in enumerate(names) if name == first or name.startswith(f"{first}_")), None)
    if start is None:
        raise TrialFailure(FailReason.BUILD, f"the base has no layer {first!r} (fine_tune.blocks names each block "
                                             f"by its first layer); its layers: {', '.join(names)}")
    base.trainable = True
    for i, layer in enumerate(base.layers):  # each layer's flag set, whatever an earlier call left
        layer.trainable = i >= start


def trained_head(model: keras.Model) -> keras.Model:
    """The head inside what a head trial trains: the model itself on cached features, or its 'head'
    sub-model behind the frozen base (a study that augments)."""
    found = model if model.name == "head" else _find_head(model)
    if found is None:
        raise RuntimeError(f"no head model inside {model.name}")
    return found


def _find_head(model: keras.Model) -> keras.Model | None:
    """The sub-model named 'head', however deep, or None."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if layer.name == "head":
                return layer
            found = _find_head(layer)
            if found is not None:
                return found
    return None


class StagePruning(keras.callbacks.Callback):
    """Optuna's KerasPruningCallback for a fine-tuning trial: each epoch's metric reported, then the
    stage's median rule asked (search.study.prune_in_stage) instead of the study's pruner; with
    `prune` False (a study with `pruner: none`) only reported."""

    def __init__(self, trial: optuna.Trial, metric: str, *, prune: bool = True) -> None:
        super().__init__()
        self.trial, self.metric, self.prune = trial, metric, prune

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), step=epoch)
        if self.prune and prune_in_stage(self.trial.study, fresh_trial(self.trial)):
            raise optuna.TrialPruned(f"trial was pruned at epoch {epoch}: below the fine-tuning trials' median")


@dataclass(frozen=True)
class FineTuning:
    """What a process that runs fine-tuning trials holds: the images the heads' features came from
    (the search's stratified subset, or all of them for `make evaluate`), the cached base, and the
    training images the features were normalised with (a zscore's statistics are all of theirs)."""

    spec: StudySpec
    images: Splits
    weights: Path
    stats: np.ndarray

    @classmethod
    def for_study(cls, spec: StudySpec, image_splits: Splits, *, search: bool = True, stop=None,
                  artifacts: Artifacts | Path | None = None, store_url: str | None = None) -> FineTuning:
        weights = ensure_base(spec, image_splits, stop, artifacts=artifacts, store_url=store_url)  # cached by now
        return cls(spec, search_subset(spec, image_splits) if search else image_splits, weights, image_splits.x_train)

    def blocks(self) -> tuple[str, ...]:
        return self.spec.fine_tune.blocks or base_blocks(base_params(self.spec, self.images))

    def plan(self, cfg: TrialConfig, knobs: dict[str, Any], head: keras.Model,
             fit: FitOptions) -> tuple[TrialConfig, FitOptions, ModelBuilder]:
        """The second fit: its config (the head's optimiser at the fine-tuning rate, constant), its
        options (fine_tune.epochs) and the model builder that puts the trained head on the base."""
        ft = self.spec.fine_tune
        train_params = dataclasses.replace(cfg.train, learning_rate=float(knobs["learning_rate"]),
                                           lr_schedule="constant", warmup_epochs=0.0)
        # Fine-tuning trials are compared by the median rule, not at rungs: every epoch trains on every image.
        options = dataclasses.replace(fit, max_epochs=ft.epochs, patience=min(fit.patience, ft.epochs),
                                      data_fractions=())
        unfreeze, blocks = int(knobs["unfreeze_blocks"]), self.blocks()
        spec, weights, stats = self.spec, self.weights, self.stats

        def make(config: TrialConfig, splits: Splits, seed: int) -> keras.Model:
            base = frozen_base(spec, splits, weights)
            unfreeze_last(base, blocks, unfreeze)
            inputs = keras.Input(splits.input_shape, name="images")
            arch = keras.Model(inputs, head(base(inputs, training=False)), name="fine_tuned")
            return training_model(arch, normalization=normalization_layer(spec.normalization, stats),
                                  augment=config.augment, seed=seed)

        return dataclasses.replace(cfg, train=train_params), options, make

    def train(self, cfg: TrialConfig, knobs: dict[str, Any], features: Splits, make_head: ModelBuilder,
              fit: FitOptions, *, seed: int, label: str) -> tuple[TrainResult, TrainResult, keras.Model]:
        """Both fits with one seed, nothing pruned nor checkpointed (`make evaluate`): the head's result,
        the whole model's and the fine-tuned model (uint8 pixels in)."""
        head_result, model = train(cfg, features, fit, seed=seed, label=f"{label} head", make_model=make_head)
        ft_cfg, ft_fit, make = self.plan(cfg, knobs, trained_head(model), fit)
        result, tuned = train(ft_cfg, self.images, ft_fit, seed=seed, label=f"{label} fine-tune", make_model=make)
        return head_result, result, tuned
