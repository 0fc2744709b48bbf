"""load_dataset(): find a source, decode it once, cache the arrays (uint8) atomically.

Order of sources for dataset NAME: DATA_DIR (pickle folders, image folders or a .tar.gz of one,
mnist.npz), then Keras's own download and cache, then a DatasetError that says what was looked
for and how to provide it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data._errors import DatasetError, TestSplitAccessError
from data._sources import (
    RawData,
    fingerprint_source,
    is_image_root,
    read_cifar10_pickles,
    read_cifar100_pickles,
    read_image_folder,
    read_npz,
)
from data._specs import dataset_spec
from data._splits import ImageArrays

logger = logging.getLogger(__name__)
CACHE_VERSION = 1
_final_evaluation = contextvars.ContextVar("final_evaluation", default=False)


@contextlib.contextmanager
def final_evaluation():
    """The only context in which Dataset.test_split() answers."""
    token = _final_evaluation.set(True)
    try:
        yield
    finally:
        _final_evaluation.reset(token)


@dataclass(frozen=True)
class Dataset(ImageArrays):
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str
    source: str
    _x_test: np.ndarray = field(repr=False)
    _y_test: np.ndarray = field(repr=False)

    @property
    def n_test(self) -> int:
        return len(self._y_test)

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out test images; only inside `with data.final_evaluation():`."""
        if not _final_evaluation.get():
            raise TestSplitAccessError(
                "the test split is only for the final evaluation (make evaluate); trials are "
                "scored on the validation split"
            )
        return self._x_test, self._y_test


def default_cache_dir() -> Path:
    return Path(os.environ.get("DATA_CACHE") or Path.cwd() / ".cache" / "data")


def _candidates(name: str, data_dir: Path) -> list[tuple[str, Path]]:
    pickles = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
    found: list[tuple[str, Path]] = []
    if name in pickles and (data_dir / pickles[name]).is_dir():
        found.append(("pickles", data_dir / pickles[name]))
    if name == "mnist" and (data_dir / "mnist.npz").is_file():
        found.append(("npz", data_dir / "mnist.npz"))
    for path in sorted(data_dir.glob(f"{name}")) + sorted(data_dir.glob(f"{name}-*")):
        if is_image_root(path):
            found.append(("images", path))
        elif path.name.endswith((".tar.gz", ".tgz")) and path.is_file():
            found.append(("images", path))
    if is_image_root(data_dir):
        found.append(("images", data_dir))
    return found


def _read(kind: str, path: Path, name: str, label_mode: str) -> RawData:
    spec = dataset_spec(name)
    channels = spec.input_shape[2]
    if kind == "pickles":
        return read_cifar100_pickles(path, label_mode) if name == "cifar100" else read_cifar10_pickles(path)
    if kind == "npz":
        return read_npz(path)
    return read_image_folder(path, channels=channels, expected=spec.n_train + spec.n_test)


def _download(name: str, label_mode: str) -> RawData:
    import keras

    module = getattr(keras.datasets, name)
    kwargs = {"label_mode": label_mode} if name == "cifar100" else {}
    (x_train, y_train), (x_test, y_test) = module.load_data(**kwargs)
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    spec = dataset_spec(name, label_mode=label_mode)
    names = spec.class_names or tuple(str(i) for i in range(spec.num_classes))
    return RawData(x_train, y_train.ravel().astype(np.int64), x_test, y_test.ravel().astype(np.int64), names)


def _validate(raw: RawData, name: str, label_mode: str, where: str) -> None:
    spec = dataset_spec(name, label_mode=label_mode)
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if len(x) == 0:
            raise DatasetError(f"{where}: the {split} split is empty")
        if len(x) != len(y):
            raise DatasetError(f"{where}: {split} has {len(x)} images but {len(y)} labels")
        if tuple(x.shape[1:]) != spec.input_shape:
            raise DatasetError(f"{where}: {name} images must be {spec.input_shape} but {split} images are {x.shape[1:]}")
        bad = (y < 0) | (y >= spec.num_classes)
        if bad.any():
            raise DatasetError(
                f"{where}: {int(bad.sum())} {split} labels are outside 0..{spec.num_classes - 1} "
                f"(first: {int(y[bad][0])}) for {name} ({label_mode} labels)"
            )
    if len(raw.class_names) != spec.num_classes:
        raise DatasetError(f"{where}: found {len(raw.class_names)} classes but {name} has {spec.num_classes}")


