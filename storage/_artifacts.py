"""Artifacts: files shared by every worker: a directory (a compose volume, a ReadWriteMany claim),
or object storage (ARTIFACTS_URL=s3://bucket/prefix) with each machine's own directory as its copy.

Study-level results (final models, evaluation records) go through Optuna's artifact API so the
dashboard can list them. Content-addressed caches (base weights, features) live under
<root>/cache/<kind>/<key>/, and in object storage under <prefix>/cache/<kind>/<key>/; checkpoints
under <root>/checkpoints/ and <prefix>/checkpoints/ (search/trial/_checkpoints.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from storage._errors import StorageConfigError
from storage._objects import ObjectStore
from storage._urls import redact

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def artifact_root(path: str | os.PathLike | None = None) -> Path:
    """The artifact directory (ARTIFACTS_DIR in the service's Settings; ./artifacts when None)."""
    root = Path(path or Path.cwd() / "artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifact_store(where: Artifacts | str | os.PathLike | None = None) -> Any:
    """Optuna's artifact store of `where` (a folder; None: ./artifacts)."""
    return Artifacts.of(where).artifact_store()


def cache_path(kind: str, key: str, root: str | os.PathLike | None = None) -> Path:
    """<root>/cache/<kind>/<key>; keys are checked so they cannot escape the directory."""
    for part in (kind, key):
        if not _SAFE_KEY.match(part):
            raise ValueError(f"artifact key {part!r} is not allowed: use letters, digits, '_', '-', '.' "
                             "(no '/' or '..')")
    return artifact_root(root) / "cache" / kind / key


@dataclass(frozen=True)
class Artifacts:
    """Where workers keep what they share. `root`: a folder every worker shares, or, with `remote`,
    this machine's own copy of what `remote` (object storage) holds for all of them.

    A cache entry is a folder of named files whose last name is its marker, written last: an entry
    is finished when its marker exists, here or in object storage."""

    root: Path
    remote: ObjectStore | None = None

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, url: str = "", endpoint_url: str = "") -> Artifacts:
        """ARTIFACTS_DIR and ARTIFACTS_URL / ARTIFACTS_ENDPOINT_URL (the service's Settings)."""
        remote = ObjectStore.from_url(url, endpoint_url=endpoint_url or None) if url else None
        return cls(artifact_root(root), remote)

    @classmethod
    def of(cls, value: Artifacts | str | os.PathLike | None) -> Artifacts:
        """An Artifacts, or a folder (None: ./artifacts) taken as a shared folder alone."""
        return value if isinstance(value, Artifacts) else cls(artifact_root(value))

    def check(self, store_url: str | None = None) -> None:
        """Object storage answers, and the store gives workers the locks it needs (call before
        anything is written). Without a shared folder, one-time builds and the study's lock need the
        store's advisory locks: a worker of the storage proxy has no database to take them in."""
        if self.remote is None:
            return
        if store_url and store_url.startswith(("grpc://", "grpcs://")):
            raise StorageConfigError(
                f"ARTIFACTS_URL={self.remote.url} with the storage proxy ({redact(store_url)}): its workers have no "
                "database for the build and study locks, which then need a folder all of them share; use "
                "ARTIFACTS_DIR on a shared volume, or connect the workers to PostgreSQL")
        self.remote.check()

    def cache(self, kind: str, key: str) -> Path:
        return cache_path(kind, key, self.root)

    def _remote_folder(self, folder: Path) -> str:
        return folder.relative_to(self.root).as_posix()

    def fetch(self, folder: Path, names: Sequence[str]) -> bool:
        """Whether the finished entry `folder` is here: it was, or it was copied from object
        storage now (its marker, `names[-1]`, last); False when no one has published it. An entry
        finished here but missing from object storage (its builder's upload failed) is uploaded now:
        call it under the entry's build lock."""
        if self.remote is None:
            return (folder / names[-1]).is_file()
        where = self._remote_folder(folder)
        published = self.remote.exists(f"{where}/{names[-1]}")
        if (folder / names[-1]).is_file():
            if not published:
                self.publish(folder, names)
            return True
        if not published:
            return False
        for name in names:
            if not self.remote.download(f"{where}/{name}", folder / name):
                raise FileNotFoundError(f"{self.remote.url}/{where} is published but lacks {name}: delete that "
                                        "prefix so the entry is built again")
        return True

    def publish(self, folder: Path, names: Sequence[str]) -> bool:
        """Upload the finished entry `folder` to object storage, its marker last and create-only.
        False when another builder's entry was published first: its files then replace these here."""
        if self.remote is None:
            return True
        where = self._remote_folder(folder)
        if not self.remote.exists(f"{where}/{names[-1]}"):  # published meanwhile: its files are not replaced
            for name in names[:-1]:
                self.remote.upload(folder / name, f"{where}/{name}")
            if self.remote.upload(folder / names[-1], f"{where}/{names[-1]}", if_absent=True):
                return True
        for name in names:
            (folder / name).unlink(missing_ok=True)
        if not self.fetch(folder, names):
            raise FileNotFoundError(f"{self.remote.url}/{where}: published by another builder, then gone")
        return False

    def checkpoints(self) -> ObjectStore | None:
        """Where attempts' checkpoints go in object storage (None: the shared folder only)."""
        return None if self.remote is None else self.remote.sub("checkpoints")

    def artifact_store(self) -> Any:
        """Optuna's artifact store for study-level results (the dashboard reads it too)."""
        return FileSystemArtifactStore(str(self.root)) if self.remote is None else self.remote.artifact_store()


def upload(study_or_trial, path: str | os.PathLike, *, root: Artifacts | str | os.PathLike | None = None,
           mimetype: str | None = None, storage: optuna.storages.BaseStorage | None = None) -> str:
    return upload_artifact(artifact_store=Artifacts.of(root).artifact_store(), file_path=str(path),
                           study_or_trial=study_or_trial, storage=storage, mimetype=mimetype)
