"""Render a preset for the tools of real asset pipelines.

Each renderer returns text: a command line, a code snippet or a config. Where a tool has no exact
equivalent of a setting (a resize kernel, Pillow's sharpening model, a quality scale that
differs), the output says so in a comment and uses the nearest documented equivalent; it never
pretends. Commands are for POSIX sh (bash, dash, zsh). `{input}` and `{output}` in them are
placeholders; `render(..., input=, output=)` fills them argument by argument, each word that holds a
path (`OUT`, `OUT.tmp.v`, `OUT[Q=80]`) quoted whole, so no path can split a word or run anything.

Pillow's settings, for reference: quality is each codec's own 0-100 scale (libjpeg quality,
libwebp quality, libavif quality); `sharpen` is `ImageEnhance.Sharpness(f)`: a blend between the
image smoothed by a 3x3 kernel (f = 0) and the image (f = 1), extrapolated beyond 1; resizing
fits inside `max_size` without enlarging, on premultiplied alpha, after EXIF orientation.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from .errors import UsageError
from .presets import Preset

__all__ = ["FORMATS", "render"]

# Pillow filter -> (sharp kernel, libvips kernel, ImageMagick filter), nearest where inexact
_KERNELS = {
    "nearest": ("nearest", "nearest", "Point"),
    "box": ("nearest", "linear", "Box"),
    "bilinear": ("linear", "linear", "Triangle"),
    "hamming": ("linear", "linear", "Hamming"),
    "bicubic": ("cubic", "cubic", "Catrom"),
    "lanczos": ("lanczos3", "lanczos3", "Lanczos"),
}
_INEXACT_KERNEL = {
    "sharp": {"box": "no box kernel: nearest", "hamming": "no Hamming window: linear"},
    "vips": {"box": "no box kernel: linear", "hamming": "no Hamming window: linear"},
}


class _P:
    """A preset's recipe, flattened for the renderers, with the paths for the placeholders."""

    def __init__(self, preset: Preset, input: str | None = None, output: str | None = None) -> None:
        self.preset = preset
        self.input, self.output = input, output  # None: leave the placeholder
        c = preset.candidate
        self.codec: str = c.codec
        self.quality: int = c.quality
        self.options: dict[str, Any] = dict(c.options)
        self.filter: str = c.resize_filter or "lanczos"
        self.sharpen: float = c.sharpen
        self.max_w, self.max_h = preset.max_size or (None, None)
        self.widths = preset.widths
        self.background = preset.background
        self.target = preset.target
        self.kwargs = dict(preset.pillow_save_kwargs)

    @property
    def resized(self) -> bool:
        return self.max_w is not None or self.max_h is not None or bool(self.widths)

    @property
    def ext(self) -> str:
        return {"jpeg": "jpg", "webp": "webp", "avif": "avif", "jxl": "jxl"}[self.codec]

    @property
    def subsampling(self) -> str:
        return self.options.get("subsampling", "4:2:0")

    def bg_hex(self) -> str:
        if not self.background:
            return "#ffffff"
        r, g, b = self.background
        return f"#{r:02x}{g:02x}{b:02x}"


def _avif_quantizer(quality: int) -> int:
    """libavif's own quality -> quantizer mapping (0 best .. 63), as Pillow's encoder uses it."""
    return ((100 - quality) * 63 + 50) // 100


def _sharpen_kernel(p: _P) -> list[float]:
    """Pillow's Sharpness(f) as one 3x3 convolution, row-major, summing to 1.

    Sharpness(f) = f * image + (1 - f) * SMOOTH(image), SMOOTH = [[1,1,1],[1,5,1],[1,1,1]] / 13,
    so the kernel is (1 - f) / 13 around a centre of (8 f + 5) / 13: exact, not approximated
    (Pillow leaves the 1-pixel border unfiltered and rounds to 8 bits between its two steps;
    tools differ there by a level at most)."""
    f = p.sharpen
    edge = (1 - f) / 13
    centre = (8 * f + 5) / 13
    return [edge, edge, edge, edge, centre, edge, edge, edge, edge]


