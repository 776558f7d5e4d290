"""The `imgtune` command line: a thin layer over the Python API (configuration in, report out).

Heavy libraries (torch, pandas) are imported inside the commands, so `imgtune --help` is fast.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .outcome import EXIT_CODES_HELP, ExitCode

app = typer.Typer(
    name="imgtune",
    help="Find the smallest image encoding that still meets a perceptual-quality target.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line (greppable)


def _version(value: bool) -> None:
    if value:
        out.print(f"imgtune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """imgtune: smallest files that still meet a perceptual-quality target."""


MetricsOpt = Annotated[
    str,
    typer.Option(
        "--metrics",
        "-m",
        help="Comma-separated metrics: lpips, ssim, ms_ssim, psnr. LPIPS needs the AlexNet "
        "backbone "
        "weights (downloaded once into the torch cache, or --weights DIR); 'ssim,ms_ssim,psnr' "
        "needs none.",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        envvar="IMGTUNE_WEIGHTS",
        help="Folder holding torchvision's backbone checkpoint for LPIPS (e.g. "
        "alexnet-owt-7be5be79.pth); nothing is downloaded when given.",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
]


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _json_default(value):
    return str(value)


def _clean(record: dict) -> dict:
    # JSON has no infinity: identical images' PSNR is written as the string "inf".
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in record.items()}


def _build_suite(
    metrics: str, composite: str | None, lpips_net: str, weights: Path | None, device: str
):
    from .metrics import MetricSuite, WeightsMissingError

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    try:
        return MetricSuite.build(
            names,
            device=device,
            composite_weights=composite,
            lpips_net=lpips_net,
            weights_dir=weights,
        )
    except WeightsMissingError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.NOTHING_DONE) from None
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None


@app.command(epilog=EXIT_CODES_HELP)
def score(
    reference: Annotated[Path, typer.Argument(help="Reference image, or a folder of them.")],
    candidate: Annotated[
        Path,
        typer.Argument(
            help="Candidate image, or a folder paired with REFERENCE by relative path "
            "(the extension may differ: ref/a.png pairs with out/a.webp)."
        ),
    ],
    metrics: MetricsOpt = "lpips,ssim,ms_ssim,psnr",
    composite: Annotated[
        str | None,
        typer.Option(
            help="Composite weights, e.g. 'lpips=0.3,ssim=0.3,psnr=0.1' (the default, renormalised "
            "over the enabled metrics)."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="Quality target each pair must meet, e.g. 'composite>=0.9,ssim_p5>=0.85'."
        ),
    ] = None,
    lpips_net: Annotated[str, typer.Option(help="LPIPS backbone: alex, squeeze or vgg.")] = "alex",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Machine output on stdout: one JSON object (two files) or NDJSON, one line "
            "per pair then a summary line (folders).",
        ),
    ] = False,
    csv: Annotated[Path | None, typer.Option(help="Write the per-pair table to this CSV.")] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            help="Decompression-bomb limit in pixels (Pillow's default, ~89 MP, if not given)."
        ),
    ] = None,
    animated: Annotated[
        str,
        typer.Option(
            help="Animated inputs: 'refuse' (default) or 'first' (score the first frame)."
        ),
    ] = "refuse",
) -> None:
    """Score CANDIDATE against REFERENCE with every metric, the composite and its quality level."""
    from .images import DEFAULT_MAX_PIXELS
    from .targets import TargetError, parse_target

    try:
        tgt = parse_target(target) if target else None
    except TargetError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    if animated not in ("refuse", "first"):
        err.print(f"[red]error:[/red] --animated must be 'refuse' or 'first', not {animated!r}")
        raise typer.Exit(ExitCode.USAGE)
    for p in (reference, candidate):
        if not p.exists():
            err.print(f"[red]error:[/red] {p}: no such file or folder", highlight=False)
            raise typer.Exit(ExitCode.NOTHING_DONE)
    if reference.is_dir() != candidate.is_dir():
        err.print("[red]error:[/red] give two files or two folders, not one of each")
        raise typer.Exit(ExitCode.USAGE)
    suite = _build_suite(metrics, composite, lpips_net, weights, device)
    limit = max_pixels or DEFAULT_MAX_PIXELS
    if reference.is_dir():
        _score_dirs(reference, candidate, suite, tgt, limit, animated, as_json, csv)
    else:
        _score_files(reference, candidate, suite, tgt, limit, animated, as_json, csv)


def _score_files(reference, candidate, suite, tgt, limit, animated, as_json, csv) -> None:
    from .images import ImageError
    from .scoring import ScoreReport, score_pair

    try:
        result = score_pair(
            reference, candidate, suite, target=tgt, max_pixels=limit, animated=animated
        )
    except (ImageError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.NOTHING_DONE) from None
    if csv:
        _write_csv(ScoreReport(results=[result]), csv)
    if as_json:
        record = {**_clean(result.record()), "composite_weights": suite.composite.as_dict()}
        out.out(json.dumps(record, default=_json_default), highlight=False)
    else:
        table = Table(title=f"{candidate} vs {reference}", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("meaning")
        from .metrics import OUTPUTS

        for name in suite.output_names:
            if name == "composite":
                continue
            table.add_row(name, _fmt(result.scores[name]), OUTPUTS[name].description)
        table.add_row(
            "composite",
            _fmt(result.scores.composite),
            f"{suite.composite.describe()}",
            style="bold",
        )
        table.add_row(
            "level",
            result.scores.level,
            "excellent>=0.9 very_good>=0.8 good>=0.7 acceptable>=0.6 poor>=0.5",
            style="bold",
        )
        if result.scores.lpips_category:
            table.add_row(
                "lpips category",
                result.scores.lpips_category,
                "excellent<0.1 good<0.2 acceptable<0.4",
            )
        out.print(table)
        if tgt:
            verdict = (
                "[green]meets[/green]"
                if not result.missed
                else f"[red]misses[/red] {', '.join(result.missed)}"
            )
            out.print(f"target {tgt}: {verdict}")
    raise typer.Exit(ExitCode.TARGET_MISSED if result.missed else ExitCode.OK)


def _write_csv(report, path: Path) -> None:
    from .files import atomic_write_text

    atomic_write_text(path, report.frame().to_csv(index=False))


def _score_dirs(reference, candidate, suite, tgt, limit, animated, as_json, csv) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .scoring import PairResult, pair_files, score_dirs

    pairs, problems = pair_files(reference, candidate)
    for p in problems:
        err.print(f"[yellow]skipped:[/yellow] {p}", highlight=False)
        if as_json:
            out.out(
                json.dumps({"type": "problem", "path": str(p.path), "reason": str(p)}),
                highlight=False,
            )

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )

    def on_result(item) -> None:
        progress.advance(task)
        if isinstance(item, PairResult):
            if as_json:
                out.out(
                    json.dumps({"type": "pair", **_clean(item.record())}, default=_json_default),
                    highlight=False,
                )
        else:
            err.print(f"[yellow]skipped:[/yellow] {item}", highlight=False)
            if as_json:
                out.out(
                    json.dumps({"type": "problem", "path": str(item.path), "reason": str(item)}),
                    highlight=False,
                )

    with progress:
        task = progress.add_task("scoring", total=len(pairs))
        report = score_dirs(
            reference,
            candidate,
            suite,
            target=tgt,
            max_pixels=limit,
            animated=animated,
            on_result=on_result,
            pairs=pairs,
        )
    report.problems[:0] = problems
    counts = report.counts
    if csv and report.results:
        _write_csv(report, csv)
    summary = report.summary() if report.results else None
    if as_json:
        out.out(
            json.dumps(
                {
                    "type": "summary",
                    "pairs": len(report.results),
                    "skipped": counts.skipped,
                    "missed_target": counts.missed,
                    "interrupted": report.interrupted,
                    "levels": report.level_counts(),
                    "metrics": []
                    if summary is None
                    else [_clean(r) for r in summary.to_dict("records")],
                    "composite_weights": suite.composite.as_dict(),
                }
            ),
            highlight=False,
        )
    else:
        if summary is not None:
            table = Table(
                title=f"{len(report.results)} pairs scored, {counts.skipped} skipped",
                title_justify="left",
            )
            for col in ("metric", "count", "mean", "worst"):
                table.add_column(col, justify="left" if col == "metric" else "right")
            for row in summary.to_dict("records"):
                table.add_row(
                    row["metric"], str(row["count"]), _fmt(row["mean"]), _fmt(row["worst"])
                )
            out.print(table)
            levels = report.level_counts()
            out.print("quality levels: " + ", ".join(f"{k} {v}" for k, v in levels.items()))
            out.print(f"composite = {suite.composite.describe()}", highlight=False)
            if tgt:
                out.print(f"target {tgt}: {counts.done} met, {counts.missed} missed")
            if csv:
                out.print(f"wrote {csv}")
        else:
            err.print("[red]error:[/red] no pair could be scored")
    if report.interrupted:
        err.print("[yellow]interrupted[/yellow]: the pairs above were scored; rerun to redo all")
        raise typer.Exit(ExitCode.INTERRUPTED)
    raise typer.Exit(counts.exit_code)


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
        typer.Option(help="Quality target, e.g. 'ssim>=0.97,ssim_p5>=0.9' (overrides --quality)."),
    ] = None,
    quality: Annotated[
        str,
        typer.Option(
            help="Named target: low (ssim>=0.90), medium (ssim>=0.94,ssim_p5>=0.85), high "
            "(ssim>=0.97,ssim_p5>=0.92), lossless-looking (ssim>=0.99,ssim_p5>=0.97)."
        ),
    ] = "high",
    aggregate: Annotated[
        str, typer.Option(help="How the set meets the target: min (every image), mean, or pNN.")
    ] = "min",
    trials: Annotated[int, typer.Option(help="Trials to run (added to a resumed study).")] = 40,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: repeatable study on one machine.")] = None,
    codecs: Annotated[
        str | None,
        typer.Option(
            help="Codecs to search (default: every available one: jpeg, webp, avif[, jxl])."
        ),
    ] = None,
    max_width: Annotated[int | None, typer.Option(help="Fit outputs inside this width.")] = None,
    max_height: Annotated[int | None, typer.Option(help="Fit outputs inside this height.")] = None,
    no_sharpen: Annotated[
        bool, typer.Option("--no-sharpen", help="Keep sharpening at 1.0.")
    ] = False,
    background: Annotated[
        str | None,
        typer.Option(
            help="Colour (white, black, #RRGGBB) to flatten transparency onto, which allows JPEG "
            "for images with alpha."
        ),
    ] = None,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Find the smallest recipe (codec, quality, resize filter, sharpening) for the images in
    FOLDER that still meets the quality target on every image, and write it as a preset."""
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
    from .metrics import OUTPUTS

    needed = {OUTPUTS[m].metric for m in tgt.metrics}
    if "composite" in needed:
        needed = (needed - {"composite"}) | {"lpips", "ssim", "psnr"}
    suite = _build_suite(",".join(sorted(needed)), None, "alex", weights, device)
    _run_tune(
        folder,
        tgt,
        suite,
        aggregate,
        trials,
        timeout,
        seed,
        codecs,
        max_width,
        max_height,
        no_sharpen,
        bg,
        storage,
        study_name,
        new_study,
        preset_out,
        out,
        as_json,
    )


