"""A tiny, learnable stand-in for CIFAR-10: class k images are brighter by k steps, plus noise."""

from __future__ import annotations

import numpy as np

from data import Splits
from data._specs import CIFAR10_CLASSES


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
