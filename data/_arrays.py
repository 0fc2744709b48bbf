"""Data of one's own that comes as arrays: an .npz with Keras's keys, or a CIFAR-style pickle folder.

Both give `Arrays` (the test split optional); `check_arrays` holds them to the rules every dataset
keeps: uint8 images of one shape with 1 or 3 channels, integer labels 0..k-1, every class in the
training split, test classes known to training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data._errors import DatasetError
from data._sources import _names, _pickle_images, _pickle_labels, _unpickle

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_HELP = ("an .npz needs x_train (N, H, W) or (N, H, W, C) uint8 and y_train (N,) integer labels, optionally x_test "
            "and y_test, and class_names (strings), as np.savez(path, x_train=..., y_train=...) writes them")


@dataclass(frozen=True)
class Arrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...] | None


def read_npz_arrays(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as f:
            found = {k: f[k] for k in (*NPZ_KEYS, "class_names") if k in f.files}
    except ValueError as exc:
        raise DatasetError(f"{path}: holds Python objects, which are not loaded ({exc}); {NPZ_HELP}") from exc
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc}); {NPZ_HELP}") from exc
    missing = [k for k in ("x_train", "y_train") if k not in found]
    if missing or (("x_test" in found) != ("y_test" in found)):
        what = missing or [k for k in ("x_test", "y_test") if k not in found]
        raise DatasetError(f"{path}: no array {', '.join(what)}; {NPZ_HELP}")
    names = found.get("class_names")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"):
        raise DatasetError(f"{path}: class_names must be a 1-D array of strings (np.array(names, dtype=str)) but "
                           f"has dtype {names.dtype} and shape {names.shape}")
    return Arrays(found["x_train"], found["y_train"], found.get("x_test"), found.get("y_test"),
                  None if names is None else _names(names.tolist()))


def is_pickle_folder(folder: Path) -> bool:
    return (folder / "data_batch_1").is_file() or ((folder / "meta").is_file() and (folder / "train").is_file())


def read_pickle_arrays(folder: Path) -> Arrays:
    """CIFAR-10 style (data_batch_1.., test_batch, batches.meta) or CIFAR-100 style (train, test, meta;
    fine labels); the test file and the names are optional."""
    ten = (folder / "data_batch_1").is_file()
    files = sorted(folder.glob("data_batch_*"), key=lambda p: (len(p.name), p.name)) if ten else [folder / "train"]
    test, meta = folder / ("test_batch" if ten else "test"), folder / ("batches.meta" if ten else "meta")
    key, names_key = ("labels", "label_names") if ten else ("fine_labels", "fine_label_names")
    parts = [(_unpickle(f), f) for f in files]
    tested = _unpickle(test) if test.is_file() else None
    names = _names(_unpickle(meta).get(names_key, [])) if meta.is_file() else ()
    return Arrays(np.concatenate([_pickle_images(p, f) for p, f in parts]),
                  np.concatenate([_pickle_labels(p, key, f) for p, f in parts]),
                  None if tested is None else _pickle_images(tested, test),
                  None if tested is None else _pickle_labels(tested, key, test), names or None)


def _images(x: np.ndarray, key: str, where: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise DatasetError(f"{where}: {key} must be (N, H, W) or (N, H, W, C) with C 1 or 3 but has shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iu" or (x.size and (x.min() < 0 or x.max() > 255)):
        raise DatasetError(f"{where}: {key} has dtype {x.dtype}" + (f" and values {x.min()}..{x.max()}" if x.size
                           and x.dtype.kind in "iuf" else "") + "; store uint8 pixels 0..255 (for images in [0, 1]: "
                           "(x * 255).round().astype(np.uint8))")
    return x.astype(np.uint8)


def _labels(y: np.ndarray, n: int, key: str, where: Path) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{where}: {key} has dtype {y.dtype}; labels are integer class indices 0..k-1 "
                           f"(y.astype(np.int64) if they are whole numbers)")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"{where}: {n} images in x_{key[2:]} but {key} has shape {y.shape}; give one label per "
                           "image")
    return y.astype(np.int64)


def check_arrays(a: Arrays, where: Path) -> Arrays:
    """Images as uint8 (N, H, W, C), labels as int64 (N,), class names: or a DatasetError saying what to fix."""
    if not len(a.x_train):
        raise DatasetError(f"{where}: x_train is empty; {NPZ_HELP}")
    x_train = _images(a.x_train, "x_train", where)
    y_train = _labels(a.y_train, len(x_train), "y_train", where)
    x_test = y_test = None
    if a.x_test is not None and a.y_test is not None:
        x_test = _images(a.x_test, "x_test", where)
        if not len(x_test) or x_test.shape[1:] != x_train.shape[1:]:
            raise DatasetError(f"{where}: x_test has shape {x_test.shape} but x_train images are {x_train.shape[1:]}; "
                               "give test images of the training shape, or leave x_test and y_test out to hold out "
                               "test_fraction of the training images")
        y_test = _labels(a.y_test, len(x_test), "y_test", where)
    k = len(a.class_names) if a.class_names else int(y_train.max()) + 1
    _check_classes(y_train, y_test, k, bool(a.class_names), where)
    return Arrays(x_train, y_train, x_test, y_test, a.class_names or tuple(str(i) for i in range(k)))


def _check_classes(y_train: np.ndarray, y_test: np.ndarray | None, k: int, named: bool, where: Path) -> None:
    bad = (y_train < 0) | (y_train >= k)
    if bad.any():
        raise DatasetError(f"{where}: {int(bad.sum())} y_train labels are outside 0..{k - 1} (first: "
                           f"{int(y_train[bad][0])}); labels are class indices 0..k-1"
                           + (f", one per name in class_names ({k} names)" if named else ""))
    absent = np.setdiff1d(np.arange(k), y_train)
    if len(absent):
        raise DatasetError(f"{where}: class(es) {absent[:10].tolist()} have no training images; number the classes "
                           f"0..k-1 without gaps" + (" and list only those in class_names" if named else ""))
    if k < 2:
        raise DatasetError(f"{where}: only one class in y_train; a classifier needs at least two")
    if y_test is not None and ((y_test < 0) | (y_test >= k)).any():
        unknown = y_test[(y_test < 0) | (y_test >= k)]
        raise DatasetError(f"{where}: {len(unknown)} y_test labels are not training classes (first: "
                           f"{int(unknown[0])}); test labels must be classes of y_train, 0..{k - 1}")


def resize_arrays(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every image resized to (height, width) with PIL, into one array allocated up front."""
    from PIL import Image

    h, w = size
    out = np.empty((len(x), h, w, x.shape[3]), dtype=np.uint8)
    for i, image in enumerate(x):
        resized = Image.fromarray(image[..., 0] if x.shape[3] == 1 else image).resize((w, h), Image.Resampling.BILINEAR)
        out[i] = np.asarray(resized, dtype=np.uint8).reshape(h, w, x.shape[3])
    return out
