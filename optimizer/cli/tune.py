"""`imgtune tune` (one recipe for a folder, by an Optuna study) and `imgtune report` (its HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import api
from ..outcome import ExitCode
from .common import (
    AnimatedOpt,
    BackgroundOpt,
    CompileOpt,
    DeviceOpt,
    FollowSymlinksOpt,
    GpuMemoryOpt,
    MaxHeightOpt,
    MaxPixelsOpt,
    MaxWidthOpt,
    QualityOpt,
    SetMetricsOpt,
    TargetOpt,
    WeightsOpt,
    err,
    fmt,
    json_line,
    out,
    print_set_metrics,
    progress_bar,
    warn,
)


def tune(
    folder: Annotated[
        Path, typer.Argument(help="Folder of images: the set to tune one recipe for.")
    ],
    target: TargetOpt = None,
    quality: QualityOpt = "high",
    aggregate: Annotated[
        str, typer.Option(help="How the set meets the target: min (every image), mean, or pNN.")
    ] = "min",
    trials: Annotated[
        int,
        typer.Option(
            help="Trials to add to the study (finished ones; a resumed study gets this many "
            "more). With --workers or other processes on a shared --storage, every worker runs "
            "trials until the study has them: a run that finds workers busy on a study joins "
            "their goal. A bisect trial scores ~4-5 qualities of one recipe; tpe needs about 4x "
            "as many trials (benchmarks/RESULTS.md)."
        ),
    ] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of Optuna's sampler: the same study again on one machine."),
    ] = None,
    codecs: Annotated[
        str | None,
        typer.Option(
            help="Codecs to search (default jpeg,webp,avif; add jxl with pillow-jxl-plugin)."
        ),
    ] = None,
    max_width: MaxWidthOpt = None,
    max_height: MaxHeightOpt = None,
    widths: Annotated[
        str | None,
        typer.Option(
            help="Tune one recipe that holds at every one of these widths, e.g. 480,960,1920 "
            "(each image counts once per width, never upscaled); the preset records them and "
            "`imgtune apply` makes every width."
        ),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            help="bisect (default): Optuna samples the recipe and each recipe's quality is "
            "found by bisection with interpolation; tpe: Optuna samples every dimension "
            "(fewer encodes per trial, larger results at equal time on the samples)."
        ),
    ] = "bisect",
    quality_range: Annotated[
        str | None,
        typer.Option(
            help="Per-codec quality bounds, e.g. 'jpeg=50-95,avif=30-80' "
            "(defaults: jpeg/webp 30-100, avif 20-100)."
        ),
    ] = None,
    no_resize_search: Annotated[
        bool,
        typer.Option(
            "--no-resize-search", help="When resizing, always use Lanczos instead of searching."
        ),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            help="Trials run in parallel in each process (threads; encoders and torch use them)."
        ),
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(
            help="Processes adding trials to the one study (this one and N-1 more, the cores "
            "shared among them); needs a journal file (the default for new studies) or a "
            "database server, not an SQLite study. A worker that dies has its trial failed "
            "and run again by the others."
        ),
    ] = 1,
    heartbeat: Annotated[
        int,
        typer.Option(
            help="Seconds between a running trial's heartbeats on a journal file or server: a "
            "trial whose worker is silent for 3 heartbeats is failed and queued again. Give "
            "every worker of a study the same value."
        ),
    ] = 10,
    no_sharpen: Annotated[
        bool, typer.Option("--no-sharpen", help="Keep sharpening at 1.0.")
    ] = False,
    background: BackgroundOpt = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Where the study lives: a journal file's path (default studies/<name>.journal; "
            "processes on this machine share it), a database URL for workers on many machines "
            "(postgresql+psycopg://USER:PASSWORD@HOST/DB), or sqlite:///FILE.db (one process at "
            "a time). An existing studies/<name>.db made by an earlier imgtune is resumed."
        ),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(help="Study name (default: the folder's name and a hash of the target)."),
    ] = None,
    new_study: Annotated[
        bool,
        typer.Option(
            "--new-study",
            help="Delete a stored study of that name and start over (refused while workers run "
            "trials of it).",
        ),
    ] = False,
    preset_out: Annotated[
        Path | None,
        typer.Option(help="Where to write the preset (default studies/<name>.preset.json)."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the set encoded with the chosen recipe here (sources untouched)."
        ),
    ] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    gpu_memory: GpuMemoryOpt = None,
    compile: CompileOpt = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Also write the HTML report (charts, per-image crops) to this file "
            "(studies/<name>.report.html if given as '.')."
        ),
    ] = None,
    set_metrics: SetMetricsOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    max_pixels: MaxPixelsOpt = None,
    animated: AnimatedOpt = "refuse",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    learn: Annotated[
        bool,
        typer.Option(
            help="Add what the study learnt per image (the quality each codec option needed) "
            "to the quality model in studies/, which optimize starts from (--no-learn: don't)."
        ),
    ] = True,
) -> None:
    """Find the smallest encoding recipe for a folder that still meets a quality target.

    Searches codec, quality, codec options, sharpening and (when resizing) the resize filter
    with an Optuna study; every image of FOLDER must meet the target. Writes the recipe (the
    best feasible trial of the whole study, whoever ran it) as a preset, and with --out the
    encoded images. Several processes (--workers, or `imgtune tune` on several machines with
    one --storage) can add trials to one study.
    """
    feasible = 0
    best_bytes: float | None = None
    bar = progress_bar("tuning", "status")
    task = bar.add_task("tune", total=trials, status="")

    def on_trial(ev) -> None:
        nonlocal feasible, best_bytes
        if ev.feasible:
            feasible += 1
            best_bytes = ev.total_bytes if best_bytes is None else min(best_bytes, ev.total_bytes)
        status = f"best {best_bytes / 1024:.1f} KiB" if best_bytes else "no feasible yet"
        bar.update(task, status=f"{status}, {feasible} feasible here")

    start: list[int] = []

    def on_progress(finished: int, goal: int) -> None:
        # The whole study's finished trials, every worker's: this run's share of the goal.
        if not start:
            start.append(min(finished, goal))
        bar.update(task, total=max(1, goal - start[0]), completed=finished - start[0])

    with bar:
        r = api.tune(
            folder, target=target, quality=quality, aggregate=aggregate, trials=trials,
            timeout=timeout, seed=seed, codecs=codecs, max_width=max_width,
            max_height=max_height, widths=widths, strategy=strategy, quality_range=quality_range,
            resize_search=not no_resize_search, jobs=jobs, workers=workers,
            heartbeat=heartbeat, sharpen=not no_sharpen,
            background=background, storage=storage, study_name=study_name,
            new_study=new_study, preset_out=preset_out, out=out_dir, weights=weights,
            device=device, gpu_memory=gpu_memory, compile=compile, report=report,
            set_metrics=set_metrics,
            follow_symlinks=follow_symlinks,
            max_pixels=max_pixels, animated=animated, learn=learn, on_trial=on_trial,
            on_progress=on_progress,
            on_skip=lambda e: warn("skipped", str(e)), on_note=lambda n: warn("note", n, "cyan"),
        )  # fmt: skip
    if r.preset is None:
        _print_infeasible(r, as_json)
    else:
        summary = _summary(r)
        if as_json:
            json_line(summary)
        else:
            _print_summary(summary, len(r.images.items))
    if r.report_path is not None:
        err.print(f"report: {r.report_path}")
    if r.preset is None:
        raise typer.Exit(ExitCode.TARGET_MISSED)
    if r.interrupted:
        err.print(
            f"interrupted: {r.study.trials} trials are stored; run the same command "
            f"again to resume study '{r.study.study_name}'"
        )
        raise typer.Exit(ExitCode.INTERRUPTED)
    raise typer.Exit(ExitCode.PARTIAL if r.skipped else ExitCode.OK)


def _summary(r: api.TuneResult) -> dict:
    from ..codecs import available_codecs

    s = r.study
    return {
        "study": s.study_name,
        "storage": s.storage,
        "preset": str(r.preset_path),
        "params": r.recipe.as_dict(),
        "target": str(r.target),
        "aggregate": r.aggregate,
        "total_bytes": r.total_bytes,
        "source_bytes": r.source_bytes,
        "jpeg85_bytes": r.default_jpeg_bytes,
        "quality": r.preset.achieved["quality"],
        "trials": s.trials,
        "finished": s.finished,
        "goal": s.goal,
        "failed": s.failed,
        "workers": s.workers,
        "pruned": s.pruned,
        "infeasible": s.infeasible,
        "encodes": s.encodes,
        "cache_hits": s.cache_hits,
        "seconds": round(s.seconds, 2),
        "skipped_inputs": len(r.skipped),
        "trials_csv": str(r.trials_csv),
        "codecs_available": [c for c, ok in available_codecs().items() if ok],
        "codecs_searched": list(r.space.codecs),
        "strategy": r.strategy,
        "outputs": r.outputs,
        "interrupted": r.interrupted,
        **({"set_metrics": r.set_metrics} if r.set_metrics else {}),
    }


def _print_infeasible(r: api.TuneResult, as_json: bool) -> None:
    ev = r.closest
    if as_json:
        json_line(
            {
                "feasible": False,
                "target": str(r.target),
                "trials": r.study.trials,
                "closest": ev.candidate.as_dict() if ev else None,
            }
        )
    err.print(
        f"[red]no recipe met the target[/red] {r.target} in {r.study.trials} trials; "
        "no preset written."
    )
    if ev:
        err.print(f"closest: {ev.candidate.as_dict()}")
        for name, vals in ev.per_image.items():
            failures = r.target.failures(vals)
            if failures:
                got = ", ".join(f"{c.metric}={vals[c.metric]:.4f}" for c in failures)
                missed = ", ".join(str(c) for c in failures)
                err.print(f"  {name}: misses {missed} ({got})")


def _change(new: float, old: float) -> str:
    pct = 100 * (new - old) / old
    return f"{-pct:.1f}% smaller" if pct <= 0 else f"{pct:.1f}% larger"


def _print_summary(s: dict, n: int) -> None:
    p = s["params"]
    table = Table(
        title=f"imgtune tune: study {s['study']}", title_justify="left", show_header=False
    )
    table.add_column(style="bold")
    table.add_column()
    opts = ", ".join(f"{k}={v}" for k, v in p["options"].items())
    table.add_row(
        "recipe",
        f"{p['codec']} quality {p['quality']} ({opts}), sharpen "
        f"{p['sharpen']}" + (f", resize {p['resize_filter']}" if p["resize_filter"] else ""),
    )
    table.add_row(
        "codecs",
        f"searched {', '.join(s['codecs_searched'])} ({s['strategy']}); available here: "
        f"{', '.join(s['codecs_available'])}",
    )
    tb, sb, jb = s["total_bytes"], s["source_bytes"], s["jpeg85_bytes"]
    table.add_row("bytes", f"{tb:,} for {n} images")
    table.add_row("vs sources", f"{sb:,} -> {tb:,} ({_change(tb, sb)})")
    table.add_row(
        "vs JPEG q85",
        f"{jb:,} -> {tb:,} ({_change(tb, jb)}; JPEG q85 is a fixed "
        "default, not checked against the target)",
    )
    for metric, q in s["quality"].items():
        table.add_row(
            metric,
            f"worst {fmt(q['worst'])}, mean {fmt(q['mean'])} "
            f"(target {s['target']}, {s['aggregate']})",
        )
    table.add_row(
        "trials",
        f"{s['trials']} in the study, {s['pruned']} pruned early, {s['infeasible']} missed the "
        f"target"
        + (f", {s['failed']} failed" if s["failed"] else "")
        + (f" ({s['workers']} workers)" if s["workers"] > 1 else ""),
    )
    table.add_row("encodes", f"{s['encodes']} done, {s['cache_hits']} served from cache")
    table.add_row("time", f"{s['seconds']:.1f} s")
    table.add_row("preset", s["preset"])
    if s["outputs"]:
        kept = sum(o["kept_source"] for o in s["outputs"])
        table.add_row(
            "outputs",
            f"{len(s['outputs'])} written"
            + (f" ({kept} kept as the source, smaller than any encode)" if kept else ""),
        )
    out.print(table)
    if s.get("set_metrics"):
        print_set_metrics(s["set_metrics"])


def report(
    study: Annotated[
        str,
        typer.Argument(
            metavar="STUDY",
            help="A study name (studies/<name>.journal or studies/<name>.db) or the path of "
            "such a file.",
        ),
    ],
    storage: Annotated[
        str | None,
        typer.Option(
            help="The study's storage, as given to tune (default: the study's file in studies/)."
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="The image folder that was tuned, for the per-image crops."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="HTML file (default studies/<name>.report.html).")
    ] = None,
) -> None:
    """Write one self-contained HTML report of a study: summary, bytes-quality scatter with the
    feasible region and Pareto front, optimisation history, parameter importances, and (with
    --images) per image the source and chosen output where they differ most."""
    dest = api.report(
        study, storage=storage, images=images, out=out_file,
        on_note=lambda n: err.print(f"note: {n}"),
    )  # fmt: skip
    err.print(f"report: {dest}")


def preset(
    study: Annotated[
        str,
        typer.Argument(
            metavar="STUDY",
            help="A study name (studies/<name>.journal or studies/<name>.db) or the path of "
            "such a file; with --storage, a study name there.",
        ),
    ],
    storage: Annotated[
        str | None,
        typer.Option(
            help="The study's storage, as given to tune: a journal file, a database URL "
            "(postgresql+psycopg://...) or sqlite:///FILE (default: the study's file in studies/)."
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="The tuned folder: score the best recipe again on it before writing (needed "
            "for studies whose trials were made by an imgtune that did not store every "
            "image's scores). Without it the preset is built from the study alone."
        ),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Preset file (default studies/<name>.preset.json)."),
    ] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Write the preset of a stored study now: its best feasible trial, whichever worker ran it
    (what tune writes at the end of its run), e.g. while workers on other machines still add
    trials. Exits 3 when no trial met the target."""
    dest = api.preset(
        study, storage=storage, images=images, out=out_file, weights=weights, device=device
    )
    err.print(f"preset: {dest}")