def _sharpen_note(p: _P, tool: str) -> str | None:
    if p.sharpen == 1.0:
        return None
    return (
        f"sharpen {p.sharpen:g} is Pillow's ImageEnhance.Sharpness, which equals the 3x3 "
        f"convolution below ({tool}); Pillow keeps the 1-pixel border and alpha unsharpened"
    )


def _kernel_text(p: _P, sep: str = ",") -> str:
    return sep.join(f"{v:.6f}" for v in _sharpen_kernel(p))


def _pillow(p: _P) -> str:
    return json.dumps({"format": p.codec.upper(), **p.kwargs}, indent=2)


def _pillow_python(p: _P) -> str:
    lines = [
        f"# imgtune preset: {p.codec} quality {p.quality}; target {p.target}",
        "from PIL import Image, ImageEnhance, ImageOps",
        "",
        "",
        "def encode(src, dst):",
        "    im = ImageOps.exif_transpose(Image.open(src))",
        '    im = im.convert("RGBA" if "A" in im.getbands() else "RGB")',
    ]
    if p.background and p.codec == "jpeg":
        lines += [
            '    if im.mode == "RGBA":',
            f'        flat = Image.new("RGB", im.size, {p.background})',
            "        flat.paste(im, mask=im.getchannel('A'))",
            "        im = flat",
        ]
    if p.resized:
        w = p.max_w or 10**9
        h = p.max_h or 10**9
        lines.append(
            f"    im.thumbnail(({w}, {h}), Image.Resampling.{p.filter.upper()}, reducing_gap=None)"
        )
    if p.sharpen != 1.0:
        lines += [
            "    alpha = im.getchannel('A') if im.mode == 'RGBA' else None",
            f"    im = ImageEnhance.Sharpness(im.convert('RGB')).enhance({p.sharpen!r})",
            "    if alpha is not None:",
            "        im.putalpha(alpha)",
        ]
    kw = ", ".join(f"{k}={v!r}" for k, v in p.kwargs.items())
    lines.append(f'    im.save(dst, "{p.codec.upper()}", {kw})')
    return "\n".join(lines) + "\n"


def _sharp(p: _P) -> str:
    notes = []
    chain = ["sharp(input)", ".rotate()  // EXIF orientation"]
    if p.resized:
        kernel = _KERNELS[p.filter][0]
        if p.filter in _INEXACT_KERNEL["sharp"]:
            notes.append(f"resize kernel: {_INEXACT_KERNEL['sharp'][p.filter]}")
        dims = ", ".join(
            f"{k}: {v}" for k, v in (("width", p.max_w), ("height", p.max_h)) if v is not None
        )
        if p.widths:
            dims = "width"
        chain.append(
            f".resize({{ {dims}, fit: 'inside', withoutEnlargement: true, kernel: '{kernel}' }})"
        )
    note = _sharpen_note(p, "sharp's convolve")
    if note:
        notes.append(note)
        chain.append(f".convolve({{ width: 3, height: 3, kernel: [{_kernel_text(p, ', ')}] }})")
    if p.codec == "jpeg":
        if p.background:
            chain.append(f".flatten({{ background: '{p.bg_hex()}' }})")
        chain.append(
            f".jpeg({{ quality: {p.quality}, chromaSubsampling: '{p.subsampling}', "
            f"progressive: {str(p.options.get('progressive', True)).lower()}, "
            f"optimiseCoding: {str(p.options.get('optimize', True)).lower()} }})"
        )
    elif p.codec == "webp":
        chain.append(f".webp({{ quality: {p.quality}, effort: {p.options.get('method', 4)} }})")
    elif p.codec == "avif":
        effort = max(0, min(9, 9 - int(p.options.get("speed", 6))))
        notes.append(
            "AVIF quality: sharp passes quality to libheif, whose scale differs from libavif's "
            "(Pillow); effort = 9 - libavif speed"
        )
        chain.append(
            f".avif({{ quality: {p.quality}, effort: {effort}, "
            f"chromaSubsampling: '{p.subsampling}' }})"
        )
    else:
        chain.append(f".jxl({{ quality: {p.quality}, effort: {p.options.get('effort', 7)} }})")
    head = [f"// imgtune preset: {p.codec} q{p.quality}; target {p.target}"]
    head += [f"// note: {n}" for n in notes]
    if p.widths:
        return "\n".join(head) + _sharp_widths(p, "\n      ".join(chain))
    body = "\n    ".join(chain)
    return (
        "\n".join(head)
        + "\n// usage: node this.js INPUT OUTPUT, or require() it and call encode(input, output)"
        + "\nconst sharp = require('sharp');\n\nasync function encode(input, output) {\n  await "
        + body
        + "\n    .toFile(output);\n}\n\nmodule.exports = encode;\nif (require.main === module) {\n"
        + "  encode(process.argv[2], process.argv[3]).catch((e) => {\n"
        + "    console.error(e.message);\n    process.exit(1);\n  });\n}\n"
    )


