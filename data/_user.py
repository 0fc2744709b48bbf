"""A dataset of one's own: found by name in DATA_DIR or by path, read in whichever format it comes
in, with a seeded, stratified test split held out when it brings none."""

from __future__ import annotations

import os
from pathlib import Path

from data._arrays import Arrays, check_arrays, is_pickle_folder, read_npz_arrays, read_pickle_arrays, resize_arrays
from data._errors import DatasetError
from data._images import DecodeOptions, read_images
from data._ref import TEST_SPLIT_SEED, DatasetRef
from data._sources import RawData
from data._specs import DATASETS
from data._splits import stratified_split

FORMATS = ("a folder of images (train/<class>/<image>, optionally test/<class>/<image>, or <class>/<image>), "
           "a .tar.gz or .tgz of such a folder, an .npz with x_train and y_train (optionally x_test, y_test, "
           "class_names), or a CIFAR-style pickle folder")


def _in_data_dir(name: str) -> tuple[str, ...]:
    return name, f"{name}.npz", f"{name}.tar.gz", f"{name}.tgz"


def locate(ref: DatasetRef, data_dir: str | os.PathLike | None) -> Path:
    """The file or folder `ref` names: its path, or DATA_DIR/<name>[.npz|.tar.gz|.tgz]."""
    if ref.path is not None:
        path = Path(ref.path).expanduser()
        if not path.exists():
            base = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
            raise DatasetError(f"dataset.path {ref.path}: no such file or folder{base}; give {FORMATS}")
        return path
    name = str(ref.name)
    unknown = f"unknown dataset {name!r}: not one of {', '.join(DATASETS)}"
    if not data_dir:
        raise DatasetError(f"{unknown}, and DATA_DIR is not set to look for {', '.join(_in_data_dir(name))} in; set "
                           "DATA_DIR to the folder holding it, or give its location: dataset: {path: ...}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"DATA_DIR {root} is not a directory")
    for candidate in (root / n for n in _in_data_dir(name)):
        if candidate.is_symlink():
            raise DatasetError(f"{candidate}: a link; links are not accepted in datasets (they can point outside "
                               "DATA_DIR): copy the dataset in, or give its location: dataset: {path: ...}")
        if candidate.exists():
            return candidate
    raise DatasetError(f"{unknown}, and DATA_DIR {root} holds none of {', '.join(_in_data_dir(name))}; put "
                       f"{FORMATS} there, or give its location: dataset: {{path: ...}}")


def kind_of(path: Path) -> str:
    """images, npz or pickles: a folder by its files, a file by its first bytes (zip: npz, gzip: tarball)."""
    if path.is_dir():
        return "pickles" if is_pickle_folder(path) else "images"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        return "npz"
    if magic.startswith(b"\x1f\x8b"):
        return "images"
    raise DatasetError(f"{path}: neither a folder nor an .npz, .tar.gz or .tgz file; give {FORMATS}")


def read_user(ref: DatasetRef, path: Path) -> tuple[RawData, dict]:
    """The arrays, and what the description adds: format, how the test split came, files skipped."""
    kind = kind_of(path)
    if kind == "images":
        d = read_images(path, DecodeOptions(image_size=ref.image_size, skip_unreadable=ref.skip_unreadable,
                                            test_fraction=ref.test_fraction, seed=TEST_SPLIT_SEED))
        raw, given, skipped = RawData(d.x_train, d.y_train, d.x_test, d.y_test, d.class_names), d.test_given, d.skipped
    else:
        arrays = check_arrays(read_npz_arrays(path) if kind == "npz" else read_pickle_arrays(path), path)
        raw, given, skipped = _with_test(arrays, ref, path), arrays.x_test is not None, 0
        if ref.image_size is not None:
            raw.x_train = resize_arrays(raw.x_train, ref.image_size)
            raw.x_test = resize_arrays(raw.x_test, ref.image_size)
    split = "given" if given else f"held out ({ref.test_fraction}, seed {TEST_SPLIT_SEED})"
    return raw, {"format": kind, "test_split": split, "skipped_unreadable": skipped}


def _with_test(a: Arrays, ref: DatasetRef, path: Path) -> RawData:
    names = a.class_names or ()
    if a.x_test is not None and a.y_test is not None:
        return RawData(a.x_train, a.y_train, a.x_test, a.y_test, names)
    keep, held = stratified_split(a.y_train, ref.test_fraction, TEST_SPLIT_SEED)
    if not len(held):
        raise DatasetError(f"{path}: holding out test_fraction={ref.test_fraction} left no test images (a class needs "
                           "at least 2 images); add images, or give x_test and y_test")
    return RawData(a.x_train[keep], a.y_train[keep], a.x_train[held], a.y_train[held], names)
