"""One run at a time: an OS file lock on a lock file, with who holds it written inside.

The lock is the operating system's (`flock` on POSIX), not the file's existence, so a run that
is killed (SIGKILL, power loss) releases it with its process: the next run starts without
anyone deleting anything. The file keeps the holder's pid, host, start time and command, so
a second run can say exactly what it is waiting for.

Hand-written over `fcntl` rather than the `filelock` package on purpose: `filelock` opens the
lock file with O_TRUNC on every attempt, which would erase the holder's details before the
second run could read them, and it follows symbolic links (a lock file planted as a link would
truncate its target).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .errors import ImgtuneError

__all__ = ["AlreadyRunningError", "RunLock"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX (Windows: use WSL)
    fcntl = None  # type: ignore[assignment]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class AlreadyRunningError(ImgtuneError, RuntimeError):
    """Another process holds the lock. `holder` is what it wrote (may be empty)."""

    def __init__(self, what: str, path: Path, holder: dict[str, Any], hint: str = "") -> None:
        self.path = path
        self.holder = holder
        if holder.get("pid"):
            who = (
                f"pid {holder['pid']}"
                + (f" on {holder['host']}" if holder.get("host") else "")
                + (f", started {holder['started']}" if holder.get("started") else "")
                + (f": {holder['command']}" if holder.get("command") else "")
            )
        else:
            who = "its details are unreadable"
        super().__init__(
            f"{what} is in use by another imgtune run ({who}); wait for it to finish or stop "
            f"it (the lock {path} is released when that process exits, even if killed)"
            + (f"; {hint}" if hint else "")
        )


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class RunLock:
    """`with RunLock(path, "OUT"):` holds an exclusive lock for the block, or raises
    `AlreadyRunningError` at once (never waits). `what` names the thing locked in messages."""

    def __init__(self, path: str | os.PathLike[str], what: str, *, hint: str = "") -> None:
        self.path = Path(path)
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        # O_NOFOLLOW: a lock file planted as a link must not make us write through it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            if st.st_nlink != 1:  # writing the details would change the other names too
                raise OSError(errno.EMLINK, "has other hard links", str(self.path))
            if not _try_lock(fd):
                raise AlreadyRunningError(self.what, self.path, _read_holder(fd), self.hint)
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _now(),
                "command": " ".join(
                    [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
                )[:500],
            }
            os.ftruncate(fd, 0)
            try:
                os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # A full disk: the lock holds without its details; the writes that follow
                # will report the full disk properly.
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale details for the next reader
        except OSError:
            pass
        finally:
            _unlock(fd)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover
        raise OSError(errno.ENOSYS, "imgtune's run lock needs a POSIX system (Linux, macOS, WSL)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode("utf-8").strip() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