def _sharp_widths(p: _P, chain: str) -> str:
    """The sharp script of a preset tuned at several widths: one file per width, as `imgtune
    apply` makes them (never upscaled: the image's own width where one is wider; named
    OUTPUT's stem, -WIDTHw, its extension)."""
    widths = ", ".join(str(w) for w in p.widths)
    return (
        f"\n// widths {widths}: one file per width, as imgtune apply makes them (never upscaled: "
        "the image's own width where one asked for is wider), named like OUTPUT-480w.ext"
        "\n// usage: node this.js INPUT OUTPUT, or require() it and call encode(input, output); "
        "it returns the paths written"
        f"\nconst sharp = require('sharp');\nconst path = require('path');\n\n"
        f"const WIDTHS = [{widths}];\n\n"
        "async function encode(input, output) {\n"
        "  const meta = await sharp(input).metadata();\n"
        "  const shown = (meta.orientation || 1) >= 5 ? meta.height : meta.width;\n"
        "  const widths = WIDTHS.filter((w) => w <= shown);\n"
        "  if (Math.max(...WIDTHS) > shown && !widths.includes(shown)) widths.push(shown);\n"
        "  const ext = path.extname(output);\n"
        "  const stem = output.slice(0, output.length - ext.length);\n"
        "  const written = [];\n"
        "  for (const width of widths) {\n"
        "    const file = `${stem}-${width}w${ext}`;\n"
        f"    await {chain}\n"
        "      .toFile(file);\n"
        "    written.push(file);\n"
        "  }\n"
        "  return written;\n"
        "}\n\nmodule.exports = encode;\nif (require.main === module) {\n"
        "  encode(process.argv[2], process.argv[3]).then((files) => console.log(files.join('\\n')))"
        ".catch((e) => {\n    console.error(e.message);\n    process.exit(1);\n  });\n}\n"
    )


def _shell(p: _P, notes: list[str], command: str) -> str:
    """A shell exporter's text: the preset as a comment, one comment per note, the command."""
    head = [f"# imgtune preset: {p.codec} q{p.quality}; target {p.target}"]
    return "\n".join([*head, *(f"# note: {n}" for n in notes), command]) + "\n"


class _Op(str):
    """Shell syntax, printed unquoted."""


PIPE, AND, TO = _Op("|"), _Op("&&"), _Op(">")
_PLACEHOLDER = re.compile(r"\{(input|output)\}")


