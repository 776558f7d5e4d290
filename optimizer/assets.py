"""`OUT/imgtune.json`, the manifest a build consumes, and with `--html`, `<picture>` snippets.

A folder job writes, when it completes, one JSON document mapping each source (its path
relative to SRC, as the key) to its outputs ("variants": one per `--widths` width and
`--formats` format, or the one output of a plain run): each with its path relative to OUT, format,
MIME type, width, height, bytes, codec, quality, scores and whether it meets the target.
The schema is `optimizer/schemas/imgtune.schema.json`. Keys and file names depend only on the
sources and the options, so a build can cache on them.

The document is streamed to a temporary file as the images finish (memory stays flat however
many images a folder has) and renamed into place when the run completes; an interrupted run
leaves the previous document as it was (its outputs are still in OUT).

With `html`, each image also gets an "html" snippet: a `<picture>` with one `<source>` per
modern format (AVIF, then WebP, JPEG XL) and an `<img>` of the most widely shown format as the
fallback, each with a `srcset` of its widths; `sizes` is "100vw" (the browser's own default:
set yours), `width`/`height` are the largest fallback's (no layout shift). `OUT/imgtune.html`
is a page of all of them, to look at the outputs in a browser.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote

from PIL import Image

from .outdir import OutputDir

__all__ = ["ASSETS_NAME", "FORMAT_OF", "HTML_NAME", "MIME", "AssetWriter", "picture"]

ASSETS_NAME = "imgtune.json"
HTML_NAME = "imgtune.html"
FORMAT_VERSION = "imgtune-assets-1"
#: an output's extension -> its format's name
FORMAT_OF = {
    ".avif": "avif",
    ".webp": "webp",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".png": "png",
    ".gif": "gif",
    ".jxl": "jxl",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
}
MIME = {
    "avif": "image/avif",
    "webp": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "jxl": "image/jxl",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
}
#: `<source>` order: the browser takes the first type it can show
MODERN = ("jxl", "avif", "webp")
#: the `<img>` fallback: the first of these an image has
FALLBACK = ("jpeg", "png", "gif", "webp", "avif", "jxl")
#: statuses whose output is in OUT and usable
_IN_OUT = {"written", "kept", "up_to_date", "best_effort", "missed"}


def _format(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    return FORMAT_OF.get(suffix, "unknown")


def picture(variants: list[dict[str, Any]]) -> str:
    """The `<picture>` of one image's variants (dicts as in imgtune.json; paths relative to the
    page)."""
    by_format: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        by_format.setdefault(v["format"], []).append(v)
    for vs in by_format.values():
        vs.sort(key=lambda v: v["width"] or 0)
    fallback = next((f for f in FALLBACK if f in by_format), next(iter(by_format)))

    def srcset(vs: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{quote(v['path'])} {v['width']}w" if v["width"] else quote(v["path"]) for v in vs
        )

    lines = ["<picture>"]
    for f in MODERN:
        if f in by_format and f != fallback:
            lines.append(
                f'  <source type="{MIME[f]}" srcset="{html.escape(srcset(by_format[f]))}" '
                'sizes="100vw">'
            )
    fb = by_format[fallback]
    largest = fb[-1]
    dims = (
        f' width="{largest["width"]}" height="{largest["height"]}"'
        if largest["width"] and largest["height"]
        else ""
    )
    lines.append(
        f'  <img src="{html.escape(quote(largest["path"]))}" '
        f'srcset="{html.escape(srcset(fb))}" sizes="100vw"{dims} alt="" loading="lazy" '
        'decoding="async">'
    )
    lines.append("</picture>")
    return "\n".join(lines)


def _status(o: Any) -> str:
    """What put the output in OUT; for one up to date, what its run did, as that run's outcome
    recorded it (no codec: the source kept; missing the target: the source kept as missed, or
    the closest encode written)."""
    if str(o.status) != "up_to_date":
        return str(o.status)
    if o.codec is None:
        return "kept"
    if o.meets_target is False:
        same = PurePosixPath(o.output).suffix == PurePosixPath(o.source).suffix
        return "missed" if same else "best_effort"
    return "written"


class AssetWriter:
    """Streams imgtune.json (and imgtune.html) for one run; `add` each outcome in input order
    (an image's variants follow one another), `commit` when the run completed."""

    def __init__(self, out: OutputDir, *, target: str, html: bool = False) -> None:
        self.out, self.target, self.html = out, target, html
        self._stack = ExitStack()
        self._json: BinaryIO | None = None
        self._page: BinaryIO | None = None
        self._source: str | None = None
        self._variants: list[dict[str, Any]] = []
        self._first = True
        self._committed = False
        self.images = 0

    @contextmanager
    def open(self) -> Iterator[AssetWriter]:
        """Yields self; the files are renamed into place only if `commit` was called."""
        with self._stack:
            self._json = self._stack.enter_context(self._writer(ASSETS_NAME))
            head = {"format": FORMAT_VERSION, "target": self.target}
            self._json.write(json.dumps(head, sort_keys=True)[:-1].encode() + b', "images": {')
            if self.html:
                self._page = self._stack.enter_context(self._writer(HTML_NAME))
                self._page.write(_PAGE_HEAD.encode())
            yield self

    @contextmanager
    def _writer(self, name: str) -> Iterator[BinaryIO]:
        class _Abandon(Exception):
            pass

        try:
            with self.out.atomic_writer(name) as f:
                hashed = _Hashing(f)
                yield hashed  # type: ignore[misc]
                # Not committed: the temporary file goes, the old document stays. The same
                # document as before: the old file stays too (its time, for builds that watch it).
                if not self._committed or self.out.sha256(name) == hashed.hash.hexdigest():
                    raise _Abandon
        except _Abandon:
            pass

    def add(self, o: Any) -> None:
        if o.source != self._source:
            self._flush()
            self._source = o.source
        if str(o.status) not in _IN_OUT or not o.output:
            return
        width, height = o.width, o.height
        if width is None or height is None:  # a line from before the manifest had them
            with suppress(Exception), Image.open(self.out.path(o.output)) as im:
                width, height = im.size
        self._variants.append(
            {
                "path": o.output,
                "format": _format(o.output),
                "type": MIME.get(_format(o.output), "application/octet-stream"),
                "width": width,
                "height": height,
                "bytes": o.output_bytes,
                "codec": o.codec,
                "quality": o.quality,
                "status": _status(o),
                "meets_target": o.meets_target,
                "scores": {k: v for k, v in (o.scores or {}).items() if v == v},
                "variant": o.variant,
            }
        )

    def _flush(self) -> None:
        if self._source is None or not self._variants:
            self._variants = []
            return
        item: dict[str, Any] = {"variants": self._variants}
        if self.html:
            item["html"] = picture(self._variants)
            assert self._page is not None
            self._page.write(
                f"<figure>{item['html']}<figcaption>{html.escape(self._source)}"
                "</figcaption></figure>\n".encode()
            )
        sep = b"" if self._first else b", "
        assert self._json is not None
        self._json.write(sep + json.dumps(self._source).encode() + b": ")
        self._json.write(json.dumps(item, sort_keys=True, allow_nan=False).encode())
        self._first = False
        self.images += 1
        self._variants = []

    def commit(self) -> None:
        self._flush()
        assert self._json is not None
        self._json.write(b"}}\n")
        if self._page is not None:
            self._page.write(_PAGE_TAIL.encode())
        self._committed = True


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.f.write(data)


_PAGE_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgtune outputs</title>
<style>img{max-width:100%;height:auto}figure{margin:1em 0}</style></head><body>
"""
_PAGE_TAIL = "</body></html>\n"
