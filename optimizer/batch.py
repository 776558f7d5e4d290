"""Folder jobs: `optimize` (the smallest passing output per image, content-adaptive) and `apply`
(a preset's recipe on every image, optionally refined per image), safe and resumable.

Per image and codec, quality is searched in one dimension, as ab-av1 and Av1an search CRF: a
first probe at a *predicted* quality (the preset's, else what earlier images of the run needed),
a step out to bracket the lowest passing quality, then interpolation between the two bracketing
probes (regula falsi on the target margin) until the bracket is within `tolerance` quality
steps. A codec is dropped as soon as it cannot win: a failing probe whose file is already
larger than the best passing output so far means every passing quality of that codec is larger
still (bytes grow with quality). The answer is always a probe that was itself scored passing.

Rules (DESIGN.md section 3): sources are never touched; every output is written atomically; an
output that misses the target is never written unless `best_effort` (then it is flagged); an
output is never larger than its source (the source is copied instead, metadata counted, since
whole files are compared). The output tree mirrors the input, the extension follows the codec.
Every write, rename and delete goes through `outdir.OutputDir` (never outside OUT, never through
a link), under OUT's lock (one run per OUT); a full or read-only OUT stops the run whole.

Resumable: `OUT/.imgtune-manifest.jsonl` gets one line per finished image, appended after its
output is in place: the source's hash, the job's key (target, codecs, recipe, metric spec...),
the output's name, size and hash. A rerun skips an image whose line matches and whose output is
intact, without decoding it, and seeds its quality predictions from the manifest, so a resumed
run makes the same choices as an uninterrupted one (with `jobs=1`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .codecs import CODECS, EncodeSettings
from .images import DEFAULT_MAX_PIXELS, ImageError, iter_image_files, load
from .manifest import MANIFEST_NAME, Manifest
from .outdir import (
    OutputDir,
    OutputUnwritableError,
    UnsafePathError,
    check_roots,
    output_names,
)
from .search import Candidate, ImageSet
from .targets import Target

__all__ = [
    "MANIFEST_NAME",
    "STATUSES",
    "ImageOutcome",
    "JobSpec",
    "Manifest",
    "QualityPredictor",
    "RunSummary",
    "output_names",
    "process_image",
    "run_folder",
]

#: written: an encode that meets the target; kept: the source copied (nothing smaller passed, or
#: nothing passed without --best-effort: then also `missed`); best_effort: written though it
#: misses (flagged); skipped: unreadable input; up_to_date: done by an earlier run
STATUSES = ("written", "kept", "missed", "best_effort", "skipped", "up_to_date")
#: first guesses (no preset, no earlier image) and the step out from them
DEFAULT_START = {"jpeg": 80, "webp": 80, "avif": 65, "jxl": 75}
DEFAULT_STEP = 8


@dataclass(frozen=True)
class JobSpec:
    """What a run does to every image. Its `key` decides whether an earlier output still holds."""

    mode: str  # "optimize" or "apply"
    target: Target
    #: per codec, the recipe searched or applied (quality = the preset's, or a placeholder)
    bases: tuple[Candidate, ...]
    search: bool = True  # optimize, or apply --refine; False: the recipe's quality as is
    best_effort: bool = False
    background: tuple[int, int, int] | None = None
    max_width: int | None = None
    max_height: int | None = None
    tolerance: int = 3
    #: per codec (lo, hi) quality bounds of the search
    bounds: tuple[tuple[str, tuple[int, int]], ...] = ()

    def bounds_for(self, codec: str) -> tuple[int, int]:
        return dict(self.bounds).get(codec, CODECS[codec].quality_range)

    def key(self, metric_spec: dict[str, Any]) -> str:
        blob = json.dumps(
            {
                "mode": self.mode,
                "target": str(self.target),
                "bases": [b.as_dict() for b in self.bases],
                "search": self.search,
                "best_effort": self.best_effort,
                "background": self.background,
                "max": [self.max_width, self.max_height],
                "tolerance": self.tolerance,
                "bounds": self.bounds,
                "metrics": metric_spec,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ImageOutcome:
    """One image's result: what NDJSON prints, the CSV report holds and the manifest keeps."""

    source: str  # path relative to SRC
    status: str
    source_bytes: int = 0
    output: str | None = None  # path relative to OUT
    output_bytes: int = 0
    codec: str | None = None
    quality: int | None = None
    params: dict[str, Any] | None = None
    scores: dict[str, float] = field(default_factory=dict)
    meets_target: bool | None = None
    encodes: int = 0
    error: str | None = None

    @property
    def saved_bytes(self) -> int:
        return self.source_bytes - self.output_bytes if self.output else 0

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["saved_bytes"] = self.saved_bytes
        d["ratio"] = (
            round(self.output_bytes / self.source_bytes, 6)
            if self.output and self.source_bytes
            else None
        )
        d["scores"] = {k: (None if math.isinf(v) else v) for k, v in self.scores.items()}
        return d


