"""Folder jobs: `optimize` (the smallest passing output per image, content-adaptive) and `apply`
(a preset's recipe on every image, optionally refined per image), safe and resumable.

`run_folder` walks SRC and hands each image to `image_job.optimize_image` (in threads, at most
2 x jobs in flight whatever the folder's size), then writes what it returns. Sources are never
touched; every output is written atomically; every write, rename and delete goes through
`outdir.OutputDir` (never outside OUT, never through a link), under OUT's lock (one run per OUT);
a full or read-only OUT stops the run whole. The output tree mirrors the input, the extension
follows the codec.

Resumable: `OUT/.imgtune-manifest.jsonl` gets one line per finished image, appended after its
output is in place: the source's hash, the job's key (target, codecs, recipe, metrics...),
the output's name, size and hash. A rerun skips an image whose line matches and whose output is
intact, without decoding it, and replays the qualities the manifest records into the run's
`QualityPredictor`, so a resumed run makes the same choices as an uninterrupted one (`jobs=1`).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .assets import AssetWriter
from .codecs import CODECS
from .image_job import (
    STATUSES,
    ImageOutcome,
    ImageResult,
    Job,
    Status,
    Variant,
    optimize_image,
    stem_with,
)
from .images import ImageError, iter_image_files, shown_size
from .manifest import Manifest
from .outcome import ExitCode, RunCounts
from .outdir import (
    OutputDir,
    OutputUnwritableError,
    UnsafePathError,
    check_roots,
    output_names,
)
from .predictor import QualityPredictor

#: peak bytes an image's search holds per source pixel (decoded source, transformed copy, encoder
#: buffers, prepared reference, metric bands), for the default target, with some room: the
#: measured peaks are in benchmarks/RESULTS.md (python -m benchmarks.bench_image_memory)
WORKING_SET_PER_PIXEL = 100

__all__ = ["RunSummary", "run_folder"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expected_outputs(stem: str, rel: str) -> set[str]:
    """The names this image's output can have: one per codec, or the source's own suffix."""
    return {stem_with(stem, c.extension) for c in CODECS.values()} | {
        stem_with(stem, Path(rel).suffix)
    }


def _up_to_date(
    entry: dict[str, Any] | None, job_key: str, *, src_sha: str, out: OutputDir, stem: str, rel: str
) -> bool:
    """Whether the manifest's line for this image still holds: same job, same source, and its
    own output (by name) intact (by hash)."""
    if not entry or entry["job"] != job_key or entry["sha256"] != src_sha:
        return False
    if entry["output"] not in _expected_outputs(stem, rel):
        return False  # a line naming another file is not this image's
    return out.sha256(entry["output"], size=entry["output_bytes"]) == entry["output_sha256"]


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
    target: str = ""  # the target every output was judged against
    retried: int = 0  # images rerun on another worker after theirs died (--cluster)
    sources: int = 0  # images with outputs (each counted once, however many variants)
    _last: str | None = None

    @property
    def saved_bytes(self) -> int:
        return self.source_bytes - self.output_bytes

    @property
    def encodes_per_image(self) -> float:
        return self.encodes / self.searched if self.searched else 0.0

    def add(self, o: ImageOutcome) -> None:
        self.counts[o.status] += 1
        if o.status == Status.SKIPPED:
            return
        if o.source != self._last:  # an image's variants follow one another
            self.source_bytes += o.source_bytes
            self.sources += 1
        self._last = o.source
        self.output_bytes += o.output_bytes
        if o.status != Status.UP_TO_DATE:
            self.encodes += o.encodes
            self.searched += 1

    @property
    def exit_code(self) -> ExitCode:
        c = self.counts
        done = c["written"] + c["kept"] + c["up_to_date"]
        return RunCounts(
            done=done, skipped=c["skipped"], missed=c["missed"] + c["best_effort"]
        ).exit_code


def run_folder(
    src_root: Path,
    out_root: Path,
    job: Job,
    *,
    suite,
    jobs: int = 1,
    follow_symlinks: bool = False,
    predictor: QualityPredictor | None = None,
    learner: Any = None,
    memory: int | None = None,
    cluster: Any = None,
    on_result: Callable[[ImageOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    html: bool = False,
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
        run = _FolderRun(
            src_root=src_root,
            out=out,
            manifest=manifest,
            job=job,
            predictor=predictor or QualityPredictor(),
            learner=learner,
            names=output_names([p for p in listed if isinstance(p, Path)], src_root),
            # the device and precision too: a resumed run on another device starts over
            key=job.key(suite.spec()),
            spec=suite.spec(),
        )
        if learner is not None:
            # What this OUT's earlier runs of this job stored is learnt again, in order, from
            # their manifest lines: a resumed run starts from what the first run started from.
            learner.begin(_sha256(f"{out_root}\n{run.key}".encode())[:16])
        assets = AssetWriter(out, target=job.goal(), html=html)
        with assets.open():
            summary = _run(run, listed, suite, jobs, memory, cluster, assets.add, on_result)
            if not summary.interrupted:  # else the last complete run's document stays
                assets.commit()
    summary.manifest_problems = manifest.bad_lines
    summary.target = job.goal()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(run, listed, suite, jobs, memory, cluster, add, on_result) -> RunSummary:
    """`run` over `listed` in threads or on `cluster`; each outcome to `add`, then `on_result`."""

    def emitted(o: ImageOutcome) -> None:
        add(o)
        if on_result:
            on_result(o)

    if cluster is None:
        per_pixel = WORKING_SET_PER_PIXEL + suite.working_set_per_pixel
        with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="imgtune") as pool:

            def submit(path, job_, prediction, name, stem, *, pixels=0):
                return pool.submit(
                    optimize_image, path, job_, suite=suite, prediction=prediction,
                    name=name, stem=stem,
                )  # fmt: skip

            try:
                return _drive(
                    run, listed, submit=submit, window=lambda: 2 * max(1, jobs),
                    on_result=emitted,
                    budget_pixels=None if memory is None else memory / per_pixel,
                )  # fmt: skip
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    return cluster.drive(run, listed, _drive, on_result=emitted)


#: image k's first guesses use the results of images [0, horizon(k)): in the first
#: `POWERS_UNTIL` images, every power of two before it (1, 2, 4, ...) or all but the last
#: `PREDICTION_LAG`; after that, all but the last eighth. Fixed, so what a run writes does not
#: depend on --jobs or --cluster, nor on which image finished first; and the lag grows with
#: the folder (up to `MAX_LAG`), so a large cluster finds images to run (at most
#: k - horizon(k) in flight: 125 at image 1,000, 1,250 at image 10,000) and never waits for
#: every image to finish.
PREDICTION_LAG = 16
POWERS_UNTIL = 128
#: the most images a prediction may lag by (what waits to be learnt is a few hundred bytes each)
MAX_LAG = 4096


@dataclass(frozen=True)
class _Learnt:
    """What an image taught the predictor, kept until the images after it may learn it."""

    found: dict[str, int]
    winner: str | None
    gains: dict[str, float]
    observations: list[dict[str, Any]] = field(default_factory=list)


def horizon(k: int) -> int:
    """How many of the images before image k its quality predictions may learn from."""
    if k >= POWERS_UNTIL:
        return k - max(PREDICTION_LAG, min(k // 8, MAX_LAG))
    power = 1 << (k.bit_length() - 1) if k else 0
    return max(power, k - PREDICTION_LAG)


@dataclass
class _Slot:
    """One image of the run, from the walk to its line in the manifest."""

    index: int
    rel: str
    path: Path | None = None
    #: decided without computing (a link out of SRC, an output up to date)
    outcome: ImageOutcome | None = None
    future: Any = None
    #: the source's pixels (from its header): what its search will hold in memory
    pixels: int = 0
    stem: str = ""
    sha: str | None = None
    entry: dict[str, Any] | None = None
    #: which of the image's outputs (`Variant.tag`; "" for a job without variants), its job
    #: and that job's key (what the manifest records)
    variant: str = ""
    job: Job | None = None
    key: str = ""


@dataclass
class _FolderRun:
    """One run: what every image shares, the driver's side of each image (the walk, the
    manifest, the writes) and what images taught the predictor."""

    src_root: Path
    out: OutputDir
    manifest: Manifest
    job: Job
    predictor: QualityPredictor
    names: dict[Path, str]  # source -> output stem
    key: str  # the job's settings, as the manifest records them
    spec: dict[str, Any] = field(default_factory=dict)  # the metric suite's, for variants' keys
    _variant_jobs: dict[Variant, tuple[Job, str]] = field(default_factory=dict)
    found: dict[int, _Learnt | dict[str, Any]] = field(default_factory=dict)
    learned: int = 0
    #: the learned quality model and the user's observations (`quality_model.ModelLearner`)
    learner: Any = None

    def learn_until(self, end: int) -> None:
        """Teach the predictor what images [learned, end) needed, in input order."""
        while self.learned < end:
            r = self.found.pop(self.learned, None)
            if isinstance(r, _Learnt):
                for codec, quality in r.found.items():
                    self.predictor.record(codec, quality, codec == r.winner, r.gains.get(codec))
                if self.learner is not None:
                    self.learner.add(r.observations)
            elif r is not None and r.get("found") is not None:  # up to date: as if just done
                if self.learner is not None:  # learnt again, not stored again
                    self.learner.add(r.get("observations") or [], persist=False)
                won = r.get("codec") if r["status"] == Status.WRITTEN else None
                gains = r.get("gains") or {}
                for codec, quality in r["found"].items():
                    self.predictor.record(codec, quality, codec == won, gains.get(codec))
            elif r is not None and r.get("codec") and r.get("quality"):  # an older line
                self.predictor.record(r["codec"], int(r["quality"]), True)
            self.learned += 1

    def prepare(self, index: int, item: Path | ImageError) -> list[_Slot]:
        """The slots of one source, numbered from `index`: one per output (`Job.variants`)."""
        if isinstance(item, ImageError):  # a link out of SRC: reported, never read
            rel = item.path.relative_to(self.src_root).as_posix()
            return [_Slot(index, rel, outcome=ImageOutcome(rel, Status.SKIPPED, error=str(item)))]
        rel = item.relative_to(self.src_root).as_posix()
        data, sha = b"", None
        with suppress(OSError):  # unreadable (a broken link, a folder): `load` says why
            data = item.read_bytes()
            sha = _sha256(data)
        # The header is read only where something needs it: the widths an image is made at
        # (as shown), the pixels of an image to compute (the memory budget).
        size = shown_size(data) if self.job.widths and data else None
        # An unreadable source gets its plain slot: `load` says why, once.
        if not self.job.widths:
            variants = self.job.variants(0)  # formats only, or the one plain output
        else:
            variants = self.job.variants(size[0]) if size else [Variant()]
        slots = []
        for k, v in enumerate(variants):
            job, job_key = self.variant_job(v)
            key = f"{rel}#{v.tag}" if v.tag else rel
            stem = self.job.variant_stem(self.names[item], v)
            slot = _Slot(
                index + k, rel, item, stem=stem, sha=sha, entry=self.manifest.lookup(key),
                variant=v.tag, job=job, key=job_key,
            )  # fmt: skip
            slots.append(slot)
            entry = slot.entry
            if sha and _up_to_date(entry, job_key, src_sha=sha, out=self.out, stem=stem, rel=rel):
                o = ImageOutcome(**{k: entry[k] for k in _OUTCOME_FIELDS if k in entry})
                o.status, o.encodes = Status.UP_TO_DATE, 0
                slot.outcome = o
                if entry["status"] == Status.WRITTEN or entry.get("found") is not None:
                    self.found[slot.index] = entry
            else:
                if size is None and data:
                    size = shown_size(data)
                slot.pixels = size[0] * size[1] if size else 0
        return slots

    def variant_job(self, v: Variant) -> tuple[Job, str]:
        """A variant's job and its key, made once per run (images share their variants)."""
        if v not in self._variant_jobs:
            job = self.job.for_variant(v)
            self._variant_jobs[v] = (job, self.key if job is self.job else job.key(self.spec))
        return self._variant_jobs[v]

    def finish(self, slot: _Slot) -> ImageOutcome:
        """The image's outcome, its output written and its manifest line appended."""
        if slot.outcome is not None:
            return slot.outcome
        try:
            r = slot.future.result()
        except Exception as exc:  # one image's surprise must not cost the others their run
            if type(exc).__name__ == "KilledWorker":
                why = "every worker that ran it died (too large for a worker's memory?)"
            else:
                why = f"failed ({type(exc).__name__}: {exc})"
            return ImageOutcome(
                slot.rel,
                Status.SKIPPED,
                error=f"{slot.path}: {why}; its output was not written (please report this)",
            )
        # Only what the predictor will learn from it waits for its turn, not the output's bytes
        # (up to `MAX_LAG` images wait).
        self.found[slot.index] = _Learnt(r.found, r.winner, r.gains, r.observations)
        r.outcome.variant = slot.variant or None
        if slot.variant and r.outcome.error:  # which of the image's outputs it is about
            path = str(slot.path)
            r.outcome.error = r.outcome.error.replace(path, f"{path} ({slot.variant})", 1)
        try:
            return self._write(slot, r)
        except OutputUnwritableError:
            raise  # stops the run: every other image would fail the same way
        except UnsafePathError as exc:
            return ImageOutcome(
                slot.rel, Status.SKIPPED, error=f"{slot.path}: output not written: {exc}"
            )

    def _write(self, slot: _Slot, r: ImageResult) -> ImageOutcome:
        outcome, payload, path, entry = r.outcome, r.payload, slot.path, slot.entry
        if outcome.status == Status.SKIPPED or outcome.output is None:
            return outcome
        body = path.read_bytes() if payload is None else payload
        if payload is None:
            outcome.output_bytes = len(body)
        self.out.write_bytes(outcome.output, body)
        old = entry["output"] if entry else None
        if old and old != outcome.output and old in _expected_outputs(slot.stem, slot.rel):
            # A stale output of an earlier job: removed only if it is still what we wrote.
            self.out.remove(old, sha256=entry["output_sha256"])
        self.manifest.append(
            {
                **outcome.record(),
                "job": slot.key or self.key,
                "sha256": slot.sha or _sha256(path.read_bytes()),
                "output_sha256": _sha256(body),
                # what the predictor learnt from it (the qualities found at the probe speed,
                # which the written quality need not be), for a resumed run to learn the same
                "found": r.found,
                "gains": r.gains,
                **({"observations": r.observations} if r.observations else {}),
            }
        )
        return outcome


