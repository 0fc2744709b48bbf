"""A study for the packing tests."""

from __future__ import annotations

STUDY = """
architecture: s000_model_1
dataset: cifar10
space:
  learning_rate: {low: 1.0e-3, high: 1.0e-1, log: true}
sampler: {name: random, seed: 0}
pruner: none
budget: {trials: 16, max_epochs: 1}
"""
