from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import (
    add_tar_bytes,
    tar_folder,
    write_cifar10_pickles,
    write_cifar100_pickles,
    write_image_folder,
)

from data import (
    DatasetError,
    TestSplitAccessError,
    final_evaluation,
    fold_splits,
    load_dataset,
    stratified_folds,
    stratified_split,
    train_val_splits,
)
from data._specs import CIFAR10_CLASSES

CLASSES10 = CIFAR10_CLASSES


def _cache_entries(monkeypatch_env_cache: str) -> list[Path]:
    return [p for p in Path(monkeypatch_env_cache).glob("*")]


# --- each source format ------------------------------------------------------------------------


def test_cifar10_pickles(tmp_path):
    write_cifar10_pickles(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (100, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.n_test == 20
    assert ds.class_names == CLASSES10
    assert len(ds.fingerprint) == 16


def test_cifar10_pickle_pixel_layout(tmp_path):
    """The 3072 bytes are R plane, G plane, B plane, row-major: pixel (0, 1) is bytes 1, 1025, 2049."""
    folder = write_cifar10_pickles(tmp_path)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"]
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert tuple(ds.x_train[0, 0, 1]) == (raw[0, 1], raw[0, 1025], raw[0, 2049])


def test_cifar100_fine_and_coarse(tmp_path):
    write_cifar100_pickles(tmp_path)
    fine = load_dataset("cifar100", data_dir=tmp_path)
    coarse = load_dataset("cifar100", data_dir=tmp_path, label_mode="coarse")
    assert fine.num_classes == 100 and fine.y_train.max() == 99
    assert coarse.num_classes == 20 and coarse.y_train.max() == 19
    np.testing.assert_array_equal(coarse.y_train, fine.y_train // 5)
    assert fine.fingerprint != coarse.fingerprint


def test_image_folder_and_tarball_agree(tmp_path):
    root = write_image_folder(tmp_path / "cifar10", classes=CLASSES10, n=2)
    from_dir = load_dataset("cifar10", data_dir=tmp_path)
    assert from_dir.x_train.shape == (20, 32, 32, 3)
    assert from_dir.class_names == CLASSES10
    other = tmp_path / "tarred"
    other.mkdir()
    tar_folder(root, other / "cifar10-png.tar.gz", "cifar10-png")
    from_tar = load_dataset("cifar10", data_dir=other)
    assert from_tar.fingerprint == from_dir.fingerprint


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
             y_train=np.arange(30) % 10, x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
             y_test=np.arange(10))
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10


def test_real_cifar10_archive(shared_datasets, shared_cache):
    ds = load_dataset("cifar10", data_dir=shared_datasets, cache_dir=shared_cache)
    assert ds.x_train.shape == (50_000, 32, 32, 3) and ds.n_test == 10_000
    assert ds.class_names == CLASSES10
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    with final_evaluation():
        _, y_test = ds.test_split()
    assert np.bincount(y_test).tolist() == [1000] * 10


def test_real_mnist(shared_datasets, shared_cache):
    ds = load_dataset("mnist", data_dir=shared_datasets, cache_dir=shared_cache)
    assert ds.x_train.shape == (60_000, 28, 28, 1) and ds.n_test == 10_000


def test_second_load_reads_the_cache_not_the_source(tmp_path, monkeypatch):
    write_cifar10_pickles(tmp_path)
    first = load_dataset("cifar10", data_dir=tmp_path)
    import data._load as load_module

    monkeypatch.setattr(load_module, "_read", lambda *a, **k: pytest.fail("source decoded twice"))
    second = load_dataset("cifar10", data_dir=tmp_path)
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.x_train, first.x_train)


# --- bad input: a clear error naming the file, and no half-written cache --------------------------


def _assert_rejected(tmp_path, name: str, match: str, **kwargs):
    cache = tmp_path / "the-cache"
    with pytest.raises(DatasetError, match=match):
        load_dataset(name, data_dir=tmp_path, cache_dir=cache, **kwargs)
    assert not cache.exists() or not any(cache.iterdir()), "a failed load left something in the cache"


def test_truncated_pickle(tmp_path):
    folder = write_cifar10_pickles(tmp_path)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    _assert_rejected(tmp_path, "cifar10", r"data_batch_3: not a readable CIFAR pickle")


def test_hostile_pickle_is_not_executed(tmp_path):
    folder = write_cifar10_pickles(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_1").write_bytes(pickle.dumps(Evil()))
    _assert_rejected(tmp_path, "cifar10", r"data_batch_1.*refusing to load")
    assert not marker.exists()


def test_non_image_file_in_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "cifar10", classes=CLASSES10, n=1)
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    _assert_rejected(tmp_path, "cifar10", r"notes.txt: not an image file")


def test_corrupt_image_in_tarball(tmp_path):
    with tarfile.open(tmp_path / "cifar10-x.tar.gz", "w:gz") as tar:
        add_tar_bytes(tar, "x/train/cat/0001.jpg", b"not a jpeg at all")
    _assert_rejected(tmp_path, "cifar10", r"0001.jpg: not a decodable image")


@pytest.mark.parametrize("member", ["x/train/../../../etc/cat/0001.jpg", "/abs/train/cat/0001.jpg"])
def test_tarball_members_that_leave_the_archive_are_rejected(tmp_path, member):
    with tarfile.open(tmp_path / "cifar10-x.tar.gz", "w:gz") as tar:
        add_tar_bytes(tar, member, b"whatever")
    _assert_rejected(tmp_path, "cifar10", r"leaves the archive \(absolute or with '\.\.'\)")


def test_links_out_of_an_image_folder_are_rejected(tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"secret")
    root = write_image_folder(tmp_path / "cifar10", classes=CLASSES10, n=1)
    (root / "train" / "cat" / "0009.jpg").symlink_to(outside)
    _assert_rejected(tmp_path, "cifar10", r"0009.jpg: a link; links are not accepted")


def test_class_folders_differ(tmp_path):
    root = write_image_folder(tmp_path / "cifar10", classes=CLASSES10, n=1)
    (root / "test" / "truck").rename(root / "test" / "lorry")
    _assert_rejected(tmp_path, "cifar10", r"class folders differ.*only in train: \['truck'\].*only in test: \['lorry'\]")


def test_labels_out_of_range(tmp_path):
    folder = write_cifar10_pickles(tmp_path)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch[b"labels"][3] = 10
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    _assert_rejected(tmp_path, "cifar10", r"1 test labels are outside 0..9 \(first: 10\)")


def test_empty_split(tmp_path):
    root = write_image_folder(tmp_path / "cifar10", classes=CLASSES10, n=1)
    for d in (root / "test").iterdir():
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    _assert_rejected(tmp_path, "cifar10", r"the test split has no images")


def test_wrong_image_size(tmp_path):
    write_image_folder(tmp_path / "cifar10", classes=CLASSES10, n=1, shape=(16, 16, 3))
    _assert_rejected(tmp_path, "cifar10", r"cifar10 images must be \(32, 32, 3\)")


def test_missing_dataset_says_what_was_looked_for(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar100", data_dir=tmp_path)
    message = str(err.value)
    assert "cifar-100-python/" in message and "DATA_DIR" in message and "downloads are off" in message


def test_unknown_dataset_and_bad_label_mode(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="'coarse' exists only for cifar100"):
        load_dataset("cifar10", data_dir=tmp_path, label_mode="coarse")


# --- splits and the test-split guard ------------------------------------------------------------


def test_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(10), [100, 50, 30, 200, 10, 10, 10, 10, 10, 70])
    keep, held = stratified_split(y, 0.1, seed=3)
    assert set(keep).isdisjoint(held) and len(keep) + len(held) == len(y)
    np.testing.assert_array_equal(np.bincount(y[held], minlength=10), [10, 5, 3, 20, 1, 1, 1, 1, 1, 7])
    keep2, held2 = stratified_split(y, 0.1, seed=3)
    np.testing.assert_array_equal(held, held2)
    _, held3 = stratified_split(y, 0.1, seed=4)
    assert not np.array_equal(held, held3)


def test_train_val_splits_hold_out_ten_percent(tmp_path):
    write_cifar10_pickles(tmp_path, n_per_batch=100)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    splits = train_val_splits(ds)
    assert len(splits.y_val) == 50 and len(splits.y_train) == 450
    assert np.bincount(splits.y_val).tolist() == [5] * 10
    small = train_val_splits(ds, max_train=100, max_val=20)
    assert len(small.y_train) == 100 and np.bincount(small.y_train).tolist() == [10] * 10
    assert not hasattr(splits, "x_test")


def test_folds_partition_the_training_data_by_class_and_seed():
    y = np.repeat(np.arange(4), [40, 21, 7, 2])
    parts = stratified_folds(y, 5, seed=1)
    together = np.concatenate(parts)
    assert len(together) == len(y) and len(set(together)) == len(y)  # disjoint, covering
    counts = np.array([np.bincount(y[p], minlength=4) for p in parts])
    assert counts[:, 0].tolist() == [8] * 5  # each fold a fifth of a class ...
    assert sorted(counts[:, 1].tolist()) == [4, 4, 4, 4, 5] and counts[:, 2].max() - counts[:, 2].min() <= 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, stratified_folds(y, 5, seed=1)))  # seeded
    assert not all(np.array_equal(a, b) for a, b in zip(parts, stratified_folds(y, 5, seed=2)))
    with pytest.raises(ValueError, match="at least 2"):
        stratified_folds(y, 1, seed=0)


def test_fold_splits_validate_on_each_fold_once(tmp_path):
    write_cifar10_pickles(tmp_path, n_per_batch=100)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    folds = fold_splits(ds, folds=5, seed=0)
    assert [len(f.y_val) for f in folds] == [100] * 5 and [len(f.y_train) for f in folds] == [400] * 5
    seen = np.concatenate([f.x_val.reshape(len(f.x_val), -1) for f in folds])
    assert len(np.unique(seen, axis=0)) == len(np.unique(ds.x_train.reshape(500, -1), axis=0))
    assert all(np.bincount(f.y_val).tolist() == [10] * 10 for f in folds)
    assert len({f.fingerprint for f in folds}) == 5 and "fold0of5" in folds[0].fingerprint


def test_test_split_only_in_final_evaluation(tmp_path):
    write_cifar10_pickles(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(TestSplitAccessError, match="only for the final evaluation"):
        ds.test_split()
    with final_evaluation():
        x, y = ds.test_split()
    assert len(x) == len(y) == 20
    with pytest.raises(TestSplitAccessError):
        ds.test_split()
