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
        help="Comma-separated metrics: lpips, ssim, ms_ssim, psnr, ssimulacra2. LPIPS needs the "
        "AlexNet backbone weights (downloaded once into the torch cache, or --weights DIR); "
        "'ssim,ms_ssim,psnr,ssimulacra2' needs none.",
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
BackgroundOpt = Annotated[
    str | None,
    typer.Option(
        help="Colour (white, black, #RRGGBB) to flatten transparency onto, which allows JPEG "
        "for images with alpha."
    ),
]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        help="Decompression-bomb limit in pixels (Pillow's default, ~89 MP, if not given)."
    ),
]
AnimatedOpt = Annotated[
    str,
    typer.Option(
        help="Animated images and multi-page TIFFs: 'refuse' (default) or 'first' (use the "
        "first frame)."
    ),
]


def _check_animated(animated: str) -> None:
    if animated not in ("refuse", "first"):
        err.print(f"[red]error:[/red] --animated must be 'refuse' or 'first', not {animated!r}")
        raise typer.Exit(ExitCode.USAGE)


CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="Fuse the SSIM, MS-SSIM and SSIMULACRA2 kernels with torch.compile: 10-30 s once "
        "per process (needs a C++ compiler on the CPU), then 2-4x faster scoring; pays off on "
        "jobs of a few hundred candidates or more. Falls back to normal kernels if it fails.",
    ),
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


def _with_target_metrics(names: list[str], outputs) -> list[str]:
    """Metric names plus the metrics that produce the target's outputs (composite: its
    components come from the enabled metrics)."""
    from .metrics import OUTPUTS

    out = [n.strip() for n in names if n.strip()]
    for o in outputs:
        metric = OUTPUTS[o].metric
        if metric != "composite" and metric not in out:
            out.append(metric)
    return out


def _build_suite(
    metrics: str,
    composite: str | None,
    lpips_net: str,
    weights: Path | None,
    device: str,
    compile: bool = False,
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
            compile=compile,
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
    metrics: MetricsOpt = "lpips,ssim,ms_ssim,psnr,ssimulacra2",
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
    compile: CompileOpt = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Machine output on stdout: one JSON object (two files) or NDJSON, one line "
            "per pair then a summary line (folders).",
        ),
    ] = False,
    csv: Annotated[Path | None, typer.Option(help="Write the per-pair table to this CSV.")] = None,
    max_pixels: MaxPixelsOpt = None,
    animated: AnimatedOpt = "refuse",
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="With folders: read files through symbolic links that lead outside them "
            "(default: skipped, each named).",
        ),
    ] = False,
) -> None:
    """Score CANDIDATE against REFERENCE with every metric, the composite and its quality level."""
    from .images import DEFAULT_MAX_PIXELS
    from .targets import TargetError, parse_target

    try:
        tgt = parse_target(target) if target else None
    except TargetError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None
    _check_animated(animated)
    for p in (reference, candidate):
        if not p.exists():
            err.print(f"[red]error:[/red] {p}: no such file or folder", highlight=False)
            raise typer.Exit(ExitCode.NOTHING_DONE)
    if reference.is_dir() != candidate.is_dir():
        err.print("[red]error:[/red] give two files or two folders, not one of each")
        raise typer.Exit(ExitCode.USAGE)
    # A target is judged on what it names: its metrics are scored even if --metrics left
    # them out (a clause on an unscored metric would otherwise read as missed).
    if tgt is not None:
        metrics = ",".join(_with_target_metrics(metrics.split(","), tgt.metrics))
    suite = _build_suite(metrics, composite, lpips_net, weights, device, compile)
    limit = max_pixels or DEFAULT_MAX_PIXELS
    if reference.is_dir():
        _score_dirs(
            reference, candidate, suite, tgt, limit, animated, as_json, csv, follow_symlinks
        )
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


def _score_dirs(
    reference, candidate, suite, tgt, limit, animated, as_json, csv, follow_symlinks
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .scoring import PairResult, pair_files, score_dirs

    pairs, problems = pair_files(reference, candidate, follow_symlinks=follow_symlinks)
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


# Commands in their own modules register themselves on `app` when imported.
from . import cli_batch, cli_tune  # noqa: E402, F401


def main() -> None:
    import warnings

    from .outdir import FATAL_ERRNOS

    # Pillow warns about damaged metadata it skipped (a TIFF tag past the end of the file): the
    # image loads or fails with a named reason either way, so the warning is only noise here.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    try:
        app()
    except OSError as exc:
        # A full disk or a read-only folder anywhere (a preset, a report): one line, exit 4.
        if exc.errno not in FATAL_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[red]error:[/red] {where}cannot write ({exc.strerror})", highlight=False)
        sys.exit(ExitCode.NOTHING_DONE)


if __name__ == "__main__":
    sys.exit(main())
