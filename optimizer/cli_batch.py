"""`imgtune optimize` and `imgtune apply`: folder jobs (registered on `cli.app`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .cli import (
    AnimatedOpt,
    BackgroundOpt,
    CompileOpt,
    DeviceOpt,
    MaxPixelsOpt,
    WeightsOpt,
    _build_suite,
    _check_animated,
    _with_target_metrics,
    app,
    err,
)
from .cli_tune import _parse_colour, _parse_ranges
from .outcome import EXIT_CODES_HELP, ExitCode

JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs", "-j", help="Images processed at once (threads; default: the CPU cores)."
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="NDJSON on stdout: one object per image, then a summary line."),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Write the per-image table (bytes, ratio, params, every metric, encodes) as CSV.",
    ),
]
BestEffortOpt = Annotated[
    bool,
    typer.Option(
        "--best-effort",
        help="Where nothing meets the target, write the closest encode anyway (flagged "
        "best_effort; exit 3). Default: keep the original and report the image.",
    ),
]
FollowSymlinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks",
        help="Read sources through symbolic links that lead outside SRC (default: such links "
        "are skipped, each named on stderr). Links inside SRC are always followed.",
    ),
]
SrcArg = Annotated[
    Path, typer.Argument(metavar="SRC", help="Folder of source images (never modified).")
]
OutArg = Annotated[Path, typer.Argument(metavar="OUT", help="Output folder; mirrors SRC's tree.")]
TargetOpt = Annotated[
    str | None,
    typer.Option(help="Quality target, e.g. 'ssimulacra2>=85' (overrides --quality)."),
]
QualityOpt = Annotated[
    str,
    typer.Option(
        help="Named target on SSIMULACRA2's scale: low (>=50), medium (>=70), high (>=80), "
        "lossless-looking (>=90)."
    ),
]


def _target(target: str | None, quality: str):
    from .search import QUALITY_LEVELS
    from .targets import TargetError, parse_target

    if target is None and quality not in QUALITY_LEVELS:
        err.print(
            f"[red]error:[/red] unknown --quality {quality!r}; known: {', '.join(QUALITY_LEVELS)}"
        )
        raise typer.Exit(ExitCode.USAGE)
    try:
        return parse_target(target or QUALITY_LEVELS[quality])
    except TargetError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None


def _suite_for(tgt, weights, device, compile):
    from .metrics import OUTPUTS

    needed = _with_target_metrics([], tgt.metrics)
    if any(OUTPUTS[m].metric == "composite" for m in tgt.metrics):
        needed = list(dict.fromkeys([*needed, "lpips", "ssim", "psnr"]))
    return _build_suite(",".join(needed), None, "alex", weights, device, compile)


def _run(
    src: Path,
    out_dir: Path,
    spec,
    suite,
    jobs,
    as_json,
    report,
    verb: str,
    predictor=None,
    *,
    follow_symlinks: bool = False,
    max_pixels: int | None = None,
    animated: str = "refuse",
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .batch import run_folder
    from .images import DEFAULT_MAX_PIXELS
    from .locks import AlreadyRunningError
    from .outdir import OutputUnwritableError, UnsafePathError

    if not src.is_dir():
        err.print(f"[red]error:[/red] {src}: not a folder", highlight=False)
        raise typer.Exit(ExitCode.NOTHING_DONE)
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1:
        import torch

        # Threads share the cores: one torch thread each avoids oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    stdout = Console(highlight=False, soft_wrap=True)
    rows: list[dict] = []
    saved = [0]
    progress = Progress(
        TextColumn(verb),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[saved]}"),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )
    task = progress.add_task(verb, total=None, saved="")

    def on_start(n: int) -> None:
        progress.update(task, total=n)

    def on_result(o) -> None:
        rec = o.record()
        rows.append(rec)
        if o.status != "skipped":
            saved[0] += o.saved_bytes
        progress.update(task, advance=1, saved=f"{saved[0] / 1e6:.1f} MB saved")
        if o.status == "skipped":
            err.print(f"[yellow]skipped:[/yellow] {o.error}", highlight=False)
        elif o.status in ("missed", "best_effort"):
            err.print(f"[red]{o.status}:[/red] {o.error}", highlight=False)
        if as_json:
            stdout.out(json.dumps(rec), highlight=False)

    def on_warning(message: str) -> None:
        err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    try:
        with progress:
            summary = run_folder(
                src,
                out_dir,
                spec,
                suite,
                jobs=jobs,
                max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                animated=animated,
                follow_symlinks=follow_symlinks,
                predictor=predictor,
                on_result=on_result,
                on_start=on_start,
                on_warning=on_warning,
            )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    except (AlreadyRunningError, OutputUnwritableError, UnsafePathError) as exc:
        # One line, then stop: finished images are in the manifest, the same command resumes.
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        if as_json:
            stdout.out(json.dumps({"summary": True, "error": str(exc)}), highlight=False)
        raise typer.Exit(ExitCode.NOTHING_DONE) from None
    if report is not None:
        _write_report(rows, report)
    _print_summary(summary, spec, as_json, stdout, out_dir)
    code = ExitCode.INTERRUPTED if summary.interrupted else summary.exit_code
    raise typer.Exit(code)


def _write_report(rows: list[dict], path: Path) -> None:
    import pandas as pd

    from .files import atomic_write_text

    flat = []
    for r in rows:
        d = {k: v for k, v in r.items() if k not in ("scores", "params")}
        d["params"] = json.dumps(r["params"], sort_keys=True) if r.get("params") else ""
        d.update(r.get("scores") or {})
        flat.append(d)
    atomic_write_text(path, pd.DataFrame(flat).to_csv(index=False))


def _print_summary(summary, spec, as_json: bool, stdout: Console, out_dir: Path) -> None:
    c = summary.counts
    record = {
        "summary": True,
        "counts": c,
        "source_bytes": summary.source_bytes,
        "output_bytes": summary.output_bytes,
        "saved_bytes": summary.saved_bytes,
        "encodes_per_image": round(summary.encodes_per_image, 3),
        "target": str(spec.target),
        "seconds": round(summary.seconds, 2),
        "interrupted": summary.interrupted,
        "manifest_problems": summary.manifest_problems,
    }
    if as_json:
        stdout.out(json.dumps(record), highlight=False)
        return
    pct = 100 * summary.saved_bytes / summary.source_bytes if summary.source_bytes else 0.0
    err.print(
        f"{c['written']} written, {c['kept']} kept as the original, {c['missed']} missed the "
        f"target (original kept), {c['best_effort']} best-effort, {c['skipped']} skipped, "
        f"{c['up_to_date']} already up to date -> {out_dir}",
        highlight=False,
    )
    err.print(
        f"{summary.source_bytes:,} -> {summary.output_bytes:,} bytes ({pct:.1f}% smaller); "
        f"{summary.encodes_per_image:.2f} encodes per image searched; target {spec.target}; "
        f"{summary.seconds:.1f} s"
        + ("; [yellow]interrupted[/yellow]" if summary.interrupted else ""),
        highlight=False,
    )


@app.command(epilog=EXIT_CODES_HELP)
def optimize(
    src: SrcArg,
    out_dir: OutArg,
    target: TargetOpt = None,
    quality: QualityOpt = "high",
    codecs: Annotated[
        str,
        typer.Option(
            help="Codecs each image may use (comma-separated); the smallest passing wins."
        ),
    ] = "avif,webp",
    preset: Annotated[
        Path | None,
        typer.Option(help="A preset (from tune): its target, and its quality as the first guess."),
    ] = None,
    tolerance: Annotated[
        int, typer.Option(help="Stop the quality search when the bracket is this narrow.")
    ] = 3,
    quality_range: Annotated[
        str | None, typer.Option(help="Per-codec quality bounds, e.g. 'jpeg=50-95,avif=30-80'.")
    ] = None,
    best_effort: BestEffortOpt = False,
    background: BackgroundOpt = None,
    max_width: Annotated[int | None, typer.Option(help="Fit outputs inside this width.")] = None,
    max_height: Annotated[int | None, typer.Option(help="Fit outputs inside this height.")] = None,
    jobs: JobsOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    max_pixels: MaxPixelsOpt = None,
    animated: AnimatedOpt = "refuse",
    as_json: JsonOpt = False,
    report: ReportOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    compile: CompileOpt = False,
) -> None:
    """Make every image of SRC as small as it can be while it still meets the target.

    Per image and codec, quality is found by a short search (a guess from earlier images,
    a step to bracket, then interpolation); the smallest passing output wins. An output
    never misses the target (unless --best-effort) and is never larger than its source (the
    source is copied instead). Reruns skip images whose output is up to date
    (OUT/.imgtune-manifest.jsonl); Ctrl-C leaves only whole files. Nothing outside OUT is
    touched, one run per OUT at a time (a second exits 4 naming the first); a full or
    read-only OUT stops with one line (exit 4) and the same command resumes.
    """
    from .batch import JobSpec, QualityPredictor
    from .codecs import CODECS, EncodeSettings, available_codecs
    from .presets import read_preset
    from .search import Candidate

    start: dict[str, int] = {}
    if preset is not None:
        try:
            p = read_preset(preset)
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/red] {preset}: {exc}", highlight=False)
            raise typer.Exit(ExitCode.USAGE) from None
        start[p["params"]["codec"]] = int(p["params"]["quality"])
        if target is None:
            target = p["target"]["spec"]
    _check_animated(animated)
    tgt = _target(target, quality)
    chosen = [c.strip() for c in codecs.split(",") if c.strip()]
    avail = available_codecs()
    bad = [c for c in chosen if c not in CODECS or not avail.get(c)]
    if bad or not chosen:
        ok = ", ".join(c for c, v in avail.items() if v)
        err.print(f"[red]error:[/red] codec(s) {', '.join(bad) or '(none)'} not available; {ok}")
        raise typer.Exit(ExitCode.USAGE)
    try:
        bg = _parse_colour(background)
        bounds = _parse_ranges(quality_range, chosen)
    except typer.BadParameter as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    if tolerance < 1:
        err.print("[red]error:[/red] --tolerance must be at least 1")
        raise typer.Exit(ExitCode.USAGE)
    bases = tuple(Candidate(c, 75, None, 1.0, EncodeSettings.make(c, 75).options) for c in chosen)
    spec = JobSpec(
        "optimize",
        tgt,
        bases,
        search=True,
        best_effort=best_effort,
        background=bg,
        max_width=max_width,
        max_height=max_height,
        tolerance=tolerance,
        bounds=tuple(sorted(bounds.items())),
    )
    suite = _suite_for(tgt, weights, device, compile)
    _run(
        src,
        out_dir,
        spec,
        suite,
        jobs,
        as_json,
        report,
        "optimizing",
        QualityPredictor(start),
        follow_symlinks=follow_symlinks,
        max_pixels=max_pixels,
        animated=animated,
    )


@app.command(epilog=EXIT_CODES_HELP)
def apply(
    preset: Annotated[
        Path, typer.Argument(metavar="PRESET", help="A preset JSON written by imgtune tune.")
    ],
    src: SrcArg,
    out_dir: OutArg,
    refine: Annotated[
        bool,
        typer.Option(
            "--refine",
            help="Adjust quality per image around the preset's (the same short search), so "
            "each image just meets the target.",
        ),
    ] = False,
    target: Annotated[
        str | None, typer.Option(help="Judge outputs against this target instead of the preset's.")
    ] = None,
    best_effort: BestEffortOpt = False,
    jobs: JobsOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    max_pixels: MaxPixelsOpt = None,
    animated: AnimatedOpt = "refuse",
    as_json: JsonOpt = False,
    report: ReportOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    compile: CompileOpt = False,
) -> None:
    """Encode every image of SRC with PRESET's recipe, score each output against the preset's
    target, and report those that miss it (their originals are kept unless --best-effort).
    Reruns skip outputs that are up to date; Ctrl-C leaves only whole files.
    """
    from .batch import JobSpec
    from .presets import read_preset
    from .search import Candidate, _cand_args

    try:
        p = read_preset(preset)
        cand = Candidate(**_cand_args(p["params"]))
        cand.settings()  # validates codec and options
    except (OSError, ValueError, KeyError, TypeError) as exc:
        err.print(f"[red]error:[/red] {preset}: not a usable preset ({exc})", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    _check_animated(animated)
    tgt = _target(target or p["target"]["spec"], "high")
    max_size = p.get("max_size") or [None, None]
    bg = tuple(p["background"]) if p.get("background") else None
    spec = JobSpec(
        "apply",
        tgt,
        (cand,),
        search=refine,
        best_effort=best_effort,
        background=bg,
        max_width=max_size[0],
        max_height=max_size[1],
    )
    suite = _suite_for(tgt, weights, device, compile)
    _run(
        src, out_dir, spec, suite, jobs, as_json, report, "applying",
        follow_symlinks=follow_symlinks, max_pixels=max_pixels, animated=animated,
    )  # fmt: skip


@app.command(epilog=EXIT_CODES_HELP)
def export(
    preset: Annotated[
        Path, typer.Argument(metavar="PRESET", help="A preset JSON written by imgtune tune.")
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="pillow (save kwargs), pillow-python, sharp, vips, vipsthumbnail, cwebp, "
            "avifenc, cjpeg, magick, json or toml.",
        ),
    ],
    input: Annotated[
        str | None,
        typer.Option(help="Fill the command's {input} placeholder with this path, shell-quoted."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(help="Fill the command's {output} placeholder with this path, shell-quoted."),
    ] = None,
) -> None:
    """Print PRESET's recipe for an asset pipeline tool. Settings a tool cannot express exactly
    (a resize kernel, Pillow's sharpening, a different quality scale) are named in comments,
    with the nearest documented equivalent used. Commands are printed for POSIX sh (bash, dash,
    zsh) with paths quoted: each word holding an --input or --output path (derived names and
    option suffixes included) is quoted whole, so spaces, quotes, ; or $(...) in a path stay part
    of the file name, and a path starting with - is printed as ./-name. Without --input/--output
    the {input} and {output} placeholders stay, to fill in."""
    from .export import FORMATS, render
    from .presets import read_preset

    try:
        p = read_preset(preset)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {preset}: {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    if to not in FORMATS:
        err.print(f"[red]error:[/red] unknown --to {to!r}; known: {', '.join(FORMATS)}")
        raise typer.Exit(ExitCode.USAGE)
    try:
        text = render(p, to, input=input, output=output)
    except (ValueError, KeyError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    Console(highlight=False, soft_wrap=True).out(text, end="")
