"""The store's errors: a URL that is wrong (fix the configuration) and a store that cannot be
reached (wait, or fix the server). Imports nothing of storage's."""

from __future__ import annotations


class StorageConfigError(ValueError):
    """The store URL is malformed or names something unsupported."""


class StorageUnavailableError(RuntimeError):
    """The database cannot be reached or refuses us; the message names it (never the password)."""