#: submit(path, job, prediction, name, stem, *, pixels) -> a future of `optimize_image`'s
#: ImageResult (`pixels`: the source's, from its header; a cluster groups small images by it)
Submit = Callable[..., Any]


def _drive(
    run: _FolderRun,
    items: Sequence[Path | ImageError],
    *,
    submit: Submit,
    window: Callable[[], int],
    on_result: Callable[[ImageOutcome], None] | None,
    budget_pixels: float | None = None,
) -> RunSummary:
    """Every image through `submit` (threads or a cluster), at most `window()` in flight
    whatever the folder's size (asked before each image: a cluster's grows and shrinks with its
    workers), and with `budget_pixels`, no more source pixels in flight than that (an
    image larger than the budget runs alone); outputs written and results reported in input
    order, from this thread. Ctrl-C: the images already computed are written, the rest left for
    the next run."""
    summary = RunSummary()
    pending: deque[_Slot] = deque()
    codecs = [b.codec for b in run.job.bases]

    def emit() -> None:
        o = run.finish(pending[0])
        pending.popleft()  # its future goes with it: a cluster forgets the task
        summary.add(o)
        if on_result:
            on_result(o)

    try:
        k = 0  # slots so far: an image's outputs are one each (`Job.variants`)
        for item in items:
            for slot in run.prepare(k, item):
                k += 1
                h = horizon(slot.index)
                limit = window()
                while pending and (len(pending) >= limit or pending[0].index < h):
                    emit()
                run.learn_until(h)
                if slot.outcome is None:
                    while (
                        budget_pixels is not None
                        and pending
                        and sum(s.pixels for s in pending) + slot.pixels > budget_pixels
                    ):
                        emit()
                    prediction = run.predictor.snapshot(codecs)
                    if run.learner is not None:
                        prediction = replace(prediction, model=run.learner.current())
                    slot.future = submit(
                        slot.path, slot.job or run.job, prediction, slot.rel, slot.stem,
                        pixels=slot.pixels,
                    )  # fmt: skip
                pending.append(slot)
        while pending:
            emit()
    except KeyboardInterrupt:
        summary.interrupted = True
        _cancel(pending)
        while pending and (pending[0].future is None or pending[0].future.done()):
            if pending[0].future is not None and pending[0].future.cancelled():
                break
            emit()  # computed already: written whole
    except OutputUnwritableError:
        _cancel(pending)  # no new image starts; nothing half-written
        raise
    return summary


def _cancel(pending: deque[_Slot]) -> None:
    for slot in pending:
        if slot.future is not None:
            slot.future.cancel()


_OUTCOME_FIELDS = (
    "source",
    "variant",
    "width",
    "height",
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
