"""Folder jobs on a Dask cluster: each image is a task running `image_job.optimize_image`
(consecutive small images share one, see `CHUNK_PIXELS`).

`--cluster local:N` starts a `LocalCluster` of N worker processes on this machine;
`--cluster tcp://HOST:8786` attaches to a running scheduler (`dask scheduler`, and `dask worker
tcp://HOST:8786` on machines that see SRC at the same path). This process stays the only writer:
it walks SRC, decides what is up to date, submits at most a window of tasks (two per worker
thread, re-read as workers join or leave), writes each result atomically and appends the
manifest, in input order; a task is released as soon as its images are written, so this
process and the scheduler hold the window, never the folder. Workers read sources and return
bytes; they write nothing, so a worker that dies mid-image costs only that task's work: the
scheduler reruns it elsewhere (the summary counts those reruns), and nothing is written twice
or half. Each worker process builds the metric suite once (on its own GPU, if it has one).
"""

from __future__ import annotations

import itertools
import logging
import pickle
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = [
    "CHUNK_IMAGES",
    "CHUNK_PIXELS",
    "Cluster",
    "open_cluster",
    "remote_optimize",
    "resources_for",
    "worker_resources",
]

_SUITES: dict[Any, Any] = {}
#: seconds between two readings of the cluster's threads (one scheduler round trip each)
WINDOW_REFRESH_S = 1.0
#: Consecutive images of at most this many source pixels in all (a 256x256 image's), and
#: `CHUNK_IMAGES` at most, run as one task: a Dask task costs the client, the scheduler and a
#: worker milliseconds whatever it does, more than a thumbnail's whole job. Larger images run
#: one to a task, where that cost is lost in the image's own.
CHUNK_PIXELS = 256 * 256
CHUNK_IMAGES = 8
#: messages Dask keeps per connection for debugging, while a folder job runs
MESSAGE_LOG = 50


#: glibc's mallopt parameters (malloc.h) and the values its dynamic thresholds grow to at most
#: on 64-bit: allocations up to 32 MiB come from the heap and are reused, not mapped afresh
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX = 32 * 1024 * 1024


def restore_malloc_thresholds() -> bool:
    """Undo, in this worker process, what Dask's nanny environment does to glibc's malloc.

    The nanny starts every worker with `MALLOC_TRIM_THRESHOLD_=65536` (Dask's
    `distributed.nanny.pre-spawn-environ`). Setting it freezes glibc's mmap threshold at
    128 KiB, so every array of an image job (most are megabytes) is a fresh mmap, page-faulted
    and zeroed, then unmapped: `--cluster local:2` on Kodak 24 spent 33 s of its 54 in the
    kernel, against 3 s with glibc's own thresholds (36.7 s in all; benchmarks/RESULTS.md).
    Here the thresholds are set to the ceiling glibc's dynamic ones reach on their own. Only
    when that variable is set (a Dask worker) and malloc is glibc's; returns whether it did.
    """
    import ctypes
    import os

    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to undo
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) and mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_MAX))


def remote_optimize(path: Path, job, recipe, prediction, name: str, stem: str):
    """`optimize_image` on a worker, with the worker's own copy of the suite (built on first
    use in each worker process, then reused by every task there)."""
    from .image_job import optimize_image

    suite = _SUITES.get(recipe)
    if suite is None:
        restore_malloc_thresholds()
        suite = _SUITES[recipe] = recipe.build()
    return optimize_image(path, job, suite=suite, prediction=prediction, name=name, stem=stem)


def remote_chunk(job, recipe, images: list[tuple[Path, Any, str, str]]) -> list[Any]:
    """`remote_optimize` on each (path, prediction, name, stem) of a chunk, in order. An
    image's own exception is returned in its place: it costs its chunk-mates nothing."""
    out: list[Any] = []
    for path, prediction, name, stem in images:
        try:
            out.append(remote_optimize(path, job, recipe, prediction, name, stem))
        except Exception as exc:
            try:
                pickle.dumps(exc)
            except Exception:  # it must travel back: its name and message do
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            out.append(exc)
    return out


def _device_kind(device: str) -> str:
    from .metrics import resolve_device

    return resolve_device(device).type


def _rerun_count(dask_scheduler, prefix: str) -> int:
    """How many images were rerun because a worker died while running their task: the
    scheduler's count for each of the run's task prefixes (`<prefix>_<images per task>`),
    which outlives the tasks themselves."""
    total = 0
    for name, tp in dask_scheduler.task_prefixes.items():
        head, _, n = name.rpartition("_")
        if head == prefix and n.isdigit():
            total += int(n) * tp.suspicious
    return total


