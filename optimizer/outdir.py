"""The output folder of a folder job: nothing is written, renamed or deleted outside it.

Names written into it come from data (a manifest read back from disk) or from the source tree,
so none is trusted: `check_relative` refuses absolute paths, `..`, empty parts and NUL bytes,
and every operation walks from the folder down one component at a time, opening each folder
with O_NOFOLLOW relative to its parent's descriptor. A symbolic link anywhere below the root
(planted before the run or swapped in during it) therefore stops the operation instead of
leading it elsewhere; the final component is never followed either (a rename replaces a link
itself, a read or delete refuses one). Writes go to a temp file in the destination's folder,
are fsynced and renamed into place, so a reader, a kill or a full disk never leaves half a file.

A folder that cannot take writes (full, read-only, no permission) raises
`OutputUnwritableError`: the run stops with one line, and what it finished stays valid.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from .errors import ImgtuneError, UsageError
from .locks import RunLock

__all__ = [
    "LOCK_NAME",
    "OutputDir",
    "OutputUnwritableError",
    "UnsafePathError",
    "check_relative",
    "check_roots",
    "output_names",
]

LOCK_NAME = ".imgtune.lock"
#: errors that mean the folder takes no more writes, for any file: the run stops
FATAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
#: what a kill can leave behind: `.<name>.<random>.part` (ours, and the older mkstemp names)
_PARTIAL = re.compile(r"^\..+\.[a-z0-9_]{8}\.part$")
_MAX_NAME = 4096
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
#: what O_NOFOLLOW reports for a link: ELOOP on Linux, EMLINK on FreeBSD, ENOTDIR for a file
_LINKED = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})


class UnsafePathError(ImgtuneError):
    """A path from data or the tree that would reach outside the output folder, or through a
    symbolic link; nothing was done with it."""


class OutputUnwritableError(ImgtuneError):
    """The output folder takes no more writes (full disk, read-only, permissions)."""

    def __init__(self, root: Path, target: str, exc: OSError) -> None:
        self.root = root
        self.errno = exc.errno
        reason = exc.strerror or str(exc)
        super().__init__(
            f"{root}: cannot write {target} ({reason}); stopped, leaving no partial file: fix "
            "that and run the same command again (finished images are kept, not redone)"
        )


def check_relative(name: object) -> tuple[str, ...]:
    """The parts of a relative POSIX path that stays inside its root; `UnsafePathError`
    naming the reason otherwise (not a string, empty, absolute, `..`, `.`, NUL, too long)."""
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{name!r} is not a relative file name")
    shown = name if len(name) <= 200 else name[:200] + "..."
    if "\0" in name:
        raise UnsafePathError(f"{shown!r} contains a NUL byte")
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME:
        raise UnsafePathError(f"{shown!r} is longer than {_MAX_NAME} bytes")
    if name.startswith("/") or (os.sep == "\\" and (name[1:2] == ":" or "\\" in name)):
        raise UnsafePathError(f"{shown!r} is an absolute path, outside the output folder")
    parts = tuple(name.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{shown!r} has an empty, '.' or '..' part")
    return parts


def output_names(sources: Sequence[Path], root: Path) -> dict[Path, str]:
    """Each source's output path stem relative to OUT: its relative path without the extension,
    or with it where two sources in one folder share a stem (a.png and a.jpg -> a.png.avif)."""
    rels = {p: p.relative_to(root) for p in sources}
    stems: dict[Path, int] = {}
    for rel in rels.values():
        key = rel.with_suffix("")
        stems[key] = stems.get(key, 0) + 1
    return {
        p: (rel.as_posix() if stems[rel.with_suffix("")] > 1 else rel.with_suffix("").as_posix())
        for p, rel in rels.items()
    }


def check_roots(src_root: Path, out_root: Path) -> None:
    """`UsageError` unless the two folders (resolved) are apart: outputs inside the source tree
    would be read as sources by the next run, and with the source folder inside the output
    folder a kept original's copy could land on a source (SRC/x.png <- SRC/sub/x.png)."""
    src_root, out_root = src_root.resolve(), out_root.resolve()
    if out_root == src_root or src_root in out_root.parents:
        raise UsageError(f"{out_root}: the output folder must not be (inside) the source folder")
    if out_root in src_root.parents:
        raise UsageError(f"{src_root}: the source folder must not be inside the output folder")


