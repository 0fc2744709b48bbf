"""The data cache mapped, not copied (issue 26, part 3): every process on a machine maps the same
cache file, and a streamed split (data.Rows) holds row numbers, not images. What it saves across
workers is measured by `make bench-decode` (four workers, summed PSS against one copy)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.datasets import write_cifar10_pickles

from data import Rows, fold_splits, load_dataset, train_val_splits


def test_cached_images_come_back_memory_mapped_and_read_only_first_time_and_after(tmp_path):
    write_cifar10_pickles(tmp_path / "src", n_per_batch=40)
    for _ in range(2):  # the process that decodes, then one that reads the cache
        ds = load_dataset("cifar10", data_dir=tmp_path / "src", cache_dir=tmp_path / "cache")
        assert isinstance(ds.x_train, np.memmap) and not ds.x_train.flags.writeable
        assert not isinstance(ds.y_train, np.memmap)
        with pytest.raises(ValueError, match="read-only"):
            ds.x_train[0, 0, 0, 0] = 1  # a trial cannot change what every worker reads


def test_streamed_splits_are_rows_of_the_cache_with_the_same_images_as_copied_ones(tmp_path):
    write_cifar10_pickles(tmp_path / "src", n_per_batch=60)
    ds = load_dataset("cifar10", data_dir=tmp_path / "src", cache_dir=tmp_path / "cache")
    for copied, streamed in [(train_val_splits(ds, max_train=120), train_val_splits(ds, max_train=120, stream=True)),
                             *zip(fold_splits(ds, folds=3), fold_splits(ds, folds=3, stream=True))]:
        assert not copied.streamed and streamed.streamed
        assert isinstance(streamed.x_train, Rows) and streamed.x_train.base is ds.x_train  # no copy made
        assert streamed.fingerprint == copied.fingerprint and streamed.input_shape == copied.input_shape
        for a, b in ((copied.x_train, streamed.x_train), (copied.x_val, streamed.x_val)):
            assert (len(b), b.shape, b.dtype, b.ndim, b.nbytes) == (len(a), a.shape, a.dtype, a.ndim, a.nbytes)
            np.testing.assert_array_equal(np.asarray(b), a)
        np.testing.assert_array_equal(streamed.y_train, copied.y_train)


def test_rows_gather_in_the_order_asked():
    base = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    rows = Rows(base, np.array([7, 2, 9, 4]))
    np.testing.assert_array_equal(rows[np.array([3, 0, 2])], base[[4, 7, 9]])  # unsorted, as asked
    np.testing.assert_array_equal(rows[1:3], base[[2, 9]])
    np.testing.assert_array_equal(rows[-1], base[4])
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float32), base[[7, 2, 9, 4]].astype(np.float32))
    assert rows.shape == (4, 2, 2, 1) and rows.nbytes == 16 and "4 of 10 rows" in repr(rows)
