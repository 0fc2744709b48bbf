from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file or folder is missing, malformed or inconsistent. The message names it."""


class TestSplitAccessError(RuntimeError):
    """The test split was asked for outside a final evaluation."""

    __test__ = False  # not a pytest class, despite the name
