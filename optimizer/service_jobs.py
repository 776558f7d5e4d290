"""Background folder jobs of `imgtune serve` (``/v1/jobs``): an upload of many images (a zip or
several files) optimised as `imgtune optimize` does a folder, with progress, a zip of the
results, cancellation, and resumption after a restart.

Each job is a folder under the service's data folder: ``job.json`` (its options and state,
rewritten atomically), ``src/`` (the uploaded images, names checked: nothing outside the
folder, no links), ``out/`` (the folder job's output, with its manifest) and, when done,
``result.zip``. A job runs in one thread at a time (`JobRunner`: a fixed number of threads
take jobs in order). A job still queued or running when the service stops is started again
when it starts: the folder job resumes from its manifest, so finished images are not redone.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ImgtuneError
from .files import atomic_write_text
from .locks import AlreadyRunningError, RunLock
from .outdir import LOCK_NAME

__all__ = ["JobRunner", "JobError"]

#: states a job goes through; the last three are final
STATES = ("queued", "running", "done", "failed", "cancelled")
#: a job's files beside job.json: held while it runs; asks it to stop
RUN_LOCK, CANCEL = ".run.lock", "cancel"
#: options a job takes (as `api.optimize`'s)
OPTIONS = ("target", "quality", "codecs", "max_bytes", "keep_metadata", "widths", "formats")


class JobError(ImgtuneError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class _Cancelled(Exception):
    pass


class JobRunner:
    """Jobs in `root`, run by `threads` background threads."""

    def __init__(self, root: Path, *, threads: int = 1, device: str = "cpu",
                 max_files: int = 10_000) -> None:  # fmt: skip
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.device, self.max_files = device, max_files
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, daemon=True, name=f"imgtune-job-{i}")
            for i in range(max(1, threads))
        ]
        for t in self._threads:
            t.start()
        # Jobs a stopped service left queued or running start again (resumed).
        for d in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime):
            meta = self._read(d.name)
            if meta is not None and meta["state"] in ("queued", "running"):
                self._queue.put(d.name)

    # ------------------------------------------------------------------ the API's side

    def submit(self, files: list[tuple[str, Path]], options: dict[str, Any]) -> dict[str, Any]:
        """A new job from uploaded `files` ((client's name, where it was saved)): a zip is
        unpacked, other files taken as images under their base name."""
        jid = secrets.token_hex(12)
        d = self.root / jid
        src = d / "src"
        src.mkdir(parents=True)
        count = 0
        try:
            for name, path in files:
                if zipfile.is_zipfile(path):
                    count += self._unzip(path, src, self.max_files - count)
                else:
                    base = _safe(PurePosixPath(name or "upload").name)
                    shutil.copyfile(path, _unique(src / base))
                    count += 1
                if count > self.max_files:
                    raise JobError(413, "too_many_files", f"more than {self.max_files} files")
            if count == 0:
                raise JobError(422, "empty", "no file in the upload")
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        meta = {"id": jid, "state": "queued", "options": _options(options), "files": count,
                "done": 0, "summary": None, "error": None}  # fmt: skip
        self._write(jid, meta)
        self._queue.put(jid)
        return meta

    def status(self, jid: str) -> dict[str, Any]:
        meta = self._read(jid)
        if meta is None:
            raise JobError(404, "not_found", "no such job")
        return meta

    def result(self, jid: str) -> Path:
        meta = self.status(jid)
        path = self.root / jid / "result.zip"
        if meta["state"] != "done" or not path.is_file():
            raise JobError(409, "not_done", f"the job is {meta['state']}, not done")
        return path

    def cancel(self, jid: str) -> dict[str, Any]:
        meta = self.status(jid)
        if meta["state"] in ("done", "failed", "cancelled"):
            return meta
        # A file, not a flag: the process running the job may be another one (--processes).
        (self.root / jid / CANCEL).touch()
        with self._lock:
            meta = self.status(jid)
            if meta["state"] == "queued":  # not started: cancelled now
                meta["state"] = "cancelled"
                self._write(jid, meta)
        return meta

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    # ------------------------------------------------------------------ the workers' side

    def _work(self) -> None:
        while (jid := self._queue.get()) is not None:
            try:
                self._run(jid)
            except Exception as exc:  # a job's failure is its own, never the runner's
                meta = self._read(jid) or {"id": jid}
                meta.update(state="failed", error=f"{type(exc).__name__}: {exc}")
                self._write(jid, meta)

    def _run(self, jid: str) -> None:
        # One process runs a job: the others (--processes, each with a runner that resumes the
        # same folder) find it locked and leave it.
        try:
            with RunLock(self.root / jid / RUN_LOCK, f"job {jid}"):
                self._run_locked(jid)
        except AlreadyRunningError:
            return

    def _run_locked(self, jid: str) -> None:
        from . import api

        cancelled = self.root / jid / CANCEL
        with self._lock:
            meta = self._read(jid)
            if meta is None or meta["state"] not in ("queued", "running"):
                return
            if cancelled.exists():
                meta["state"] = "cancelled"
                self._write(jid, meta)
                return
            meta["state"] = "running"
            self._write(jid, meta)
        d = self.root / jid
        done = 0

        def progress(outcome) -> None:
            nonlocal done
            done += 1
            if cancelled.exists():
                raise _Cancelled
            if done % 5 == 0:
                with self._lock:
                    m = self._read(jid) or meta
                    m["done"] = done
                    self._write(jid, m)

        try:
            summary = api.optimize(
                d / "src", d / "out", learn=False, device=self.device, jobs=1,
                on_result=progress, **meta["options"],
            )  # fmt: skip
        except _Cancelled:
            meta.update(state="cancelled", done=done)
            self._write(jid, meta)
            return
        _zip(d / "out", d / "result.zip")
        meta.update(
            state="done", done=done,
            summary={"counts": summary.counts, "source_bytes": summary.source_bytes,
                     "output_bytes": summary.output_bytes, "target": summary.target},
        )  # fmt: skip
        self._write(jid, meta)

    # ------------------------------------------------------------------ storage

    def _read(self, jid: str) -> dict[str, Any] | None:
        if not (len(jid) == 24 and all(c in "0123456789abcdef" for c in jid)):
            return None
        try:
            return json.loads((self.root / jid / "job.json").read_text())
        except (OSError, ValueError):
            return None

    def _write(self, jid: str, meta: dict[str, Any]) -> None:
        atomic_write_text(self.root / jid / "job.json", json.dumps(meta, default=str))

    def _unzip(self, path: Path, dest: Path, room: int) -> int:
        """The zip's regular files into `dest`, each name checked; returns how many."""
        n = 0
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                if not parts or info.filename.startswith("/") or ".." in parts:
                    raise JobError(422, "bad_zip", f"{info.filename!r}: a path outside the job")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise JobError(422, "bad_zip", f"{info.filename!r}: a link")
                n += 1
                if n > room:
                    raise JobError(413, "too_many_files", "too many files in the zip")
                target = dest.joinpath(*(_safe(p) for p in parts))
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as f, _unique(target).open("wb") as out:
                    shutil.copyfileobj(f, out)
        return n


def _safe(name: str) -> str:
    """A file name as given, with anything a path could hide in replaced."""
    cleaned = "".join(c if c.isprintable() and c not in '/\\:*?"<>|' else "_" for c in name)
    cleaned = cleaned.strip(" .") or "upload"
    return cleaned[:200]


def _unique(path: Path) -> Path:
    k, out = 1, path
    while out.exists():
        out = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return out


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise JobError(422, "invalid_request", f"unknown option(s) {', '.join(sorted(unknown))}")
    return {k: v for k, v in options.items() if v is not None}


def _zip(folder: Path, path: Path) -> None:
    """Every output and the manifest (imgtune.json) into `path`, written atomically."""
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.name != LOCK_NAME:
                z.write(p, p.relative_to(folder).as_posix())
    os.replace(tmp, path)