def _word(p: _P, template: str) -> str:
    """One shell word: `template` with {input}/{output} replaced by the user's paths, quoted as a
    whole. One pass, so a path that itself contains "{output}" is left as it is. A path starting
    with `-` gets `./`, or the tool would read it as an option. An unfilled placeholder stays for
    the user to fill: bare when nothing else in the word needs quotes (`{output}.mask.mat`), else
    inside the word's quotes (`'{output}[Q=80]'`)."""
    parts: list[tuple[str, bool]] = []  # (text, is an unfilled placeholder)
    at = 0
    for m in _PLACEHOLDER.finditer(template):
        path = getattr(p, m[1])
        if path is not None and path.startswith("-"):
            path = "./" + path
        parts += [(template[at : m.start()], False), (m[0] if path is None else path, path is None)]
        at = m.end()
    parts.append((template[at:], False))
    text = "".join(t for t, _ in parts)
    if text and all(hole or shlex.quote(t) == t for t, hole in parts if t):
        return text
    return shlex.quote(text)


def _cmd(p: _P, *args: str) -> str:
    """A command line from argument templates and `_Op`s."""
    return " ".join(a if isinstance(a, _Op) else _word(p, a) for a in args)


def _vips_save_opts(p: _P) -> tuple[str, list[str]]:
    notes = []
    if p.codec == "jpeg":
        opts = [f"Q={p.quality}", "optimize-coding"]
        if p.options.get("progressive", True):
            opts.append("interlace")
        opts.append("subsample-mode=" + ("off" if p.subsampling == "4:4:4" else "on"))
        if p.background:
            opts.append("background=" + ",".join(str(c) for c in p.background))
    elif p.codec == "webp":
        opts = [f"Q={p.quality}", f"effort={p.options.get('method', 4)}"]
    elif p.codec == "avif":
        effort = max(0, min(9, 9 - int(p.options.get("speed", 6))))
        opts = [f"Q={p.quality}", f"effort={effort}", "compression=av1"]
        opts.append("subsample-mode=" + ("off" if p.subsampling == "4:4:4" else "on"))
        notes.append("AVIF Q goes through libheif, whose quality scale differs from libavif's")
    else:
        opts = [f"Q={p.quality}", f"effort={p.options.get('effort', 7)}"]
    return ",".join(opts), notes


def _vips(p: _P) -> str:
    opts, notes = _vips_save_opts(p)
    note = _sharpen_note(p, "libvips")
    w = p.max_w or 10_000_000
    h = p.max_h or 10_000_000
    if p.resized and p.filter != "lanczos":
        notes.append(
            f"vips thumbnail resizes with lanczos3 (imgtune used {p.filter}); `vips resize "
            f"--kernel {_KERNELS[p.filter][1]}` takes a scale factor instead of a box"
        )
    dest = f"{{output}}[{opts}]"

    def thumb(to: str) -> list[str]:
        # thumbnail applies EXIF orientation and never enlarges; a huge box when not resizing
        return ["vips", "thumbnail", "{input}", to, str(w), "--height", str(h), "--size", "down"]

    if not note:
        return _shell(p, notes, _cmd(p, *thumb(dest)))
    notes.append(note)
    k = _sharpen_kernel(p)
    mask = "3 3 1 0\\n" + "\\n".join(
        " ".join(f"{v:.6f}" for v in k[r * 3 : r * 3 + 3]) for r in range(3)
    )
    tmp, conv, mat = "{output}.tmp.v", "{output}.conv.v", "{output}.mask.mat"
    return _shell(
        p,
        notes,
        _cmd(
            p,
            *("printf", mask + "\\n", TO, mat, AND, *thumb(tmp), AND),
            *("vips", "conv", tmp, conv, mat, "--precision", "float", AND),
            *("vips", "cast", conv, dest, "uchar", AND, "rm", tmp, conv, mat),
        ),
    )


