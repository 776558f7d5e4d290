"""`imgtune tune`: the command-line face of `optimizer.search.tune` (registered on `cli.app`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .cli import (
    AnimatedOpt,
    BackgroundOpt,
    CompileOpt,
    DeviceOpt,
    MaxPixelsOpt,
    WeightsOpt,
    _build_suite,
    _check_animated,
    _fmt,
    _json_default,
    app,
    err,
    out,
)
from .outcome import EXIT_CODES_HELP, ExitCode


def _parse_colour(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    t = text.strip().lstrip("#")
    named = {"white": "ffffff", "black": "000000"}
    t = named.get(t.lower(), t)
    if len(t) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in t):
        raise typer.BadParameter(f"{text!r} is not a colour: use white, black or #RRGGBB")
    return tuple(int(t[k : k + 2], 16) for k in (0, 2, 4))  # type: ignore[return-value]


@app.command(epilog=EXIT_CODES_HELP)
def tune(
    folder: Annotated[
        Path, typer.Argument(help="Folder of images: the set to tune one recipe for.")
    ],
    target: Annotated[
        str | None,
        typer.Option(
            help="Quality target, e.g. 'ssimulacra2>=85' or 'ssim>=0.97,ssim_p5>=0.9' "
            "(overrides --quality)."
        ),
    ] = None,
    quality: Annotated[
        str,
        typer.Option(
            help="Named target on SSIMULACRA2's scale: low (ssimulacra2>=50), medium (>=70: "
            "artifacts visible, not annoying), high (>=80: not noticeable side by side at 1:1), "
            "lossless-looking (>=90)."
        ),
    ] = "high",
    aggregate: Annotated[
        str, typer.Option(help="How the set meets the target: min (every image), mean, or pNN.")
    ] = "min",
    trials: Annotated[
        int,
        typer.Option(
            help="Trials to run (added to a resumed study). A bisect trial scores ~4-5 "
            "qualities of one recipe; tpe needs about 4x as many trials (benchmarks/RESULTS.md)."
        ),
    ] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: repeatable study on one machine.")] = None,
    codecs: Annotated[
        str | None,
        typer.Option(
            help="Codecs to search (default jpeg,webp,avif; add jxl with pillow-jxl-plugin)."
        ),
    ] = None,
    max_width: Annotated[int | None, typer.Option(help="Fit outputs inside this width.")] = None,
    max_height: Annotated[int | None, typer.Option(help="Fit outputs inside this height.")] = None,
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
        int, typer.Option(help="Trials run in parallel (threads; encoders and torch use them).")
    ] = 1,
    no_sharpen: Annotated[
        bool, typer.Option("--no-sharpen", help="Keep sharpening at 1.0.")
    ] = False,
    background: BackgroundOpt = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default sqlite:///studies/<name>.db).")
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(help="Study name (default: the folder's name and a hash of the target)."),
    ] = None,
    new_study: Annotated[
        bool, typer.Option("--new-study", help="Delete a stored study of that name and start over.")
    ] = False,
    preset_out: Annotated[
        Path | None,
        typer.Option(help="Where to write the preset (default studies/<name>.preset.json)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the set encoded with the chosen recipe here (sources untouched)."),
    ] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    compile: CompileOpt = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Also write the HTML report (charts, per-image crops) to this file "
            "(studies/<name>.report.html if given as '.')."
        ),
    ] = None,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="Read images through symbolic links that lead outside FOLDER (default: "
            "skipped, each named on stderr).",
        ),
    ] = False,
    max_pixels: MaxPixelsOpt = None,
    animated: AnimatedOpt = "refuse",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Find the smallest encoding recipe for a folder that still meets a quality target.

    Searches codec, quality, codec options, sharpening and (when resizing) the resize filter
    with an Optuna study; every image of FOLDER must meet the target. Writes the recipe as a
    preset, and with --out the encoded images.
    """
    from .search import QUALITY_LEVELS
    from .targets import TargetError, parse_target

    if quality not in QUALITY_LEVELS:
        err.print(
            f"[red]error:[/red] unknown --quality {quality!r}; known: {', '.join(QUALITY_LEVELS)}"
        )
        raise typer.Exit(ExitCode.USAGE)
    try:
        tgt = parse_target(target or QUALITY_LEVELS[quality])
        bg = _parse_colour(background)
    except (TargetError, typer.BadParameter) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    if not folder.is_dir():
        err.print(f"[red]error:[/red] {folder}: not a folder", highlight=False)
        raise typer.Exit(ExitCode.NOTHING_DONE)
    if out is not None:
        from .outdir import check_roots

        try:
            check_roots(folder, out)  # now, not after the search
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(ExitCode.USAGE) from None
    from .metrics import OUTPUTS

    needed = {OUTPUTS[m].metric for m in tgt.metrics}
    if "composite" in needed:
        needed = (needed - {"composite"}) | {"lpips", "ssim", "psnr"}
    suite = _build_suite(",".join(sorted(needed)), None, "alex", weights, device, compile)
    _check_animated(animated)
    sources, skipped = _load_folder(
        folder, suite.min_side, follow_symlinks, max_pixels=max_pixels, animated=animated
    )
    if not sources:
        err.print(f"[red]error:[/red] no usable image in {folder}")
        raise typer.Exit(ExitCode.NOTHING_DONE)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .codecs import available_codecs as codec_availability
    from .locks import AlreadyRunningError
    from .presets import build_preset, write_preset
    from .search import ImageSet, SearchSpace, StudyMismatchError, study_name_for, tune

    avail = [c for c, ok in codec_availability().items() if ok]
    # JPEG XL only on request: most browsers cannot display it.
    chosen = [c.strip() for c in codecs.split(",")] if codecs else [c for c in avail if c != "jxl"]
    unknown = [c for c in chosen if c not in avail]
    if unknown:
        err.print(
            f"[red]error:[/red] codec(s) {', '.join(unknown)} not available; "
            f"available: {', '.join(avail)}"
        )
        raise typer.Exit(ExitCode.USAGE)
    if any(s.has_alpha for s in sources) and bg is None and "jpeg" in chosen:
        chosen = [c for c in chosen if c != "jpeg"]
        err.print(
            "note: the set has images with transparency, so JPEG is not offered "
            "(give --background COLOR to allow it)"
        )
        if not chosen:
            raise typer.Exit(ExitCode.USAGE)
    # Scores persist per image set (not per target): a resumed or re-targeted run reuses them.
    images = ImageSet(
        sources,
        suite,
        max_width=max_width,
        max_height=max_height,
        background=bg,
        cache_path=Path("studies") / f"{folder.resolve().name}.scores.sqlite",
    )
    try:
        bounds = _parse_ranges(quality_range, chosen)
    except typer.BadParameter as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    space = SearchSpace.default(
        chosen,
        resized=images.resized and not no_resize_search,
        sharpen=not no_sharpen,
        quality=bounds,
    )
    name = study_name or study_name_for(folder, tgt, aggregate)
    studies = Path("studies")
    if storage is None:
        studies.mkdir(exist_ok=True)
        storage = f"sqlite:///{studies / (name + '.db')}"
    feasible = 0
    best_bytes: float | None = None
    progress = Progress(
        TextColumn("tuning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )

    def on_trial(ev) -> None:
        nonlocal feasible, best_bytes
        if ev.feasible:
            feasible += 1
            best_bytes = ev.total_bytes if best_bytes is None else min(best_bytes, ev.total_bytes)
        status = f"best {best_bytes / 1024:.1f} KiB" if best_bytes else "no feasible yet"
        progress.update(task, advance=1, status=f"{status}, {feasible} feasible")

    with progress:
        task = progress.add_task("tune", total=trials, status="")
        try:
            result = tune(
                images,
                tgt,
                space,
                trials=trials,
                timeout=timeout,
                seed=seed,
                strategy=strategy,
                jobs=jobs,
                aggregate=aggregate,
                storage=storage,
                study_name=name,
                new_study=new_study,
                on_trial=on_trial,
            )
        except (StudyMismatchError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(ExitCode.USAGE) from None
        except AlreadyRunningError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(ExitCode.NOTHING_DONE) from None
    from .files import atomic_write_text

    # Every study gets its trials.csv locally, whatever storage holds the study itself.
    csv_path = atomic_write_text(
        studies / f"{name}.trials.csv", result.study.trials_dataframe().to_csv(index=False)
    )
    default_bytes = images.default_jpeg_bytes()
    if result.best is None:
        _print_infeasible(result, tgt, as_json)
        if report is not None:  # the report shows how close the trials came
            from .report import build_report, write_report

            report_path = report if report.suffix else studies / f"{name}.report.html"
            write_report(report_path, build_report(result.study))
            err.print(f"report: {report_path}", highlight=False)
        raise typer.Exit(ExitCode.TARGET_MISSED)
    preset = build_preset(result, images, tgt, aggregate)
    preset["achieved"]["default_jpeg_bytes"] = default_bytes
    preset_path = write_preset(preset, preset_out or studies / f"{name}.preset.json")
    written = _write_outputs(images, result.best.candidate, folder, out) if out else None
    if report is not None:
        from .report import build_report, write_report

        report_path = report if report.suffix else studies / f"{name}.report.html"
        write_report(
            report_path,
            build_report(
                result.study, preset=preset, images=report_images(images, result.best.candidate)
            ),
        )
        err.print(f"report: {report_path}", highlight=False)
    summary = {
        "study": name,
        "storage": storage,
        "preset": str(preset_path),
        "params": result.best.candidate.as_dict(),
        "target": str(tgt),
        "aggregate": aggregate,
        "total_bytes": int(result.best.total_bytes),
        "source_bytes": images.source_bytes,
        "jpeg85_bytes": default_bytes,
        "quality": preset["achieved"]["quality"],
        "trials": result.trials,
        "pruned": result.pruned,
        "infeasible": result.infeasible,
        "encodes": result.encodes,
        "cache_hits": result.cache_hits,
        "seconds": round(result.seconds, 2),
        "skipped_inputs": skipped,
        "trials_csv": str(csv_path),
        "codecs_available": [c for c, ok in codec_availability().items() if ok],
        "codecs_searched": list(space.codecs),
        "strategy": strategy,
        "outputs": written,
        "interrupted": result.interrupted,
    }
    if as_json:
        out_console = Console()
        out_console.out(json.dumps(summary, default=_json_default), highlight=False)
    else:
        _print_tune_summary(summary, images)
    if result.interrupted:
        err.print(
            f"interrupted: {result.trials} trials are stored; run the same command "
            f"again to resume study '{name}'"
        )
        raise typer.Exit(ExitCode.INTERRUPTED)
    raise typer.Exit(ExitCode.PARTIAL if skipped else ExitCode.OK)


def _parse_ranges(text: str | None, chosen: list[str]) -> dict[str, tuple[int, int]]:
    """'jpeg=50-95,avif=30-80' -> bounds, checked against each codec's own quality scale."""
    from .codecs import CODECS

    out: dict[str, tuple[int, int]] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, _, rng = item.partition("=")
        lo, _, hi = rng.partition("-")
        if name not in chosen or not lo.isdigit() or not hi.isdigit():
            raise typer.BadParameter(
                f"bad --quality-range item {item!r}: expected CODEC=LOW-HIGH with CODEC one of "
                f"{', '.join(chosen)}"
            )
        a, b = int(lo), int(hi)
        qlo, qhi = CODECS[name].quality_range
        if not qlo <= a <= b <= qhi:
            raise typer.BadParameter(f"{item!r}: {name} quality runs {qlo}-{qhi}, low <= high")
        out[name] = (a, b)
    return out


def _write_outputs(images, cand, folder: Path, out: Path) -> list[dict]:
    """The chosen recipe's outputs in OUT, under OUT's lock; a folder that takes no writes
    stops the command with one line (the preset is already written)."""
    from .locks import AlreadyRunningError
    from .outdir import OutputDir, OutputUnwritableError, UnsafePathError

    try:
        out_dir = OutputDir(out)
        with out_dir.lock():
            return images.write_outputs(cand, out_dir, folder)
    except (AlreadyRunningError, OutputUnwritableError, UnsafePathError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.NOTHING_DONE) from None


def _load_folder(
    folder: Path,
    min_side: int,
    follow_symlinks: bool = False,
    *,
    max_pixels: int | None = None,
    animated: str = "refuse",
):
    from .images import DEFAULT_MAX_PIXELS, ImageError, iter_image_files, load

    limit = max_pixels or DEFAULT_MAX_PIXELS
    sources, skipped = [], 0
    for item in iter_image_files(folder, follow_symlinks=follow_symlinks):
        problem = item if isinstance(item, ImageError) else None  # a link out: named, not read
        if problem is None:
            try:
                sources.append(load(item, min_side=min_side, max_pixels=limit, animated=animated))
            except ImageError as exc:
                problem = exc
        if problem is not None:
            skipped += 1
            err.print(f"[yellow]skipped:[/yellow] {problem}", highlight=False)
    return sources, skipped


def _print_infeasible(result, tgt, as_json) -> None:
    ev = result.closest
    if as_json:
        Console().out(
            json.dumps(
                {
                    "feasible": False,
                    "target": str(tgt),
                    "trials": result.trials,
                    "closest": ev.candidate.as_dict() if ev else None,
                }
            ),
            highlight=False,
        )
    err.print(
        f"[red]no recipe met the target[/red] {tgt} in {result.trials} trials; no preset written.",
        highlight=False,
    )
    if ev:
        err.print(f"closest: {ev.candidate.as_dict()}", highlight=False)
        for name, vals in ev.per_image.items():
            missed = [str(c) for c in tgt.failures(vals)]
            if missed:
                got = ", ".join(f"{c.metric}={vals[c.metric]:.4f}" for c in tgt.failures(vals))
                err.print(f"  {name}: misses {', '.join(missed)} ({got})", highlight=False)


def _change(new: float, old: float) -> str:
    pct = 100 * (new - old) / old
    return f"{-pct:.1f}% smaller" if pct <= 0 else f"{pct:.1f}% larger"


def _print_tune_summary(s: dict, images) -> None:
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
    n = len(images.items)
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
            f"worst {_fmt(q['worst'])}, mean {_fmt(q['mean'])} "
            f"(target {s['target']}, {s['aggregate']})",
        )
    table.add_row(
        "trials",
        f"{s['trials']} run, {s['pruned']} pruned early, {s['infeasible']} missed the target",
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


def report_images(images, cand) -> list[dict]:
    """Per image: the reference at output size and the chosen recipe's decoded output."""
    from .codecs import CODECS, decode
    from .transforms import reference

    out = []
    for it in images.items:
        src = it.source
        ref = src.pixels if it.size == (src.width, src.height) else reference(src.pixels, it.size)
        _, data = images.render(it, cand)
        alpha = src.has_alpha and CODECS[cand.codec].supports_alpha
        channels = src.channels if alpha or not src.has_alpha else src.channels - 1
        out.append(
            {
                "name": src.path.name,
                "reference": ref[:, :, :channels] if channels < ref.shape[2] else ref,
                "output": decode(data, channels=channels),
                "caption": f"{cand.codec} q{cand.quality}, {len(data):,} bytes",
            }
        )
    return out


@app.command(epilog=EXIT_CODES_HELP)
def report(
    study: Annotated[
        str,
        typer.Argument(
            metavar="STUDY",
            help="A study name (in studies/<name>.db) or the path of its .db file.",
        ),
    ],
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: the study's SQLite file).")
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
    import optuna

    from .presets import read_preset

    path = Path(study)
    name = path.stem if path.suffix == ".db" else study
    if storage is None:
        db = path if path.suffix == ".db" else Path("studies") / f"{name}.db"
        if not db.is_file():
            err.print(f"[red]error:[/red] {db}: no such study database", highlight=False)
            raise typer.Exit(ExitCode.NOTHING_DONE)
        storage = f"sqlite:///{db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        st = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        err.print(f"[red]error:[/red] no study named {name!r} in {storage}", highlight=False)
        raise typer.Exit(ExitCode.NOTHING_DONE) from None
    preset_path = Path("studies") / f"{name}.preset.json"
    preset = read_preset(preset_path) if preset_path.is_file() else None
    crops = None
    if images is not None and preset is not None:
        crops = _crops_for(images, preset)
    elif images is not None:
        err.print("note: no preset for this study (no feasible recipe), so no crops")
    from .report import build_report, write_report

    dest = out_file or Path("studies") / f"{name}.report.html"
    write_report(dest, build_report(st, preset=preset, images=crops))
    err.print(f"report: {dest}", highlight=False)


def _crops_for(folder: Path, preset: dict) -> list[dict]:
    from .metrics import MetricSuite
    from .search import Candidate, ImageSet, _cand_args

    sources, _ = _load_folder(folder, 11)
    if not sources:
        return []
    size = preset.get("max_size") or [None, None]
    bg = tuple(preset["background"]) if preset.get("background") else None
    suite = MetricSuite.build(["psnr"], device="cpu")  # the crops need no scores
    images = ImageSet(sources, suite, max_width=size[0], max_height=size[1], background=bg)
    return report_images(images, Candidate(**_cand_args(preset["params"])))
