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
alone. Dead workers' trials are failed and queued again (`storage`). `--new-study` deletes a
study only when no worker is running trials of it (`_start_over`); a worker whose study is
deleted all the same stops with `StudyGoneError`, not a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cpus
from .codecs import available_codecs
from .errors import ImgtuneError, UsageError
from .metrics.catalog import OUTPUTS
from .recipe import Candidate
from .search import (
    STRATEGIES,
    Evaluation,
    ImageSet,
    SearchSpace,
    Strategy,
    bisect_quality,
    evaluate,
)
from .targets import Target, check_aggregate

__all__ = [
    "ImageSetSpec",
    "StudyGoneError",
    "StudyInUseError",
    "StudyMismatchError",
    "StudyResult",
    "run_study",
    "study_name_for",
]


class StudyMismatchError(UsageError):
    """The stored study was made for another image set, target or search space."""


class StudyInUseError(ImgtuneError):
    """`--new-study` on a study whose trials other workers are running."""


class StudyGoneError(ImgtuneError):
    """The study was deleted (by `--new-study` elsewhere) while this process worked on it."""


class _Kept:
    """Within it, anything that fails because `study` was deleted under this process (Optuna
    raises KeyError, or worse, from wherever it noticed) becomes one `StudyGoneError` line.
    `study` may be set once it is open."""

    def __init__(self, name: str, where: str, study: Any = None) -> None:
        self.name, self.where, self.study = name, where, study

    def __enter__(self) -> _Kept:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if not isinstance(exc, Exception) or self.study is None:
            return False
        try:
            self.study.user_attrs  # noqa: B018 - KeyError once the study is gone
        except KeyError:
            raise StudyGoneError(
                f"study '{self.name}' in {self.where} was deleted while this process ran trials "
                "of it (imgtune tune --new-study elsewhere?); its results here are lost"
            ) from None
        return False


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
        with _Kept(args.study_name, args.storage.display, study):
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

    from .storage import requeue

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") != worker:
            continue
        try:
            frozen = study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished or failed meanwhile
        requeue(study, frozen)
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
    with _study_lock(spec, study_name), _Kept(study_name, spec.display) as kept:
        backend = spec.open(heartbeat=heartbeat if spec.shared else None)
        if new_study:
            _start_over(backend, study_name, spec)
        study = kept.study = _open_study(
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
        import torch

        pool = None
        # Every trial thread of every process shares the cores this process may use.
        threads, share = torch.get_num_threads(), cpus.threads_per_job(workers * jobs)
        if workers > 1:
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


def _start_over(backend, name: str, spec) -> None:
    """Delete the stored study `name` (`--new-study`), unless workers are running trials of it:
    deleted under them, they would stop with an error and their trials be lost (a worker
    between two trials is not seen: it stops with `StudyGoneError`)."""
    import optuna

    from .storage import GRACE_BEATS, busy_trials

    if spec.shared:
        busy = busy_trials(backend, name)
        if busy:
            workers = sorted({str(t.user_attrs.get("worker", "a starting worker")) for t in busy})
            raise StudyInUseError(
                f"study '{name}' in {spec.display} has {len(busy)} trial(s) running (worker "
                f"{', '.join(workers)}): --new-study would delete it under them. Stop them (or "
                f"let them finish) first; a stopped worker's trial stops counting once its "
                f"heartbeat is {GRACE_BEATS} beats old. Or give --study-name NAME for a "
                f"separate study"
            )
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=backend)


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
