"""The Python API: what each command does, without printing, with the command's defaults.

    import optimizer
    result = optimizer.tune("photos/", quality="high")         # imgtune tune photos/
    summary = optimizer.optimize("photos/", "out/")             # imgtune optimize photos/ out/
    pair = optimizer.score("a.png", "a.avif")                   # imgtune score a.png a.avif

Options are keyword-only and default to what the command line defaults to (a test holds them
equal). Errors are `optimizer.ImgtuneError`s: one line naming the file or option and the reason,
and the `exit_code` the command would end with. Long runs report progress through callbacks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cpus
from .errors import ImgtuneError, UsageError
from .images import DEFAULT_MAX_PIXELS, AnimatedPolicy, ImageError, check_animated
from .presets import Preset, load_preset
from .probe_speed import DEFAULT_PROBE_SPEED
from .targets import Target, check_aggregate, resolve_target

if TYPE_CHECKING:
    from .batch import RunSummary
    from .image_job import ImageOutcome
    from .metrics.set_metrics import SetScorer
    from .metrics.suite import MetricSuite
    from .recipe import Candidate
    from .scoring import PairResult, Problem, ScoreReport
    from .search import Evaluation, ImageSet, SearchSpace, Strategy
    from .study import StudyResult

__all__ = [
    "DEFAULT_METRICS",
    "TuneResult",
    "apply",
    "build_suite",
    "export",
    "load_preset",
    "memory_budget",
    "optimize",
    "preset",
    "report",
    "score",
    "tune",
]

#: what `score` measures unless told otherwise
DEFAULT_METRICS = "lpips,ssim,ms_ssim,psnr,ssimulacra2"
#: where `tune` keeps its studies, score caches, presets, trial tables and reports, and
#: `optimize` its learnt quality model, unless told (or `IMGTUNE_STUDIES` says) otherwise
STUDIES = Path("studies")


def studies_dir(studies: PathLike | None = None) -> Path:
    """`studies`, else `$IMGTUNE_STUDIES`, else ``studies/`` (in the working directory)."""
    if studies is not None:
        return Path(studies)
    return Path(os.environ.get("IMGTUNE_STUDIES") or STUDIES)


PathLike = str | os.PathLike[str]


def build_suite(
    *,
    target: Target | None = None,
    metrics: str | Sequence[str] | None = None,
    composite: str | dict[str, float] | None = None,
    lpips_net: str = "alex",
    weights: PathLike | None = None,
    device: str = "auto",
    compile: bool = False,
    gpu_memory: str | int | float | None = None,
) -> MetricSuite:
    """The metrics to score with: `metrics` (a comma-separated string or a list) plus what
    `target` names; with `metrics` None, just what the target needs. LPIPS weights are located
    first (`WeightsMissingError` before any work); a bad name or weight is a `UsageError`.
    `gpu_memory`: the device memory budget of its batch scorer (`gpu_memory_budget`)."""
    from .metrics import MetricSuite

    chosen = metrics.split(",") if isinstance(metrics, str) else metrics
    if target is not None:
        names = target.needed_metrics(chosen)
    else:
        names = [m.strip() for m in chosen or () if m.strip()]
    try:
        return MetricSuite.build(
            names,
            device=device,
            composite_weights=composite,
            lpips_net=lpips_net,
            weights_dir=weights,
            compile=compile,
            device_memory=gpu_memory_budget(gpu_memory),
        )
    except ImgtuneError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def build_set_scorer(
    set_metrics: str | Sequence[str], *, weights: PathLike | None = None, device: str = "auto"
) -> SetScorer:
    """The FID/KID scorer for `set_metrics` (``"fid,kid"``); its Inception checkpoint is
    located first (`WeightsMissingError` before any work); an unknown name is a `UsageError`."""
    from .metrics.set_metrics import SetScorer, parse_set_metrics

    try:
        names = parse_set_metrics(
            set_metrics if isinstance(set_metrics, str) else ",".join(set_metrics)
        )
        return SetScorer(names, device=device, weights_dir=weights)
    except ImgtuneError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _limit(max_pixels: int | None) -> int:
    if max_pixels is not None and max_pixels < 1:
        raise UsageError(f"max_pixels must be at least 1, got {max_pixels}")
    return max_pixels or DEFAULT_MAX_PIXELS


def _folder(path: PathLike, what: str = "folder") -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ImgtuneError(f"{p}: not a {what}" if p.exists() else f"{p}: no such {what}")
    return p


# ---------------------------------------------------------------------------------------- score


def score(
    reference: PathLike,
    candidate: PathLike,
    *,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    composite: str | dict[str, float] | None = None,
    target: str | Target | None = None,
    lpips_net: str = "alex",
    weights: PathLike | None = None,
    device: str = "auto",
    compile: bool = False,
    max_pixels: int | None = None,
    animated: AnimatedPolicy = "refuse",
    follow_symlinks: bool = False,
    suite: MetricSuite | None = None,
    set_metrics: str | Sequence[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[PairResult | Problem], None] | None = None,
) -> PairResult | ScoreReport:
    """Score `candidate` against `reference` with every metric, the composite and its level.

    Parameters
    ----------
    reference, candidate:
        Two image files, or two folders paired by relative path without the extension
        (`ref/a.png` with `out/a.webp`).
    metrics:
        The metrics to compute (comma-separated or a list); a target's metrics are added.
    composite:
        Composite weights, e.g. ``"lpips=0.3,ssim=0.3,psnr=0.1"`` (default: those, renormalised
        over the enabled metrics).
    target:
        A quality target each pair must meet, e.g. ``"composite>=0.9,ssim_p5>=0.85"``.
    suite:
        A `MetricSuite` to reuse (then `metrics`, `composite`, `lpips_net`, `weights`, `device`
        and `compile` are not used).
    set_metrics:
        Folders only: set-level metrics of the originals against the candidates as two sets,
        ``"fid,kid"`` (pytorch-fid's Inception; its checkpoint is found like LPIPS's, from
        `weights`), in `report.set_metrics` with notes on what a set of this size can say.
    on_start, on_result:
        Folders: called with the number of pairs, then with each `PairResult` or skipped input
        (`Problem`) as it is done; problems found while pairing come before `on_start`.

    Returns
    -------
    A `PairResult` for two files (`.scores`, `.missed`); a `ScoreReport` for two folders
    (`.results`, `.problems`, `.frame()`, `.summary()`, `.counts`).
    """
    from .scoring import pair_files, score_dirs, score_pair

    tgt = resolve_target(target) if target is not None else None
    check_animated(animated)
    limit = _limit(max_pixels)
    reference, candidate = Path(reference), Path(candidate)
    for p in (reference, candidate):
        if not p.exists():
            raise ImgtuneError(f"{p}: no such file or folder")
    if reference.is_dir() != candidate.is_dir():
        raise UsageError("give two files or two folders, not one of each")
    if set_metrics and not reference.is_dir():
        raise UsageError(
            "--set-metrics compares two sets of images: give two folders (FID and KID are not "
            "defined for one pair)"
        )
    set_scorer = (
        build_set_scorer(set_metrics, weights=weights, device=device) if set_metrics else None
    )
    if suite is None:
        suite = build_suite(
            target=tgt, metrics=metrics, composite=composite, lpips_net=lpips_net,
            weights=weights, device=device, compile=compile,
        )  # fmt: skip
    if not reference.is_dir():
        return score_pair(
            reference, candidate, suite, target=tgt, max_pixels=limit, animated=animated
        )
    pairs, problems = pair_files(reference, candidate, follow_symlinks=follow_symlinks)
    for problem in problems:
        if on_result:
            on_result(problem)
    if on_start:
        on_start(len(pairs))
    report = score_dirs(
        reference, candidate, suite, target=tgt, max_pixels=limit, animated=animated,
        on_result=on_result, pairs=pairs, set_scorer=set_scorer,
    )  # fmt: skip
    report.problems[:0] = problems
    return report


def check(
    originals: PathLike,
    encoded: PathLike,
    *,
    warn: str | None = None,
    fail: str | None = None,
    device: str = "auto",
    max_pixels: int | None = None,
    follow_symlinks: bool = False,
    on_result: Callable[[PairResult | Problem], None] | None = None,
) -> dict[str, Any]:
    """Judge the outputs in `encoded` against their `originals` (two folders, paired as
    `score` pairs them) by the thresholds `warn` and `fail` (`monitor.Thresholds`: the bad tail
    of the set, and each output alone). Returns the set's level, its tails, each pair's scores
    and level, and the inputs that could not be paired or read."""
    from .monitor import Thresholds

    if not warn and not fail:
        raise UsageError("give --warn and/or --fail thresholds, e.g. --fail 'ssimulacra2>=70'")
    th = Thresholds.parse(warn, fail)
    if not Path(originals).is_dir() or not Path(encoded).is_dir():
        raise UsageError("check judges two folders: ORIGINALS and ENCODED")
    report = score(
        originals, encoded, metrics=th.metrics, device=device, max_pixels=max_pixels,
        follow_symlinks=follow_symlinks, on_result=on_result,
    )  # fmt: skip
    rows = [(r, dict(r.scores.values)) for r in report.results]
    judged = th.judge(v for _, v in rows)
    return {
        **judged,
        "warn": warn,
        "fail": fail,
        "pairs": [
            {
                "name": r.name,
                "reference": str(r.reference),
                "candidate": str(r.candidate),
                "scores": v,
                "level": th.item_level(v),
            }  # fmt: skip
            for r, v in rows
        ],
        "problems": [str(p) for p in report.problems],
    }


# ----------------------------------------------------------------------------------------- tune


@dataclass
class TuneResult:
    """What `tune` found and wrote. `preset` is None when no recipe met the target (then
    `closest` is the recipe that came nearest)."""

    study: StudyResult
    images: ImageSet
    target: Target
    aggregate: str
    space: SearchSpace
    strategy: str
    preset: Preset | None
    preset_path: Path | None
    trials_csv: Path
    default_jpeg_bytes: int
    outputs: list[dict[str, Any]] | None = None
    report_path: Path | None = None
    #: FID/KID of the chosen recipe's outputs against the references, when asked for
    set_metrics: dict[str, Any] | None = None
    skipped: list[ImageError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Evaluation | None:
        return self.study.best

    @property
    def closest(self) -> Evaluation | None:
        return self.study.closest

    @property
    def recipe(self) -> Candidate | None:
        return self.study.best.candidate if self.study.best else None

    @property
    def total_bytes(self) -> int | None:
        return int(self.study.best.total_bytes) if self.study.best else None

    @property
    def source_bytes(self) -> int:
        return self.images.source_bytes

    @property
    def interrupted(self) -> bool:
        return self.study.interrupted


def tune(
    folder: PathLike,
    *,
    target: str | Target | None = None,
    quality: str = "high",
    aggregate: str = "min",
    trials: int = 20,
    timeout: float | None = None,
    seed: int | None = None,
    codecs: str | Sequence[str] | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    widths: str | Sequence[int] | None = None,
    strategy: Strategy = "bisect",
    quality_range: str | dict[str, tuple[int, int]] | None = None,
    resize_search: bool = True,
    jobs: int = 1,
    workers: int = 1,
    heartbeat: int = 10,
    sharpen: bool = True,
    background: str | Sequence[int] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    new_study: bool = False,
    preset_out: PathLike | None = None,
    out: PathLike | None = None,
    weights: PathLike | None = None,
    device: str = "auto",
    compile: bool = False,
    gpu_memory: str | int | None = None,
    report: PathLike | None = None,
    set_metrics: str | Sequence[str] | None = None,
    follow_symlinks: bool = False,
    max_pixels: int | None = None,
    animated: AnimatedPolicy = "refuse",
    studies: PathLike | None = None,
    learn: bool = True,
    on_trial: Callable[[Evaluation], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_skip: Callable[[ImageError], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> TuneResult:
    """Find the smallest encoding recipe for the images of `folder` that meets a target.

    An Optuna study searches codec, quality, codec options, sharpening and (when resizing) the
    resize filter; it is stored (`storage`, default the journal file
    ``studies/<name>.journal``, or ``studies/<name>.db`` where an earlier imgtune made one) so
    a rerun resumes it and other processes can add to it. Writes the recipe (the best feasible
    trial of the whole study) as a preset, a trials table, and optionally the encoded set and
    an HTML report.

    Parameters
    ----------
    folder:
        The image set: one recipe is tuned for all of it.
    target, quality:
        A quality target (``"ssimulacra2>=85"``, ``"ssim>=0.97,ssim_p5>=0.9"``), else the named
        level `quality`: low, medium, high (``ssimulacra2>=80``) or lossless-looking.
    aggregate:
        How the set meets the target: ``min`` (every image), ``mean``, or ``pNN``.
    trials, timeout, seed:
        Trials to add to the study (finished ones: complete or pruned), a time limit in
        seconds, and the sampler's seed (a study repeats on the same machine with the same
        seed and one worker). A run that finds other workers running a shared study towards a
        goal it has not reached joins that goal instead of adding `trials`.
    codecs:
        Codecs to search (default: every available one but JPEG XL). JPEG is left out, with a
        note, when the set has transparency and no `background` is given.
    max_width, max_height:
        Fit outputs inside this box (never enlarged).
    widths:
        Tune one recipe that holds at every one of these widths (``"480,960"``): each image
        counts once per width, never upscaled (its own width where one asked for is wider).
        The preset records them; `apply` makes each image at each width.
    strategy:
        ``"bisect"``: Optuna samples the recipe, each recipe's quality is searched;
        ``"tpe"``: Optuna samples every dimension.
    quality_range:
        Per-codec quality bounds, ``"jpeg=50-95,avif=30-80"`` or a dict.
    resize_search, sharpen:
        False: always Lanczos / no sharpening.
    jobs:
        Trials run in parallel (threads) in each process.
    workers:
        Processes adding trials to the one study (this one and ``workers - 1`` more); needs a
        journal file or a database server as the storage, not SQLite.
    heartbeat:
        Seconds between the heartbeats of a running trial on a shared storage (journal file,
        server); a trial whose worker has been silent for 3 heartbeats is failed and queued
        again. Give every worker of a study the same value.
    background:
        Colour to flatten transparency onto (``"white"``, ``"#RRGGBB"``, ``(r, g, b)``), which
        allows JPEG for images with alpha.
    storage, study_name, new_study:
        Where the study lives: an Optuna storage URL (``sqlite:///x.db``: one process;
        ``postgresql+psycopg://user@host/db``: workers on many machines) or the path of a
        journal file (workers on this machine); the study name (default: the folder's name and
        a hash of the target); and whether to delete a stored study of that name first
        (refused while workers run trials of it).
    preset_out, out, report:
        Where to write the preset (default ``studies/<name>.preset.json``), the encoded set
        (folder; sources untouched) and the HTML report (``"."``: ``studies/<name>.report.html``).
    set_metrics:
        ``"fid,kid"``: the chosen recipe's outputs against their references as two sets, in
        `.set_metrics`, the study's user attributes and the report (its checkpoint is found
        before the search starts).
    weights, device, compile:
        Weights folder (LPIPS, DISTS and FID checkpoints), ``auto``/``cpu``/``cuda``, and
        torch.compile of kernels.
    gpu_memory:
        On a GPU, the memory scoring may use: ``"12G"``, bytes, or ``"60%"`` of the free
        memory (default 80%). Candidates of every image in flight are scored in batches
        within it (`optimizer.metrics.batching`); ignored on the CPU.
    follow_symlinks, max_pixels, animated:
        How the folder is read (links out of it, the decompression-bomb limit, animations).
    studies:
        The folder of studies, score caches, presets and reports.
    learn:
        Add the study's scored encodes to the quality model kept in `studies` (what each image
        needed, per codec option), which `optimize` starts its searches from.
    on_trial, on_progress, on_skip, on_note:
        Called after each of this process's trials (`Evaluation`), with the whole study's
        (finished trials, goal), for each image skipped, and with notes.

    Returns
    -------
    `TuneResult`: `.preset` (None if no recipe met the target), `.recipe`, `.total_bytes`,
    `.source_bytes`, `.study` (trials, encodes, the Optuna study), files written.
    """
    import functools

    from .codecs import check_codecs, parse_colour, parse_quality_ranges
    from .files import atomic_write_text
    from .images import load_folder
    from .lossless import lossy_only
    from .outdir import check_roots
    from .presets import build_preset
    from .search import STRATEGIES, ImageSet, SearchSpace
    from .study import ImageSetSpec, run_study, study_name_for

    tgt = resolve_target(target, quality)
    check_aggregate(aggregate)
    check_animated(animated)
    if strategy not in STRATEGIES:
        raise UsageError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    bg = parse_colour(background)
    folder = _folder(folder)
    if out is not None:
        check_roots(folder, Path(out))  # now, not after the search
    chosen = check_codecs(codecs)
    lossy_only("tune", tgt, chosen)
    width_list = parse_widths(widths, boxed=max_width is not None or max_height is not None)
    bounds = parse_quality_ranges(quality_range, chosen)
    suite = build_suite(
        target=tgt, weights=weights, device=device, compile=compile, gpu_memory=gpu_memory
    )
    set_scorer = (
        build_set_scorer(set_metrics, weights=weights, device=device) if set_metrics else None
    )
    sources, skipped = load_folder(
        folder, min_side=suite.min_side, follow_symlinks=follow_symlinks,
        max_pixels=_limit(max_pixels), animated=animated, on_skip=on_skip,
    )  # fmt: skip
    if not sources:
        raise ImgtuneError(f"no usable image in {folder}")
    notes = []
    if any(s.has_alpha for s in sources) and bg is None and "jpeg" in chosen:
        chosen = [c for c in chosen if c != "jpeg"]
        notes.append(
            "the set has images with transparency, so JPEG is not offered "
            "(give --background COLOR to allow it)"
        )
        if on_note:
            on_note(notes[-1])
        if not chosen:
            raise UsageError("no codec left to search: JPEG needs a background for transparency")
    studies = studies_dir(studies)
    # Scores persist per image set (not per target): a resumed or re-targeted run reuses them,
    # and so do the --workers processes, which build the same set from this recipe.
    recipe = ImageSetSpec(
        tuple(str(s.path) for s in sources),
        functools.partial(
            build_suite, target=tgt, weights=weights, device=device, compile=compile,
            gpu_memory=gpu_memory,
        ),
        max_pixels=_limit(max_pixels), animated=animated,
        options={
            "max_width": max_width, "max_height": max_height, "background": bg,
            "cache_path": studies / f"{folder.resolve().name}.scores.sqlite",
            **({"widths": width_list} if width_list else {}),
        },
    )  # fmt: skip
    images = ImageSet(sources, suite, **recipe.options)
    space = SearchSpace.default(
        chosen, resized=images.resized and resize_search, sharpen=sharpen,
        quality={c: b for c, b in bounds.items() if c in chosen},
    )  # fmt: skip
    name = study_name or study_name_for(folder, tgt, aggregate)
    spec, note = _study_storage(name, storage, studies)
    if note:
        notes.append(note)
        if on_note:
            on_note(note)
    if spec.kind != "server":
        studies.mkdir(parents=True, exist_ok=True)
    study = run_study(
        images, tgt, space, trials=trials, timeout=timeout, seed=seed, strategy=strategy,
        jobs=jobs, workers=workers, heartbeat=heartbeat, rebuild=recipe, aggregate=aggregate,
        storage=spec, study_name=name, new_study=new_study, on_trial=on_trial,
        on_progress=on_progress,
    )  # fmt: skip
    for n in study.notes:
        notes.append(n)
        if on_note:
            on_note(n)
    _learn_from_study(images, tgt, studies if learn else None)
    # Every study gets its trials table locally, whatever storage holds the study itself.
    csv_path = atomic_write_text(
        studies / f"{name}.trials.csv", study.study.trials_dataframe().to_csv(index=False)
    )
    result = TuneResult(
        study, images, tgt, aggregate, space, strategy, None, None, csv_path,
        default_jpeg_bytes=images.default_jpeg_bytes(), skipped=skipped, notes=notes,
    )  # fmt: skip
    if study.best is not None:
        result.preset = build_preset(
            study, images, tgt, aggregate=aggregate, default_jpeg_bytes=result.default_jpeg_bytes
        )
        result.preset_path = result.preset.save(preset_out or studies / f"{name}.preset.json")
        if out is not None:
            result.outputs = _write_set(images, study.best.candidate, folder=folder, out=Path(out))
    # The chosen recipe's decoded outputs, made once for the report's crops and the set metrics.
    shown = None
    if report is not None and study.best is not None:
        from .report import report_images

        shown = report_images(images, study.best.candidate)
    if set_scorer is not None and study.best is not None:
        result.set_metrics = _recipe_set_metrics(images, study, set_scorer, shown)
    if report is not None:
        from .report import build_report, write_report

        path = Path(report)
        result.report_path = path if path.suffix else studies / f"{name}.report.html"
        write_report(
            result.report_path,
            build_report(
                study.study,
                preset=result.preset.to_dict() if result.preset else None,
                images=shown,
            ),
        )
    return result


def _recipe_set_metrics(
    images: ImageSet, study: StudyResult, scorer: SetScorer, pairs: list | None = None
) -> dict:
    """FID/KID of the chosen recipe's decoded outputs against the references, kept in the
    study's user attributes so `imgtune report` shows them. `pairs`: those outputs already
    decoded (the report's); else they are made one image in memory at a time."""
    from .report import decoded_pairs

    cand = study.best.candidate
    for pair in pairs if pairs is not None else decoded_pairs(images, cand):
        scorer.add(pair["reference"], pair["output"])
    found = {**scorer.result(), "method": scorer.describe(), "recipe": cand.as_dict()}
    study.study.set_user_attr("set_metrics", found)
    return found


def _learn_from_study(images: ImageSet, target: Target, studies: Path | None) -> None:
    """The study's scored encodes, as observations for the user's quality model."""
    from .model_search import observations_from_set

    learner = model_learner(target, "auto", studies=studies) if studies is not None else None
    if learner is not None:
        learner.add(observations_from_set(images, target, float(target.clauses[0].value)))


def _write_set(images: ImageSet, cand: Candidate, *, folder: Path, out: Path) -> list[dict]:
    """The chosen recipe's outputs in OUT, under OUT's lock."""
    from .outdir import OutputDir

    out_dir = OutputDir(out)
    with out_dir.lock():
        return images.write_outputs(cand, out_dir, folder)


# ------------------------------------------------------------------------------- folder jobs


def optimize(
    src: PathLike,
    out: PathLike,
    *,
    target: str | Target | None = None,
    quality: str | None = None,
    codecs: str | Sequence[str] = ("avif", "webp", "webp-lossless", "png"),
    preset: PathLike | Preset | None = None,
    tolerance: int = 1,
    quality_range: str | dict[str, tuple[int, int]] | None = None,
    probe_speed: int | str | None = DEFAULT_PROBE_SPEED,
    best_effort: bool = False,
    background: str | Sequence[int] | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    jobs: int | None = None,
    cluster: str | None = None,
    memory: str | int | None = None,
    follow_symlinks: bool = False,
    max_pixels: int | None = None,
    animated: AnimatedPolicy = "refuse",
    weights: PathLike | None = None,
    device: str = "auto",
    compile: bool = False,
    gpu_memory: str | int | None = None,
    model: str | PathLike | None = "auto",
    learn: bool = True,
    studies: PathLike | None = None,
    widths: str | Sequence[int] | None = None,
    formats: str | Sequence[str] | None = None,
    name_pattern: str | None = None,
    html: bool = False,
    max_bytes: str | int | None = None,
    keep_metadata: str = "auto",
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[ImageOutcome], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> RunSummary:
    """Make every image of `src` as small as it can be while it still meets the target, into
    `out` (mirroring `src`'s tree), and list the outputs in ``out/imgtune.json`` for builds.

    Per image and codec, quality is found by a short search (a guess from earlier images, a
    step to bracket, then interpolation); the smallest passing output wins. An output never
    misses the target (unless `best_effort`) and is never larger than its source (the source is
    copied instead). Reruns skip images whose output is up to date
    (``out/.imgtune-manifest.jsonl``); Ctrl-C leaves only whole files. Nothing outside `out` is
    touched; one run per `out` at a time.

    Parameters
    ----------
    target, quality:
        A quality target, else the named level (default ``high``: ``ssimulacra2>=80``).
        ``lossless``: pixel-identical outputs, the smallest of the lossless codecs' files or
        the source.
    codecs:
        Codecs each image may use; the smallest passing output wins. The lossless ones
        (``webp-lossless``, ``png``) are tried after the lossy search where cheap evidence (few
        colours) says they may win (`optimizer.lossless`).
    preset:
        A preset (path or `Preset`): its target (unless `target` is given) and its quality as
        the first guess.
    tolerance:
        Stop the quality search when the bracket is this many quality steps wide (default 1:
        the lowest passing quality; it was 3 before the quality model made encodes few).
    quality_range:
        Per-codec quality bounds, ``"jpeg=50-95,avif=30-80"`` or a dict.
    probe_speed:
        The AVIF speed (0-10, 10 fastest) the quality search probes at; the output is then
        encoded at the recipe's own speed (6) where that should just pass (aimed with what it
        gained over the probe speed on earlier images), higher only if that misses, each
        scored; the smallest passing file is written and its params name its speed. ``None``
        or ``"off"``: every probe at the recipe's speed.
    best_effort:
        Where nothing meets the target, write the closest encode anyway (flagged).
    background, max_width, max_height:
        Colour to flatten transparency onto (allows JPEG for alpha images); fit outputs inside
        this box.
    jobs:
        Images processed at once (threads; default: the CPU cores).
    cluster:
        Run on Dask instead of threads: ``"local:N"`` starts N worker processes here; a
        scheduler address (``"tcp://host:8786"``) uses a running cluster whose workers see
        `src` at the same path. Outputs are the same either way.
    memory:
        The memory images in flight may use (threads): ``"8G"``, ``"500M"``, bytes, or
        ``"off"``; default half the machine's RAM. Images are admitted while their estimated
        working set fits; one larger than the budget runs alone.
    follow_symlinks, max_pixels, animated, weights, device, compile, gpu_memory:
        As for `tune`.
    model:
        Where each image's search starts (`model_learner`): ``"auto"`` (the learned model of
        the quality an image needs, from its features: shipped for ssimulacra2 targets and
        refined by the user's runs in `studies`), ``"off"`` (what earlier images of the run
        needed), or a model file.
    learn, studies:
        Whether this run's results refine the model kept in `studies` (default ``studies/``).
    widths:
        One output per width (``"480,960,1920"`` or a list), each no wider than its source
        (never upscaled: the source's own width instead of those wider than it), each
        searched like a plain output and scored against the source resized to that width.
        Named by `name_pattern` (default ``{stem}-{width}w``: ``a-480w.avif``).
    formats:
        One output per format (``"avif,webp,jpeg"``; also ``jxl``), each the smallest passing
        file of that format, instead of only the smallest over `codecs`.
    html:
        Also write a ``<picture>``/``srcset`` snippet per image into imgtune.json, and the
        page ``out/imgtune.html`` showing all of them.
    max_bytes:
        A budget per output (``"150KB"``, ``"1.5MiB"``, bytes): alone (no `target`, no
        `quality`), the highest-scoring encode under it across `codecs` (the source where it
        fits and may be the output); with a target, the smallest passing file if it fits,
        else the best under the budget, flagged ``best_effort``. Where no encode fits, the
        source is kept and the image reported (the smallest encode written with
        `best_effort`).
    keep_metadata:
        What an encoded output carries (its pixels are always sRGB and turned as the source's
        EXIF orientation says; the tag itself is never kept): ``auto`` (an sRGB ICC profile
        where the source had another, whose colours were converted; nothing else), ``none``,
        ``icc`` (an sRGB profile always) or ``all`` (that, the source's EXIF without its
        orientation, and its XMP). A kept source is the source file, as it is.
    on_start, on_result, on_warning:
        Called with the number of images, with each `ImageOutcome` in input order, and with
        warnings (e.g. invalid manifest lines ignored).

    Returns
    -------
    `RunSummary`: `.counts` per status, `.source_bytes`, `.output_bytes`, `.saved_bytes`,
    `.encodes_per_image`, `.interrupted`, `.exit_code`.
    """
    from .predictor import QualityPredictor

    start: dict[str, int] = {}
    if preset is not None:
        p = preset if isinstance(preset, Preset) else load_preset(preset)
        start[p.candidate.codec] = p.candidate.quality
        if target is None:
            target = p.target
    job = optimize_job(
        target=target, quality=quality, codecs=codecs, tolerance=tolerance,
        quality_range=quality_range, probe_speed=probe_speed, best_effort=best_effort,
        background=background, max_width=max_width, max_height=max_height,
        max_pixels=max_pixels, animated=animated, widths=widths, formats=formats,
        name_pattern=name_pattern, max_bytes=max_bytes, keep_metadata=keep_metadata,
    )  # fmt: skip
    tgt = job.target
    learner = model_learner(tgt, model, studies=studies_dir(studies) if learn else None)
    return _run_folder(
        src, out, job, QualityPredictor(start), jobs=jobs, cluster=cluster,
        memory=memory, follow_symlinks=follow_symlinks, weights=weights, device=device,
        compile=compile, gpu_memory=gpu_memory, on_start=on_start, on_result=on_result,
        on_warning=on_warning,
        learner=learner, html=html,
    )  # fmt: skip


def optimize_job(
    *,
    target: str | Target | None = None,
    quality: str | None = None,
    codecs: str | Sequence[str] = ("avif", "webp", "webp-lossless", "png"),
    tolerance: int = 1,
    quality_range: str | dict[str, tuple[int, int]] | None = None,
    probe_speed: int | str | None = DEFAULT_PROBE_SPEED,
    best_effort: bool = False,
    background: str | Sequence[int] | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    max_pixels: int | None = None,
    animated: AnimatedPolicy = "refuse",
    widths: str | Sequence[int] | None = None,
    formats: str | Sequence[str] | None = None,
    name_pattern: str | None = None,
    max_bytes: str | int | None = None,
    keep_metadata: str = "auto",
):
    """`optimize`'s job (`image_job.Job`) from its options, each checked (`UsageError`); what
    `imgtune serve` runs per upload too."""
    from .codecs import CODECS, check_codecs, parse_colour, parse_quality_ranges
    from .image_job import FORMATS, METADATA, Job
    from .lossless import split_codecs
    from .probe_speed import parse as parse_probe_speed

    if keep_metadata not in METADATA:
        raise UsageError(f"--keep-metadata {keep_metadata!r}: one of {', '.join(METADATA)}")
    budget = parse_bytes(max_bytes) if max_bytes is not None else None
    budget_only = budget is not None and target is None and quality is None
    tgt = resolve_target(target, quality or "high")
    if budget is not None and tgt.lossless:
        raise UsageError("--max-bytes picks among lossy encodes; --quality lossless has no choice")
    width_list = parse_widths(widths, boxed=max_width is not None or max_height is not None)
    format_list = parse_formats(formats, tgt)
    names = check_codecs(codecs)
    if format_list:  # each format's codecs: the lossless ones where `codecs` has them
        ext = {FORMATS[f] for f in format_list}
        lossy = [c for c in CODECS if not CODECS[c].lossless and CODECS[c].extension in ext]
        names = lossy + [c for c in names if CODECS[c].lossless and CODECS[c].extension in ext]
        names = check_codecs(names)
    chosen, lossless = split_codecs(
        tgt, names, resizes=bool(width_list) or max_width is not None or max_height is not None,
        flattens=background is not None,
    )  # fmt: skip
    pattern = check_name_pattern(name_pattern) if name_pattern is not None else None
    if pattern is not None and not width_list:
        raise UsageError("--name-pattern names the --widths outputs; give --widths too")
    if tolerance < 1:
        raise UsageError("tolerance must be at least 1")
    return Job.optimize(
        tgt, chosen, bounds=parse_quality_ranges(quality_range, chosen),
        best_effort=best_effort, background=parse_colour(background), max_width=max_width,
        max_height=max_height, tolerance=tolerance, max_pixels=_limit(max_pixels),
        animated=check_animated(animated), probe_speed=parse_probe_speed(probe_speed),
        lossless=lossless, widths=width_list, formats=format_list, max_bytes=budget,
        budget_only=budget_only, keep_metadata=keep_metadata,
        **({"name_pattern": pattern} if pattern else {}),
    )  # fmt: skip


_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def parse_bytes(text: str | int) -> int:
    """``"150KB"`` (1000s), ``"150KiB"`` (1024s), ``"1.5MB"`` or a number of bytes -> bytes."""
    import re

    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise UsageError(
                f"--max-bytes {text!r}: give bytes, or a number with KB, KiB, MB or MiB "
                "(e.g. 150KB)"
            )
        n = int(float(m.group(1)) * _UNITS[unit])
    if n < 1:
        raise UsageError(f"--max-bytes {text!r}: must be at least 1 byte")
    return n


def parse_widths(widths: str | Sequence[int] | None, *, boxed: bool = False) -> tuple[int, ...]:
    """``"480,960"`` (or a list) -> (480, 960): positive, sorted, each once. `boxed`: a
    --max-width/--max-height was given too, which widths replace (refused)."""
    if widths is None:
        return ()
    if boxed:
        raise UsageError("--widths sets each output's width: leave out --max-width/--max-height")
    items = [w.strip() for w in widths.split(",")] if isinstance(widths, str) else list(widths)
    out = set()
    for w in items:
        try:
            n = int(w)
        except (TypeError, ValueError):
            n = 0
        if isinstance(w, bool) or n < 1 or n > 65500:
            raise UsageError(f"--widths: {w!r} is not a width in pixels (1-65500)")
        out.add(n)
    if not out:
        raise UsageError("--widths: give at least one width, e.g. 480,960,1920")
    return tuple(sorted(out))


def parse_formats(formats: str | Sequence[str] | None, target: Target) -> tuple[str, ...]:
    """``"avif,webp,jpeg"`` (or a list) -> the formats, in the order given, each once."""
    from .image_job import FORMATS

    if formats is None:
        return ()
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    items = ["jpeg" if f == "jpg" else f for f in items if f]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise UsageError(
            f"--formats: {', '.join(bad) or '(none)'} not known; known: {', '.join(FORMATS)}"
        )
    if target.lossless:
        raise UsageError(
            "--formats picks among lossy formats; --quality lossless writes the smallest "
            "lossless file (choose its codecs with --codecs webp-lossless,png)"
        )
    return tuple(dict.fromkeys(items))


def check_name_pattern(pattern: str) -> str:
    """A `--name-pattern`: starts with {stem}, has {width}, names a file beside its source."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
        sample = pattern.format(stem="a", width=480) if fields == {"stem", "width"} else ""
    except (ValueError, KeyError, IndexError) as exc:
        raise UsageError(f"--name-pattern {pattern!r}: {exc}") from None
    if (
        not pattern.startswith("{stem}")
        or not sample
        or any(c in sample for c in '/\\:*?"<>|')
        or sample.endswith(".")
    ):
        raise UsageError(
            f"--name-pattern {pattern!r}: must start with {{stem}}, contain {{width}} and no "
            "other field, and name a file beside its source (no / or \\), e.g. {stem}-{width}w"
        )
    return pattern


def model_learner(target: Target, model: str | PathLike | None, *, studies: PathLike | None):
    """The run's learned quality model (`quality_model.ModelLearner`), or None.

    `model`: "auto" (the model shipped for the target's metric, if there is one, updated by the
    user's observations in `studies`), "off" or None (no model: each image's search starts from
    what earlier images of the run needed), or the path of a model file. `studies`: where the
    user's observations are kept and added to (None: neither read nor written)."""
    from .quality_model import DEFAULT_MODEL, ModelLearner, QualityModel, store_path

    if model in (None, "off"):
        return None
    if len(target.clauses) != 1 or target.clauses[0].op != ">=":
        return None  # the model speaks to one lower bound on one metric
    metric = target.clauses[0].metric
    if model == "auto":
        path = DEFAULT_MODEL.with_name(f"{metric}.json")
        base = QualityModel.load(path) if path.exists() else None
    else:
        try:
            base = QualityModel.load(Path(model))
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(
                f"--model {model}: not a readable imgtune quality model ({exc})"
            ) from None
        if base.metric != metric:
            raise UsageError(f"--model {model} is for {base.metric} targets, not {target}")
    store = store_path(Path(studies), metric) if studies is not None else None
    return ModelLearner(base, store, metric)


def apply(
    preset: PathLike | Preset,
    src: PathLike,
    out: PathLike,
    *,
    refine: bool = False,
    target: str | Target | None = None,
    probe_speed: int | str | None = DEFAULT_PROBE_SPEED,
    best_effort: bool = False,
    jobs: int | None = None,
    cluster: str | None = None,
    memory: str | int | None = None,
    follow_symlinks: bool = False,
    max_pixels: int | None = None,
    animated: AnimatedPolicy = "refuse",
    weights: PathLike | None = None,
    device: str = "auto",
    compile: bool = False,
    gpu_memory: str | int | None = None,
    html: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[ImageOutcome], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> RunSummary:
    """Encode every image of `src` with `preset`'s recipe into `out`, score each output against
    the preset's target (or `target`), and keep the original of each one that misses it (unless
    `best_effort`). `refine`: adjust quality per image around the preset's, so each image just
    meets the target (AVIF searched at `probe_speed`, as `optimize`). A preset tuned with
    widths makes each image at each of them (`optimize`'s `widths`). Resumable and safe as
    `optimize`; the other options are `optimize`'s.

    Returns
    -------
    `RunSummary`, as `optimize`.
    """
    from .image_job import Job
    from .lossless import lossy_only
    from .predictor import QualityPredictor
    from .probe_speed import parse as parse_probe_speed

    p = preset if isinstance(preset, Preset) else load_preset(preset)
    max_w, max_h = p.max_size or (None, None)
    tgt = resolve_target(target or p.target)
    lossy_only("apply", tgt)
    job = Job.apply(
        p.candidate, tgt, refine=refine, best_effort=best_effort,
        background=p.background, max_width=max_w, max_height=max_h,
        max_pixels=_limit(max_pixels), animated=check_animated(animated),
        probe_speed=parse_probe_speed(probe_speed), widths=p.widths,
    )  # fmt: skip
    return _run_folder(
        src, out, job, QualityPredictor(), jobs=jobs, cluster=cluster,
        memory=memory, follow_symlinks=follow_symlinks, weights=weights, device=device,
        compile=compile, gpu_memory=gpu_memory, on_start=on_start, on_result=on_result,
        on_warning=on_warning,
        html=html,
    )  # fmt: skip


@dataclass(frozen=True)
class SuiteRecipe:
    """How to build a metric suite, small and hashable: what a cluster's workers get, so each
    builds its own (on its own device) once."""

    names: tuple[str, ...]
    composite: str | None = None
    lpips_net: str = "alex"
    weights: str | None = None
    device: str = "auto"
    compile: bool = False
    gpu_memory: str | int | None = None

    def build(self) -> MetricSuite:
        return build_suite(
            metrics=list(self.names), composite=self.composite, lpips_net=self.lpips_net,
            weights=self.weights, device=self.device, compile=self.compile,
            gpu_memory=self.gpu_memory,
        )  # fmt: skip


def gpu_memory_budget(value: str | int | float | None) -> int | float | None:
    """The batch scorer's device memory budget: bytes from ``"8G"``/``"500M"``/an int, or a
    share of the device's free memory from ``"60%"``; None: its default (80% of the free
    memory when scoring starts)."""
    if value is None:
        return None
    if isinstance(value, float) and 0 < value <= 1:
        return value
    text = str(value).strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:
            raise UsageError(f"--gpu-memory share must be in (0%, 100%], not {value!r}")
        return share
    if text.upper() != "OFF":  # --memory's "off" (no budget) means nothing here
        with contextlib.suppress(UsageError):
            return memory_budget(value)
    raise UsageError(
        f"--gpu-memory takes a size (12G, 500M, bytes) or a share of the free memory (60%), "
        f"not {value!r}"
    )


def memory_budget(memory: str | int | None) -> int | None:
    """Bytes from ``"8G"``/``"500M"``/``"1.5T"``/an int; None: half of this machine's RAM;
    ``"off"``: no budget (None)."""
    if memory is None:
        import psutil

        return psutil.virtual_memory().total // 2
    if isinstance(memory, int) and not isinstance(memory, bool):
        if memory < 1:
            raise UsageError(f"memory must be positive, got {memory}")
        return memory
    text = str(memory).strip().upper()
    if text == "OFF":
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMGT" else text
    try:
        value = float(number.removesuffix("I"))
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"memory must be like 8G, 500M, a number of bytes or off, not {memory!r}")
    return int(value * scale)


def _run_folder(
    src,
    out,
    job,
    predictor,
    *,
    jobs,
    cluster,
    memory,
    weights,
    device,
    compile,
    gpu_memory,
    **kw,
) -> RunSummary:
    from .batch import run_folder

    src = _folder(src)
    budget = memory_budget(memory)  # a bad value is refused before any work
    # One recipe: this process builds its suite from it (for the job's key), and so does each
    # cluster worker (on its own device).
    recipe = SuiteRecipe(
        tuple(job.target.needed_metrics()),
        weights=None if weights is None else str(weights),
        device=device,
        compile=compile,
        gpu_memory=gpu_memory,
    )
    if cluster is not None:
        from .cluster import open_cluster, resources_for

        # This process only walks, writes and keys the job (the suite's description, not its
        # device): scoring on other machines' GPUs, it needs none of its own. local:N scores
        # here, so its device is checked here first.
        suite = (recipe if cluster.startswith("local:") else replace(recipe, device="cpu")).build()
        with open_cluster(cluster, recipe, resources=resources_for(device)) as c:
            # the job's key names the device the workers score on, not this process's
            suite.spec_device = c.device_kind()
            return run_folder(
                src, Path(out), job, suite=suite, cluster=c, predictor=predictor, **kw
            )
    suite = recipe.build()
    jobs = jobs or cpus.available()
    import torch

    # Jobs share the cores this process may use (affinity, cgroup quota), not the machine's.
    torch.set_num_threads(cpus.threads_per_job(jobs))
    return run_folder(
        src, Path(out), job, suite=suite, jobs=jobs, predictor=predictor, memory=budget, **kw
    )


# ------------------------------------------------------------------------- presets and studies


def export(
    preset: PathLike | Preset, to: str, *, input: str | None = None, output: str | None = None
) -> str:
    """`preset`'s recipe for an asset pipeline tool (`to`: pillow, pillow-python, sharp, vips,
    vipsthumbnail, cwebp, avifenc, cjpeg, magick, json or toml), as text. `input`/`output`
    fill the command's placeholders, shell-quoted."""
    from .export import FORMATS, render

    if to not in FORMATS:
        raise UsageError(f"unknown export format {to!r}; known: {', '.join(FORMATS)}")
    p = preset if isinstance(preset, Preset) else load_preset(preset)
    return render(p, to, input=input, output=output)


def report(
    study: str,
    *,
    storage: str | None = None,
    images: PathLike | None = None,
    out: PathLike | None = None,
    studies: PathLike | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Path:
    """Write one self-contained HTML report of a stored study (a name in `studies/`, kept in
    ``<name>.journal`` or ``<name>.db``, or the path of such a file; any storage with
    `storage`); with `images` (the tuned folder), per-image crops of the chosen recipe where it
    differs most. Returns the report's path."""
    from .report import build_report, write_report

    studies = studies_dir(studies)
    name, st, _ = _load_stored_study(study, storage, studies)
    preset_path = studies / f"{name}.preset.json"
    preset = load_preset(preset_path) if preset_path.is_file() else None
    crops = None
    if images is not None and preset is not None:
        crops = _crops_for(_folder(images), preset)
    elif images is not None and on_note:
        on_note("no preset for this study (no feasible recipe), so no crops")
    dest = Path(out) if out is not None else studies / f"{name}.report.html"
    write_report(dest, build_report(st, preset=preset.to_dict() if preset else None, images=crops))
    return dest


def _crops_for(folder: Path, preset: Preset) -> list[dict]:
    from .images import load_folder
    from .metrics import MetricSuite
    from .report import report_images
    from .search import ImageSet

    suite = MetricSuite.build(["psnr"], device="cpu")  # the crops need no scores
    sources, _ = load_folder(folder, min_side=11)
    if not sources:
        return []
    max_w, max_h = preset.max_size or (None, None)
    images = ImageSet(
        sources, suite, max_width=max_w, max_height=max_h, background=preset.background
    )
    return report_images(images, preset.candidate)


# ------------------------------------------------------------------------------ shared studies


def _study_storage(name: str, storage: str | None, studies: Path):
    """(StorageSpec, note) for `tune`'s study `name`: `storage` when given; else
    ``studies/<name>.db`` where an earlier imgtune made that SQLite file (resumed there, and
    said so), else the journal file ``studies/<name>.journal``."""
    from .storage import JOURNAL_SUFFIX, StorageSpec

    if storage is not None:
        return StorageSpec.parse(storage), None
    db = studies / f"{name}.db"
    if db.is_file():
        return StorageSpec("sqlite", f"sqlite:///{db}"), (
            f"study '{name}' is kept in the SQLite file {db} (as imgtune kept studies before "
            f"journal files): resumed there, one process at a time; new studies are journal "
            f"files (studies/<name>{JOURNAL_SUFFIX}), which --workers and other processes share"
        )
    return StorageSpec("journal", str(studies / f"{name}{JOURNAL_SUFFIX}")), None


def _load_stored_study(study: str, storage: str | None, studies: Path):
    """(name, Optuna study, StorageSpec) for `report` and `preset`: `study` is a name in
    `studies` (``<name>.db`` first, as `tune` resumes it, then ``<name>.journal``) or the path
    of either file; with `storage`, a name in that storage."""
    import optuna

    from .storage import JOURNAL_SUFFIX, StorageSpec

    path = Path(study)
    name = path.stem if path.suffix in (".db", JOURNAL_SUFFIX) else study
    if storage is None:
        if path.suffix in (".db", JOURNAL_SUFFIX):
            if not path.is_file():
                raise ImgtuneError(f"{path}: no such study file")
            found = path
        else:
            candidates = [studies / f"{name}.db", studies / f"{name}{JOURNAL_SUFFIX}"]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise ImgtuneError(
                    f"no such study {name!r} in {studies}/ (neither {candidates[0].name} nor "
                    f"{candidates[1].name}); give --storage for a study kept elsewhere"
                )
        storage = f"sqlite:///{found}" if found.suffix == ".db" else str(found)
    spec = StorageSpec.parse(storage)
    if spec.kind == "journal" and not Path(spec.location).is_file():
        raise ImgtuneError(f"{spec.location}: no such journal file")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        st = optuna.load_study(study_name=name, storage=spec.open())
    except KeyError:
        raise ImgtuneError(f"no study named {name!r} in {spec.display}") from None
    return name, st, spec


def preset(
    study: str,
    *,
    storage: str | None = None,
    images: PathLike | None = None,
    out: PathLike | None = None,
    weights: PathLike | None = None,
    device: str = "auto",
    studies: PathLike | None = None,
) -> Path:
    """Write the preset of a stored study now, from its best feasible trial: what `tune` writes
    at the end of a run, for a study other processes may still be adding to.

    Without `images` the preset is built from the storage alone: the study records the set
    (image hashes, output sizes, background, source bytes, JPEG q85 bytes) and each feasible
    trial every image's bytes and scores. With `images` (the tuned folder) the recipe is
    scored again on it, as `tune` does before writing (the folder must hold the study's
    images); studies whose trials predate the stored scores need this. `study` is a name or a
    study file, as for `report`. Returns the preset's path (default
    ``studies/<name>.preset.json``). Raises `ImgtuneError` with exit code 3 when no trial met
    the target.
    """
    from .outcome import ExitCode
    from .presets import assemble_preset
    from .recipe import Candidate

    studies = studies_dir(studies)
    name, st, spec = _load_stored_study(study, storage, studies)
    attrs = st.user_attrs
    record, output = attrs.get("spec"), attrs.get("output")
    if not isinstance(record, dict):
        raise ImgtuneError(f"study {name!r} in {spec.display} was not made by imgtune tune")
    if not isinstance(output, dict):
        raise ImgtuneError(
            f"study {name!r} was made by an earlier imgtune and does not record its output "
            "sizes: run `imgtune tune` on it once (--trials 0 adds no trial), then this command"
        )
    try:
        best = st.best_trial
    except ValueError:
        err = ImgtuneError(
            f"no trial of study {name!r} met its target {record.get('target')}; no preset written"
        )
        err.exit_code = ExitCode.TARGET_MISSED
        raise err from None
    tgt = resolve_target(record["target"])
    candidate = Candidate.from_dict(best.user_attrs["candidate"])
    per_image = best.user_attrs.get("per_image")
    fingerprint = record["images"]
    if images is not None:
        per_image = _rescore(
            images, candidate, tgt, record, output, weights=weights, device=device,
            studies=studies,
        )  # fmt: skip
    elif not isinstance(per_image, dict) or not per_image:
        raise ImgtuneError(
            f"trial {best.number} of study {name!r} does not record every image's scores (made "
            "by an earlier imgtune): give --images FOLDER to score its recipe again"
        )
    made = assemble_preset(
        candidate, per_image, tgt, aggregate=record["aggregate"],
        max_size=output.get("max_size"), background=output.get("background"),
        metrics=record["metrics"], images=fingerprint, source_bytes=output["source_bytes"],
        study={"name": name, "storage": spec.display, "trials": len(st.trials)},
        default_jpeg_bytes=output.get("default_jpeg_bytes"),
    )  # fmt: skip
    return made.save(Path(out) if out is not None else studies / f"{name}.preset.json")


def _rescore(images, candidate, tgt, record, output, *, weights, device, studies) -> dict:
    """Every image's bytes and scores for `candidate`, scored again on the folder `images`,
    which must hold the study's images; the recipe must still meet the target."""
    from .images import load_folder
    from .search import ImageSet, evaluate

    folder = _folder(images)
    suite = build_suite(target=tgt, weights=weights, device=device)
    if suite.describe() != record["metrics"]:
        raise ImgtuneError(f"{folder}: these metrics are not the ones the study scored with")
    sources, _ = load_folder(folder, min_side=suite.min_side)
    box = output.get("box") or [None, None]
    background = output.get("background")
    image_set = ImageSet(
        sources, suite, max_width=box[0], max_height=box[1],
        background=tuple(background) if background else None,
        cache_path=studies / f"{folder.resolve().name}.scores.sqlite",
    )  # fmt: skip
    if image_set.fingerprint() != record["images"]:
        raise ImgtuneError(f"{folder}: not the images the study was tuned on (names or content)")
    ev = evaluate(image_set, candidate, tgt, aggregate=record["aggregate"], stop_early=False)
    if not ev.feasible:
        raise ImgtuneError(f"{folder}: the study's best recipe no longer meets {tgt} here")
    return ev.per_image
