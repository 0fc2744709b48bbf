"""What a study trains on: a named dataset, a name under DATA_DIR, or a path; and how to read it.

`DatasetRef` is the data layer's half of the study file's `dataset` field (search.spec._schema_sources declares
the file's syntax). No loading here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data._specs import DATASETS

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0  # the held-out test split is a property of the data, not of a study's seed
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".npz")


@dataclass(frozen=True)
class DatasetRef:
    """`name` (cifar10, cifar100, mnist, or a folder or file in DATA_DIR) or `path` (relative to the
    working directory, or absolute); the options apply to data of one's own."""

    name: str | None = None
    path: str | None = None
    image_size: tuple[int, int] | None = None  # (height, width): resize every image once, at decode time
    skip_unreadable: bool = False
    test_fraction: float = DEFAULT_TEST_FRACTION  # held out when the data brings no test split

    def __post_init__(self) -> None:
        if (self.name is None) == (self.path is None):
            raise ValueError(f"give a dataset name or a path, not both or neither (got name={self.name!r}, "
                             f"path={self.path!r})")
        if self.path is not None and not self.path.strip():
            raise ValueError("path is empty; give the dataset's folder or file")
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise ValueError(f"{self.name!r} is not a dataset name (letters, digits, '.', '_', '-'); "
                             f"for a folder or file elsewhere write dataset: {{path: {self.name}}}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1) but got {self.test_fraction!r}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size must be [height, width], two positive integers, but got {self.image_size!r}")
        if self.named and self.options():
            raise ValueError(f"{', '.join(self.options())} apply to data of your own, not to the named dataset "
                             f"{self.name}; leave them out")

    @property
    def named(self) -> bool:
        """One of the datasets the service knows (data/_specs.py)."""
        return self.name in DATASETS

    @property
    def label(self) -> str:
        """A short, file-name-safe name: the dataset's name, or its path's last part."""
        if self.name is not None:
            return self.name
        base = Path(self.path or "").name or "dataset"
        for suffix in _ARCHIVE_SUFFIXES:
            base = base[: -len(suffix)] if base.lower().endswith(suffix) and len(base) > len(suffix) else base
        return re.sub(r"[^A-Za-z0-9._-]", "_", base)

    def options(self) -> dict[str, Any]:
        """The options that differ from their defaults, as the study file writes them."""
        found: dict[str, Any] = {}
        if self.image_size is not None:
            found["image_size"] = list(self.image_size)
        if self.skip_unreadable:
            found["skip_unreadable"] = True
        if self.test_fraction != DEFAULT_TEST_FRACTION:
            found["test_fraction"] = self.test_fraction
        return found

    def study_value(self) -> str | dict[str, Any]:
        """The study file's `dataset` value, normalised: a bare name stays a string (so the space hash
        of a study naming cifar10 is what it always was), anything else is a mapping."""
        if self.name is not None and not self.options():
            return self.name
        where = {"name": self.name} if self.name is not None else {"path": self.path}
        return {**where, **self.options()}

    def __str__(self) -> str:
        return self.name if self.name is not None else str(self.path)
