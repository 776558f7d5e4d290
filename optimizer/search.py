"""The study behind `tune`: an Optuna study per image set for the smallest recipe meeting a target.

Objective: total bytes of the set (minimised). Constraint: the target holds for the set's
aggregate (every image by default), through Optuna's own constraint support, so
`study.best_trial` is the smallest *feasible* trial. Each reference is prepared once per run;
encodes and scores are cached by (image hash, params); images are scored hardest-first and a
trial stops as soon as it is doomed (an image misses a `min` target, or its running byte total
already exceeds the best feasible total).

One study, many workers: a run aims for a number of finished trials (`_run_goal`) and every
worker, `--workers` processes (`_Workers`, spawned) and other `tune` runs on a shared storage
alike, runs trials until the study holds that many (`_work`); each trial records who runs it,
and, when feasible, every image's bytes and scores, so a preset can be written from the study
alone. Dead workers' trials are failed and queued again (`storage`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import codecs, transforms
from .codecs import CODECS, EncodeSettings, available_codecs
from .errors import UsageError
from .images import SourceImage
from .metrics.catalog import OUTPUTS
from .outdir import OutputDir, output_names
from .quality_search import Probe, lowest_passing
from .recipe import Candidate
from .targets import Target, check_aggregate

__all__ = [
    "Evaluation",
    "ImageSet",
    "ImageSetSpec",
    "STRATEGIES",
    "ScoreCache",
    "SearchSpace",
    "StudyMismatchError",
    "StudyResult",
    "bisect_quality",
    "evaluate",
    "run_study",
]


class StudyMismatchError(UsageError):
    """The stored study was made for another image set, target or search space."""


@dataclass(frozen=True)
class SearchSpace:
    codecs: tuple[str, ...]
    quality: dict[str, tuple[int, int]]
    filters: tuple[str, ...] | None  # None: nothing is resized, the filter is not searched
    sharpen: tuple[float, float] | None  # None: fixed at 1.0
    options: dict[str, dict[str, tuple[Any, ...]]] = field(default_factory=dict)

    @classmethod
    def default(
        cls,
        codec_names: Sequence[str],
        *,
        resized: bool,
        sharpen: bool = True,
        quality: dict[str, tuple[int, int]] | None = None,
    ) -> SearchSpace:
        q = {"jpeg": (30, 100), "webp": (30, 100), "avif": (20, 100), "jxl": (30, 100)}
        q.update(quality or {})
        opts = {
            "jpeg": {"subsampling": ("4:2:0", "4:4:4")},
            "webp": {"method": (4, 6)},
            "avif": {"subsampling": ("4:2:0", "4:4:4"), "speed": (6,)},
            "jxl": {"effort": (7,)},
        }
        return cls(
            codecs=tuple(codec_names),
            quality={c: q[c] for c in codec_names},
            filters=tuple(transforms.RESIZE_FILTERS) if resized else None,
            sharpen=(0.5, 1.5) if sharpen else None,
            options={c: opts[c] for c in codec_names},
        )

    def suggest(self, trial, *, quality: bool = True) -> Candidate:
        """A candidate from the trial. With `quality=False` (the bisect strategy) the quality is
        left at the codec's maximum for the caller to search."""
        codec = trial.suggest_categorical("codec", list(self.codecs))
        lo, hi = self.quality[codec]
        quality = trial.suggest_int(f"{codec}_quality", lo, hi) if quality else hi
        opts = {}
        for name, choices in self.options.get(codec, {}).items():
            opts[name] = (
                choices[0]
                if len(choices) == 1
                else trial.suggest_categorical(f"{codec}_{name}", list(choices))
            )
        filt = (
            trial.suggest_categorical("resize_filter", list(self.filters)) if self.filters else None
        )
        sharpen = (
            round(trial.suggest_float("sharpen", *self.sharpen, step=0.05), 2)
            if self.sharpen
            else 1.0
        )
        return Candidate(
            codec, quality, filt, sharpen, EncodeSettings.make(codec, quality, **opts).options
        )

    def describe(self) -> dict[str, Any]:
        return {
            "codecs": list(self.codecs),
            "quality": {k: list(v) for k, v in self.quality.items()},
            "filters": list(self.filters) if self.filters else None,
            "sharpen": list(self.sharpen) if self.sharpen else None,
            "options": {c: {k: list(v) for k, v in o.items()} for c, o in self.options.items()},
        }


