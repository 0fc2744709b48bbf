"""Tiny stand-ins: a learnable CIFAR-10-shaped dataset (class k images are brighter by k steps, plus
noise) and small study files."""

from __future__ import annotations

import numpy as np
import optuna

from data import Splits
from data._specs import CIFAR10_CLASSES
from search import create_study, make_pruner, make_sampler, parse_spec


def easy_splits(n_train: int = 600, n_val: int = 200, seed: int = 0) -> Splits:
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 10
        x = (y[:, None, None, None] * 22 + rng.integers(0, 30, size=(n, 32, 32, 3))).clip(0, 255).astype(np.uint8)
        return x, y

    x_train, y_train = make(n_train)
    x_val, y_val = make(n_val)
    return Splits(x_train, y_train, x_val, y_val, CIFAR10_CLASSES, "synthetic")


# One trial of one epoch on a tiny preset: for tests about how a trial trains, not what it finds.
ONE_TRIAL_STUDY = """
architecture: s000_model_1
dataset: cifar10
space:
  learning_rate: {choices: [0.001]}
  batch_size: {choices: [32]}
sampler: {name: random, seed: 0}
pruner: none
budget: {trials: 1, max_epochs: 1}
"""


# A feature-cache study on a tiny base: one base epoch, two heads.
FEATURE_STUDY = """
architecture: s000_model_3_1
dataset: cifar10
fixed: {freeze_base: true}
space:
  optimizer: {choices: [adam]}
  learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
  dense_units: {choices: [32, 64]}
  dense_layers: {low: 1, high: 2}
  activation: {choices: [relu, tanh]}
  batch_size: {choices: [64]}
sampler: {name: random, seed: 0}
pruner: none
budget: {trials: 2, max_epochs: 2}
feature_cache: {base_epochs: 1}
"""


# Two optimizers (momentum only for sgd), a learning rate wide enough to diverge, a median pruner.
TINY = """
architecture: s000_model_1
dataset: cifar10
space:
  optimizer: {choices: [adam, sgd]}
  learning_rate: {low: 1.0e-7, high: 1.0e+4, log: true}
  momentum: {low: 0.5, high: 0.99, when: {optimizer: sgd}}
  batch_size: {choices: [32]}
sampler: {name: random, seed: 0}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
budget: {trials: 3, max_epochs: 3}
early_stopping: {patience: 3}
"""


def memory_study(text: str, name: str = "tiny") -> tuple:
    """The study file `text` as a spec and a study in memory, with the study's sampler and pruner."""
    spec = parse_spec(text, name=name)
    study = create_study(spec, optuna.storages.InMemoryStorage())
    study.sampler, study.pruner = make_sampler(spec), make_pruner(spec)
    return spec, study


# The service's fault tests' study: MNIST, a small CNN; fill in TRIALS, EPOCHS and MAX_TRAIN.
SERVICE_STUDY = """
architecture: s003_mnist_cnn
dataset: mnist
space:
  optimizer: {choices: [adam, rmsprop]}
  learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
  dense_units: {choices: [32, 64]}
  batch_size: {choices: [64]}
sampler: tpe
pruner: none
budget: {trials: TRIALS, max_epochs: EPOCHS}
early_stopping: {patience: 10}
data: {max_train: MAX_TRAIN, max_val: 200}
"""