class QualityPredictor:
    """Per codec, the quality earlier images needed (median of the last few) and how far to step
    to bracket the next one (their spread); which codec won most often is tried first."""

    def __init__(self, start: dict[str, int] | None = None, window: int = 25) -> None:
        self.start = {**DEFAULT_START, **(start or {})}
        self.window = window
        self.history: dict[str, deque[int]] = {}
        self.wins: dict[str, int] = {}
        self._lock = threading.Lock()

    def predict(self, codec: str) -> tuple[int, int]:
        with self._lock:
            seen = sorted(self.history.get(codec, ()))
        if not seen:
            return self.start.get(codec, 75), DEFAULT_STEP
        median = seen[len(seen) // 2]
        spread = seen[(3 * len(seen)) // 4] - seen[len(seen) // 4]
        return median, min(max(3, spread + 2), 12)

    def seen(self, codec: str) -> bool:
        with self._lock:
            return bool(self.history.get(codec))

    def record(self, codec: str, quality: int, won: bool) -> None:
        with self._lock:
            self.history.setdefault(codec, deque(maxlen=self.window)).append(quality)
            if won:
                self.wins[codec] = self.wins.get(codec, 0) + 1

    def order(self, codecs: Sequence[str]) -> list[str]:
        with self._lock:
            return sorted(codecs, key=lambda c: -self.wins.get(c, 0))


@dataclass
class _Probe:
    quality: int
    bytes: int
    values: dict[str, float]
    feasible: bool
    margin: float  # relative: > 0 passes with room, < 0 misses by that much


def _margin(target: Target, values: dict[str, float]) -> float:
    return min(c.margin(values[c.metric]) / max(abs(c.value), 1e-9) for c in target.clauses)


def _elasticity(probes: list[tuple[Candidate, _Probe]]) -> float | None:
    """How fast bytes fall as the target margin falls, d ln(bytes) / d margin, from pairs of
    this image's probes of one recipe (median); None before there are two."""
    by_recipe: dict[tuple, list[_Probe]] = {}
    for c, p in probes:
        by_recipe.setdefault((c.codec, c.options), []).append(p)
    ks = []
    for ps in by_recipe.values():
        for a, b in zip(ps, ps[1:], strict=False):
            if abs(a.margin - b.margin) > 1e-3 and a.bytes > 0 and b.bytes > 0:
                k = math.log(a.bytes / b.bytes) / (a.margin - b.margin)
                if k > 0:
                    ks.append(k)
    return sorted(ks)[len(ks) // 2] if ks else None


#: a passing probe is dropped when its bytes, extrapolated down to the target, still exceed the
#: best output by this factor (a heuristic, hence the slack)
PRUNE_SLACK = 1.1
#: margin change per quality step below which quality is judged not to matter
FLAT = 2e-4


def _search_codec(
    images: ImageSet,
    base: Candidate,
    target: Target,
    q0: int,
    step: int,
    bounds: tuple[int, int],
    tolerance: int,
    best_bytes: float,
    probes: list[tuple[Candidate, _Probe]],
    *,
    flat_gives_up: bool = False,
) -> _Probe | None:
    """The lowest passing quality of `base`'s recipe within `tolerance`, or None when none
    passes in `bounds` or the codec cannot beat `best_bytes`. Every probe is appended to
    `probes` (the closest miss is the best-effort fallback). `flat_gives_up`: two misses whose
    margins hardly differ end the search (the caller has another recipe to try, e.g. 4:4:4)."""
    lo, hi = bounds
    seen: dict[int, _Probe] = {}
    k = _elasticity(probes) if math.isfinite(best_bytes) else None

    def probe(q: int) -> _Probe:
        if q not in seen:
            opts = EncodeSettings.make(base.codec, q, **dict(base.options)).options
            cand = Candidate(base.codec, q, base.resize_filter, base.sharpen, opts)
            nbytes, values = images.score(0, cand)
            p = _Probe(q, nbytes, values, target.met(values), _margin(target, values))
            seen[q] = p
            probes.append((cand, p))
        return seen[q]

    def hopeless(p: _Probe) -> bool:
        if not p.feasible:
            # A miss already at least as large as the best: passing needs more quality, and
            # more quality means more bytes. Exact (bytes grow with quality).
            return p.bytes >= best_bytes
        # A pass larger than the best: would it get under the best before it stops passing?
        # Estimated with the bytes-per-margin rate of this image's other probes.
        return k is not None and p.bytes * math.exp(-k * p.margin) > PRUNE_SLACK * best_bytes

    def toward_zero(a: _Probe, b: _Probe) -> float:
        """Quality where the margin line through a and b crosses zero (secant)."""
        if a.margin == b.margin:
            return math.nan
        return a.quality + (b.quality - a.quality) * (-a.margin) / (b.margin - a.margin)

    first = probe(min(max(q0, lo), hi))
    if hopeless(first):
        return None
    good = first if first.feasible else None
    bad = None if first.feasible else first
    last: _Probe | None = None
    while good is None or bad is None:  # step out until the lowest pass is bracketed
        edge = bad if good is None else good
        direction = 1 if good is None else -1
        if (direction > 0 and edge.quality >= hi) or (direction < 0 and edge.quality <= lo):
            return good  # misses at the top (None) / passes at the bottom of the range
        q = edge.quality + direction * step
        if last is not None:  # two probes on one side: aim at the zero crossing, a step past
            if (
                flat_gives_up
                and direction > 0
                and abs(edge.margin - last.margin) < FLAT * abs(edge.quality - last.quality)
            ):
                return None  # quality barely moves the score: quality is not what is missing
            guess = toward_zero(last, edge)
            if math.isfinite(guess):
                aim = round(guess) + direction
                q = edge.quality + direction * min(max(direction * (aim - edge.quality), 1), step)
                if direction > 0 and aim >= hi:
                    q = hi  # the crossing lies past the range: one probe at the top settles it
        p = probe(min(max(q, lo), hi))
        if hopeless(p):
            return None
        if p.feasible:
            good = p if good is None or p.quality < good.quality else good
        else:
            bad = p if bad is None or p.quality > bad.quality else bad
        last = edge
        step *= 2
    while good.quality - bad.quality > tolerance:
        mid = (good.quality + bad.quality) // 2
        guess = toward_zero(bad, good) if good.margin > bad.margin else math.nan
        q = round(guess) if math.isfinite(guess) else mid
        q = min(max(q, bad.quality + 1), good.quality - 1)
        p = probe(q)
        if p.feasible:
            good = p
        else:
            if hopeless(p):
                return None
            bad = p
    return good


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expected_outputs(stem: str, rel: str) -> set[str]:
    """The names this image's output can have: one per codec, or the source's own suffix."""
    return {stem_with(stem, c.extension) for c in CODECS.values()} | {
        stem_with(stem, Path(rel).suffix)
    }


def _up_to_date(
    entry: dict[str, Any] | None, job_key: str, src_sha: str, out: OutputDir, stem: str, rel: str
) -> bool:
    """Whether the manifest's line for this image still holds: same job, same source, and its
    own output (by name) intact (by hash)."""
    if not entry or entry["job"] != job_key or entry["sha256"] != src_sha:
        return False
    if entry["output"] not in _expected_outputs(stem, rel):
        return False  # a line naming another file is not this image's
    return out.sha256(entry["output"], size=entry["output_bytes"]) == entry["output_sha256"]


def process_image(
    path: Path,
    rel: str,
    stem: str,
    out_root: Path,
    spec: JobSpec,
    suite,
    predictor: QualityPredictor,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    animated: str = "refuse",
) -> tuple[ImageOutcome, bytes | None]:
    """Search (or apply) one image; returns its outcome and the bytes to write (None: copy the
    source). Writes nothing itself."""
    try:
        src = load(path, max_pixels=max_pixels, min_side=suite.min_side, animated=animated)
    except ImageError as exc:
        return ImageOutcome(rel, "skipped", error=str(exc)), None
    images = ImageSet(
        [src],
        suite,
        max_width=spec.max_width,
        max_height=spec.max_height,
        background=spec.background,
        keep_encoded=True,
    )
    resized = images.resized
    bases = [b for b in spec.bases if CODECS[b.codec].supports_alpha or not src.has_alpha]
    if src.has_alpha and spec.background is not None:
        bases = list(spec.bases)  # JPEG allowed: flattened onto the background
    outcome = ImageOutcome(rel, "kept", source_bytes=src.file_bytes)
    if not bases:
        outcome.status, outcome.error = (
            "skipped",
            (f"{path}: has transparency and the allowed codecs have none; give --background"),
        )
        return outcome, None
    w, h = images.items[0].size
    fits = [b for b in bases if max(w, h) <= CODECS[b.codec].max_side]
    if not fits:
        limits = ", ".join(f"{b.codec} {CODECS[b.codec].max_side}" for b in bases)
        outcome.status = "skipped"
        outcome.error = (
            f"{path}: {w}x{h} has a side longer than the allowed codecs hold ({limits} px); "
            "fit it with --max-width/--max-height or allow another codec"
        )
        return outcome, None
    bases = fits
    probes: list[tuple[Candidate, _Probe]] = []
    best: tuple[Candidate, _Probe] | None = None
    # Beat the source (an output never exceeds it) unless resizing makes it incomparable.
    best_bytes = float("inf") if resized else float(src.file_bytes)
    wins: dict[str, int] = {}
    for base in [
        b for c in predictor.order([b.codec for b in bases]) for b in bases if b.codec == c
    ]:
        if spec.search:
            q0, step = predictor.predict(base.codec)
            if spec.mode == "apply" and not predictor.seen(base.codec):
                q0 = base.quality  # --refine starts at the preset's quality
            found = _search_codec(
                images,
                base,
                spec.target,
                q0,
                step,
                spec.bounds_for(base.codec),
                spec.tolerance,
                best_bytes,
                probes,
                flat_gives_up=dict(base.options).get("subsampling") == "4:2:0" and not src.is_grey,
            )
        else:  # the recipe's own quality: one probe, kept if it passes
            q = base.quality
            found = _search_codec(images, base, spec.target, q, 1, (q, q), 0, math.inf, probes)
        if found is not None:
            wins[base.codec] = found.quality
            if found.bytes < best_bytes or (best is None and resized):
                best_bytes = found.bytes
                best = (next(c for c, p in probes if p is found), found)
    if best is None and not any(p.feasible for _, p in probes) and not src.is_grey:
        # Nothing passed, even at the top: on flat colour and small text the culprit is usually
        # chroma subsampling, not quality. Try the codecs that have 4:4:4 with it.
        for base in bases:
            opts = dict(base.options)
            if opts.get("subsampling") != "4:2:0":
                continue
            opts["subsampling"] = "4:4:4"
            full = Candidate(
                base.codec,
                base.quality,
                base.resize_filter,
                base.sharpen,
                EncodeSettings.make(base.codec, base.quality, **opts).options,
            )
            q0, step = predictor.predict(base.codec)
            found = _search_codec(
                images,
                full,
                spec.target,
                q0 if spec.search else base.quality,
                step,
                spec.bounds_for(base.codec) if spec.search else (base.quality,) * 2,
                spec.tolerance,
                best_bytes,
                probes,
            )
            if found is not None and found.bytes < best_bytes:
                best_bytes = found.bytes
                best = (next(c for c, p in probes if p is found), found)
    winner = best[0].codec if best else None
    for codec, q in wins.items():
        predictor.record(codec, q, codec == winner)
    outcome.encodes = images.encodes
    if best is not None:
        cand, p = best
        _, data = images.render(images.items[0], cand)
        return _fill(outcome, "written", stem, cand, p, True), data
    # Nothing passed and beat the source. Did anything pass at all?
    passing = any(p.feasible for _, p in probes)
    # A search stopped by the source's size: passing would take more bytes than the original.
    too_large = not resized and any(p.bytes >= src.file_bytes for _, p in probes)
    if passing or too_large:
        # The original is kept: it is the reference, so it meets any target (no scores needed).
        outcome.meets_target = True
        outcome.status = "kept"
        outcome.output = stem_with(stem, Path(rel).suffix)
        outcome.output_bytes = src.file_bytes
        return outcome, None
    if not probes:
        outcome.status, outcome.error = "skipped", f"{path}: no codec could be tried"
        return outcome, None
    c, p = max(probes, key=lambda cp: cp[1].margin)  # the closest miss
    if spec.best_effort:
        _, data = images.render(images.items[0], c)
        if resized or len(data) < src.file_bytes:
            return _fill(outcome, "best_effort", stem, c, p, False), data
    outcome.status = "missed"
    outcome.meets_target = False
    outcome.scores = dict(p.values)
    outcome.codec, outcome.quality, outcome.params = c.codec, c.quality, c.as_dict()
    outcome.output = stem_with(stem, Path(rel).suffix)
    outcome.output_bytes = src.file_bytes
    outcome.error = (
        f"{path}: no {'/'.join(b.codec for b in bases)} encode met {spec.target}; "
        f"closest: {c.codec} q{c.quality}"
        + "".join(f", {k}={p.values[k]:.4g}" for k in spec.target.metrics)
        + ("; original kept" if not spec.best_effort else "; original kept (smaller)")
    )
    return outcome, None


def stem_with(stem: str, suffix: str) -> str:
    return stem if stem.endswith(suffix) else stem + suffix


def _fill(o: ImageOutcome, status: str, stem: str, cand: Candidate, p: _Probe, meets: bool):
    o.status = status
    o.output = stem_with(stem, CODECS[cand.codec].extension)
    o.output_bytes = p.bytes
    o.codec, o.quality, o.params = cand.codec, cand.quality, cand.as_dict()
    o.scores = dict(p.values)
    o.meets_target = meets
    return o


@dataclass
class RunSummary:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    source_bytes: int = 0
    output_bytes: int = 0
    encodes: int = 0
    searched: int = 0  # images encoded in this run (not up to date, not skipped)
    interrupted: bool = False
    seconds: float = 0.0
    manifest_problems: int = 0  # invalid manifest lines ignored (their images redone)

    @property
    def saved_bytes(self) -> int:
        return self.source_bytes - self.output_bytes

    @property
    def encodes_per_image(self) -> float:
        return self.encodes / self.searched if self.searched else 0.0

    def add(self, o: ImageOutcome) -> None:
        self.counts[o.status] += 1
        if o.status == "skipped":
            return
        self.source_bytes += o.source_bytes
        self.output_bytes += o.output_bytes
        if o.status != "up_to_date":
            self.encodes += o.encodes
            self.searched += 1

    @property
    def exit_code(self):
        from .outcome import RunCounts

        c = self.counts
        done = c["written"] + c["kept"] + c["up_to_date"]
        return RunCounts(
            done=done, skipped=c["skipped"], missed=c["missed"] + c["best_effort"]
        ).exit_code


def run_folder(
    src_root: Path,
    out_root: Path,
    spec: JobSpec,
    suite,
    *,
    jobs: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    animated: str = "refuse",
    follow_symlinks: bool = False,
    predictor: QualityPredictor | None = None,
    on_result: Callable[[ImageOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> RunSummary:
    """Process every image under `src_root` into `out_root`. `on_result` is called in input
    order, from the calling thread. Ctrl-C: images in flight finish (whole files only), the
    rest is left for the next run; the summary says `interrupted`.

    Holds `out_root`'s lock for the run (`AlreadyRunningError` if another run has it). Raises
    `OutputUnwritableError` when OUT takes no more writes (full disk, read-only): the images
    in flight finish or fail whole, the manifest stays valid, the same call resumes later."""
    t0 = time.perf_counter()
    src_root, out_root = src_root.resolve(), out_root.resolve()
    check_roots(src_root, out_root)
    out = OutputDir(out_root)
    with out.lock():
        out.clean_partials()  # under the lock: a running job's temp files are its own
        manifest = Manifest(out)
        if on_warning:
            for problem in manifest.problems:
                on_warning(problem)
            if manifest.bad_lines > len(manifest.problems):
                more = manifest.bad_lines - len(manifest.problems)
                on_warning(f"{manifest.path}: {more} more invalid lines ignored")
        listed = list(iter_image_files(src_root, follow_symlinks=follow_symlinks))
        if on_start:
            on_start(len(listed))
        job = _FolderJob(
            src_root=src_root,
            out=out,
            manifest=manifest,
            spec=spec,
            suite=suite,
            predictor=predictor or QualityPredictor(),
            names=output_names([p for p in listed if isinstance(p, Path)], src_root),
            key=spec.key(suite.spec()),
            max_pixels=max_pixels,
            animated=animated,
        )
        job.replay_history()
        summary = _drive(job.work, listed, jobs, on_result)
    summary.manifest_problems = manifest.bad_lines
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass
class _FolderJob:
    """One run's per-image work: what every image of it shares."""

    src_root: Path
    out: OutputDir
    manifest: Manifest
    spec: JobSpec
    suite: Any
    predictor: QualityPredictor
    names: dict[Path, str]  # source -> output stem
    key: str  # the job's settings, as the manifest records them
    max_pixels: int
    animated: str

    def replay_history(self) -> None:
        """A resumed run predicts qualities as the killed one did."""
        for job, codec, quality in self.manifest.history:
            if job == self.key:
                self.predictor.record(codec, quality, True)

    def work(self, item: Path | ImageError) -> ImageOutcome:
        if isinstance(item, ImageError):  # a link out of SRC: reported, never read
            return ImageOutcome(
                item.path.relative_to(self.src_root).as_posix(), "skipped", error=str(item)
            )
        rel = item.relative_to(self.src_root).as_posix()
        try:
            return self._work(item, rel)
        except OutputUnwritableError:
            raise  # stops the run: every other image would fail the same way
        except UnsafePathError as exc:
            return ImageOutcome(rel, "skipped", error=f"{item}: output not written: {exc}")
        except Exception as exc:  # one image's surprise must not cost the others their run
            return ImageOutcome(
                rel,
                "skipped",
                error=f"{item}: failed ({type(exc).__name__}: {exc}); its output was not "
                "written (please report this)",
            )

    def _work(self, path: Path, rel: str) -> ImageOutcome:
        stem = self.names[path]
        try:
            sha = _sha256(path.read_bytes())
        except OSError:
            sha = None  # unreadable (a broken link, a folder): `load` names the reason below
        entry = self.manifest.lookup(rel)
        if sha and _up_to_date(entry, self.key, sha, self.out, stem, rel):
            o = ImageOutcome(**{k: entry[k] for k in _OUTCOME_FIELDS if k in entry})
            o.status, o.encodes = "up_to_date", 0
            return o
        outcome, payload = process_image(
            path,
            rel,
            stem,
            self.out.root,
            self.spec,
            self.suite,
            self.predictor,
            max_pixels=self.max_pixels,
            animated=self.animated,
        )
        if outcome.status == "skipped" or outcome.output is None:
            return outcome
        body = path.read_bytes() if payload is None else payload
        if payload is None:
            outcome.output_bytes = len(body)
        self.out.write_bytes(outcome.output, body)
        old = entry["output"] if entry else None
        if old and old != outcome.output and old in _expected_outputs(stem, rel):
            # A stale output of an earlier job: removed only if it is still what we wrote.
            self.out.remove(old, sha256=entry["output_sha256"])
        self.manifest.append(
            {
                **outcome.record(),
                "job": self.key,
                "sha256": sha or _sha256(path.read_bytes()),
                "output_sha256": _sha256(body),
            }
        )
        return outcome


def _drive(
    work: Callable[[Any], ImageOutcome],
    items: Sequence[Any],
    jobs: int,
    on_result: Callable[[ImageOutcome], None] | None,
) -> RunSummary:
    """`work` on every item in threads, at most 2 * jobs in flight whatever the folder's size;
    results in input order. Ctrl-C: the images in flight finish, the summary says so."""
    summary = RunSummary()
    pending: deque[Future] = deque()
    executor = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="imgtune")
    try:
        it: Iterator[Any] = iter(items)
        while True:
            while len(pending) < 2 * max(1, jobs):
                item = next(it, None)
                if item is None:
                    break
                pending.append(executor.submit(work, item))
            if not pending:
                break
            o = pending.popleft().result()
            summary.add(o)
            if on_result:
                on_result(o)
    except KeyboardInterrupt:
        summary.interrupted = True
        for f in pending:
            f.cancel()
    except OutputUnwritableError:
        for f in pending:  # the images in flight finish or fail whole; no new ones start
            f.cancel()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return summary


_OUTCOME_FIELDS = (
    "source",
    "status",
    "source_bytes",
    "output",
    "output_bytes",
    "codec",
    "quality",
    "params",
    "scores",
    "meets_target",
    "encodes",
    "error",
)