def _vipsthumbnail(p: _P) -> str:
    opts, notes = _vips_save_opts(p)
    if _sharpen_note(p, "vipsthumbnail"):
        notes.append(_sharpen_note(p, "vipsthumbnail") + " (use the `vips` export to sharpen)")
    w = p.max_w or 10_000_000
    h = p.max_h or 10_000_000
    size = f"{w}x{h}>" if p.resized else "10000000x10000000>"
    dest = _word(p, f"{{output}}[{opts}]")
    if p.output is None:
        notes.append(
            "vipsthumbnail puts a relative -o path in the input's folder: use an absolute one"
        )
    elif not os.path.isabs(p.output):
        dest = '"$PWD"/' + dest  # vipsthumbnail would put it in the input's folder
    return _shell(p, notes, _cmd(p, "vipsthumbnail", "{input}", "--size", size, "-o") + " " + dest)


def _cwebp(p: _P) -> str:
    if p.codec != "webp":
        raise UsageError(f"cwebp writes WebP; this preset's codec is {p.codec}")
    notes = []
    args = [
        "cwebp",
        "-q",
        str(p.quality),
        "-m",
        str(p.options.get("method", 4)),
        "-metadata",
        "none",
    ]
    if p.resized:
        notes.append(
            f"cwebp cannot fit an image inside a {p.max_w or '-'}x{p.max_h or '-'} box (its "
            "-resize takes exact sides, or one side and 0, and enlarges): resize first, e.g. "
            "with the vipsthumbnail export, then run this on the result"
        )
    note = _sharpen_note(p, "cwebp")
    if note:
        notes.append(
            note + " (cwebp's -sharpness is a deblocking setting, not sharpening: not used)"
        )
    notes.append("cwebp does not apply EXIF orientation")
    args += ["{input}", "-o", "{output}"]
    return _shell(p, notes, _cmd(p, *args))


def _avifenc(p: _P) -> str:
    if p.codec != "avif":
        raise UsageError(f"avifenc writes AVIF; this preset's codec is {p.codec}")
    q = _avif_quantizer(p.quality)
    yuv = "444" if p.subsampling == "4:4:4" else "420"
    notes = [
        f"Pillow's AVIF quality {p.quality} is libavif's quantizer {q} (0-63): avifenc before "
        f"1.0 takes quantizers (--min/--max); avifenc 1.x also takes -q {p.quality}",
    ]
    if p.resized:
        notes.append(
            "avifenc does not resize: fit images inside the box first (e.g. with the "
            "vipsthumbnail export), then run this on the result"
        )
    if _sharpen_note(p, "avifenc"):
        notes.append(_sharpen_note(p, "avifenc"))
    args = [
        "avifenc", "--min", str(q), "--max", str(q), "--minalpha", str(q), "--maxalpha", str(q),
        "-s", str(p.options.get("speed", 6)), "-y", yuv, "--ignore-exif", "--ignore-xmp",
        "{input}", "{output}",
    ]  # fmt: skip
    return _shell(p, notes, _cmd(p, *args))


def _cjpeg(p: _P) -> str:
    if p.codec != "jpeg":
        raise UsageError(f"cjpeg writes JPEG; this preset's codec is {p.codec}")
    sample = "1x1" if p.subsampling == "4:4:4" else "2x2"
    args = ["cjpeg", "-quality", str(p.quality), "-sample", sample]
    if p.options.get("progressive", True):
        args.append("-progressive")
    if p.options.get("optimize", True):
        args.append("-optimize")
    notes = ["cjpeg (libjpeg-turbo 2.x) reads PPM/BMP/Targa, not PNG: convert first, as below"]
    if p.resized or p.sharpen != 1.0:
        notes.append("cjpeg neither resizes nor sharpens: the conversion step does it")
    pre = ["magick", "{input}", "-auto-orient"]
    if p.resized:
        pre += ["-filter", _KERNELS[p.filter][2], "-resize", f"{p.max_w or ''}x{p.max_h or ''}>"]
    if p.background:
        pre += ["-background", p.bg_hex(), "-flatten"]
    pre.append("pnm:-")
    return _shell(p, notes, _cmd(p, *pre, PIPE, *args, TO, "{output}"))


