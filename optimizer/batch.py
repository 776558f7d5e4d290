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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .codecs import CODECS
from .image_job import (
    STATUSES,
    ImageOutcome,
    ImageResult,
    Job,
    Status,
    optimize_image,
    stem_with,
)
from .images import ImageError, iter_image_files
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
        self.source_bytes += o.source_bytes
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
        run = _FolderRun(
            src_root=src_root,
            out=out,
            manifest=manifest,
            job=job,
            suite=suite,
            predictor=predictor or QualityPredictor(),
            names=output_names([p for p in listed if isinstance(p, Path)], src_root),
            key=job.key(suite.describe()),
        )
        run.replay_history()
        summary = _drive(run.work, listed, jobs=jobs, on_result=on_result)
    summary.manifest_problems = manifest.bad_lines
    summary.target = str(job.target)
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass
class _FolderRun:
    """One run's per-image work: what every image of it shares."""

    src_root: Path
    out: OutputDir
    manifest: Manifest
    job: Job
    suite: Any
    predictor: QualityPredictor
    names: dict[Path, str]  # source -> output stem
    key: str  # the job's settings, as the manifest records them

    def replay_history(self) -> None:
        """A resumed run predicts qualities as the killed one did."""
        for key, codec, quality in self.manifest.history:
            if key == self.key:
                self.predictor.record(codec, quality, True)

    def learn(self, r: ImageResult) -> None:
        """What an image needed, for the next images' first guesses."""
        for codec, quality in r.found.items():
            self.predictor.record(codec, quality, codec == r.winner)

    def work(self, item: Path | ImageError) -> ImageOutcome:
        if isinstance(item, ImageError):  # a link out of SRC: reported, never read
            return ImageOutcome(
                item.path.relative_to(self.src_root).as_posix(), Status.SKIPPED, error=str(item)
            )
        rel = item.relative_to(self.src_root).as_posix()
        try:
            return self._work(item, rel)
        except OutputUnwritableError:
            raise  # stops the run: every other image would fail the same way
        except UnsafePathError as exc:
            return ImageOutcome(rel, Status.SKIPPED, error=f"{item}: output not written: {exc}")
        except Exception as exc:  # one image's surprise must not cost the others their run
            return ImageOutcome(
                rel,
                Status.SKIPPED,
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
        if sha and _up_to_date(entry, self.key, src_sha=sha, out=self.out, stem=stem, rel=rel):
            o = ImageOutcome(**{k: entry[k] for k in _OUTCOME_FIELDS if k in entry})
            o.status, o.encodes = Status.UP_TO_DATE, 0
            return o
        r = optimize_image(
            path,
            self.job,
            suite=self.suite,
            prediction=self.predictor.snapshot([b.codec for b in self.job.bases]),
            name=rel,
            stem=stem,
        )
        self.learn(r)
        outcome, payload = r.outcome, r.payload
        if outcome.status == Status.SKIPPED or outcome.output is None:
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
    *,
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
