"""Scoring for a whole run: one owner of the device, micro-batches across images, and device
memory as a budget.

`BatchScorer` is what makes a GPU pay. Every image in flight (the threads of `optimize`, the
trials of `tune`, the tasks of a Dask worker) asks it to score one candidate and waits; one
thread, the device's only user, gathers what was asked within `latency` seconds, groups the
candidates that can share a batch (same size and channels: `PreparedReference.group_key`),
and scores each group at once, each candidate against its own reference. A batch is
bounded by the budget: prepared references are admitted while they fit in half of it (the rest
stay on the host and travel with the batches that need them), and a batch's pixels by what is
left. On an out-of-memory error the batch is halved and retried, and a candidate that does not
fit alone is scored on the CPU, with a warning: a run never ends for lack of device memory.

`DirectScorer` is the same interface without any of it, for the CPU, where the callers'
threads are the parallelism: each scores its own candidate on its own thread.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._base import map_tensors, state_nbytes
from .suite import MetricSuite, PreparedReference, Scores

__all__ = [
    "BASE_BYTES_PER_PIXEL",
    "BatchScorer",
    "DirectScorer",
    "default_device_budget",
    "is_out_of_memory",
]

#: bytes a candidate pixel costs on the device while its batch is scored, before the large
#: networks' feature maps (`Metric.working_set_per_pixel`): the float copies of the candidate,
#: its alpha flattenings, SSIM's and SSIMULACRA2's banded statistics, LPIPS's layer maps at
#: full size. An estimate on the safe side: the out-of-memory fallback is the backstop.
BASE_BYTES_PER_PIXEL = 512

#: seconds without a request after which the owner thread ends (the next one starts it again)
IDLE_EXIT_S = 5.0

#: share of the device's free memory (when the scorer starts) a run may use by default
DEFAULT_FREE_FRACTION = 0.8


def default_device_budget(device: torch.device, share: float = DEFAULT_FREE_FRACTION) -> int | None:
    """`share` of the device's free memory now; None (no budget) on the CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * share)


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocator failure (`torch.OutOfMemoryError`, or a cuDNN/cuBLAS one that torch
    reports as a plain RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDNN_STATUS_ALLOC_FAILED" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


class DirectScorer:
    """Score on the caller's thread (the CPU: threads are the parallelism there)."""

    def __init__(self, suite: MetricSuite) -> None:
        self.suite = suite

    def prepare(
        self, reference: np.ndarray, *, background: tuple[int, int, int] | None = None
    ) -> PreparedReference:
        return self.suite.prepare(reference, background=background)

    def score(self, prepared: PreparedReference, candidate: np.ndarray) -> Scores:
        return self.suite.score(prepared, [candidate])[0]


@dataclass
class _Request:
    prepared: PreparedReference
    candidate: np.ndarray
    future: Future = field(default_factory=Future)

    @property
    def pixels(self) -> int:
        return self.candidate.shape[0] * self.candidate.shape[1]


@dataclass
class ScorerStats:
    """What a batch scorer did (benchmarks and tests read it)."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    out_of_memory: int = 0
    cpu_fallbacks: int = 0
    host_references: int = 0


class BatchScorer:
    """The device's owner: candidates from every thread, scored in micro-batches.

    budget_bytes:
        Device memory the run may use: prepared references up to half of it stay on the
        device, and a batch holds no more pixels than the rest admits. Bytes, or a share
        (0..1) of the device's free memory when the scorer starts; default 80% of it (no
        limit on the CPU, unless given in bytes).
    latency:
        Seconds the owner waits for more requests after the first one arrives, before it
        scores what it has (a full batch goes at once).
    max_batch_pixels:
        Candidate pixels per batch at most (default: the suite's `batch_pixels`).
    """

    def __init__(
        self,
        suite: MetricSuite,
        *,
        budget_bytes: int | float | None = None,
        latency: float = 0.002,
        max_batch_pixels: int | None = None,
    ) -> None:
        self.suite = suite
        self.device = suite.device
        if budget_bytes is None or isinstance(budget_bytes, float):
            budget_bytes = default_device_budget(
                suite.device, budget_bytes or DEFAULT_FREE_FRACTION
            )
        self.budget = budget_bytes
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"device memory budget must be positive, got {self.budget}")
        self.latency = latency
        self.bytes_per_pixel = BASE_BYTES_PER_PIXEL + suite.working_set_per_pixel
        self.max_batch_pixels = max_batch_pixels or suite.batch_pixels
        self.stats = ScorerStats()
        self.resident = 0  # bytes of prepared references kept on the device
        # reentrant: a reference's finaliser (`_release`) may run in a garbage collection that
        # an allocation starts while this thread holds the lock
        self._lock = threading.RLock()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._twin: MetricSuite | None = None
        #: where candidates sent to the CPU are scored: off the owner thread, which goes on
        #: feeding the device meanwhile
        self._cpu_pool: ThreadPoolExecutor | None = None
        self._closed = False

    # -- references -----------------------------------------------------------------------

    def prepare(
        self, reference: np.ndarray, *, background: tuple[int, int, int] | None = None
    ) -> PreparedReference:
        """Prepare a reference on the device; kept there while references fit in half the
        budget, else moved to the host. One the device has no memory for at all is prepared
        by the CPU twin, and its candidates are scored there."""
        try:
            prepared = self.suite.prepare(reference, background=background)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._out_of_memory()
            self._to_cpu(f"preparing a {reference.shape[1]}x{reference.shape[0]} reference")
            prepared = self._cpu_twin().prepare(reference, background=background)
            prepared.on_twin = True  # scored by the twin from the start
            return prepared
        nbytes = state_nbytes(prepared.per_background)
        with self._lock:
            fits = self.budget is None or self.resident + nbytes <= self.budget // 2
            if fits:
                self.resident += nbytes
            else:
                self.stats.host_references += 1
        if fits:
            weakref.finalize(prepared, self._release, nbytes)
        else:
            pin = self.device.type == "cuda"
            prepared.per_background = [
                map_tensors(s, lambda t: _to_host(t, pin)) for s in prepared.per_background
            ]
            prepared.on_host = True
        return prepared

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self.resident -= nbytes

    # -- scoring --------------------------------------------------------------------------

    def score(self, prepared: PreparedReference, candidate: np.ndarray) -> Scores:
        """Score one candidate against its reference; blocks until its batch is scored."""
        return self.submit(prepared, candidate).result()

    def submit(self, prepared: PreparedReference, candidate: np.ndarray) -> Future:
        """Queue one candidate; the future holds its `Scores` (or the error scoring it)."""
        matched = None  # no device work for a reference prepared by the CPU twin
        try:
            # matching may prepare a grey reference's colour version on the device
            if not prepared.on_twin:
                matched = self.suite.matched(prepared, candidate)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._out_of_memory()
        if matched is None:
            request = _Request(prepared, candidate)
            self._score_on_cpu(request)
            return request.future
        request = _Request(matched, candidate)
        with self._lock:  # queued under the lock: an owner going idle cannot miss it
            if self._closed:
                raise RuntimeError("the batch scorer is closed")
            self.stats.requests += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="imgtune-scorer", daemon=True
                )
                self._thread.start()
            self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Stop the owner thread once what is queued is scored."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
        if self._cpu_pool is not None:
            self._cpu_pool.shutdown(wait=True)

    def batch_pixel_limit(self) -> int:
        """Candidate pixels a batch may hold now: the suite's cap, within the budget left
        beside the resident references."""
        limit = self.max_batch_pixels
        if self.budget is not None:
            with self._lock:
                free = self.budget - self.resident
            limit = min(limit, max(1, free // self.bytes_per_pixel))
        return limit

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # idle: the thread ends (a new request starts another)
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if first is None:
                return
            pending = [first]
            limit = self.batch_pixel_limit()
            deadline = time.monotonic() + self.latency
            while sum(r.pixels for r in pending) < limit:
                wait = deadline - time.monotonic()
                try:
                    req = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if req is None:
                    stop = True
                    break
                pending.append(req)
            try:
                groups: dict[tuple, list[_Request]] = {}
                for r in pending:
                    groups.setdefault(r.prepared.group_key(r.candidate), []).append(r)
                for group in groups.values():
                    for chunk in _chunks(group, limit):
                        self._score_chunk(chunk)
            except BaseException as exc:  # noqa: BLE001 - no caller may wait for ever
                for r in pending:
                    if not r.future.done():
                        r.future.set_exception(exc)
        # requests queued before close() are scored; nothing is left waiting for ever
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                return
            if req is not None:
                self._score_chunk([req])

    def _score_chunk(self, chunk: Sequence[_Request]) -> None:
        try:
            results = self.suite.score_pairs([(r.prepared, r.candidate) for r in chunk])
        except Exception as exc:  # noqa: BLE001 - every error reaches its own caller
            if is_out_of_memory(exc):
                self._out_of_memory()
                pixels = sum(r.pixels for r in chunk)
                # batches this large failed: smaller ones from now on
                self.max_batch_pixels = max(1, min(self.max_batch_pixels, pixels // 2))
                if len(chunk) > 1:
                    half = len(chunk) // 2
                    self._score_chunk(chunk[:half])
                    self._score_chunk(chunk[half:])
                else:
                    self._cpu_executor().submit(self._score_on_cpu, chunk[0])
                return
            if len(chunk) > 1:  # find whose candidate it was: the others still get scores
                for r in chunk:
                    self._score_chunk([r])
                return
            chunk[0].future.set_exception(exc)
            return
        with self._lock:
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(chunk))
        for r, s in zip(chunk, results, strict=True):
            r.future.set_result(s)

    def _out_of_memory(self) -> None:
        with self._lock:
            self.stats.out_of_memory += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # what the failed batch held goes back before the retry

    def _to_cpu(self, what: str) -> None:
        """Warn (once per image) that the device had no memory for `what`."""
        warnings.warn(
            f"out of {self.device} memory {what}; its image is scored on the CPU",
            RuntimeWarning,
            stacklevel=3,
        )
        with self._lock:
            self.stats.cpu_fallbacks += 1

    def _score_on_cpu(self, request: _Request) -> None:
        """Score a request with the CPU twin, against the reference prepared there (once per
        image: the first time, with the warning)."""
        prepared = request.prepared
        try:
            twin = self._cpu_twin()
            if not prepared.on_twin and prepared._twin is None:
                h, w = request.candidate.shape[:2]
                self._to_cpu(f"scoring a {w}x{h} candidate alone")
                prepared._twin = twin._prepare(
                    prepared.reference, prepared.background, grey_as_colour=prepared.grey_as_colour
                )
            on_cpu = prepared if prepared.on_twin else prepared._twin
            request.future.set_result(twin.score(on_cpu, [request.candidate])[0])
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            request.future.set_exception(exc)

    def _cpu_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._cpu_pool is None:
                self._cpu_pool = ThreadPoolExecutor(1, thread_name_prefix="imgtune-cpu-score")
            return self._cpu_pool

    def _cpu_twin(self) -> MetricSuite:
        with self._lock:
            if self._twin is None:
                self._twin = self.suite.cpu_twin()
            return self._twin

    def __enter__(self) -> BatchScorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _to_host(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """A tensor in host memory: page-locked where it can be (faster copies to the GPU with
    each batch), else ordinary memory."""
    host = t.to("cpu")
    if pin:
        try:
            return host.pin_memory()
        except RuntimeError:  # page-locked memory is limited: ordinary memory copies too
            return host
    return host


def _chunks(group: list[_Request], limit: int) -> list[list[_Request]]:
    """Consecutive runs of a group, each within `limit` pixels (one candidate at least)."""
    out: list[list[_Request]] = [[]]
    pixels = 0
    for r in group:
        if out[-1] and pixels + r.pixels > limit:
            out.append([])
            pixels = 0
        out[-1].append(r)
        pixels += r.pixels
    return out
