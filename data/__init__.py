"""The data layer: loading, caching, splitting, preprocessing and augmentation.

Trials see `Splits` (train and validation). The test split is reachable only through
`Dataset.test_split()` inside `with final_evaluation():`. A study names its data with a
`DatasetRef`: a named dataset, a folder or file in DATA_DIR, or a path.
"""

from data._arrays import Arrays, check_arrays
from data._atomic import publish_file, publish_folder
from data._errors import DatasetError, TestSplitAccessError
from data._load import Dataset, array_fingerprint, default_cache_dir, final_evaluation, load_dataset
from data._ref import DEFAULT_TEST_FRACTION, DatasetRef
from data._specs import DATASETS, DatasetSpec, dataset_spec
from data._splits import (
    Rows,
    Splits,
    fold_splits,
    nested_subsets,
    stratified_folds,
    stratified_split,
    stratified_subset,
    train_val_splits,
)

__all__ = [
    "Arrays",
    "DATASETS",
    "DEFAULT_TEST_FRACTION",
    "Dataset",
    "DatasetError",
    "DatasetRef",
    "DatasetSpec",
    "Rows",
    "Splits",
    "TestSplitAccessError",
    "array_fingerprint",
    "check_arrays",
    "dataset_spec",
    "default_cache_dir",
    "final_evaluation",
    "load_dataset",
    "nested_subsets",
    "stratified_split",
    "stratified_subset",
    "publish_file",
    "publish_folder",
    "train_val_splits",
    "fold_splits",
    "stratified_folds",
]
