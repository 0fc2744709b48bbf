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
