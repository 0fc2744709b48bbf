"""Readers, one per on-disk format. Each returns uint8 images (N, H, W, C), int labels and
class names, and raises DatasetError naming the file and the problem."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from data._errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
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


# --- image folders, plain or in a .tar.gz --------------------------------------------------------


def _decode(blob: bytes, where: str, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{where}: not a decodable image ({exc})") from exc
    return arr if arr.ndim == 3 else arr[..., None]


def _folder_entries(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir}: missing; an image folder needs {root}/{{train,test}}/<class>/*.jpg")
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.is_symlink():
                raise DatasetError(f"{class_dir}: a link; links are not accepted in datasets (they can point "
                                   "outside DATA_DIR): copy the folder in")
            for file in sorted(class_dir.iterdir()):
                if file.is_symlink():
                    raise DatasetError(f"{file}: a link; links are not accepted in datasets (they can point "
                                       "outside DATA_DIR): copy the file in")
                yield split, class_dir.name, str(file), file.read_bytes()


def _tar_entries(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise DatasetError(f"{path}:{member.name}: a member path that leaves the archive "
                                       "(absolute or with '..'); rebuild the archive with relative paths")
                if member.isdir() or len(parts) < 3 or parts[-3] not in SPLITS:
                    continue
                where = f"{path}:{member.name}"
                if not member.isfile():
                    raise DatasetError(f"{where}: not a regular file (links are not accepted in datasets)")
                blob = tar.extractfile(member).read()  # type: ignore[union-attr]
                yield parts[-3], parts[-2], where, blob
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable .tar.gz ({type(exc).__name__}: {exc})") from exc


def _progress(expected: int | None):
    """Keras's progress bar on a terminal; a log line every 10,000 images otherwise."""
    import logging
    import sys

    if sys.stderr.isatty():
        from keras.utils import Progbar

        bar = Progbar(expected, unit_name="image")
        return lambda n: bar.update(n)
    log = logging.getLogger(__name__)
    return lambda n: n % 10_000 == 0 and log.info("decoded %d of %s images", n, expected or "?")


def read_image_folder(source: Path, channels: int = 3, expected: int | None = None) -> RawData:
    """<root>/{train,test}/<class>/*.{jpg,jpeg,png}, from a folder or a .tar.gz of one."""
    entries = _tar_entries(source) if source.is_file() else _folder_entries(source)
    images: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in SPLITS}
    shape = None
    progress = _progress(expected)
    for n, (split, cls, where, blob) in enumerate(entries, start=1):
        progress(n)
        if not where.lower().endswith(IMAGE_SUFFIXES):
            raise DatasetError(f"{where}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}); remove it")
        arr = _decode(blob, where, channels)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DatasetError(f"{where}: image is {arr.shape} but earlier images are {shape}; resize them to one size")
        images[split].setdefault(cls, []).append(arr)
    for split in SPLITS:
        if not images[split]:
            raise DatasetError(f"{source}: the {split} split has no images")
    train_classes, test_classes = sorted(images["train"]), sorted(images["test"])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DatasetError(
            f"{source}: class folders differ between train and test (only in train: {only_train}, "
            f"only in test: {only_test})"
        )
    classes = tuple(train_classes)

    def stack(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs = [np.stack(images[split][c]) for c in classes]
        ys = [np.full(len(x), i, dtype=np.int64) for i, x in enumerate(xs)]
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = stack("train")
    x_test, y_test = stack("test")
    return RawData(x_train, y_train, x_test, y_test, classes)


def is_image_root(path: Path) -> bool:
    return path.is_dir() and all((path / s).is_dir() for s in SPLITS)


def fingerprint_source(path: Path) -> str:
    """A cheap identity of a source on disk: path, sizes and modification times."""
    st = path.stat()
    parts = [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    if path.is_dir():
        for dirpath, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                fst = os.stat(os.path.join(dirpath, name))
                parts.append(f"{os.path.relpath(os.path.join(dirpath, name), path)}:{fst.st_size}:{fst.st_mtime_ns}")
    return "|".join(parts)
