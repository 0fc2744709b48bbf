"""Datasets generated for the tests (tests never touch the network): CIFAR-style pickles, image
folders, tarballs."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np


def rng_images(n: int, shape=(32, 32, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_cifar10_pickles(root: Path, n_per_batch: int = 20, n_classes: int = 10) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in np.arange(n_per_batch) % n_classes]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in np.arange(n_per_batch) % n_classes]}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return folder


def write_cifar100_pickles(root: Path, n: int = 200) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        fine = np.arange(n) % 100
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine.tolist(),
                 b"coarse_labels": (fine // 5).tolist()}
        (folder / split).write_bytes(pickle.dumps(batch))
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return folder


def write_image_folder(root: Path, classes=("cat", "dog", "frog"), n: int = 4, shape=(32, 32, 3)) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i, img in enumerate(rng_images(n, shape, seed=hash((split, c)) % 1000)):
                Image.fromarray(img.squeeze()).save(d / f"{i:04d}.png")
    return root


def tar_folder(folder: Path, target: Path, arcname: str) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return target


def add_tar_bytes(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


FLOWERS = ("daisy", "dandelion", "iris", "lily", "orchid", "rose", "tulip")

def write_images(root: Path, classes=FLOWERS, n: int = 20, size=(40, 48), mode: str = "L", seed: int = 0,
                 suffix: str = "png") -> Path:
    """n images of `size` (height, width) per class folder under root; grayscale (L) or RGB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i:03d}.{suffix}")
    return root

def write_npz(path: Path, n: int = 60, shape=(24, 24, 3), k: int = 5, test: bool = True, **extra) -> Path:
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (n, *shape), dtype=np.uint8), "y_train": np.arange(n) % k}
    if test:
        arrays |= {"x_test": rng.integers(0, 256, (n // 3, *shape), dtype=np.uint8), "y_test": np.arange(n // 3) % k}
    np.savez(path, **{**arrays, **extra})
    return path

def write_study_file(studies: Path, name: str, dataset: str, architecture: str = "s003_mnist_cnn") -> None:
    studies.mkdir(exist_ok=True)
    (studies / f"{name}.yaml").write_text(
        f"architecture: {architecture}\ndataset: {dataset}\nspace:\n  learning_rate: {{low: 1.0e-3, high: 1.0e-2, "
        f"log: true}}\n  batch_size: {{choices: [16]}}\nbudget: {{trials: 3, max_epochs: 1}}\n")