class _Chunk:
    """Consecutive images of one run sent as one task, once full or once the driver waits on
    one of them."""

    def __init__(self, cluster: Cluster, job) -> None:
        self.cluster, self.job = cluster, job
        self.images: list[tuple[Path, Any, str, str]] = []
        self.pixels = 0
        self.future: Any = None
        self.results: list[Any] | None = None  # gathered once for all its images
        self.alone: list[Any] | None = None  # one task an image, after its task killed workers
        self.dropped = False  # cancelled before it was sent

    def send(self) -> None:
        c = self.cluster
        if c.open is self:
            c.open = None
        if self.future is None and not self.dropped:
            self.future = c.task(remote_chunk, len(self.images), self.job, c.recipe, self.images)

    def result(self, i: int) -> Any:
        self.send()
        if self.future is None:
            raise CancelledError(f"{self.images[i][2]}: cancelled before it was sent")
        if self.alone is None and self.results is None:
            try:
                self.results = self.future.result()
            except Exception as exc:
                if type(exc).__name__ != "KilledWorker" or len(self.images) == 1:
                    raise
                # One of these images kills every worker it runs on: each alone now, so only
                # that one is lost.
                c = self.cluster
                self.alone = [
                    c.task(remote_optimize, 1, path, self.job, c.recipe, *rest)
                    for path, *rest in self.images
                ]
        if self.alone is not None:
            return self.alone[i].result()
        r = self.results[i]
        if isinstance(r, BaseException):
            raise r
        return r

    def done(self, i: int) -> bool:
        if self.alone is not None:
            return self.alone[i].done()
        return self.future is not None and self.future.done()

    def cancel(self) -> None:
        self.dropped = True
        for f in [self.future, *(self.alone or ())]:
            if f is not None:
                f.cancel()

    def cancelled(self, i: int) -> bool:
        f = self.alone[i] if self.alone is not None else self.future
        return self.dropped if f is None else f.cancelled()


class _Image:
    """One image's share of a chunk: what the driver waits on, as it would on a future."""

    __slots__ = ("chunk", "i")

    def __init__(self, chunk: _Chunk, i: int) -> None:
        self.chunk, self.i = chunk, i

    def result(self) -> Any:
        return self.chunk.result(self.i)

    def done(self) -> bool:
        return self.chunk.done(self.i)

    def cancel(self) -> None:
        self.chunk.cancel()

    def cancelled(self) -> bool:
        return self.chunk.cancelled(self.i)