def array_fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:16]


def _write_cache(target: Path, raw: RawData, meta: dict) -> None:
    """Write to a temporary folder, then rename: a crash never leaves a half-written cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.save(tmp / f"{key}.npy", getattr(raw, key))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:  # another process cached it first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_cache(folder: Path) -> tuple[RawData, dict]:
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in ("x_train", "y_train", "x_test", "y_test")}
    return RawData(class_names=tuple(meta["class_names"]), **arrays), meta


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    label_mode: str = "fine",
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> Dataset:
    """Load a named dataset (cifar10, cifar100, mnist), decoding it at most once per source."""
    dataset_spec(name)  # unknown names fail here
    if label_mode not in ("fine", "coarse") or (label_mode == "coarse" and name != "cifar100"):
        raise DatasetError(f"label_mode {label_mode!r} is not valid for {name}; 'coarse' exists only for cifar100")
    data_dir = data_dir if data_dir is not None else os.environ.get("DATA_DIR") or None
    if allow_download is None:
        allow_download = os.environ.get("DATA_OFFLINE", "") in ("", "0")
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()

    looked: list[str] = []
    source: tuple[str, Path] | None = None
    if data_dir:
        root = Path(data_dir)
        if not root.is_dir():
            raise DatasetError(f"DATA_DIR {root} is not a directory")
        found = _candidates(name, root)
        source = found[0] if found else None
        looked.append(f"in {root}: " + _looked_for(name))
    if source is not None:
        kind, path = source
        key = hashlib.sha1(f"v{CACHE_VERSION}|{name}|{label_mode}|{kind}|{fingerprint_source(path)}".encode()).hexdigest()[:16]
    else:
        kind, path = "keras", Path("keras.datasets") / name
        key = hashlib.sha1(f"v{CACHE_VERSION}|{name}|{label_mode}|keras".encode()).hexdigest()[:16]

    folder = cache_root / f"{name}-{label_mode}-{key}"
    if (folder / "meta.json").is_file():
        raw, meta = _read_cache(folder)
        return _dataset(name, raw, meta)

    if kind == "keras":
        if not allow_download:
            raise DatasetError(_not_found(name, looked, "downloads are off (DATA_OFFLINE is set)"))
        logger.info("no local copy of %s; downloading through keras.datasets", name)
        try:
            raw = _download(name, label_mode)
        except Exception as exc:
            raise DatasetError(_not_found(name, looked, f"the Keras download failed: {exc}")) from exc
    else:
        logger.info("decoding %s from %s (once; cached in %s)", name, path, folder)
        raw = _read(kind, path, name, label_mode)
    _validate(raw, name, label_mode, str(path))
    meta = {
        "name": name,
        "label_mode": label_mode,
        "source": str(path),
        "class_names": list(raw.class_names),
        "fingerprint": array_fingerprint(raw.x_train, raw.y_train, raw.x_test, raw.y_test),
        "shapes": {k: list(getattr(raw, k).shape) for k in ("x_train", "x_test")},
    }
    _write_cache(folder, raw, meta)
    return _dataset(name, raw, meta)


def _dataset(name: str, raw: RawData, meta: dict) -> Dataset:
    return Dataset(
        name=name,
        x_train=raw.x_train,
        y_train=raw.y_train,
        class_names=raw.class_names,
        fingerprint=meta["fingerprint"],
        source=meta["source"],
        _x_test=raw.x_test,
        _y_test=raw.y_test,
    )


def _looked_for(name: str) -> str:
    pickles = {"cifar10": "cifar-10-batches-py/", "cifar100": "cifar-100-python/"}
    options = [pickles.get(name, ""), "mnist.npz" if name == "mnist" else "",
               f"{name}/ or {name}-*/ (train/ and test/ image folders)", f"{name}-*.tar.gz"]
    return ", ".join(o for o in options if o)


def _not_found(name: str, looked: list[str], why: str) -> str:
    where = "; ".join(looked) if looked else "DATA_DIR is not set"
    return (
        f"no copy of {name} found ({where}) and {why}. Set DATA_DIR to a folder holding "
        f"{_looked_for(name)}, or run on a machine that can download it once."
    )