class ScoreCache:
    """The score cache file beside the studies: key -> (bytes, scores JSON), written by every
    tune run and --workers process on a folder at once.

    SQLite in WAL mode (readers never wait for the writer), each statement its own short
    transaction, a busy timeout, and a few retries; a read that still cannot get through is a
    miss and a write that cannot is dropped (the pair is scored again later). Nothing here
    raises to the search, and a row read back is checked by its reader (`ImageSet._valid_row`):
    a miss is acceptable, a wrong hit never.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0, attempts: int = 3):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.attempts = attempts
        self.failures = 0  # reads and writes given up (misses and dropped writes)
        self._lock = threading.Lock()  # one connection, shared by the --jobs threads
        self._con = None
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = self._retry(self._open)

    def _open(self):
        import sqlite3

        con = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout, check_same_thread=False,
            isolation_level=None,
        )  # fmt: skip
        try:
            # WAL lets readers go on while one process writes; a file system that cannot
            # share its index (some network mounts) keeps the rollback journal: still correct.
            with contextlib.suppress(sqlite3.OperationalError):
                con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, bytes INTEGER, "
                "scores TEXT)"
            )
        except BaseException:
            con.close()
            raise
        return con

    def _retry(self, op):
        """`op()`, again after a short random pause while the file is locked or busy; None
        (counted in `failures`) when it still fails or the file is unusable."""
        import random
        import sqlite3

        for attempt in range(self.attempts):
            try:
                return op()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" not in text and "busy" not in text:
                    break  # not a matter of waiting: unreadable, read-only, no such folder
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
            except (sqlite3.Error, ValueError, MemoryError):
                break  # a damaged file, an odd value: a miss, never an error
        self.failures += 1
        return None

    def get(self, key: str) -> tuple | None:
        """The (bytes, scores text) row stored under `key`, or None (a miss)."""
        if self._con is None:
            return None
        with self._lock:
            return self._retry(
                lambda: self._con.execute(
                    "SELECT bytes, scores FROM scores WHERE key = ?", (key,)
                ).fetchone()
            )

    def put(self, key: str, nbytes: int, scores: str) -> None:
        """Store a row (or drop it, if the file stays locked: a later miss)."""
        if self._con is None:
            return
        with self._lock:
            self._retry(
                lambda: self._con.execute(
                    "INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", (key, nbytes, scores)
                )
            )

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None


@dataclass
class _Item:
    source: SourceImage
    size: tuple[int, int]  # output (width, height)
    prepared: Any  # alpha judged over black and white
    prepared_flat: Any  # flattened onto --background (for codecs without alpha), or None

    @property
    def channels(self) -> int:
        return self.source.channels


class ImageSet:
    """The sources of one study, their references prepared once, and the encode/score cache."""

    def __init__(
        self,
        sources: Sequence[SourceImage],
        suite,
        *,
        max_width: int | None = None,
        max_height: int | None = None,
        background: tuple[int, int, int] | None = None,
        cache_path: str | Path | None = None,
        keep_encoded: bool = False,
    ):
        """`cache_path`: an SQLite file that keeps encode sizes and scores across runs, keyed by
        (image hash, output size, background, recipe, metric spec), so a resumed or re-targeted
        run pays nothing for a recipe it has scored before. `keep_encoded`: keep every encode's
        bytes in memory (`encoded`), so the chosen one is written without encoding it again (for
        one-image sets searched per image)."""
        if not sources:
            raise ValueError("an image set needs at least one image")
        self.suite = suite
        self.background = background
        self.items: list[_Item] = []
        for src in sources:
            size = transforms.fit_size(
                src.width, src.height, max_width=max_width, max_height=max_height
            )
            ref = (
                src.pixels
                if size == (src.width, src.height)
                else transforms.reference(src.pixels, size)
            )
            flat = (
                suite.prepare(ref, background=background)
                if src.has_alpha and background is not None
                else None
            )
            self.items.append(_Item(src, size, suite.prepare(ref), flat))
        self.resized = any(it.size != (it.source.width, it.source.height) for it in self.items)
        self.has_alpha = any(it.source.has_alpha for it in self.items)
        self.cache: dict[tuple[str, Candidate], tuple[int, dict[str, float]]] = {}
        self.encoded: dict[tuple[str, Candidate], bytes] | None = {} if keep_encoded else None
        self.encodes = 0
        self.cache_hits = 0
        self.order = list(range(len(self.items)))  # hardest first: the last to fail moves up
        # Parallel trials (--jobs) run in threads: the bookkeeping above is shared between them.
        self._lock = threading.Lock()
        self._pixels: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._inflight: dict[tuple[str, Candidate], threading.Event] = {}
        self.total_pixels = sum(it.size[0] * it.size[1] for it in self.items)
        self._spec = json.dumps(suite.describe(), sort_keys=True)
        # Other tune runs and --workers processes on this folder write the same file.
        self._db = ScoreCache(cache_path) if cache_path is not None else None
        self.box = (max_width, max_height)
        self._default_jpeg: int | None = None

    @property
    def source_bytes(self) -> int:
        return sum(it.source.file_bytes for it in self.items)

    def fingerprint(self) -> list[dict[str, str]]:
        return [{"name": it.source.path.name, "sha256": it.source.sha256} for it in self.items]

    def _transformed(self, item: _Item, cand: Candidate) -> np.ndarray:
        """Resized and sharpened pixels, shared by every candidate with the same filter and
        sharpening (bisection probes many qualities of one recipe). A small LRU keeps memory
        bounded by a couple of versions of each image in the set."""
        key = (item.source.sha256, item.size, cand.resize_filter, cand.sharpen)
        with self._lock:
            if key in self._pixels:
                self._pixels.move_to_end(key)
                return self._pixels[key]
        size = item.size if item.size != (item.source.width, item.source.height) else None
        px = transforms.apply(
            item.source.pixels,
            size=size,
            resize_filter=cand.resize_filter or "lanczos",
            sharpen=cand.sharpen,
        )
        with self._lock:
            self._pixels[key] = px
            while len(self._pixels) > 2 * len(self.items):
                self._pixels.popitem(last=False)
        return px

    def render(self, item: _Item, cand: Candidate) -> tuple[np.ndarray, bytes]:
        """Transform and encode one image with `cand` (kept bytes are reused)."""
        px = self._transformed(item, cand)
        if self.encoded is not None:
            data = self.encoded.get((item.source.sha256, cand))
            if data is not None:
                return px, data
        data = codecs.encode(px, cand.settings(), background=self.background)
        if self.encoded is not None:
            with self._lock:
                self.encoded[(item.source.sha256, cand)] = data
        return px, data

    def default_jpeg_bytes(self) -> int:
        """Bytes of the common default for comparison: JPEG quality 85 at the output size
        (transparency flattened onto the background, white if none was given)."""
        if self._default_jpeg is not None:
            return self._default_jpeg
        settings = EncodeSettings.make("jpeg", 85)
        total = 0
        for it in self.items:
            px = it.source.pixels
            if it.size != (it.source.width, it.source.height):
                px = transforms.reference(px, it.size)
            total += len(codecs.encode(px, settings, background=self.background or (255,) * 3))
        self._default_jpeg = total
        return total

    @property
    def max_size(self) -> tuple[int, int] | None:
        """The box a preset fits images inside: the largest output width and height, or None
        when nothing is resized."""
        if not self.resized:
            return None
        return (max(it.size[0] for it in self.items), max(it.size[1] for it in self.items))

    def write_outputs(self, cand: Candidate, out: OutputDir, root: Path) -> list[dict[str, Any]]:
        """Encode the set with `cand` into `out`, mirroring the tree under `root` (atomic
        writes, nothing through links). An output never exceeds its source: when the encode is
        not smaller and nothing is resized, the source is copied."""
        names = output_names([it.source.path for it in self.items], root)
        written = []
        for it in self.items:
            _, data = self.render(it, cand)
            src = it.source
            keep = len(data) >= src.file_bytes and it.size == (src.width, src.height)
            ext = src.path.suffix if keep else CODECS[cand.codec].extension
            rel = names[src.path] + ("" if names[src.path].endswith(ext) else ext)
            out.write_bytes(rel, src.path.read_bytes() if keep else data)
            written.append(
                {
                    "name": src.path.name,
                    "output": str(out.path(rel)),
                    "bytes": src.file_bytes if keep else len(data),
                    "kept_source": keep,
                }
            )
        return written

    def score(self, idx: int, cand: Candidate) -> tuple[int, dict[str, float]]:
        item = self.items[idx]
        key = (item.source.sha256, cand)
        with self._lock:
            if key in self.cache:
                self.cache_hits += 1
                return self.cache[key]
        # The disk cache is read outside the lock: another process's write may make it wait.
        disk_key = self._disk_key(item, cand) if self._db is not None else None
        if disk_key is not None:
            row = self._db.get(disk_key)
            hit = self._valid_row(row) if row is not None else None
            if hit is not None:
                with self._lock:
                    self.cache_hits += 1
                    self.cache[key] = hit
                return hit
        with self._lock:
            if key in self.cache:  # another --jobs thread finished it meanwhile
                self.cache_hits += 1
                return self.cache[key]
            # Another --jobs thread already encoding this pair: wait for its result rather
            # than encoding it twice.
            pending = self._inflight.get(key)
            if pending is None:
                self._inflight[key] = threading.Event()
                self.encodes += 1
        if pending is not None:
            pending.wait()
            return self.score(idx, cand)  # served from the cache (or retried if it failed)
        try:
            result = self._encode_and_score(item, cand)
            with self._lock:
                self.cache[key] = result
        finally:
            with self._lock:
                self._inflight.pop(key).set()
        if disk_key is not None:
            self._db.put(disk_key, result[0], json.dumps(result[1]))
        return result

    def _encode_and_score(self, item: _Item, cand: Candidate) -> tuple[int, dict[str, float]]:
        # Runs unlocked: Pillow's encoders and torch release the GIL.
        _, data = self.render(item, cand)
        alpha_kept = item.source.has_alpha and CODECS[cand.codec].supports_alpha
        channels = item.channels if alpha_kept or not item.source.has_alpha else item.channels - 1
        decoded = codecs.decode(data, channels=channels)
        prepared = item.prepared if alpha_kept or not item.source.has_alpha else item.prepared_flat
        return len(data), self.suite.score(prepared, [decoded])[0].values

    def _valid_row(self, row: tuple) -> tuple[int, dict[str, float]] | None:
        """A cached (bytes, scores) read back from disk, if it is what this suite writes; a
        damaged or foreign row is a miss (rescored and replaced), never a wrong pass."""
        nbytes, text = row
        try:
            scores = json.loads(text, parse_constant=float)
        except (TypeError, ValueError, RecursionError):
            return None
        ok = (
            isinstance(nbytes, int)
            and nbytes > 0
            and isinstance(scores, dict)
            and set(scores) == set(self.suite.output_names)
            and all(isinstance(v, float | int) and not isinstance(v, bool) for v in scores.values())
        )
        return (nbytes, {k: float(v) for k, v in scores.items()}) if ok else None

    def _disk_key(self, item: _Item, cand: Candidate) -> str:
        blob = json.dumps(
            [item.source.sha256, item.size, self.background, cand.as_dict(), self._spec],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def mark_hard(self, idx: int) -> None:
        """Score `idx` first from now on: the image that failed most recently."""
        with self._lock:
            self.order.remove(idx)
            self.order.insert(0, idx)


@dataclass
class Evaluation:
    candidate: Candidate
    total_bytes: float  # measured, or extrapolated by pixels when the trial stopped early
    feasible: bool
    complete: bool
    violation: float  # > 0: how far the aggregate misses the target (in target units)
    per_image: dict[str, dict[str, float]]  # name -> bytes + metric values
    pruned: bool = False


def _aggregate(values: list[float], how: str, higher_is_better: bool) -> float:
    if how == "min":
        return min(values) if higher_is_better else max(values)
    if how == "mean":
        return float(np.mean(values))
    q = float(how[1:])  # pNN: the NN-th percentile from the bad end
    return float(np.percentile(values, q if higher_is_better else 100 - q))


def evaluate(
    images: ImageSet,
    cand: Candidate,
    target: Target,
    *,
    aggregate: str = "min",
    best_total: float | None = None,
    stop_early: bool = True,
) -> Evaluation:
    """Score `cand` on the set, hardest image first; with `stop_early`, stop as soon as the
    outcome is known (an image misses a `min` target, or the bytes pass `best_total`)."""
    total_px = images.total_pixels
    done_px = 0
    running = 0
    per_image: dict[str, dict[str, float]] = {}
    with images._lock:
        order = list(images.order)
    for idx in order:
        item = images.items[idx]
        nbytes, values = images.score(idx, cand)
        running += nbytes
        done_px += item.size[0] * item.size[1]
        per_image[item.source.path.name] = {"bytes": nbytes, **values}
        if stop_early and aggregate == "min" and target.failures(values):
            images.mark_hard(idx)
            shortfall = max(-c.margin(values[c.metric]) for c in target.failures(values))
            return Evaluation(
                cand, running * total_px / done_px, False, False, shortfall, per_image
            )
        if stop_early and best_total is not None and running > best_total:
            return Evaluation(
                cand, running * total_px / done_px, False, False, 0.0, per_image, pruned=True
            )
    margins = []
    for clause in target.clauses:
        agg = _aggregate(
            [v[clause.metric] for v in per_image.values()],
            aggregate,
            OUTPUTS[clause.metric].higher_is_better,
        )
        margins.append(clause.margin(agg))
    violation = max(0.0, -min(margins))
    return Evaluation(cand, float(running), violation == 0.0, True, violation, per_image)


#: how a study searches quality: "bisect" per sampled recipe, or "tpe" like every dimension
Strategy = Literal["bisect", "tpe"]
STRATEGIES: tuple[Strategy, ...] = ("bisect", "tpe")


def _margin(ev: Evaluation, target: Target) -> float:
    """Signed distance to the target, relative to each bound: > 0 inside, < 0 outside."""
    if ev.feasible:
        return min(target.margin(v) for v in ev.per_image.values())
    return -ev.violation / max(max(abs(c.value) for c in target.clauses), 1e-9)


def bisect_quality(
    images: ImageSet,
    cand: Candidate,
    target: Target,
    *,
    bounds: tuple[int, int],
    aggregate: str = "min",
) -> Evaluation:
    """The lowest quality in `bounds` at which `cand`'s recipe meets the target on the set
    (`quality_search.lowest_passing` with its defaults: the top, the bottom, then interpolation
    to one quality step). Infeasible even at the top of `bounds`: that evaluation is returned."""

    def probe(q: int) -> Probe:
        ev = evaluate(images, cand.with_quality(q), target, aggregate=aggregate)
        return Probe(q, ev.total_bytes, ev.feasible, _margin(ev, target), ev)

    found = lowest_passing(probe, bounds)
    return (found.best or found.probes[0]).result


@dataclass
class StudyResult:
    study_name: str
    storage: str  # as written in messages and presets (a server URL's password hidden)
    best: Evaluation | None  # None when no trial met the target
    closest: Evaluation | None  # the least-violating trial, reported when none was feasible
    trials: int
    pruned: int
    infeasible: int
    encodes: int  # this process's own (worker processes keep their own counts)
    cache_hits: int
    seconds: float
    study: Any = field(repr=False, default=None)
    interrupted: bool = False
    goal: int | None = None  # finished (complete or pruned) trials the run aimed for
    finished: int = 0  # finished trials in the study at the end
    failed: int = 0  # failed trials in the study (a dead worker's among them)
    workers: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageSetSpec:
    """How a worker process builds the same `ImageSet` as the process that started it: the
    sources' paths and how they were read, a picklable factory of the metric suite, and the
    set's options. A worker's images are checked against the study like a resumed run's."""

    paths: tuple[str, ...]
    suite: Callable[[], Any]
    max_pixels: int
    animated: str = "refuse"
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> ImageSet:
        from .images import load

        suite = self.suite()
        sources = [load(p, max_pixels=self.max_pixels, animated=self.animated) for p in self.paths]
        return ImageSet(sources, suite, **self.options)


