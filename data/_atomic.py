"""Publishing a file or a folder atomically, for every cache (decoded datasets, trained bases, features).

Written under a temporary name beside its target, flushed to disk (fsync, so a crash of the machine
after the rename cannot leave an empty or partial file under the final name), then renamed into
place: readers see nothing or all of it, on a local disk and on NFS alike.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def publish_file(tmp: Path, target: Path) -> None:
    """Flush `tmp` to disk, then rename it to `target`, replacing what was there."""
    fsync_file(tmp)
    os.replace(tmp, target)


def publish_folder(tmp: Path, target: Path, *, replace: bool = False) -> bool:
    """Flush every file of `tmp`, then rename the folder to `target`. If `target` exists: with
    `replace`, it is removed first; otherwise another process published first, theirs is as good as
    ours, and `tmp` is dropped (False)."""
    for path in tmp.rglob("*"):
        if path.is_file():
            fsync_file(path)
    if replace and target.exists():
        shutil.rmtree(target)
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True
