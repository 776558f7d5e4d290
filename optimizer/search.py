"""Scoring recipes on an image set: the set (`ImageSet`: references prepared once, encodes and
scores cached in memory and on disk), one recipe's evaluation over it (`evaluate`, hardest image
first, stopping as soon as the outcome is known), its lowest passing quality (`bisect_quality`),
and the space a study samples recipes from (`SearchSpace`). The study itself is `study`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import codecs, transforms
from .codecs import CODECS, EncodeSettings
from .images import SourceImage
from .metrics.catalog import OUTPUTS
from .outdir import OutputDir, output_names
from .quality_search import Probe, lowest_passing
from .recipe import Candidate
from .targets import Target

__all__ = [
    "Evaluation",
    "ImageSet",
    "STRATEGIES",
    "ScoreCache",
    "SearchSpace",
    "bisect_quality",
    "evaluate",
]


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
    #: the file name, and its width where the set has each image at several ("a.png@480w")
    label: str = ""

    @property
    def channels(self) -> int:
        return self.source.channels


#: the names of an image's outputs at several widths, without the extension (`optimize
#: --name-pattern`'s default; `tune --widths --out` and `apply` name theirs so too)
DEFAULT_NAME_PATTERN = "{stem}-{width}w"


def widths_for(width: int, widths: Sequence[int]) -> list[int]:
    """The `widths` an image `width` px wide is made at: those no wider than it, and its own
    width where one asked for is wider (never upscaled: the largest screens get all it has)."""
    out = [w for w in sorted(set(widths)) if w <= width]
    if max(widths) > width and width not in out:
        out.append(width)
    return out


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
        widths: Sequence[int] | None = None,
    ):
        """`cache_path`: an SQLite file that keeps encode sizes and scores across runs, keyed by
        (image hash, output size, background, recipe, metric spec), so a resumed or re-targeted
        run pays nothing for a recipe it has scored before. `keep_encoded`: keep every encode's
        bytes in memory (`encoded`), so the chosen one is written without encoding it again (for
        one-image sets searched per image). `widths`: each source at each of these widths
        (`widths_for`: never upscaled) instead of one size, as an item of its own whose hash is
        the source's and its width ("…@480w"), so its scores and encodes are its own."""
        if not sources:
            raise ValueError("an image set needs at least one image")
        self.suite = suite
        self.background = background
        self.items: list[_Item] = []
        self.widths = tuple(widths or ())
        sized: list[tuple[SourceImage, int | None]] = [(s, max_width) for s in sources]
        if self.widths:
            sized = [
                (replace(s, sha256=f"{s.sha256}@{w}w"), w)
                for s in sources
                for w in widths_for(s.width, self.widths)
            ]
        for src, box in sized:
            size = transforms.fit_size(src.width, src.height, max_width=box, max_height=max_height)
            ref = (
                src.pixels
                if size == (src.width, src.height)
                else transforms.reference(src.pixels, size)
            )
            flat = (
                suite.scorer.prepare(ref, background=background)
                if src.has_alpha and background is not None
                else None
            )
            label = src.path.name + (f"@{size[0]}w" if self.widths else "")
            self.items.append(_Item(src, size, suite.scorer.prepare(ref), flat, label))
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
        # the device and precision too: CPU and GPU scores never share a cache entry
        self._spec = json.dumps(suite.spec(), sort_keys=True)
        # Other tune runs and --workers processes on this folder write the same file.
        self._db = ScoreCache(cache_path) if cache_path is not None else None
        self.box = (max_width, max_height)
        self._default_jpeg: int | None = None

    @property
    def source_bytes(self) -> int:
        """The sources' bytes, each source once (at several widths, it is one file)."""
        return sum({it.source.path: it.source.file_bytes for it in self.items}.values())

    def fingerprint(self) -> list[dict[str, str]]:
        return [{"name": it.label, "sha256": it.source.sha256} for it in self.items]

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

    def render_with(self, idx: int, cand: Candidate, **metadata: bytes) -> bytes:
        """`cand`'s file of image `idx` with `metadata` (icc, exif, xmp) embedded: the same
        encode as `render`'s (the same pixels, settings and encoder), plus those blocks."""
        if not metadata:
            return self.render(self.items[idx], cand)[1]
        px = self._transformed(self.items[idx], cand)
        return codecs.encode(px, cand.settings(), background=self.background, **metadata)

    def encode(self, idx: int, cand: Candidate) -> bytes:
        """`cand`'s file of image `idx`, not scored (a lossless one is compared by its bytes
        first): counted in `encodes` and, with `keep_encoded`, kept, so that scoring or writing
        it later encodes nothing and counts nothing more."""
        item = self.items[idx]
        had = self.encoded is not None and (item.source.sha256, cand) in self.encoded
        _, data = self.render(item, cand)
        if not had:  # a file kept from before is not encoded again
            with self._lock:
                self.encodes += 1
        return data

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
        names = output_names(list(dict.fromkeys(it.source.path for it in self.items)), root)
        written = []
        for it in self.items:
            _, data = self.render(it, cand)
            src = it.source
            keep = (
                not self.widths
                and len(data) >= src.file_bytes
                and it.size == (src.width, src.height)
            )
            ext = src.path.suffix if keep else CODECS[cand.codec].extension
            stem = names[src.path]
            if self.widths:
                stem = DEFAULT_NAME_PATTERN.format(stem=stem, width=it.size[0])
            rel = stem + ("" if stem.endswith(ext) else ext)
            out.write_bytes(rel, src.path.read_bytes() if keep else data)
            written.append(
                {
                    "name": it.label,
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
                if self.encoded is None or key not in self.encoded:
                    self.encodes += 1  # bytes kept by `encode` were counted there
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
        # Through the suite's scorer: on a GPU, one owner batches candidates of every image
        # in flight (metrics.batching); on the CPU, this thread scores it.
        return len(data), self.suite.scorer.score(prepared, decoded).values

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
        per_image[item.label] = {"bytes": nbytes, **values}
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
