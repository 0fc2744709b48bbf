"""load_dataset(): find a source, decode it once, cache the arrays (uint8) atomically, map them.

A named dataset (cifar10, cifar100, mnist) comes from DATA_DIR (pickle folders, image folders or a
.tar.gz of one, mnist.npz), then Keras's own download and cache, else a DatasetError that says what
was looked for and how to provide it. Any other name is a dataset of one's own in DATA_DIR, and a
path is one anywhere (data._user). Every Dataset carries a description: shape, classes, names,
source, sizes, how the test split came about. The images come back memory-mapped from the cache
(read-only): the processes of one machine share one copy in the page cache.
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

from data._atomic import publish_folder
from data._errors import DatasetError, TestSplitAccessError
from data._images import DecodeOptions, read_images
from data._ref import DatasetRef
from data._sources import (
    RawData,
    fingerprint_source,
    is_image_root,
    read_cifar10_pickles,
    read_cifar100_pickles,
    read_npz,
)
from data._specs import dataset_spec
from data._splits import ImageArrays
from data._user import locate, read_user

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
    description: dict = field(default_factory=dict, repr=False, compare=False)  # JSON-able: see describe()

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
    """Where decoded arrays go when no cache_dir is given (DATA_CACHE in the service's Settings)."""
    return Path.cwd() / ".cache" / "data"


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
    d = read_images(path, DecodeOptions(channels=channels))
    return RawData(d.x_train, d.y_train, d.x_test, d.y_test, d.class_names)


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
            raise DatasetError(f"{where}: {name} images must be {spec.input_shape} but {split} images are "
                               f"{x.shape[1:]}")
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
    """Write to a temporary folder, then publish it: a crash never leaves a half-written cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.save(tmp / f"{key}.npy", getattr(raw, key))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        publish_folder(tmp, target)  # False: another process cached it first, and theirs is as good as ours
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_cache(folder: Path) -> tuple[RawData, dict]:
    """The cached arrays, the images memory-mapped read-only: every process on the machine maps the same
    file, and the page cache holds it once (labels are small and read)."""
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False, mmap_mode="r" if k.startswith("x") else None)
              for k in ("x_train", "y_train", "x_test", "y_test")}
    return RawData(class_names=tuple(meta["class_names"]), **arrays), meta


def load_dataset(
    source: str | DatasetRef,
    *,
    data_dir: str | os.PathLike | None = None,
    label_mode: str = "fine",
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = False,
) -> Dataset:
    """Load a dataset, decoding it at most once per source: a name (cifar10, cifar100, mnist, or a
    folder or file in data_dir) or a DatasetRef (a name or a path, with options)."""
    try:
        ref = source if isinstance(source, DatasetRef) else DatasetRef(name=source)
    except ValueError as exc:
        raise DatasetError(f"dataset {source!r}: {exc}") from None
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    if ref.named:
        return _load_named(str(ref.name), label_mode, data_dir, cache_root, allow_download)
    if label_mode != "fine":
        raise DatasetError(f"label_mode {label_mode!r} is not valid for {ref}; 'coarse' exists only for cifar100")
    path = locate(ref, data_dir)
    key = _cache_key("user", json.dumps(ref.study_value(), sort_keys=True), fingerprint_source(path))
    return _cached(str(ref), path, cache_root / f"{ref.label}-{key}", lambda: read_user(ref, path))


def _load_named(name: str, label_mode: str, data_dir: str | os.PathLike | None, cache_root: Path,
                allow_download: bool) -> Dataset:
    if label_mode not in ("fine", "coarse") or (label_mode == "coarse" and name != "cifar100"):
        raise DatasetError(f"label_mode {label_mode!r} is not valid for {name}; 'coarse' exists only for cifar100")
    looked: list[str] = []
    kind, path = _find_source(name, data_dir, looked)
    origin = "keras" if kind == "keras" else f"{kind}|{fingerprint_source(path)}"
    folder = cache_root / f"{name}-{label_mode}-{_cache_key(name, label_mode, origin)}"

    def decode() -> tuple[RawData, dict]:
        raw = _decode(name, label_mode, kind, path, looked, allow_download)
        _validate(raw, name, label_mode, str(path))
        return raw, {"format": kind, "test_split": "given", "skipped_unreadable": 0}

    return _cached(name, path, folder, decode, label_mode)


def _cache_key(*parts: str) -> str:
    return hashlib.sha1("|".join((f"v{CACHE_VERSION}", *parts)).encode(), usedforsecurity=False).hexdigest()[:16]


def _cached(name: str, source: Path, folder: Path, decode, label_mode: str = "fine") -> Dataset:
    """The cached arrays in `folder`, else decode() them once and cache them."""
    if (folder / "meta.json").is_file():
        raw, meta = _read_cache(folder)
        return _dataset(name, raw, meta)
    logger.info("decoding %s (once; cached in %s)", name if name == str(source) else f"{name} from {source}", folder)
    raw, info = decode()
    fingerprint = array_fingerprint(raw.x_train, raw.y_train, raw.x_test, raw.y_test)
    meta = {
        "name": name,
        "label_mode": label_mode,
        "source": str(source),
        "class_names": list(raw.class_names),
        "fingerprint": fingerprint,
        "shapes": {k: list(getattr(raw, k).shape) for k in ("x_train", "x_test")},
        "description": describe(raw, source, fingerprint, **info),
    }
    _write_cache(folder, raw, meta)
    del raw  # the decoded copy goes; the images come back mapped from the cache, as every other process reads them
    return _dataset(name, *_read_cache(folder))


def describe(raw: RawData, source: Path | str, fingerprint: str, *, format: str, test_split: str = "given",
             skipped_unreadable: int = 0) -> dict:
    """What a study records about its data (storage.attrs.STUDY_DATASET): small and JSON-able."""
    return {
        "shape": list(raw.x_train.shape[1:]),
        "num_classes": len(raw.class_names),
        "class_names": list(raw.class_names),
        "source": str(source),
        "format": format,
        "n_train": int(len(raw.y_train)),
        "n_test": int(len(raw.y_test)),
        "test_split": test_split,
        "skipped_unreadable": int(skipped_unreadable),
        "fingerprint": fingerprint,
    }


def _find_source(name: str, data_dir: str | os.PathLike | None, looked: list[str]) -> tuple[str, Path]:
    """The first local copy of the dataset under data_dir, else ("keras", ...): a download."""
    if data_dir:
        root = Path(data_dir)
        if not root.is_dir():
            raise DatasetError(f"DATA_DIR {root} is not a directory")
        found = _candidates(name, root)
        looked.append(f"in {root}: " + _looked_for(name))
        if found:
            return found[0]
    return "keras", Path("keras.datasets") / name


def _decode(name: str, label_mode: str, kind: str, path: Path, looked: list[str], allow_download: bool) -> RawData:
    if kind != "keras":
        return _read(kind, path, name, label_mode)
    if not allow_download:
        raise DatasetError(_not_found(name, looked, "downloads are off (DATA_OFFLINE is set)"))
    logger.info("no local copy of %s; downloading through keras.datasets", name)
    try:
        return _download(name, label_mode)
    except Exception as exc:
        raise DatasetError(_not_found(name, looked, f"the Keras download failed: {exc}")) from exc


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
        description=meta.get("description") or describe(raw, meta["source"], meta["fingerprint"], format="cache"),
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
