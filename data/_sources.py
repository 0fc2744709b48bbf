"""Readers of arrays: CIFAR pickles (with a safe unpickler) and .npz files; image folders are in
data._images. Each returns uint8 images (N, H, W, C), int labels and class names, and raises
DatasetError naming the file and the problem."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data._errors import DatasetError

SPLITS = ("train", "test")


@dataclass
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


# --- CIFAR Python pickles -----------------------------------------------------------------------


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR's pickles hold dicts, lists, bytes and numpy arrays; refuse anything else, so a
    hostile file cannot run code while it is read."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR pickle")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (expected a CIFAR python pickle)") from None
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc}); "
                           f"the file is truncated or corrupt, download it again") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict in a CIFAR pickle but got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _pickle_images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' must be (N, 3072) uint8 but has shape {data.shape}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _pickle_labels(batch: dict, key: str, path: Path) -> np.ndarray:
    if key not in batch:
        raise DatasetError(f"{path}: no '{key}' entry in the pickle")
    return np.asarray(batch[key], dtype=np.int64)


def _names(values) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def read_cifar10_pickles(folder: Path) -> RawData:
    meta = _unpickle(folder / "batches.meta")
    parts = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = _unpickle(folder / "test_batch")
    return RawData(
        np.concatenate([_pickle_images(p, folder / f"data_batch_{i}") for i, p in enumerate(parts, 1)]),
        np.concatenate([_pickle_labels(p, "labels", folder / f"data_batch_{i}") for i, p in enumerate(parts, 1)]),
        _pickle_images(test, folder / "test_batch"),
        _pickle_labels(test, "labels", folder / "test_batch"),
        _names(meta.get("label_names", [])),
    )


def read_cifar100_pickles(folder: Path, label_mode: str) -> RawData:
    key = f"{label_mode}_labels"
    meta = _unpickle(folder / "meta")
    train, test = _unpickle(folder / "train"), _unpickle(folder / "test")
    return RawData(
        _pickle_images(train, folder / "train"),
        _pickle_labels(train, key, folder / "train"),
        _pickle_images(test, folder / "test"),
        _pickle_labels(test, key, folder / "test"),
        _names(meta.get(f"{label_mode}_label_names", [])),
    )


# --- MNIST npz ---------------------------------------------------------------------------------


def read_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DatasetError(f"{path}: missing array {exc}; expected x_train, y_train, x_test, y_test") from None
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from exc
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    n_classes = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1
    return RawData(
        x_train.astype(np.uint8), arrays["y_train"].astype(np.int64).ravel(),
        x_test.astype(np.uint8), arrays["y_test"].astype(np.int64).ravel(),
        tuple(str(i) for i in range(n_classes)),
    )


def is_image_root(path: Path) -> bool:
    return path.is_dir() and all((path / s).is_dir() for s in SPLITS)


def fingerprint_source(path: Path) -> str:
    """A cheap identity of a source on disk: its path, and every file's name, size and modification time."""
    h = hashlib.sha256()
    st = path.stat()
    h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    if path.is_dir():
        for dirpath, dirnames, files in os.walk(path):
            dirnames.sort()
            for name in sorted(files):
                file = os.path.join(dirpath, name)
                fst = os.lstat(file)
                h.update(f"|{os.path.relpath(file, path)}:{fst.st_size}:{fst.st_mtime_ns}".encode())
    return h.hexdigest()
