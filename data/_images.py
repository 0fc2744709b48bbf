"""Decoding an image folder (or a .tar.gz of one) into uint8 arrays, in bounded memory.

Three steps: count the images of each split and class (no decoding), plan where each image goes
(its split and row; a test split is held out here, before decoding, when the data has none), then
decode each image straight into arrays allocated once. Memory is the arrays plus one image; a
progress line is logged every few seconds.
"""

from __future__ import annotations

import array
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data._errors import DatasetError
from data._listing import LAYOUTS, SPLITS, FolderListing, TarListing, listing
from data._splits import stratified_split

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")
NAMED_IN_ERRORS = 5  # unreadable files an error names


@dataclass(frozen=True)
class DecodeOptions:
    channels: int | None = None  # None: the first image's (grayscale: 1, anything else: 3)
    image_size: tuple[int, int] | None = None  # (height, width); None: every image must have one size
    skip_unreadable: bool = False
    test_fraction: float | None = None  # held out when there is no test folder; None: a test folder is required
    seed: int = 0


@dataclass(frozen=True)
class Decoded:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    test_given: bool
    skipped: int


@dataclass
class _Survey:
    classes: tuple[str, ...]
    split: np.ndarray  # per image in listing order: 0 train, 1 test
    label: np.ndarray  # per image: index into classes
    unreadable: list[str]  # the first few files that are not images
    n_unreadable: int


def _count(source: FolderListing | TarListing, opts: DecodeOptions) -> _Survey:
    splits, names, ids = array.array("B"), array.array("q"), {}
    per_folder = {(s, c): 0 for s, c, _ in source.class_folders()}
    bad: list[str] = []
    n_bad = 0
    for split, cls, where in source.files():
        if not where.lower().endswith(IMAGE_SUFFIXES):
            n_bad += 1
            bad += [f"{where}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})"][:NAMED_IN_ERRORS - len(bad)]
            continue
        per_folder[split, cls] = per_folder.get((split, cls), 0) + 1
        splits.append(SPLITS.index(split))
        names.append(ids.setdefault(cls, len(ids)))
    _check_folders(source, per_folder, opts)
    classes = tuple(sorted(c for s, c in per_folder if s == "train"))
    remap = np.array([classes.index(k) for k in ids], dtype=np.int64)
    label = remap[np.frombuffer(names, dtype=np.int64)] if len(names) else np.zeros(0, np.int64)
    return _Survey(classes, np.frombuffer(splits, dtype=np.uint8), label, bad, n_bad)


def _check_folders(source: FolderListing | TarListing, per_folder: dict[tuple[str, str], int],
                   opts: DecodeOptions) -> None:
    where = dict(((s, c), w) for s, c, w in source.class_folders()) if per_folder else {}
    root = getattr(source, "root", getattr(source, "path", ""))
    if not per_folder:
        raise DatasetError(f"{root}: no class folders with images; expected {LAYOUTS}")
    empty = [where.get(k, f"{k[0]}/{k[1]}") for k, n in per_folder.items() if n == 0]
    if empty:
        raise DatasetError(f"{empty[0]}: a class folder with no images ({len(empty)} such folder(s)); "
                           f"add images ({', '.join(IMAGE_SUFFIXES)}) or remove the folder")
    train = sorted(c for s, c in per_folder if s == "train")
    test = sorted(c for s, c in per_folder if s == "test")
    if set(test) - set(train):
        raise DatasetError(
            f"{root}: class folders differ between train and test (only in train: {sorted(set(train) - set(test))}, "
            f"only in test: {sorted(set(test) - set(train))}); every test class must also be a training class")
    if opts.test_fraction is None:
        return  # a named dataset: its spec checks the classes and the test split, after decoding
    if len(train) < 2:
        raise DatasetError(f"{root}: only one class ({', '.join(train)}); a classifier needs at least two class "
                           f"folders ({LAYOUTS})")
    if not test and source.has_test_folder:
        raise DatasetError(f"{root}: the test split has no images; remove the empty test/ folder to hold out "
                           "test_fraction of the training images instead")
    if set(train) - set(test) and test:
        logger.warning("%s: no test images for class(es) %s", root, sorted(set(train) - set(test)))


def _plan(survey: _Survey, opts: DecodeOptions) -> tuple[np.ndarray, np.ndarray, bool]:
    """Each image's destination: (in the test split?, row). Rows follow class order, then listing
    order; without a test split, a stratified share of each class is held out (seeded)."""
    to_test = survey.split == 1
    row = np.zeros(len(survey.split), dtype=np.int64)
    given = bool(to_test.any())
    for code in (0, 1) if given else (0,):
        members = np.flatnonzero(survey.split == code)
        order = members[np.argsort(survey.label[members], kind="stable")]
        if code == 0 and not given and opts.test_fraction is not None:
            keep, held = stratified_split(survey.label[order], opts.test_fraction, opts.seed)
            to_test[order[held]] = True
            row[order[held]] = np.arange(len(held))
            order = order[keep]
        row[order] = np.arange(len(order))
    return to_test, row, given


