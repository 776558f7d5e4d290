"""What every command shares: the consoles, option types, printing helpers, one error path.

Commands parse options, call `optimizer.api`, and print. Anything that cannot be done is an
`ImgtuneError` (raised by the API, or by a command for a command-line-only check): `command`
prints its one line on stderr and exits with its `exit_code`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..errors import ImgtuneError

__all__ = [
    "AnimatedOpt",
    "BackgroundOpt",
    "CompileOpt",
    "DeviceOpt",
    "GpuMemoryOpt",
    "MaxPixelsOpt",
    "SetMetricsOpt",
    "WeightsOpt",
    "print_set_metrics",
    "command",
    "err",
    "fmt",
    "json_line",
    "out",
    "progress_bar",
    "warn",
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # one-line errors stay greppable


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command, printing an `ImgtuneError` as one line and exiting with its code."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ImgtuneError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None

    return run


def warn(kind: str, message: object, colour: str = "yellow") -> None:
    """`kind: message` on stderr (skipped:, warning:, missed:), the message printed as is."""
    err.print(f"[{colour}]{kind}:[/{colour}] {escape(str(message))}")


def fmt(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    # JSON has no infinity: identical images' PSNR is written as the string "inf".
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in record.items()}


def json_line(record: dict[str, Any]) -> None:
    """One JSON object on stdout (NDJSON), infinities as "inf", paths as strings."""
    out.out(json.dumps(_finite(record), default=str), highlight=False)


def progress_bar(label: str, *fields: str) -> Progress:
    """A progress bar on stderr, shown only on a terminal and gone when done."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f"{{task.fields[{f}]}}") for f in fields),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )


MetricsOpt = Annotated[
    str,
    typer.Option(
        "--metrics",
        "-m",
        help="Comma-separated metrics: lpips, dists, ssim, ms_ssim, psnr, ssimulacra2. LPIPS "
        "needs the AlexNet backbone weights and DISTS the VGG16 ones (downloaded once into the "
        "torch cache, or --weights DIR); 'ssim,ms_ssim,psnr,ssimulacra2' needs none.",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        envvar="IMGTUNE_WEIGHTS",
        help="Folder holding the networks' checkpoints: alexnet-owt-7be5be79.pth (LPIPS), "
        "vgg16-397923af.pth (DISTS), pt_inception-2015-12-05-6726825d.pth (FID/KID); "
        "nothing is downloaded when given.",
    ),
]
SetMetricsOpt = Annotated[
    str | None,
    typer.Option(
        "--set-metrics",
        help="Set-level metrics of the originals against the outputs as two sets: fid, kid or "
        "'fid,kid' (pytorch-fid's Inception weights, found like LPIPS's). KID is unbiased at "
        "any set size; FID needs more than 2048 images to be comparable across sizes.",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
]
GpuMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu-memory",
        help="GPU memory scoring may use: a size (12G) or a share of the free memory (60%). "
        "Prepared references stay on the GPU while they fit in half of it (else they wait on "
        "the host), batches get the rest; out of memory halves a batch, then scores that "
        "image on the CPU. Default: 80% of the free memory. Ignored on the CPU.",
    ),
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
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="Fuse the SSIM, MS-SSIM and SSIMULACRA2 kernels with torch.compile: 10-30 s once "
        "per process (needs a C++ compiler on the CPU), then faster scoring; pays off on "
        "jobs of a few hundred candidates or more. Falls back to normal kernels if it fails.",
    ),
]
FollowSymlinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks",
        help="Read files through symbolic links that lead outside the folder given (default: "
        "such links are skipped, each named on stderr). Links inside it are always followed.",
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        help="Quality target, e.g. 'ssimulacra2>=85' or 'ssim>=0.97,ssim_p5>=0.9' "
        "(overrides --quality)."
    ),
]
QualityOpt = Annotated[
    str,
    typer.Option(
        help="Named target on SSIMULACRA2's scale: low (ssimulacra2>=50), medium (>=70: "
        "artifacts visible, not annoying), high (>=80: not noticeable side by side at 1:1), "
        "lossless-looking (>=90); or lossless (optimize only: pixel-identical outputs)."
    ),
]
MaxWidthOpt = Annotated[int | None, typer.Option(help="Fit outputs inside this width.")]
MaxHeightOpt = Annotated[int | None, typer.Option(help="Fit outputs inside this height.")]


def print_set_metrics(found: dict) -> None:
    """The FID/KID table and its notes (what a set of this size can and cannot say)."""
    from ..report import set_metrics_lines

    table = Table(title=f"set metrics, {found.get('n', 0)} pairs", title_justify="left")
    for col in ("metric", "value", "meaning"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for row in set_metrics_lines(found):
        table.add_row(*row)
    out.print(table)
    for note in found.get("notes", []):
        out.print(f"[cyan]note:[/cyan] {note}")
