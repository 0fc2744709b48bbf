"""What each named dataset is: shapes, class counts, class names. No loading here."""

from __future__ import annotations

from dataclasses import dataclass

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    n_train: int
    n_test: int
    class_names: tuple[str, ...] | None = None

    def describe(self) -> dict:
        """What a study records about its data when it is created without loading it (a named dataset's
        shape and classes are known; load_dataset's Dataset.description adds the source and fingerprint)."""
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        return {"shape": list(self.input_shape), "num_classes": self.num_classes, "class_names": list(names),
                "source": self.name, "format": "named", "n_train": self.n_train, "n_test": self.n_test,
                "test_split": "given", "skipped_unreadable": 0, "fingerprint": None}


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", (32, 32, 3), 10, 50_000, 10_000, CIFAR10_CLASSES),
    "cifar100": DatasetSpec("cifar100", (32, 32, 3), 100, 50_000, 10_000),
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, 60_000, 10_000, tuple(str(d) for d in range(10))),
}


def dataset_spec(name: str, *, label_mode: str = "fine") -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if name == "cifar100" and label_mode == "coarse":
        return DatasetSpec("cifar100", spec.input_shape, 20, spec.n_train, spec.n_test)
    return spec