def _decode_one(blob: bytes, where: str, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            if channels is None:
                channels = 1 if img.mode in GRAYSCALE_MODES else 3
            mode = "L" if channels == 1 else "RGB"
            img = img if img.mode == mode else img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{where}: not a decodable image ({exc})") from exc
    return arr if arr.ndim == 3 else arr[..., None]


class _Progress:
    """A log line every `every` seconds, and one at the end: never one per image."""

    def __init__(self, source: Path, total: int, every: float = 5.0) -> None:
        self.source, self.total, self.every = source, total, every
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            logger.info("decoding %s: %d of %d images (%.0f%%, %.0f images/s)", self.source, done, self.total,
                        100 * done / max(self.total, 1), done / max(now - self.start, 1e-9))

    def done(self, n: int) -> None:
        logger.info("decoded %d images from %s in %.1f s", n, self.source, time.monotonic() - self.start)


class _Arrays:
    """The train and test arrays, allocated at the first image (its shape decides theirs)."""

    def __init__(self, counts: tuple[int, int], opts: DecodeOptions) -> None:
        self.counts, self.opts = counts, opts
        self.x: list[np.ndarray] | None = None
        self.first: tuple[str, tuple[int, ...]] | None = None

    def put(self, image: np.ndarray, where: str, test: bool, row: int) -> None:
        if self.first is None:
            self.first = (where, image.shape)
            self.x = [np.empty((n, *image.shape), dtype=np.uint8) for n in self.counts]
        elif image.shape != self.first[1]:
            raise DatasetError(_size_problem(where, image.shape, *self.first))
        self.x[int(test)][row] = image  # type: ignore[index]

    @property
    def channels(self) -> int | None:
        return self.opts.channels if self.first is None else self.first[1][2]


def _size_problem(where: str, shape: tuple[int, ...], first_where: str, first: tuple[int, ...]) -> str:
    return (f"images differ in size: {first_where} is {first[0]}x{first[1]} but {where} is {shape[0]}x{shape[1]} "
            "(height x width); give the dataset an image_size, e.g. dataset: {path: ..., image_size: "
            f"[{first[0]}, {first[1]}]}}, to resize every image once at decode time, or resize them yourself")


def read_images(source: Path, opts: DecodeOptions) -> Decoded:
    """An image folder or tarball (see data._listing for the layouts) as uint8 arrays (N, H, W, C)."""
    files = listing(source)
    survey = _count(files, opts)
    to_test, row, given = _plan(survey, opts)
    counts = (int((~to_test).sum()), int(to_test.sum()))
    if counts[1] == 0 and opts.test_fraction is not None:
        raise DatasetError(f"{source}: holding out test_fraction={opts.test_fraction} left no test images (a class "
                           "needs at least 2 images); add images, or a test/ folder")
    arrays, ok, n_bad = _decode_all(files, source, survey, (to_test, row), _Arrays(counts, opts))
    if arrays.x is None:
        raise DatasetError(f"{source}: none of its {len(row)} image files could be decoded")
    (x_train, y_train), (x_test, y_test) = (_split(arrays.x[t], survey, to_test, row, ok, t) for t in (0, 1))
    if not counts[1]:
        raise DatasetError(f"{source}: the test split has no images")
    missing = sorted(set(survey.classes) - {survey.classes[i] for i in np.unique(y_train)})
    if missing or not len(y_test):
        raise DatasetError(f"{source}: after skipping unreadable files, " + (
            f"class(es) {missing} have no training images" if missing else "the test split is empty")
            + "; replace the unreadable files")
    return Decoded(x_train, y_train, x_test, y_test, survey.classes, given, n_bad)


def _decode_all(files: FolderListing | TarListing, source: Path, survey: _Survey,
                plan: tuple[np.ndarray, np.ndarray], arrays: _Arrays) -> tuple[_Arrays, np.ndarray, int]:
    to_test, row = plan
    ok = np.ones(len(row), dtype=bool)
    bad, n_bad = list(survey.unreadable), survey.n_unreadable
    progress, i = _Progress(source, len(row)), 0
    for _, _, where, read in files.entries():
        if not where.lower().endswith(IMAGE_SUFFIXES):
            continue
        if i >= len(row):
            break
        blob = read()  # an archive that cannot be read fails here, whatever skip_unreadable says
        try:
            image = _decode_one(blob, where, arrays.channels, arrays.opts.image_size)
        except DatasetError as exc:
            ok[i], n_bad = False, n_bad + 1
            bad += [str(exc)][:NAMED_IN_ERRORS - len(bad)]
        else:
            arrays.put(image, where, bool(to_test[i]), int(row[i]))
        i += 1
        progress.update(i)
    if i != len(row):
        raise DatasetError(f"{source}: changed while it was being decoded; run again once nothing writes to it")
    progress.done(i)
    if n_bad and not arrays.opts.skip_unreadable:
        raise DatasetError(f"{source}: {n_bad} unreadable file(s); the first {len(bad)}: {'; '.join(bad)}. Remove or "
                           "replace them, or give the dataset skip_unreadable: true (e.g. dataset: {path: ..., "
                           "skip_unreadable: true}) to leave them out")
    if n_bad:
        logger.warning("%s: skipped %d unreadable file(s) (skip_unreadable); the first: %s", source, n_bad, bad[0])
    return arrays, ok, n_bad


def _split(x: np.ndarray, survey: _Survey, to_test: np.ndarray, row: np.ndarray, ok: np.ndarray,
           test: int) -> tuple[np.ndarray, np.ndarray]:
    """One split's images and labels, less the rows of unreadable files (moved up in place)."""
    mine = to_test == bool(test)
    y = np.empty(int(mine.sum()), dtype=np.int64)
    y[row[mine]] = survey.label[mine]
    bad = np.sort(row[mine & ~ok])
    if not len(bad):
        return x, y
    keep = np.ones(len(y), dtype=bool)
    keep[bad] = False
    rows = np.flatnonzero(keep)
    for dst in range(int(bad[0]), len(rows)):
        x[dst] = x[rows[dst]]
    return x[: len(rows)], y[keep]
