"""Folder jobs on a Dask cluster: each image is one task running `image_job.optimize_image`.

`--cluster local:N` starts a `LocalCluster` of N worker processes on this machine;
`--cluster tcp://HOST:8786` attaches to a running scheduler (`dask scheduler`, and `dask worker
tcp://HOST:8786` on machines that see SRC at the same path). This process stays the only writer:
it walks SRC, decides what is up to date, submits at most a window of images, writes each
result atomically and appends the manifest, in input order. Workers read sources and return
bytes; they write nothing, so a worker that dies mid-image costs only that image's work: the
scheduler reruns it elsewhere (the summary counts those reruns), and nothing is written twice
or half. Each worker process builds the metric suite once (on its own GPU, if it has one).
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["Cluster", "open_cluster", "remote_optimize"]

_SUITES: dict[Any, Any] = {}
#: finished tasks whose reruns are counted in one scheduler round trip
RERUN_BATCH = 64


def remote_optimize(path: Path, job, recipe, prediction, name: str, stem: str):
    """`optimize_image` on a worker, with the worker's own copy of the suite (built on first
    use in each worker process, then reused by every task there)."""
    from .image_job import optimize_image

    suite = _SUITES.get(recipe)
    if suite is None:
        suite = _SUITES[recipe] = recipe.build()
    return optimize_image(path, job, suite=suite, prediction=prediction, name=name, stem=stem)


def _rerun_counts(dask_scheduler, keys: list[str]) -> dict[str, int]:
    """Per task, how many times a worker died while running it (the scheduler's count)."""
    tasks = dask_scheduler.tasks
    return {k: tasks[k].suspicious for k in keys if k in tasks}


class Cluster:
    """A connected Dask client and what a folder job needs from it."""

    def __init__(self, client, recipe) -> None:
        self.client, self.recipe = client, recipe
        self.reruns = 0
        self._run = secrets.token_hex(4)
        self._ids = itertools.count()
        self._held: list[Any] = []

    @property
    def window(self) -> int:
        """Images in flight: two per worker thread, so none waits for the next task."""
        return 2 * max(1, sum(self.client.nthreads().values()))

    def submit(self, path, job, prediction, name: str, stem: str):
        key = f"imgtune-{self._run}-{next(self._ids)}"
        return self.client.submit(
            remote_optimize, path, job, self.recipe, prediction, name, stem, key=key, pure=False
        )

    def after(self, slot) -> None:
        """Keep a finished image's task until its reruns are counted: the scheduler forgets a
        task once its future is released. Counted `RERUN_BATCH` at a time, one round trip for
        all (a finished task holds only its output's bytes on its worker)."""
        if slot.future is not None:
            self._held.append(slot.future)
            if len(self._held) >= RERUN_BATCH:
                self._count_reruns()

    def _count_reruns(self) -> None:
        if self._held:
            keys = [f.key for f in self._held]
            self.reruns += sum(self.client.run_on_scheduler(_rerun_counts, keys=keys).values())
            self._held.clear()

    def drive(self, run, items, drive: Callable[..., Any], *, on_result) -> Any:
        try:
            summary = drive(
                run, items, submit=self.submit, window=self.window, on_result=on_result,
                after=self.after,
            )  # fmt: skip
            self._count_reruns()
        finally:
            self._held.clear()  # released whatever happened
        summary.retried = self.reruns
        return summary


@contextmanager
def open_cluster(address: str, recipe) -> Iterator[Cluster]:
    """`local:N` (N worker processes here, one thread each) or a scheduler's address."""
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        n = address.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise UsageError(f"--cluster local:N needs a number of workers >= 1, not {address!r}")
        with (
            LocalCluster(
                n_workers=int(n),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as local,
            Client(local) as client,
        ):
            yield Cluster(client, recipe)
        return
    if "://" not in address:
        raise UsageError(
            f"--cluster takes local:N or a scheduler address such as tcp://host:8786, "
            f"not {address!r}"
        )
    try:
        client = Client(address, timeout=30)
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        yield Cluster(client, recipe)
