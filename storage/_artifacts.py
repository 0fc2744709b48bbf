"""Artifacts: files shared by every worker (a directory, or a compose volume).

Study-level results (final models, evaluation records) go through Optuna's artifact API so the
dashboard can list them. Content-addressed caches (base weights) live under <root>/cache/<key>/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def artifact_root(path: str | os.PathLike | None = None) -> Path:
    """The artifact directory (ARTIFACTS_DIR in the service's Settings; ./artifacts when None)."""
    root = Path(path or Path.cwd() / "artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifact_store(path: str | os.PathLike | None = None) -> FileSystemArtifactStore:
    return FileSystemArtifactStore(str(artifact_root(path)))


def cache_path(kind: str, key: str, root: str | os.PathLike | None = None) -> Path:
    """<root>/cache/<kind>/<key>; keys are checked so they cannot escape the directory."""
    for part in (kind, key):
        if not _SAFE_KEY.match(part):
            raise ValueError(f"artifact key {part!r} is not allowed: use letters, digits, '_', '-', '.' "
                             "(no '/' or '..')")
    return artifact_root(root) / "cache" / kind / key


def upload(study_or_trial, path: str | os.PathLike, *, root=None, mimetype: str | None = None,
           storage: optuna.storages.BaseStorage | None = None) -> str:
    return upload_artifact(artifact_store=artifact_store(root), file_path=str(path), study_or_trial=study_or_trial,
                           storage=storage, mimetype=mimetype)