class OutputDir:
    """The root of a job's outputs and every operation a job does in it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise OutputUnwritableError(root, "the folder itself", exc) from exc
            raise
        # The root is the user's choice (a link to it is fine); below it, nothing is followed.
        self.root = root.resolve(strict=True)

    @contextmanager
    def lock(self) -> Iterator[RunLock]:
        """One run per output folder: held for the block (`AlreadyRunningError` if another
        process holds it)."""
        lock = RunLock(self.root / LOCK_NAME, f"the output folder {self.root}")
        try:
            lock.acquire()
        except OSError as exc:
            if exc.errno in _LINKED:
                raise UnsafePathError(
                    f"{lock.path} is a symbolic link or has other hard links; imgtune does not "
                    "write through it (remove it and run again)"
                ) from None
            raise self.classify(LOCK_NAME, exc) from exc
        try:
            yield lock
        finally:
            lock.release()

    def path(self, rel: str) -> Path:
        """Where `rel` is, for messages (checked, never resolved through links)."""
        return self.root.joinpath(*check_relative(rel))

    @contextmanager
    def _folder(self, rel: str, *, create: bool) -> Iterator[tuple[int, str]]:
        """The descriptor of `rel`'s folder (walked without following links) and its name."""
        parts = check_relative(rel)
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in _LINKED:
                        raise
                    where = self.root.joinpath(*parts[: i + 1])
                    raise UnsafePathError(
                        f"{where} is a symbolic link or not a folder; imgtune writes nothing "
                        "through it"
                    ) from None
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def classify(self, rel: str, exc: OSError) -> BaseException:
        """`OutputUnwritableError` for an error that stops every write (full, read-only,
        permissions), else `exc` itself (a problem with this one file)."""
        if exc.errno in FATAL_ERRNOS:
            return OutputUnwritableError(self.root, rel, exc)
        return exc

    @contextmanager
    def atomic_writer(self, rel: str) -> Iterator[BinaryIO]:
        """A file to write `rel` through: renamed into place when the block ends, removed
        (leaving the old `rel`, if any) when it raises."""
        try:
            with self._folder(rel, create=True) as (dfd, name):
                tmp = f".{name[:100]}.{secrets.token_hex(4)}.part"
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666,
                    dir_fd=dfd,
                )  # fmt: skip
                try:
                    with os.fdopen(fd, "wb") as f:
                        yield f
                        f.flush()
                        os.fsync(f.fileno())
                    # Replaces `name` itself, even a link planted there: nothing is followed.
                    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except BaseException:
                    with suppress(OSError):
                        os.unlink(tmp, dir_fd=dfd)
                    raise
                with suppress(OSError):  # the rename itself survives a crash
                    os.fsync(dfd)
        except IsADirectoryError:
            raise UnsafePathError(f"{self.root / rel} is a folder; not replaced") from None
        except OSError as exc:
            raise self.classify(rel, exc) from exc

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_writer(rel) as f:
            f.write(data)

    @contextmanager
    def open_read(self, rel: str) -> Iterator[BinaryIO | None]:
        """`rel` opened for reading if it is a regular file reached without links, else None."""
        try:
            with self._folder(rel, create=False) as (dfd, name):
                # O_NONBLOCK: a FIFO planted under the name must not hang the run
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, dir_fd=dfd)
        except (OSError, UnsafePathError):
            yield None
            return
        with os.fdopen(fd, "rb") as f:
            yield f if stat.S_ISREG(os.fstat(fd).st_mode) else None

    def sha256(self, rel: str, size: int | None = None) -> str | None:
        """The content hash of `rel` (None: missing, a link, not a file, or not `size` bytes)."""
        with self.open_read(rel) as f:
            if f is None or (size is not None and os.fstat(f.fileno()).st_size != size):
                return None
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return h.hexdigest()

    def remove(self, rel: str, *, sha256: str) -> bool:
        """Delete `rel` only if it is a regular file inside the folder whose content hash is
        `sha256` (a file imgtune wrote, unchanged since). Returns whether it was deleted."""
        if self.sha256(rel) != sha256:
            return False
        try:
            with self._folder(rel, create=False) as (dfd, name):
                # Checked again right here: only a regular file, never what a link points to.
                if not stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    return False
                os.unlink(name, dir_fd=dfd)
        except (FileNotFoundError, UnsafePathError):
            return False
        except OSError as exc:
            raise self.classify(rel, exc) from exc
        return True

    @contextmanager
    def open_append(self, name: str) -> Iterator[BinaryIO]:
        """A file at the root opened for appending (created if needed), never through a link
        or into a file with other hard links (appending would change the other name too)."""
        parts = check_relative(name)
        if len(parts) != 1:
            raise UnsafePathError(f"{name!r}: only a file at the folder's root")
        try:
            fd = os.open(
                self.root / name, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC,
                0o666,
            )  # fmt: skip
        except OSError as exc:
            if exc.errno in _LINKED:
                raise UnsafePathError(f"{self.root / name} is a symbolic link") from None
            raise self.classify(name, exc) from exc
        # Unbuffered: a failed write raises where it happens, not again when the file closes.
        with os.fdopen(fd, "ab", buffering=0) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise UnsafePathError(f"{self.root / name} is not a plain file of its own")
            yield f

    def clean_partials(self) -> int:
        """Remove the temp files a killed run left (under the lock: a running job's temp files
        are its own). Links are neither followed nor removed. Returns how many."""
        removed = 0
        for _, _, files, dfd in os.fwalk(self.root, follow_symlinks=False):
            for name in files:
                if not _PARTIAL.match(name):
                    continue
                with suppress(FileNotFoundError):
                    if stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                        os.unlink(name, dir_fd=dfd)
                        removed += 1
        return removed
