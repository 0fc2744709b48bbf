"""A study's data, loaded once the same way by every command and worker."""

from __future__ import annotations

from data import Dataset, Splits, fold_splits, load_dataset, train_val_splits
from search.settings import Settings
from search.spec._spec import StudySpec


def load_data(spec: StudySpec, settings: Settings) -> Dataset:
    """The study's dataset, decoded into (or read from) the data cache; fails before any store is touched."""
    return load_dataset(spec.dataset_ref, label_mode=spec.label_mode, data_dir=settings.data_dir,
                        cache_dir=settings.data_cache, allow_download=not settings.data_offline)


STREAM_SHARE = 32  # INPUT_PIPELINE=auto streams data larger than 1/STREAM_SHARE of the machine's memory


def streams(setting: str, *, data_bytes: int, memory_bytes: int) -> bool:
    """INPUT_PIPELINE for a worker: stream its splits from the shared cache, or copy them (arrays). Copies
    are 1.08-1.12x faster a trial on a 2-core CPU (BENCHMARKS.md, bench-breakdown --compare input) but
    cost about 2.2x the split per worker (bench-decode); auto streams once the training images take more
    than 1/32 of memory, where a few workers' copies would take a quarter of it or more."""
    return setting == "stream" or (setting == "auto" and data_bytes * STREAM_SHARE > memory_bytes)


def study_splits(spec: StudySpec, dataset: Dataset, *, stream: bool = False) -> Splits:
    """The study's train/validation split of `dataset` (the test split is never part of it); with
    `data.folds`, the first fold's (the one trials are pruned on)."""
    return study_folds(spec, dataset, stream=stream)[0]


def study_folds(spec: StudySpec, dataset: Dataset, *, stream: bool = False) -> list[Splits]:
    """Each split a trial is scored on: the one held-out split, or the K folds of `data.folds`. stream:
    rows of the memory-mapped cache read batch by batch (data.Rows), else copies."""
    if spec.folds is None:
        return [train_val_splits(dataset, val_fraction=spec.val_fraction, seed=spec.seed,
                                 max_train=spec.max_train, max_val=spec.max_val, stream=stream)]
    return fold_splits(dataset, folds=spec.folds, seed=spec.seed, max_train=spec.max_train, max_val=spec.max_val,
                       stream=stream)