def _study_attrs(images: ImageSet, target: Target, *, aggregate: str, space: SearchSpace) -> dict:
    return {
        "images": images.fingerprint(),
        "target": str(target),
        "aggregate": aggregate,
        "space": space.describe(),
        "metrics": images.suite.describe(),
    }


def _output_attrs(images: ImageSet) -> dict:
    """What a preset needs beyond the trials, and what every trial of a study must share: the
    size box and background (checked on resume), the sources' bytes and the JPEG q85 bytes
    (recorded in the preset). Stored as the study's user attribute ``output``."""
    return json.loads(
        json.dumps(
            {
                "box": list(images.box),
                "sizes": [list(it.size) for it in images.items],
                "max_size": list(images.max_size) if images.max_size else None,
                "background": list(images.background) if images.background else None,
                "source_bytes": images.source_bytes,
                "default_jpeg_bytes": images.default_jpeg_bytes(),
            }
        )
    )


class _SurplusTrial(Exception):
    """A trial that started when the study already had its trials (finished or running ahead
    of it): failed unrun, so a shared study ends with exactly the trials asked for."""


_SURPLUS: set[int] = set()  # numbers of this process's surplus trials, for the log filter


def _hide_surplus_logs() -> None:
    """Optuna logs every failed trial (its traceback, then "Trial N failed with value None");
    a surplus trial is no failure."""
    import logging

    class _Hide(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            text = str(record.msg)
            if isinstance(exc, _SurplusTrial) or "_SurplusTrial" in text:
                return False
            return not any(text == f"Trial {n} failed with value None." for n in _SURPLUS)

    log = logging.getLogger("optuna.study._optimize")
    if not any(type(f).__name__ == "_Hide" for f in log.filters):
        log.addFilter(_Hide())


def _worker_tag() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _sampler(seed: int | None, n_startup: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)


def _objective(images, target, space, *, strategy, aggregate, goal, on_trial=None):
    """The study's objective for this process: checks it is not surplus, scores the trial's
    recipe, records what the report and a preset need, and returns the set's bytes."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    running = optuna.trial.TrialState.RUNNING
    worker = _worker_tag()

    def best_total(study) -> float | None:
        try:
            return study.best_value
        except ValueError:
            return None

    def objective(trial) -> float:
        ahead = sum(
            t.state in done or (t.state == running and t.number < trial.number)
            for t in trial.study.get_trials(deepcopy=False)
        )
        if ahead >= goal:
            _SURPLUS.add(trial.number)
            trial.set_user_attr("surplus", True)
            raise _SurplusTrial(f"the study had its {goal} trials when trial {trial.number} began")
        trial.set_user_attr("worker", worker)
        if strategy == "bisect":
            cand = space.suggest(trial, quality=False)
            ev = bisect_quality(
                images, cand, target, bounds=space.quality[cand.codec], aggregate=aggregate
            )
            cand = ev.candidate
        else:
            cand = space.suggest(trial)
            ev = evaluate(
                images, cand, target, aggregate=aggregate, best_total=best_total(trial.study)
            )
        trial.set_user_attr("violation", ev.violation if not ev.pruned else 0.0)
        # Optuna's own constraint support (<= 0 feasible): best_trial is the smallest feasible.
        trial.set_constraint("target", ev.violation)
        trial.set_user_attr("candidate", json.loads(json.dumps(cand.as_dict())))
        trial.set_user_attr("complete", ev.complete)
        # The worst value of each target metric over the images scored (all, when complete):
        # the quality axis of the report's bytes-quality plot.
        trial.set_user_attr(
            "quality",
            {
                m: (min if OUTPUTS[m].higher_is_better else max)(
                    v[m] for v in ev.per_image.values()
                )
                for m in target.metrics
                if ev.per_image
            },
        )
        if ev.feasible and ev.complete:
            # Every image's bytes and scores: a preset can be written from the study alone.
            trial.set_user_attr("per_image", json.loads(json.dumps(ev.per_image)))
        if on_trial:
            on_trial(ev)
        if ev.pruned:
            raise optuna.TrialPruned(f"running total above the best feasible ({ev.total_bytes})")
        return ev.total_bytes

    return objective


_POLL = 0.5  # seconds between looks at the study while other workers run its last trials


def _counts(study) -> tuple[int, int]:
    """(finished, running) trials of the study, after failing those whose worker died."""
    import optuna

    from .storage import fail_stale

    s = optuna.trial.TrialState
    fail_stale(study)
    trials = study.get_trials(deepcopy=False, states=(s.COMPLETE, s.PRUNED, s.RUNNING))
    finished = sum(t.state != s.RUNNING for t in trials)
    return finished, len(trials) - finished


def _work(study, objective, *, goal, jobs, deadline, on_progress=None, check=None) -> bool:
    """Run trials until the study holds `goal` finished (complete or pruned) trials, counting
    every worker's, or until `deadline` (time.time()); True if interrupted (Ctrl-C). While the
    last trials run elsewhere this waits rather than leaving: if their worker dies, their
    trials are failed (heartbeat) and queued again, and someone must run them. `check()` is
    called between trials; False stops this worker."""
    import optuna
    from optuna.study import MaxTrialsCallback

    s = optuna.trial.TrialState
    stop_at_goal = MaxTrialsCallback(goal, states=(s.COMPLETE, s.PRUNED))

    def after(st, trial) -> None:
        if trial.user_attrs.get("surplus") or (check is not None and not check()):
            st.stop()
        if on_progress is not None:
            on_progress(_counts(st)[0], goal)

    try:
        while True:
            if check is not None and not check():
                return False
            finished, running = _counts(study)
            if on_progress is not None:
                on_progress(finished, goal)
            left = None if deadline is None else deadline - time.time()
            if finished >= goal or (left is not None and left <= 0):
                return False
            if finished + running >= goal:
                time.sleep(_POLL if left is None else min(_POLL, left))
                continue
            try:
                study.optimize(
                    objective, n_trials=goal - finished - running, timeout=left, n_jobs=jobs,
                    catch=(_SurplusTrial,), callbacks=[stop_at_goal, after],
                )  # fmt: skip
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # this worker's trial was failed as stale meanwhile (a late heartbeat)
            except ValueError as exc:
                if not str(exc).startswith("Cannot tell a "):
                    raise
    except KeyboardInterrupt:
        return True


@dataclass
class _WorkerArgs:
    """What a worker process needs (pickled to it)."""

    index: int
    images: ImageSetSpec
    storage: Any  # StorageSpec
    heartbeat: int | None
    study_name: str
    target: Target
    space: SearchSpace
    strategy: str
    aggregate: str
    attrs: dict
    goal: int
    jobs: int
    seed: int | None
    n_startup: int
    deadline: float | None
    parent: int
    threads: int


def _worker_main(args: _WorkerArgs) -> None:
    """A `--workers` process: the same image set, its own connection to the study, trials until
    the study has the run's goal. Stops too when the process that started it is gone."""
    import sys

    import optuna

    from .errors import ImgtuneError

    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _hide_surplus_logs()
        import torch

        torch.set_num_threads(args.threads)
        images = args.images.build()
        attrs = _study_attrs(images, args.target, aggregate=args.aggregate, space=args.space)
        attrs["strategy"] = args.strategy
        if json.loads(json.dumps(attrs)) != args.attrs:
            raise StudyMismatchError(
                f"worker {args.index}: the images changed since the run started"
            )
        study = optuna.load_study(
            study_name=args.study_name,
            storage=args.storage.open(heartbeat=args.heartbeat),
            sampler=_sampler(args.seed, args.n_startup),
        )
        objective = _objective(
            images, args.target, args.space, strategy=args.strategy,
            aggregate=args.aggregate, goal=args.goal,
        )  # fmt: skip
        interrupted = _work(
            study, objective, goal=args.goal, jobs=args.jobs, deadline=args.deadline,
            check=lambda: os.getppid() == args.parent,
        )  # fmt: skip
    except ImgtuneError as exc:
        print(f"imgtune worker {args.index}: error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        interrupted = True
    sys.exit(130 if interrupted else 0)


class _Workers:
    """The worker processes of one run (spawned: torch and threads do not survive fork), and
    the trials of those that died."""

    def __init__(self, args: _WorkerArgs, n: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.procs = []
        self.reaped: set[int] = set()
        self.notes: list[str] = []
        for i in range(1, n):
            seed = None if args.seed is None else args.seed + i  # not the parent's samples
            w = _WorkerArgs(**{**args.__dict__, "index": i, "seed": seed})
            p = ctx.Process(target=_worker_main, args=(w,), name=f"imgtune-worker-{i}")
            p.start()
            self.procs.append(p)

    def reap(self, study) -> None:
        """Fail, and queue again, the RUNNING trials of workers that have died (without waiting
        for their heartbeat's grace: this process saw them go)."""
        host = _worker_tag().rsplit(":", 1)[0]
        for i, p in enumerate(self.procs, start=1):
            if p.exitcode is None or p.pid in self.reaped:
                continue
            self.reaped.add(p.pid)
            if p.exitcode not in (0, 130):  # 130: stopped by Ctrl-C, as this process was
                how = (
                    f"was killed by signal {-p.exitcode}"
                    if p.exitcode < 0
                    else f"exited with status {p.exitcode}"
                )
                n = _fail_trials_of(study, f"{host}:{p.pid}")
                self.notes.append(
                    f"worker {i} (pid {p.pid}) {how}"
                    + (f"; its running trial was failed and queued again ({n})" if n else "")
                )

    def stop(self) -> None:
        """Ask the workers to stop (Ctrl-C's signal: a trial in flight is failed cleanly)."""
        import signal

        for p in self.procs:
            if p.exitcode is None:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGINT)

    def join(self, study, *, stopping: bool) -> None:
        for p in self.procs:
            p.join(30 if stopping else None)
            if p.exitcode is None:
                p.terminate()
                p.join(10)
            if p.exitcode is None:
                p.kill()
                p.join()
        self.reap(study)


def _fail_trials_of(study, worker: str) -> int:
    """Fail, and queue again, the RUNNING trials that `worker` (host:pid) started."""
    import optuna

    from .storage import _retry_callback

    n = 0
    retry = _retry_callback()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != worker:
            continue
        try:
            frozen = study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished or failed meanwhile
        retry(study, frozen)
        n += 1
    return n


def _open_study(backend, name: str, sampler, attrs: dict, output: dict, *, where: str):
    """Create or load the study and check it was made for these images, target, search space
    and outputs (a study made before `output` was recorded gets it now)."""
    import optuna

    study = optuna.create_study(
        study_name=name, storage=backend, direction="minimize", sampler=sampler,
        load_if_exists=True,
    )  # fmt: skip
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", attrs)
        study.set_user_attr("imgtune_version", __import__("optimizer").__version__)
    elif stored != attrs:
        changed = [k for k in attrs if stored.get(k) != attrs[k]]
        raise StudyMismatchError(
            f"study '{name}' in {where} was made for a different {', '.join(changed)}; "
            f"rerun with --new-study to start over, or --study-name NAME for a separate study"
        )
    out = study.user_attrs.get("output")
    if out is None:
        study.set_user_attr("output", output)
    else:
        changed = [k for k in ("sizes", "background") if out.get(k) != output[k]]
        if changed:
            what = " and ".join("output sizes" if k == "sizes" else k for k in changed)
            raise StudyMismatchError(
                f"study '{name}' in {where} was made for different {what} (--max-width, "
                "--max-height, --background); rerun with --new-study to start over, or "
                "--study-name NAME for a separate study"
            )
    return study


def _run_goal(study, trials: int) -> tuple[int, bool]:
    """How many finished trials this run aims for, and whether it joins a run in progress: a
    study whose last run set a goal it has not reached, with trials running now (other workers
    on a shared storage), is joined at that goal; otherwise the goal is the finished trials
    plus `trials`."""
    finished, running = _counts(study)
    run = study.user_attrs.get("run") or {}
    goal = run.get("goal") if isinstance(run, dict) else None
    if isinstance(goal, int) and finished < goal and running > 0:
        return goal, True
    goal = finished + max(0, trials)
    study.set_user_attr("run", {"goal": goal})
    return goal, False


def run_study(
    images: ImageSet,
    target: Target,
    space: SearchSpace,
    *,
    trials: int = 20,
    timeout: float | None = None,
    seed: int | None = None,
    aggregate: str = "min",
    storage: Any = None,
    study_name: str = "imgtune",
    new_study: bool = False,
    strategy: Strategy = "bisect",
    jobs: int = 1,
    workers: int = 1,
    heartbeat: int | None = None,
    rebuild: ImageSetSpec | None = None,
    on_trial: Callable[[Evaluation], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> StudyResult:
    """Run (or resume) the Optuna study of `images`; returns the smallest feasible recipe found.

    `strategy="bisect"` lets Optuna sample the recipe (codec, options, filter, sharpening) and
    finds each recipe's quality with `bisect_quality`; `"tpe"` lets it sample every dimension
    (more trials for the same result: benchmarks/RESULTS.md). `seed` seeds Optuna's sampler, so
    a study repeats on the same machine (with one worker). `storage`: an Optuna storage URL, a
    journal file's path, or a `storage.StorageSpec` (None: in memory).

    The run aims for `trials` more finished trials than the study has (or joins the goal of a
    run in progress on a shared storage: `_run_goal`), and every worker runs trials until the
    study holds that many. `workers` > 1 adds that many processes less one (built from
    `rebuild`) on a shared storage; `heartbeat` (seconds, shared storages) lets a dead worker's
    trial be failed and queued again. `on_progress(finished, goal)` follows the whole study.
    """
    import optuna

    from .storage import DEFAULT_HEARTBEAT, StorageSpec, fail_orphans

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _hide_surplus_logs()
    for c in space.codecs:
        if not available_codecs().get(c):
            raise UsageError(f"codec {c} is not available in this Pillow")
    if images.has_alpha and images.background is None and "jpeg" in space.codecs:
        raise UsageError("the set has images with transparency: JPEG needs a background colour")
    check_aggregate(aggregate)
    if strategy not in STRATEGIES:
        raise UsageError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if workers < 1 or jobs < 1:
        raise UsageError(f"workers and jobs must be at least 1, got {workers} and {jobs}")
    spec = storage if isinstance(storage, StorageSpec) else StorageSpec.parse(storage)
    if workers > 1 and not spec.shared:
        raise UsageError(
            f"--workers {workers} needs a storage that several processes can write: a journal "
            f"file or a database server, not {'memory' if spec.kind == 'memory' else 'SQLite'} "
            f"({spec.display}); --jobs N runs parallel trials in one process"
        )
    if workers > 1 and rebuild is None:
        raise ValueError("workers > 1 needs `rebuild`, how a worker process builds the images")
    if spec.shared and heartbeat is None:
        heartbeat = DEFAULT_HEARTBEAT
    attrs = _study_attrs(images, target, aggregate=aggregate, space=space)
    attrs["strategy"] = strategy
    # As the storage will give it back (tuples become lists): compare like with like.
    attrs = json.loads(json.dumps(attrs))
    output = _output_attrs(images)
    n_startup = min(10, max(4, trials // 4))
    t0 = time.perf_counter()
    deadline = None if timeout is None else time.time() + timeout
    notes: list[str] = []
    # SQLite takes one writer process: a second `tune` on the same file would race Optuna's
    # schema creation and lose trials. It is refused with who holds it (threads: --jobs).
    with _study_lock(spec, study_name):
        backend = spec.open(heartbeat=heartbeat if spec.shared else None)
        if new_study:
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=study_name, storage=backend)
        study = _open_study(
            backend, study_name, _sampler(seed, n_startup), attrs, output, where=spec.display
        )
        if spec.kind == "sqlite":
            # Under the run lock no other process runs this study: a RUNNING trial was left by
            # a killed run. It is failed and queued again, like a dead worker's.
            n = fail_orphans(study)
            if n:
                notes.append(f"{n} trial(s) left running by a stopped run were queued again")
        goal, joined = _run_goal(study, trials)
        if joined:
            notes.append(
                f"joined the run in progress on study '{study_name}': trials until the study "
                f"has {goal} finished"
            )
        objective = _objective(
            images, target, space, strategy=strategy, aggregate=aggregate, goal=goal,
            on_trial=on_trial,
        )  # fmt: skip
        pool = None
        threads = None
        if workers > 1:
            import torch

            threads = torch.get_num_threads()
            share = max(1, (os.cpu_count() or 1) // workers)
            args = _WorkerArgs(
                0, rebuild, spec, heartbeat, study_name, target, space, strategy, aggregate,
                attrs, goal, jobs, seed, n_startup, deadline, os.getpid(), share,
            )  # fmt: skip
            pool = _Workers(args, workers)
            torch.set_num_threads(share)

        def check() -> bool:
            if pool is not None:
                pool.reap(study)
            return True

        try:
            interrupted = _work(
                study, objective, goal=goal, jobs=jobs, deadline=deadline,
                on_progress=on_progress, check=check,
            )  # fmt: skip
        except BaseException:
            if pool is not None:
                pool.stop()
                pool.join(study, stopping=True)
            raise
        finally:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
        if pool is not None:
            if interrupted:
                pool.stop()
            pool.join(study, stopping=interrupted)
            notes.extend(pool.notes)
        result = _result(
            study, images, target, aggregate=aggregate, storage=spec.display, name=study_name,
            t0=t0,
        )  # fmt: skip
        result.interrupted = interrupted
        result.goal = goal
        result.workers = workers
        result.notes = notes
        return result


def _study_lock(storage: Any, study_name: str) -> contextlib.AbstractContextManager:
    """A run lock beside an SQLite study file (no lock for memory, journal or server
    storages: those take many processes)."""
    from .storage import StorageSpec

    spec = storage if isinstance(storage, StorageSpec) else StorageSpec.parse(storage)
    path = spec.sqlite_path
    if not path:
        return contextlib.nullcontext()
    from .locks import RunLock

    return RunLock(
        Path(path + ".lock"),
        f"study '{study_name}' ({spec.display})",
        hint="an SQLite study takes one process at a time: --jobs N runs parallel trials in "
        "one process",
    )


def _result(study, images, target, *, aggregate, storage, name, t0) -> StudyResult:
    import optuna

    s = optuna.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    done = [t for t in all_trials if t.state == s.COMPLETE]
    pruned = sum(t.state == s.PRUNED for t in all_trials)
    infeasible = sum(t.user_attrs.get("violation", 0) > 0 for t in done)
    encodes, hits = images.encodes, images.cache_hits  # the search's own counts
    best = closest = None
    try:
        chosen = study.best_trial
    except ValueError:  # no feasible trial: report the one that came closest
        chosen = min(done, key=lambda t: t.user_attrs.get("violation", math.inf), default=None)
    if chosen is not None:
        full = evaluate(
            images,
            Candidate.from_dict(chosen.user_attrs["candidate"]),
            target,
            aggregate=aggregate,
            stop_early=False,
        )
        if full.feasible:
            best = full
        else:
            closest = full
    return StudyResult(
        name,
        storage,
        best,
        closest,
        len(all_trials),
        pruned,
        infeasible,
        encodes,
        hits,
        time.perf_counter() - t0,
        study,
        finished=len(done) + pruned,
        failed=sum(t.state == s.FAIL for t in all_trials),
    )


def study_name_for(folder: Path, target: Target, aggregate: str) -> str:
    digest = hashlib.sha256(f"{target}|{aggregate}".encode()).hexdigest()[:8]
    return f"{folder.resolve().name}-{digest}"
