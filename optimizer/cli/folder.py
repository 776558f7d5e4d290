"""`imgtune optimize` and `imgtune apply` (folder jobs) and `imgtune export` (a preset as a tool's
settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .. import probe_speed as probe
from ..errors import ImgtuneError, UsageError
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
    TargetOpt,
    WeightsOpt,
    err,
    json_line,
    out,
    progress_bar,
    warn,
)

JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs", "-j", help="Images processed at once (threads; default: the CPU cores)."
    ),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="Run on Dask instead of threads: local:N starts N worker processes here; "
        "tcp://HOST:8786 uses a running scheduler whose workers see SRC at the same path. "
        "Outputs are the same as without it.",
    ),
]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory",
        help="Memory the images in flight may use (threads): 8G, 500M, bytes or off; default "
        "half this machine's RAM. Images are admitted while their estimated working set fits; "
        "one larger than the budget runs alone. On a cluster, workers' own limits apply.",
    ),
]


def _probe_speed(value: int | str | None) -> int | None:
    try:
        return probe.parse(value)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


ProbeSpeedOpt = Annotated[
    int | None,
    typer.Option(
        "--probe-speed",
        parser=_probe_speed,
        metavar="N|off",
        help="AVIF speed (0-10, 10 fastest) the quality search probes at; the output is then "
        "encoded at the recipe's own speed (6) where that should just pass, higher only if "
        "that misses, each scored; the smallest passing file is written, its params naming "
        "its speed. off: every probe at the recipe's speed.",
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
HtmlOpt = Annotated[
    bool,
    typer.Option(
        "--html",
        help="Add a <picture>/srcset snippet per image to OUT/imgtune.json, and write "
        "OUT/imgtune.html showing them all.",
        rich_help_panel="Web assets",
    ),
]
SrcArg = Annotated[
    Path, typer.Argument(metavar="SRC", help="Folder of source images (never modified).")
]
OutArg = Annotated[Path, typer.Argument(metavar="OUT", help="Output folder; mirrors SRC's tree.")]
PresetArg = Annotated[
    Path, typer.Argument(metavar="PRESET", help="A preset JSON written by imgtune tune.")
]


class _Printer:
    """Progress, per-image lines and the CSV rows of a folder job."""

    def __init__(self, verb: str, as_json: bool, report: Path | None) -> None:
        self.as_json, self.report = as_json, report
        self.rows: list[dict] = []
        self.saved = 0
        self.last: str | None = None
        self.bar = progress_bar(verb, "saved")
        self.task = self.bar.add_task(verb, total=None, saved="")

    def on_start(self, n: int) -> None:
        self.bar.update(self.task, total=n)

    def on_result(self, o) -> None:
        rec = o.record()
        if self.report is not None:
            self.rows.append(rec)
        if o.status != "skipped" and not o.variant:  # variants: several outputs per source
            self.saved += o.saved_bytes
        # One step per source: its outputs (--widths, --formats) follow one another.
        step = int(o.source != self.last)
        self.last = o.source
        self.bar.update(self.task, advance=step, saved=f"{self.saved / 1e6:.1f} MB saved")
        if o.status == "skipped":
            warn("skipped", o.error)
        elif o.status in ("missed", "best_effort"):
            warn(o.status, o.error, colour="red")
        if self.as_json:
            json_line(rec)

    def on_warning(self, message: str) -> None:
        warn("warning", message)

    def run(self, fn, *args, **kwargs):
        """The API call, then the report, the summary and the exit code."""
        try:
            with self.bar:
                summary = fn(
                    *args, on_start=self.on_start, on_result=self.on_result,
                    on_warning=self.on_warning, **kwargs,
                )  # fmt: skip
        except ImgtuneError as exc:
            if self.as_json:  # the machine reader gets the reason too
                json_line({"summary": True, "error": str(exc)})
            raise
        if self.report is not None:
            _write_rows(self.rows, self.report)
        return summary


def _write_rows(rows: list[dict], path: Path) -> None:
    import json

    import pandas as pd

    from ..files import atomic_write_text

    flat = []
    for r in rows:
        d = {k: v for k, v in r.items() if k not in ("scores", "params")}
        d["params"] = json.dumps(r["params"], sort_keys=True) if r.get("params") else ""
        d.update(r.get("scores") or {})
        flat.append(d)
    atomic_write_text(path, pd.DataFrame(flat).to_csv(index=False))


def _finish(summary, *, as_json: bool, out_dir: Path) -> None:
    target = summary.target
    c = summary.counts
    if as_json:
        json_line(
            {
                "summary": True,
                "counts": c,
                "source_bytes": summary.source_bytes,
                "output_bytes": summary.output_bytes,
                "saved_bytes": summary.saved_bytes,
                "encodes_per_image": round(summary.encodes_per_image, 3),
                "sources": summary.sources,
                "target": target,
                "seconds": round(summary.seconds, 2),
                "interrupted": summary.interrupted,
                "manifest_problems": summary.manifest_problems,
                "retried": summary.retried,
            }
        )
    else:
        pct = 100 * summary.saved_bytes / summary.source_bytes if summary.source_bytes else 0.0
        files = sum(c[k] for k in ("written", "kept", "missed", "best_effort", "up_to_date"))
        if files > summary.sources:  # --widths/--formats: several outputs per source
            err.print(
                f"{summary.sources} images -> {files} files; {summary.source_bytes:,} bytes of "
                f"sources, {summary.output_bytes:,} of outputs in all; OUT/imgtune.json lists them"
            )
        err.print(
            f"{c['written']} written, {c['kept']} kept as the original, {c['missed']} missed the "
            f"target (original kept), {c['best_effort']} best-effort, {c['skipped']} skipped, "
            f"{c['up_to_date']} already up to date -> {out_dir}"
        )
        sizes = f"{summary.source_bytes:,} -> {summary.output_bytes:,} bytes ({pct:.1f}% smaller); "
        if files > summary.sources:
            sizes = ""
        err.print(
            f"{sizes}{summary.encodes_per_image:.2f} encodes per output searched; "
            f"held to {target}; {summary.seconds:.1f} s"
            + (f"; {summary.retried} rerun after a worker died" if summary.retried else "")
            + ("; [yellow]interrupted[/yellow]" if summary.interrupted else "")
        )
    raise typer.Exit(ExitCode.INTERRUPTED if summary.interrupted else summary.exit_code)


def optimize(
    src: SrcArg,
    out_dir: OutArg,
    target: TargetOpt = None,
    quality: Annotated[
        str | None,
        typer.Option(
            help="Named target on SSIMULACRA2's scale: low (ssimulacra2>=50), medium (>=70: "
            "artifacts visible, not annoying), high (>=80, the default: not noticeable side by "
            "side at 1:1), lossless-looking (>=90); or lossless (pixel-identical outputs)."
        ),
    ] = None,
    codecs: Annotated[
        str,
        typer.Option(
            help="Codecs each image may use (comma-separated); the smallest passing wins. "
            "webp-lossless and png are lossless: tried after the lossy search where the image "
            "has few colours (flat graphics, screenshots), and the only ones with --quality "
            "lossless."
        ),
    ] = "avif,webp,webp-lossless,png",
    preset: Annotated[
        Path | None,
        typer.Option(help="A preset (from tune): its target, and its quality as the first guess."),
    ] = None,
    tolerance: Annotated[
        int,
        typer.Option(
            help="Stop the quality search when the bracket is this narrow (1: the lowest "
            "passing quality itself; the model's guesses keep that to a few encodes)."
        ),
    ] = 1,
    quality_range: Annotated[
        str | None,
        typer.Option(
            help="Per-codec quality bounds, e.g. 'jpeg=50-95,avif=30-80' (default: each "
            "codec's whole scale)."
        ),
    ] = None,
    probe_speed: ProbeSpeedOpt = probe.DEFAULT_PROBE_SPEED,
    best_effort: BestEffortOpt = False,
    background: BackgroundOpt = None,
    max_width: MaxWidthOpt = None,
    max_height: MaxHeightOpt = None,
    jobs: JobsOpt = None,
    cluster: ClusterOpt = None,
    memory: MemoryOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    max_pixels: MaxPixelsOpt = None,
    animated: AnimatedOpt = "refuse",
    as_json: JsonOpt = False,
    report: ReportOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    gpu_memory: GpuMemoryOpt = None,
    compile: CompileOpt = False,
    model: Annotated[
        str,
        typer.Option(
            help="Where each image's search starts: 'auto' (a model of the quality an image "
            "needs, learnt from its features: shipped for ssimulacra2 targets, refined by "
            "every run's results in --studies), 'off' (what earlier images of this run "
            "needed), or a model file."
        ),
    ] = "auto",
    learn: Annotated[
        bool,
        typer.Option(
            help="Add this run's results to the model kept in --studies (--no-learn: use it only)."
        ),
    ] = True,
    studies: Annotated[
        Path | None,
        typer.Option(
            help="Where the learnt model is kept, beside tune's studies (default "
            "$IMGTUNE_STUDIES, else studies/)."
        ),
    ] = None,
    widths: Annotated[
        str | None,
        typer.Option(
            help="One output per width, e.g. 480,960,1920: never wider than its source (the "
            "source's own width instead of those wider than it), each meeting the target "
            "against the source resized to it. Named a-480w.avif (see --name-pattern).",
            rich_help_panel="Web assets",
        ),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option(
            help="One output per format, e.g. avif,webp,jpeg (also jxl): each the smallest "
            "passing file of its format, for <picture> fallbacks. Default: one output, the "
            "smallest of --codecs.",
            rich_help_panel="Web assets",
        ),
    ] = None,
    name_pattern: Annotated[
        str | None,
        typer.Option(
            help="Names of --widths outputs, without the extension: {stem} (the source's name "
            "without its suffix) then anything with {width}. Default {stem}-{width}w.",
            rich_help_panel="Web assets",
        ),
    ] = None,
    max_bytes: Annotated[
        str | None,
        typer.Option(
            help="A budget per output, e.g. 150KB (1000s; KiB: 1024s), 1.5MB or bytes. Alone: "
            "the highest-scoring encode under it. With --target/--quality: the smallest passing "
            "file if it fits, else the best under the budget, flagged best_effort. Where nothing "
            "fits, the source is kept and the image named (--best-effort: the smallest encode).",
            rich_help_panel="Web assets",
        ),
    ] = None,
    keep_metadata: Annotated[
        str,
        typer.Option(
            help="What an encoded output carries; its pixels are always sRGB and turned as "
            "EXIF says (the orientation tag is never kept). auto: an sRGB ICC profile where "
            "the source had another (its colours were converted), nothing else; none; icc: an "
            "sRGB profile always; all: that, the source's EXIF and its XMP.",
            rich_help_panel="Web assets",
        ),
    ] = "auto",
    html: HtmlOpt = False,
) -> None:
    """Make every image of SRC as small as it can be while it still meets the target.

    Per image and codec, quality is found by a short search (a guess from earlier images,
    a step to bracket, then interpolation); the smallest passing output wins. An output
    never misses the target (unless --best-effort) and is never larger than its source (the
    source is copied instead). --quality lossless: every output decodes to the source's
    pixels (the smallest of lossless WebP and PNG, or the source). Reruns skip images whose
    output is up to date (OUT/.imgtune-manifest.jsonl); Ctrl-C leaves only whole files.
    Nothing outside OUT is touched, one run per OUT at a time (a second exits 4 naming the
    first); a full or read-only OUT stops with one line (exit 4) and the same command resumes.

    For web builds: --widths and --formats make several outputs per image, each held to the
    target; OUT/imgtune.json lists every image's outputs (path, format, width, height,
    bytes, quality, scores) when the run completes; --html adds <picture> snippets.
    """
    summary = _Printer("optimizing", as_json, report).run(
        api.optimize, src, out_dir, target=target, quality=quality, codecs=codecs,
        preset=preset, tolerance=tolerance, quality_range=quality_range,
        probe_speed=probe_speed, best_effort=best_effort, background=background,
        max_width=max_width, max_height=max_height, jobs=jobs, cluster=cluster, memory=memory,
        follow_symlinks=follow_symlinks,
        max_pixels=max_pixels, animated=animated, weights=weights, device=device,
        compile=compile, gpu_memory=gpu_memory, model=model, learn=learn, studies=studies,
        widths=widths,
        formats=formats, name_pattern=name_pattern, html=html, max_bytes=max_bytes,
        keep_metadata=keep_metadata,
    )  # fmt: skip
    _finish(summary, as_json=as_json, out_dir=out_dir)


def apply(
    preset: PresetArg,
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
    probe_speed: ProbeSpeedOpt = probe.DEFAULT_PROBE_SPEED,
    best_effort: BestEffortOpt = False,
    jobs: JobsOpt = None,
    cluster: ClusterOpt = None,
    memory: MemoryOpt = None,
    follow_symlinks: FollowSymlinksOpt = False,
    max_pixels: MaxPixelsOpt = None,
    animated: AnimatedOpt = "refuse",
    as_json: JsonOpt = False,
    report: ReportOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    gpu_memory: GpuMemoryOpt = None,
    compile: CompileOpt = False,
    html: HtmlOpt = False,
) -> None:
    """Encode every image of SRC with PRESET's recipe, score each output against the preset's
    target, and report those that miss it (their originals are kept unless --best-effort).

    A preset tuned with --widths makes each image at each width (a-480w.avif). Reruns skip
    outputs that are up to date; Ctrl-C leaves only whole files. OUT/imgtune.json lists the
    outputs for builds.
    """
    summary = _Printer("applying", as_json, report).run(
        api.apply, preset, src, out_dir, refine=refine, target=target,
        probe_speed=probe_speed, best_effort=best_effort, jobs=jobs, cluster=cluster, memory=memory,
        follow_symlinks=follow_symlinks,
        max_pixels=max_pixels, animated=animated, weights=weights, device=device,
        compile=compile, gpu_memory=gpu_memory, html=html,
    )  # fmt: skip
    _finish(summary, as_json=as_json, out_dir=out_dir)


def export(
    preset: PresetArg,
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
    out.out(api.export(preset, to, input=input, output=output), end="", highlight=False)
