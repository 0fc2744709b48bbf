"""The files of an image dataset, in a folder or in a .tar.gz of one, in a fixed order.

Two layouts: `train/<class>/<image>` (with an optional `test/<class>/<image>`), or `<class>/<image>`
(training images only). A tarball may wrap either in one top folder. A listing's `files()` yields
`(split, class, where)` and its `entries()` `(split, class, where, read)`, one file at a time, in
the same order. Links, and tarball members that leave the archive, are refused: a dataset must not
reach outside its folder.
"""

from __future__ import annotations

import logging
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from data._errors import DatasetError

logger = logging.getLogger(__name__)
SPLITS = ("train", "test")
Entry = tuple[str, str, str, Callable[[], bytes]]
LAYOUTS = "train/<class>/<image> (and optionally test/<class>/<image>), or <class>/<image>"


def _hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, ._resource forks, editors' swap files


def _parts(name: str) -> tuple[str, ...]:
    """A member name's parts (tar names are POSIX paths; "./x" is "x")."""
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _no_link(path: Path) -> None:
    if path.is_symlink():
        raise DatasetError(f"{path}: a link; links are not accepted in datasets (they can point outside "
                           "DATA_DIR or the dataset's folder): copy the file or folder in")


class FolderListing:
    """An image folder on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if (root / "train").is_dir():
            self.splits = [(s, root / s) for s in SPLITS if (root / s).is_dir()]
        elif (root / "test").is_dir():
            raise DatasetError(f"{root}: has test/ but no train/; put the training images in {root}/train/<class>/")
        else:
            self.splits = [("train", root)]
        self.has_test_folder = any(s == "test" for s, _ in self.splits)
        self._folders: list[tuple[str, str, str]] | None = None

    def class_folders(self) -> list[tuple[str, str, str]]:
        """(split, class, where) of every class folder, images or not."""
        if self._folders is None:
            self._folders = list(self._class_folders())
        return self._folders

    def _class_folders(self) -> Iterator[tuple[str, str, str]]:
        for split, split_dir in self.splits:
            _no_link(split_dir)
            ignored = 0
            for path in sorted(split_dir.iterdir()):
                if _hidden(path.name):
                    continue
                _no_link(path)
                if path.is_dir():
                    yield split, path.name, str(path)
                else:
                    ignored += 1
            if ignored:
                logger.info("%s: %d file(s) beside the class folders ignored", split_dir, ignored)

    def files(self) -> Iterator[tuple[str, str, str]]:
        for split, cls, where, _ in self.entries():
            yield split, cls, where

    def entries(self) -> Iterator[Entry]:
        for split, cls, where in self.class_folders():
            for file in sorted(Path(where).iterdir()):
                if _hidden(file.name):
                    continue
                _no_link(file)
                if file.is_dir():
                    raise DatasetError(f"{file}: a folder inside class folder {where}; class folders hold images "
                                       f"only ({LAYOUTS}): move its images up or remove it")
                yield split, cls, str(file), file.read_bytes


def _members(path: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The archive's members, streamed; TarFile would keep every one it read, so they are dropped."""
    try:
        with tarfile.open(path, "r|gz") as tar:
            while (member := tar.next()) is not None:
                _check_member(path, member)
                yield tar, member
                tar.members.clear()
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: BaseException) -> DatasetError:
    return DatasetError(f"{path}: not a readable .tar.gz ({type(exc).__name__}: {exc}); the file is truncated or "
                        "corrupt: make it again (tar czf NAME.tar.gz FOLDER)")


def _check_member(path: Path, member: tarfile.TarInfo) -> None:
    if member.name.startswith("/") or ".." in _parts(member.name):
        raise DatasetError(f"{path}:{member.name}: a member path that leaves the archive (absolute or with '..'); "
                           "rebuild the archive with relative paths")
    if member.issym() or member.islnk():
        raise DatasetError(f"{path}:{member.name}: not a regular file (links are not accepted in datasets); "
                           "rebuild the archive without links")


def _read_member(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The current member's bytes (a stream does not go back: only before the next member)."""
    try:
        return tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _unreadable(path, exc) from exc


@dataclass(frozen=True)
class _TarLayout:
    strip: int  # a top folder wrapping everything: 1, else 0
    split_level: bool  # train/<class>/... rather than <class>/...


class TarListing:
    """A .tar.gz (or .tgz) of an image folder. Reading a member list costs a pass over the archive,
    so the first pass keeps the file names (until `files()` has gone through them) and the second
    decodes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._names: list[str] = []
        self.layout, self.folders, self.has_test_folder = self._survey()

    def _survey(self) -> tuple[_TarLayout, list[tuple[str, str]], bool]:
        tops: set[str] = set()  # the first part of every file's path ("": a file at the top)
        heads: set[tuple[str, ...]] = set()  # the first two parts of files three or more levels deep: few
        dirs: list[tuple[str, ...]] = []
        for _, member in _members(self.path):
            parts = _parts(member.name)
            if member.isdir():
                dirs.append(parts)
            elif member.isfile() and not _hidden(parts[-1]):
                self._names.append(member.name)
                tops.add(parts[0] if len(parts) > 1 else "")
                if len(parts) > 2:
                    heads.add(parts[:2])
        strip = int(len(tops) == 1 and not tops & {"", *SPLITS} and bool(heads))
        layout = _TarLayout(strip, any(h[strip] == "train" for h in heads))
        folders = sorted({c for p in dirs if (c := self._classify(p + ("",), layout)) is not None})
        tested = any(h[strip] == "test" for h in heads) or any(s == "test" for s, _ in folders)
        has_test = layout.split_level and tested
        return layout, folders, has_test

    def _classify(self, parts: tuple[str, ...], layout: _TarLayout) -> tuple[str, str] | None:
        """(split, class) of a file at `parts`, or None for a file outside the class folders."""
        rest = parts[layout.strip:]
        if layout.split_level:
            if len(rest) < 3 or rest[0] not in SPLITS:
                return None
            split, rest = rest[0], rest[1:]
        else:
            split = "train"
        if len(rest) != 2:
            if len(rest) > 2:
                raise DatasetError(f"{self.path}:{'/'.join(parts)}: a folder inside class folder {rest[0]}; class "
                                   f"folders hold images only ({LAYOUTS}): rebuild the archive")
            return None
        return (split, rest[0]) if not _hidden(rest[0]) else None

    def class_folders(self) -> Iterator[tuple[str, str, str]]:
        for split, cls in self.folders:
            yield split, cls, f"{self.path}:{split}/{cls}"

    def files(self) -> Iterator[tuple[str, str, str]]:
        """Once: the names of the first pass are dropped as they go."""
        names, self._names = self._names, []
        for name in names:
            found = self._classify(_parts(name), self.layout)
            if found is not None:
                yield found[0], found[1], f"{self.path}:{name}"

    def entries(self) -> Iterator[Entry]:
        for tar, member in _members(self.path):
            parts = _parts(member.name)
            if not member.isfile() or _hidden(parts[-1]):
                continue
            found = self._classify(parts, self.layout)
            if found is not None:
                yield found[0], found[1], f"{self.path}:{member.name}", \
                    lambda tar=tar, member=member: _read_member(self.path, tar, member)


def listing(source: Path) -> FolderListing | TarListing:
    if source.is_file():
        return TarListing(source)
    return FolderListing(source)