def _load_folder(folder: Path, min_side: int):
    from .images import ImageError, iter_image_files, load

    sources, skipped = [], 0
    for path in iter_image_files(folder):
        try:
            sources.append(load(path, min_side=min_side))
        except ImageError as exc:
            skipped += 1
            err.print(f"[yellow]skipped:[/yellow] {exc}", highlight=False)
    return sources, skipped


def _run_tune(
    folder,
    tgt,
    suite,
    aggregate,
    trials,
    timeout,
    seed,
    codec_list,
    max_width,
    max_height,
    no_sharpen,
    bg,
    storage,
    study_name,
    new_study,
    preset_out,
    out,
    as_json,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .codecs import available_codecs
    from .presets import build_preset, write_preset
    from .search import ImageSet, SearchSpace, StudyMismatchError, study_name_for, tune

    sources, skipped = _load_folder(folder, suite.min_side)
    if not sources:
        err.print(f"[red]error:[/red] no usable image in {folder}")
        raise typer.Exit(ExitCode.NOTHING_DONE)
    avail = [c for c, ok in available_codecs().items() if ok]
    chosen = [c.strip() for c in codec_list.split(",")] if codec_list else avail
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
    images = ImageSet(sources, suite, max_width=max_width, max_height=max_height, background=bg)
    space = SearchSpace.default(chosen, resized=images.resized, sharpen=not no_sharpen)
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
                aggregate=aggregate,
                storage=storage,
                study_name=name,
                new_study=new_study,
                on_trial=on_trial,
            )
        except (StudyMismatchError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(ExitCode.USAGE) from None
    csv_path = studies / f"{name}.trials.csv" if storage.startswith("sqlite:///studies") else None
    if csv_path:
        from .files import atomic_write_text

        atomic_write_text(csv_path, result.study.trials_dataframe().to_csv(index=False))
    default_bytes = _jpeg85_bytes(images)
    if result.best is None:
        _print_infeasible(result, tgt, as_json)
        raise typer.Exit(ExitCode.TARGET_MISSED)
    preset = build_preset(result, images, tgt, aggregate)
    preset_path = write_preset(preset, preset_out or studies / f"{name}.preset.json")
    written = _write_outputs(images, result.best.candidate, out) if out else None
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


def _jpeg85_bytes(images) -> int:
    """The common default for comparison: JPEG quality 85 at the same output size."""
    from .codecs import EncodeSettings, encode
    from .transforms import reference

    total = 0
    for it in images.items:
        px = it.source.pixels
        if it.size != (it.source.width, it.source.height):
            px = reference(px, it.size)
        total += len(
            encode(
                px, EncodeSettings.make("jpeg", 85), background=images.background or (255, 255, 255)
            )
        )
    return total


def _write_outputs(images, cand, out_dir: Path) -> list[dict]:
    """Encode the set with `cand` into `out_dir`; a source smaller than its output is copied."""
    from .codecs import CODECS
    from .files import atomic_write_bytes

    written = []
    for it in images.items:
        _, data = images.render(it, cand)
        src = it.source
        resized = it.size != (src.width, src.height)
        if len(data) >= src.file_bytes and not resized:
            dest = out_dir / src.path.name
            atomic_write_bytes(dest, src.path.read_bytes())
            written.append(
                {
                    "name": src.path.name,
                    "output": str(dest),
                    "bytes": src.file_bytes,
                    "kept_source": True,
                }
            )
        else:
            dest = out_dir / (src.path.stem + CODECS[cand.codec].extension)
            atomic_write_bytes(dest, data)
            written.append(
                {
                    "name": src.path.name,
                    "output": str(dest),
                    "bytes": len(data),
                    "kept_source": False,
                }
            )
    return written


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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
