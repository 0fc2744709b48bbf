"""Seeded, stratified index splits."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data._errors import DatasetError


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays; each class contributes round(fraction * its count), at
    least one image when it has two or more. Deterministic for a seed."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1) but got {fraction!r}")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """`folds` disjoint index arrays covering y, each with about 1/folds of every class (a class of
    fewer images than folds is missing from some). Deterministic for a seed."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2 but got {folds!r}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(folds)]
    for i, cls in enumerate(np.unique(y)):
        # Each class starts at another fold, so that the remainders spread over the folds.
        for j, chunk in enumerate(np.array_split(rng.permutation(np.flatnonzero(y == cls)), folds)):
            parts[(i + j) % folds].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About n indices with the class proportions of y (for small smoke runs)."""
    if n >= len(y):
        return np.arange(len(y))
    _, subset = stratified_split(y, n / len(y), seed)
    return subset


def nested_subsets(y: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """For each fraction in (0, 1], sorted indices of about that share of every class of y (at least
    one image of each), nested: a smaller fraction's images are among every larger one's. One seeded
    permutation per class, each subset its first rows. Deterministic for a seed."""
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"fractions must be in (0, 1] but got {bad}")
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(np.flatnonzero(y == cls)) for cls in np.unique(y)]
    return [np.sort(np.concatenate([order[:max(1, int(round(f * len(order))))] for order in orders]))
            for f in fractions]


class Rows:
    """Rows `index` of an array (the memory-mapped data cache), gathered only when read: a split that
    holds no copy of its images. Every worker on a machine maps the same cache file, so the page
    cache holds the images once however many workers train on them (INPUT_PIPELINE=stream).

    Reads like a read-only array where the trainer reads one: len, shape, dtype, ndim, nbytes (of
    the rows), `rows[i]`, `rows[a:b]` and `rows[indices]` (a gathered copy of those rows, in the
    order asked), np.asarray(rows) (a copy of them all)."""

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.dtype, self.shape = base.dtype, (len(self.index), *base.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        picked = self.index[key]
        if np.ndim(picked) == 0:
            return np.asarray(self.base[int(picked)])
        # Gathered in file order (page cache locality), returned in the order asked.
        order = np.argsort(picked, kind="stable")
        out = np.empty((len(picked), *self.shape[1:]), self.dtype)
        out[order] = self.base[picked[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)

    def __repr__(self) -> str:
        return f"Rows({len(self):,} of {len(self.base):,} rows, shape {self.shape}, {self.dtype})"


class ImageArrays:
    """Shape and class count, derived from x_train and class_names (Dataset and Splits)."""

    x_train: np.ndarray
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Splits(ImageArrays):
    """What a trial may see: training and validation images. No test split here."""

    x_train: np.ndarray | Rows  # Rows: streamed from the memory-mapped cache (train_val_splits(stream=True))
    y_train: np.ndarray
    x_val: np.ndarray | Rows
    y_val: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str

    @property
    def streamed(self) -> bool:
        """Whether images are rows of the shared cache, read batch by batch (no copy in this process)."""
        return isinstance(self.x_train, Rows) or isinstance(self.x_val, Rows)

    def train_subset(self, index: np.ndarray) -> Splits:
        """These splits training on rows `index` of x_train only (the same validation split): gathered
        rows of streamed splits (no copy), copied ones of arrays."""
        x = Rows(self.x_train.base, self.x_train.index[index]) if isinstance(self.x_train, Rows) else self.x_train[index]
        return dataclasses.replace(self, x_train=x, y_train=self.y_train[index],
                                   fingerprint=f"{self.fingerprint}:sub{len(index)}")


def train_val_splits(
    dataset, *, val_fraction: float = 0.1, seed: int = 0, max_train: int | None = None, max_val: int | None = None,
    stream: bool = False,
) -> Splits:
    """Hold out a stratified validation split from the training data (10% by default). stream: the
    images as Rows of the dataset's arrays (no copy), else copied out of them."""
    train_idx, val_idx = stratified_split(dataset.y_train, val_fraction, seed)
    return _splits(dataset, train_idx, val_idx, f"val{val_fraction}:s{seed}", max_train, max_val, seed, stream)


def fold_splits(dataset, *, folds: int, seed: int = 0, max_train: int | None = None,
                max_val: int | None = None, stream: bool = False) -> list[Splits]:
    """K-fold cross-validation's splits: fold i validates on the i-th of `folds` stratified parts of
    the training data and trains on the others."""
    parts = stratified_folds(dataset.y_train, folds, seed)
    return [_splits(dataset, np.concatenate(parts[:i] + parts[i + 1:]), val, f"fold{i}of{folds}:s{seed}", max_train,
                    max_val, seed, stream) for i, val in enumerate(parts)]


def _splits(dataset, train_idx: np.ndarray, val_idx: np.ndarray, how: str, max_train: int | None,
            max_val: int | None, seed: int, stream: bool = False) -> Splits:
    train_idx, val_idx = np.sort(train_idx), val_idx
    if max_train is not None:
        train_idx = train_idx[stratified_subset(dataset.y_train[train_idx], max_train, seed)]
    if max_val is not None:
        val_idx = val_idx[stratified_subset(dataset.y_train[val_idx], max_val, seed)]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DatasetError(f"{dataset.name}: splitting left an empty train or validation split")
    rows = (lambda idx: Rows(dataset.x_train, idx)) if stream else dataset.x_train.__getitem__
    return Splits(
        rows(train_idx),
        dataset.y_train[train_idx],
        rows(val_idx),
        dataset.y_train[val_idx],
        dataset.class_names,
        f"{dataset.fingerprint}:{how}:n{len(train_idx)}/{len(val_idx)}",
    )
