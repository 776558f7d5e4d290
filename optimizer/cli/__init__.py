"""The `imgtune` command line: options in, `optimizer.api` called, results printed.

Imports run one way: this module -> the command modules (`score`, `tune`, `folder`) ->
`common` -> the library. Heavy libraries (torch, pandas) load inside the API calls, so
`imgtune --help` is fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from ..outcome import EXIT_CODES_HELP, ExitCode
from . import check, folder, score, serve, tune
from .common import command, err, out, warn

__all__ = ["app", "main"]

app = typer.Typer(
    name="imgtune",
    help="Find the smallest image encoding that still meets a perceptual-quality target.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


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


for fn in (
    score.score,
    tune.tune,
    folder.optimize,
    folder.apply,
    folder.export,
    tune.report,
    tune.preset,
    serve.serve,
    check.check,
):
    app.command(epilog=EXIT_CODES_HELP)(command(fn))


def one_line_warnings() -> None:
    """Warnings (a GPU out of memory sending an image to the CPU, a failed torch.compile) as
    `warning: ...` lines on stderr, like the rest of the CLI's messages, not Python's
    file:line and source excerpt."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        warn("warning", message)

    warnings.showwarning = show


def main() -> None:
    import warnings

    from ..outdir import FATAL_ERRNOS

    # Pillow warns about damaged metadata it skipped (a TIFF tag past the end of the file): the
    # image loads or fails with a named reason either way, so the warning is only noise here.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    one_line_warnings()
    try:
        app()
    except OSError as exc:
        # A full disk or a read-only folder anywhere (a preset, a report): one line, exit 4.
        if exc.errno not in FATAL_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[red]error:[/red] {where}cannot write ({exc.strerror})")
        sys.exit(ExitCode.NOTHING_DONE)
