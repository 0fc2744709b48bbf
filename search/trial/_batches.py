"""Training and validation batches gathered as fit reads them (INPUT_PIPELINE=stream).

Keras's array adapter copies the arrays fit is given into one tensor per fit call, so each worker
holds its own copy of its split, and packed workers hold as many copies as there are workers. With
INPUT_PIPELINE=stream the split is rows of the memory-mapped data cache (data.Rows) and this
PyDataset gathers one batch at a time from it: a worker holds a batch, not a split, and the workers
of one machine share the cache file's pages (benchmarks/decode.py measures it).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from data import Rows


class Batches(keras.utils.PyDataset):
    """Batches of (x, y) rows: shuffled every epoch with a seeded generator (training), or in order
    (validation). x is an array or Rows of the shared cache; the last batch may be smaller."""

    def __init__(self, x: np.ndarray | Rows, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 but got {batch_size!r}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, int(batch_size), shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return max(math.ceil(len(self.x) / self.batch_size), 1)

    def rows(self, index: int) -> np.ndarray:
        """The row numbers of batch `index` (ascending: the gather reads the cache file in order)."""
        return np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rows(index)
        return self.x[idx], self.y[idx]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))
