"""Seeded, stratified index splits."""

from __future__ import annotations

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

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str


def train_val_splits(
    dataset, *, val_fraction: float = 0.1, seed: int = 0, max_train: int | None = None, max_val: int | None = None
) -> Splits:
    """Hold out a stratified validation split from the training data (10% by default)."""
    train_idx, val_idx = stratified_split(dataset.y_train, val_fraction, seed)
    return _splits(dataset, train_idx, val_idx, f"val{val_fraction}:s{seed}", max_train, max_val, seed)


def fold_splits(dataset, *, folds: int, seed: int = 0, max_train: int | None = None,
                max_val: int | None = None) -> list[Splits]:
    """K-fold cross-validation's splits: fold i validates on the i-th of `folds` stratified parts of
    the training data and trains on the others."""
    parts = stratified_folds(dataset.y_train, folds, seed)
    return [_splits(dataset, np.concatenate(parts[:i] + parts[i + 1:]), val, f"fold{i}of{folds}:s{seed}", max_train,
                    max_val, seed) for i, val in enumerate(parts)]


def _splits(dataset, train_idx: np.ndarray, val_idx: np.ndarray, how: str, max_train: int | None,
            max_val: int | None, seed: int) -> Splits:
    train_idx, val_idx = np.sort(train_idx), val_idx
    if max_train is not None:
        train_idx = train_idx[stratified_subset(dataset.y_train[train_idx], max_train, seed)]
    if max_val is not None:
        val_idx = val_idx[stratified_subset(dataset.y_train[val_idx], max_val, seed)]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DatasetError(f"{dataset.name}: splitting left an empty train or validation split")
    return Splits(
        dataset.x_train[train_idx],
        dataset.y_train[train_idx],
        dataset.x_train[val_idx],
        dataset.y_train[val_idx],
        dataset.class_names,
        f"{dataset.fingerprint}:{how}:n{len(train_idx)}/{len(val_idx)}",
    )
