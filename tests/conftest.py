"""Shared fixtures. Tests never touch the network: downloads are off (DATA_OFFLINE=1)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["DATA_OFFLINE"] = "1"

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Each test runs in a working directory of its own, so the defaults relative to it (the data
    cache .cache/data, ./artifacts, the embedded studies.journal) are its own; DATA_DIR and STORAGE
    unset, and a data cache of its own for the worker processes it starts."""
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.delenv("STORAGE", raising=False)
    monkeypatch.setenv("DATA_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the real datasets, decoded once per test session."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "cifar10-jpg.tar.gz").is_file():
        pytest.fail(f"the real datasets are missing: expected {SHARED_DATASETS}/cifar10-jpg.tar.gz and mnist.npz "
                    "(../shared/datasets beside the repository)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test database. A missing server fails the suite loudly; it never skips."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {url} is not reachable ({exc}); start it (see README, 'Tests') "
                    "or set TEST_POSTGRES_URL")
    return url


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


@pytest.fixture
def journal_pg_url(postgres_url):
    """The service's PostgreSQL journal store on the test database, in a schema of its own that is
    dropped afterwards (every process replays the whole journal table, so tests do not share one)."""
    from storage._journal_pg import journal_in_scratch_schema

    with journal_in_scratch_schema(postgres_url) as url:
        yield url
