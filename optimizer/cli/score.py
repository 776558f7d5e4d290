"""`imgtune score`: every metric of a candidate against its reference, or of two folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import api
from ..outcome import ExitCode
from .common import (
    AnimatedOpt,
    CompileOpt,
    DeviceOpt,
    FollowSymlinksOpt,
    MaxPixelsOpt,
    MetricsOpt,
    SetMetricsOpt,
    WeightsOpt,
    err,
    fmt,
    json_line,
    out,
    print_set_metrics,
    progress_bar,
    warn,
)


def score(
    reference: Annotated[Path, typer.Argument(help="Reference image, or a folder of them.")],
    candidate: Annotated[
        Path,
        typer.Argument(
            help="Candidate image, or a folder paired with REFERENCE by relative path "
            "(the extension may differ: ref/a.png pairs with out/a.webp)."
        ),
    ],
    metrics: MetricsOpt = api.DEFAULT_METRICS,
    composite: Annotated[
        str | None,
        typer.Option(
            help="Composite weights, e.g. 'lpips=0.3,ssim=0.3,psnr=0.1' (the default, with "
            "dists=0.2 when DISTS is enabled, renormalised over the enabled metrics), or "
            "'documents': the design documents' LPIPS 0.3, SSIM 0.3, DISTS 0.2, PSNR 0.1 (their "
            "FID 0.1 is a set metric, renormalised away per image), all computed."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="Quality target each pair must meet, e.g. 'composite>=0.9,ssim_p5>=0.85'."
        ),
    ] = None,
    lpips_net: Annotated[str, typer.Option(help="LPIPS backbone: alex, squeeze or vgg.")] = "alex",
    set_metrics: SetMetricsOpt = None,
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
    follow_symlinks: FollowSymlinksOpt = False,
) -> None:
    """Score CANDIDATE against REFERENCE with every metric, the composite and its quality level."""
    from ..scoring import PairResult, ScoreReport

    bar = progress_bar("scoring")
    task = None

    def on_start(n: int) -> None:
        nonlocal task
        task = bar.add_task("scoring", total=n)

    def on_result(item) -> None:
        if task is not None:
            bar.advance(task)
        if isinstance(item, PairResult):
            if as_json:
                json_line({"type": "pair", **item.record()})
        else:
            warn("skipped", str(item))
            if as_json:
                json_line({"type": "problem", "path": str(item.path), "reason": str(item)})

    with bar:
        result = api.score(
            reference, candidate, metrics=metrics, composite=composite, target=target,
            lpips_net=lpips_net, weights=weights, device=device, compile=compile,
            max_pixels=max_pixels, animated=animated, follow_symlinks=follow_symlinks,
            set_metrics=set_metrics, on_start=on_start, on_result=on_result,
        )  # fmt: skip
    if isinstance(result, ScoreReport):
        _print_report(result, as_json=as_json, csv=csv)
    else:
        _print_pair(result, as_json, csv)


def _print_pair(result, as_json: bool, csv: Path | None) -> None:
    from ..metrics import OUTPUTS
    from ..scoring import ScoreReport

    if csv:
        _write_csv(ScoreReport(results=[result]), csv)
    if as_json:
        json_line({**result.record(), "composite_weights": result.composite.as_dict()})
    else:
        table = Table(title=f"{result.candidate} vs {result.reference}", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("meaning")
        for name in result.scores.values:
            if name != "composite":
                table.add_row(name, fmt(result.scores[name]), OUTPUTS[name].description)
        table.add_row(
            "composite",
            fmt(result.scores.composite),
            OUTPUTS["composite"].description + ": formula below",
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
        out.print(f"composite = {result.composite.describe()}")
        if result.target:
            verdict = (
                "[green]meets[/green]"
                if not result.missed
                else f"[red]misses[/red] {', '.join(result.missed)}"
            )
            out.print(f"target {result.target}: {verdict}")
    raise typer.Exit(ExitCode.TARGET_MISSED if result.missed else ExitCode.OK)


def _write_csv(report, path: Path) -> None:
    from ..files import atomic_write_text

    atomic_write_text(path, report.frame().to_csv(index=False))


def _print_report(report, *, as_json: bool, csv: Path | None) -> None:
    counts = report.counts
    if csv and report.results:
        _write_csv(report, csv)
    summary = report.summary() if report.results else None
    if as_json:
        json_line(
            {
                "type": "summary",
                "pairs": len(report.results),
                "skipped": counts.skipped,
                "missed_target": counts.missed,
                "interrupted": report.interrupted,
                "levels": report.level_counts(),
                "metrics": [] if summary is None else summary.to_dict("records"),
                "composite_weights": report.composite.as_dict(),
                **({"set_metrics": report.set_metrics} if report.set_metrics else {}),
            }
        )
    elif summary is not None:
        table = Table(
            title=f"{len(report.results)} pairs scored, {counts.skipped} skipped",
            title_justify="left",
        )
        for col in ("metric", "count", "mean", "worst"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for row in summary.to_dict("records"):
            table.add_row(row["metric"], str(row["count"]), fmt(row["mean"]), fmt(row["worst"]))
        out.print(table)
        levels = report.level_counts()
        out.print("quality levels: " + ", ".join(f"{k} {v}" for k, v in levels.items()))
        out.print(f"composite = {report.composite.describe()}")
        if report.set_metrics:
            print_set_metrics(report.set_metrics)
        if report.target:
            out.print(f"target {report.target}: {counts.done} met, {counts.missed} missed")
        if csv:
            out.print(f"wrote {csv}")
    else:
        err.print("[red]error:[/red] no pair could be scored")
    if report.interrupted:
        err.print("[yellow]interrupted[/yellow]: the pairs above were scored; rerun to redo all")
        raise typer.Exit(ExitCode.INTERRUPTED)
    raise typer.Exit(counts.exit_code)