class Cluster:
    """A connected Dask client and what a folder job needs from it."""

    def __init__(self, client, recipe, *, resources: dict[str, float] | None = None) -> None:
        self.client, self.recipe = client, recipe
        #: what each task asks of its worker (`--device cuda`: {"GPU": 1})
        self.resources = resources
        self.reruns = 0
        # Every task of this run is `<prefix>_<images>-<n>`: Dask groups them under
        # `<prefix>_<images>` (kept whole by `key_split`) and counts their workers' deaths
        # there, so no finished task is held to be counted.
        self.prefix = f"imgtune_{secrets.token_hex(4)}"
        self.open: _Chunk | None = None
        self._ids = itertools.count()
        self._threads = 1
        self._threads_read = -WINDOW_REFRESH_S
        self._per_task = 1

    def window(self) -> int:
        """Images in flight: two tasks per worker thread (so none waits for its next one), of
        as many images as a task holds at the last image's size. The threads are counted
        again at most once a second: workers that join or leave a scheduler mid-run widen or
        narrow the window (with none left it stays at 2 tasks: nothing more is queued)."""
        now = time.monotonic()
        if now - self._threads_read >= WINDOW_REFRESH_S:
            self._threads = max(1, self._usable_threads())
            self._threads_read = now
        return 2 * self._threads * self._per_task

    def _usable_threads(self) -> int:
        """Worker threads that can take this run's tasks: all of them, or with `resources`,
        as many tasks as the workers that declare them can hold at once."""
        if not self.resources:
            return sum(self.client.nthreads().values())
        return sum(_capacity(w, self.resources) for w in self._workers().values())

    def _workers(self) -> dict[str, Any]:
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def device_kind(self) -> str:
        """The device kind this run's images are scored on: `cuda` where tasks take a GPU,
        else what `--device` resolves to on the workers (asked of each), or `mixed`."""
        if self.resources:
            return "cuda"
        kinds = set(self.client.run(_device_kind, str(self.recipe.device)).values())
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def check_resources(self, address: str) -> None:
        """Refuse a run whose tasks no worker can take (e.g. `--device cuda` and no worker
        started with `--resources GPU=1`), instead of waiting for ever."""
        if not self.resources:
            return
        workers = self._workers()
        if not any(_capacity(w, self.resources) for w in workers.values()):
            need = ",".join(f"{k}={v:g}" for k, v in worker_resources(self.resources).items())
            raise UsageError(
                f"--device cuda on a cluster runs images only on workers started with "
                f"--resources {need}; none of the {len(workers)} workers of {address} declares "
                f"it (dask worker ... --resources {need})"
            )

    def task(self, fn: Callable[..., Any], images: int, *args: Any) -> Any:
        key = f"{self.prefix}_{images}-{next(self._ids)}"
        return self.client.submit(fn, *args, key=key, pure=False, resources=self.resources)

    def submit(self, path, job, prediction, name: str, stem: str, *, pixels: int = 0) -> _Image:
        """Add an image to the open chunk (sent once full); a handle to wait on."""
        chunk = self.open
        if chunk is not None and (chunk.job is not job or chunk.pixels + pixels > CHUNK_PIXELS):
            chunk.send()
            chunk = None
        if chunk is None:
            chunk = self.open = _Chunk(self, job)
        chunk.images.append((path, prediction, name, stem))
        chunk.pixels += pixels
        self._per_task = max(1, min(CHUNK_IMAGES, CHUNK_PIXELS // max(1, pixels)))
        handle = _Image(chunk, len(chunk.images) - 1)
        if len(chunk.images) >= CHUNK_IMAGES or chunk.pixels >= CHUNK_PIXELS:
            chunk.send()
        return handle

    def drive(self, run, items, drive: Callable[..., Any], *, on_result) -> Any:
        try:
            summary = drive(run, items, submit=self.submit, window=self.window, on_result=on_result)
        finally:
            self.open = None
        self.reruns = self.client.run_on_scheduler(_rerun_count, prefix=self.prefix)
        summary.retried = self.reruns
        return summary


def _capacity(worker: dict[str, Any], need: dict[str, float]) -> int:
    """How many tasks needing `need` a worker (as `scheduler_info` lists it) runs at once."""
    have = worker.get("resources") or {}
    fits = min(int(have.get(k, 0) // v) for k, v in need.items())
    return min(fits, int(worker.get("nthreads", 1)))


#: images that may share one declared GPU at once (`--resources GPU=1`), each worker thread
#: one: the worker's suite scores them all through one batch scorer (micro-batches across
#: images, within its device memory budget, out of memory handled), so more images in flight
#: fill its batches; the worker's threads (encoding is CPU work) bound it first
IMAGES_PER_GPU = 16


def resources_for(device: str) -> dict[str, float] | None:
    """`--device cuda` on a cluster: each image's task takes a share of one of a worker's
    declared GPUs (`dask worker --resources GPU=1`: up to `IMAGES_PER_GPU` images at once,
    as many as the worker's threads); otherwise a task runs on any worker, on its GPU if it
    has one (`--device auto`)."""
    return {"GPU": 1 / IMAGES_PER_GPU} if str(device).startswith("cuda") else None


def worker_resources(task: dict[str, float]) -> dict[str, float]:
    """What a worker declares for tasks that take a share of `task`'s resources: one of each
    (`dask worker --resources GPU=1`)."""
    return {k: 1 for k in task}


@contextmanager
def open_cluster(
    address: str, recipe, *, resources: dict[str, float] | None = None
) -> Iterator[Cluster]:
    """`local:N` (N worker processes here, one thread each) or a scheduler's address.
    `resources`: what each task asks of its worker; `local:N` workers then declare one each."""
    import dask
    from distributed import Client, LocalCluster

    local = address.startswith("local:")
    n = address.removeprefix("local:")
    if local and (not n.isdigit() or int(n) < 1):
        raise UsageError(f"--cluster local:N needs a number of workers >= 1, not {address!r}")
    if not local and "://" not in address:
        raise UsageError(
            f"--cluster takes local:N or a scheduler address such as tcp://host:8786, "
            f"not {address!r}"
        )
    # Dask keeps each connection's last messages for its developers (1,000 by default): with
    # local:N's scheduler in this process, those held every task's arguments, some 3 KB an
    # image, so this process grew with the folder up to 8,000 tasks.
    with dask.config.set({"distributed.admin.low-level-log-length": MESSAGE_LOG}):
        if local:
            with (
                LocalCluster(
                    n_workers=int(n),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                    resources=worker_resources(resources) if resources else None,
                ) as cluster,
                Client(cluster) as client,
            ):
                yield Cluster(client, recipe, resources=resources)
            return
        try:
            client = Client(address, timeout=30)
        except OSError as exc:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        with client:
            c = Cluster(client, recipe, resources=resources)
            c.check_resources(address)
            yield c