def _magick(p: _P) -> str:
    args = ["magick", "{input}", "-auto-orient"]
    notes = []
    if p.resized:
        args += ["-filter", _KERNELS[p.filter][2], "-resize", f"{p.max_w or ''}x{p.max_h or ''}>"]
    note = _sharpen_note(p, "ImageMagick's -morphology Convolve")
    if note:
        notes.append(note)
        args += ["-morphology", "Convolve", f"3x3:{_kernel_text(p)}"]
    if p.codec == "jpeg":
        if p.background:
            args += ["-background", p.bg_hex(), "-flatten"]
        args += ["-quality", str(p.quality), "-sampling-factor", p.subsampling]
        if p.options.get("progressive", True):
            args += ["-interlace", "JPEG"]
    elif p.codec == "webp":
        args += ["-quality", str(p.quality), "-define", f"webp:method={p.options.get('method', 4)}"]
    elif p.codec == "avif":
        notes.append("AVIF goes through libheif: its quality scale differs from libavif's")
        args += ["-quality", str(p.quality), "-define", f"heic:speed={p.options.get('speed', 6)}"]
        if p.subsampling == "4:4:4":
            args += ["-define", "heic:chroma=444"]
    else:
        args += ["-quality", str(p.quality)]
    args += ["-strip", "{output}"]
    notes.append("ImageMagick 6 spells the command `convert` with the same arguments")
    return _shell(p, notes, _cmd(p, *args))


def _json(p: _P) -> str:
    preset = p.preset.to_dict()
    keep = ("schema", "params", "pillow_save_kwargs", "max_size", "widths", "background")
    return json.dumps({k: preset[k] for k in (*keep, "target") if k in preset}, indent=2) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _toml(p: _P) -> str:
    preset = p.preset.to_dict()
    lines = ["# imgtune preset", f"schema = {preset['schema']}"]
    if preset["max_size"]:
        lines.append(f"max_size = {_toml_value([x or 0 for x in preset['max_size']])}")
    if preset.get("widths"):
        lines.append(f"widths = {_toml_value(preset['widths'])}")
    if preset["background"]:
        lines.append(f"background = {_toml_value(preset['background'])}")
    params = preset["params"]
    opts = params.pop("options")
    lines.append("\n[params]")
    for k, v in params.items():
        if v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    lines.append("\n[params.options]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in opts.items()]
    lines.append("\n[pillow_save_kwargs]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in preset["pillow_save_kwargs"].items()]
    lines.append("\n[target]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in preset["target"].items()]
    return "\n".join(lines) + "\n"


_RENDERERS: dict[str, Callable[[_P], str]] = {
    "pillow": _pillow,
    "pillow-python": _pillow_python,
    "sharp": _sharp,
    "vips": _vips,
    "vipsthumbnail": _vipsthumbnail,
    "cwebp": _cwebp,
    "avifenc": _avifenc,
    "cjpeg": _cjpeg,
    "magick": _magick,
    "json": _json,
    "toml": _toml,
}
FORMATS: tuple[str, ...] = tuple(_RENDERERS)


def render(
    preset: Preset | dict[str, Any],
    fmt: str,
    *,
    input: str | None = None,
    output: str | None = None,
) -> str:
    """The preset as `fmt`; `input`/`output` fill the placeholders of command-line formats,
    quoted for POSIX sh (the scripts and configs take no paths). A dict is parsed with
    `Preset.from_dict` first (`PresetError` if it is not a valid preset); a format that
    cannot express the preset (cwebp for an AVIF recipe) or an unknown one is a `UsageError`."""
    if fmt not in _RENDERERS:
        raise UsageError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    if not isinstance(preset, Preset):
        preset = Preset.from_dict(preset)
    if preset.widths and fmt not in ("sharp", "json", "toml"):
        raise UsageError(
            f"this preset was tuned at widths {', '.join(map(str, preset.widths))}: --to sharp "
            "makes every width (json and toml carry them); "
            f"{fmt} makes one file per command, so it cannot say which"
        )
    return _RENDERERS[fmt](_P(preset, input=input, output=output))
