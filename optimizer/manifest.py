"""`OUT/.imgtune-manifest.jsonl`: what earlier runs of a folder job finished, read as data.

One JSON line per finished image, appended after its output is in place; the last valid line
for a source wins. Anyone who can write to OUT can change this file (a synced or shared folder,
a CI cache), so every line is validated before anything uses it: its names must be relative
paths inside OUT, its fields of the types imgtune writes, its length bounded. A line that fails
is reported and ignored (its image is redone), never obeyed; a manifest with such lines, or
one that is a link or shares its inode, is rewritten with only the valid lines.

Only each source's line offset is kept in memory (a few dozen bytes a file), not the lines:
memory stays flat however many files a folder has.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

from .codecs import CODECS
from .outdir import OutputDir, UnsafePathError, check_relative

__all__ = ["MANIFEST_NAME", "MAX_LINE", "Manifest", "entry_key", "validate_entry"]

MANIFEST_NAME = ".imgtune-manifest.jsonl"
#: a real line is about 1 KiB; anything past this is not one of ours
MAX_LINE = 64 * 1024
#: statuses that put an output in OUT, hence a manifest line
_WRITTEN = frozenset({"written", "kept", "missed", "best_effort"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TAG = re.compile(r"^(?:[1-9][0-9]{0,5}w(?:\.[a-z]{3,4})?|[a-z]{3,4})$")
_SHOWN = 10  # problems named one by one; the rest are counted


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _opt(v: Any, kind: type | tuple[type, ...]) -> bool:
    return v is None or (isinstance(v, kind) and not isinstance(v, bool))


def entry_key(entry: dict[str, Any]) -> str:
    """What a line is looked up by: its source, and which of its outputs (`Variant.tag`)."""
    v = entry.get("variant")
    return f"{entry['source']}#{v}" if v else entry["source"]


def validate_entry(entry: Any) -> dict[str, Any]:
    """The entry itself when every field is what imgtune writes; ValueError naming the first
    field that is not."""
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    for key in ("source", "output"):
        try:
            check_relative(entry.get(key))
        except UnsafePathError as exc:
            raise ValueError(f"{key} {exc}") from None
    # An output sits beside its source, named after it (a.png -> a.avif, a.png.avif, a.png):
    # a line pointing anywhere else is not one imgtune wrote.
    src_dir, _, src_name = entry["source"].rpartition("/")
    out_dir, _, out_name = entry["output"].rpartition("/")
    stem = src_name.rsplit(".", 1)[0] if "." in src_name[1:] else src_name
    variant = entry.get("variant")
    if variant is not None and not (isinstance(variant, str) and _TAG.match(variant)):
        raise ValueError("field variant is not what imgtune writes")
    # A variant's name is the source's stem and more (a-480w.avif: `Job.name_pattern`).
    named = out_name.startswith(stem + ("" if variant else "."))
    if out_dir != src_dir or not (out_name == src_name or named):
        raise ValueError(f"output {entry['output']!r} is not named after its source")
    checks = {
        "status": entry.get("status") in _WRITTEN,
        "job": isinstance(entry.get("job"), str) and len(entry["job"]) <= 64,
        "sha256": isinstance(entry.get("sha256"), str) and bool(_HEX64.match(entry["sha256"])),
        "output_sha256": isinstance(entry.get("output_sha256"), str)
        and bool(_HEX64.match(entry["output_sha256"])),
        "source_bytes": _int(entry.get("source_bytes")),
        "output_bytes": _int(entry.get("output_bytes")),
        "encodes": _int(entry.get("encodes", 0)),
        "codec": _opt(entry.get("codec"), str),
        "quality": _opt(entry.get("quality"), int),
        "params": _opt(entry.get("params"), dict),
        "found": _opt(entry.get("found"), dict)
        and all(k in CODECS and _int(v) for k, v in (entry.get("found") or {}).items()),
        "gains": _opt(entry.get("gains"), dict)
        and all(k in CODECS and _finite(v) for k, v in (entry.get("gains") or {}).items()),
        "observations": _opt(entry.get("observations"), list)
        and all(_observation(o) for o in entry.get("observations") or []),
        "error": _opt(entry.get("error"), str),
        "width": _opt(entry.get("width"), int),
        "height": _opt(entry.get("height"), int),
        "meets_target": entry.get("meets_target") in (None, True, False),
        "scores": isinstance(entry.get("scores", {}), dict)
        and all(
            isinstance(k, str) and _opt(v, (int, float)) for k, v in entry.get("scores", {}).items()
        ),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"field {bad[0]} is missing or not what imgtune writes")
    return entry


def _observation(o: Any) -> bool:
    """A training row for the quality model as imgtune writes it (`model_search`)."""
    return (
        isinstance(o, dict)
        and isinstance(o.get("arm"), str)
        and isinstance(o.get("features"), dict)
        and all(isinstance(k, str) and _finite(v) for k, v in o["features"].items())
        and all(_finite(o.get(k)) for k in ("target", "quality", "log_bpp"))
        and _opt(o.get("slope"), (int, float))
    )


class Manifest:
    """The manifest of one output folder (the caller holds the folder's lock)."""

    def __init__(self, out: OutputDir) -> None:
        self.out = out
        self.offsets: dict[str, int] = {}
        #: (job, codec, quality) of each written image, in the order they were finished
        self.history: list[tuple[str, str, int]] = []
        #: the first few problems, one line each; `bad_lines` counts them all
        self.problems: list[str] = []
        self.bad_lines = 0
        self._lock = threading.Lock()
        lines = self._scan()
        own = self._plain_file_of_its_own()
        if self.bad_lines or own is False or (lines > 2 * len(self.offsets) + 1000):
            self._rewrite()

    @property
    def path(self):
        return self.out.root / MANIFEST_NAME

    def _problem(self, reason: str) -> None:
        self.bad_lines += 1
        if len(self.problems) < _SHOWN:
            self.problems.append(f"{self.path}: {reason}; ignored (its image is redone)")

    def _plain_file_of_its_own(self) -> bool | None:
        """None: no manifest yet; False: a link, a folder or a file with other names."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return True
        self._problem("is a symbolic link, a folder or a file with other hard links, not read")
        return False

    def _lines(self, f) -> Iterator[tuple[int, int, bytes | None, str | None]]:
        """(line number, offset, the line or None, why not) for each line, each read in at most
        MAX_LINE bytes of memory."""
        offset, number = 0, 0
        while raw := f.readline(MAX_LINE + 1):
            number += 1
            start = offset
            offset += len(raw)
            if len(raw) > MAX_LINE:
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(1 << 20)
                    offset += len(raw)
                yield number, start, None, f"longer than {MAX_LINE} bytes"
            elif not raw.endswith(b"\n"):
                yield number, start, None, "cut short (a run killed while writing it)"
            else:
                yield number, start, raw, None

    def _scan(self) -> int:
        count = 0
        with self.out.open_read(MANIFEST_NAME) as f:
            if f is None:
                return 0
            for number, offset, raw, why in self._lines(f):
                count += 1
                entry = None
                if raw is not None:
                    try:
                        entry = validate_entry(json.loads(raw))
                    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                        why = str(exc)[:200]
                if entry is None:
                    self._problem(f"line {number}: {why}")
                    continue
                self.offsets[entry_key(entry)] = offset
                if entry["status"] == "written" and entry["codec"] and entry["quality"]:
                    self.history.append((entry["job"], entry["codec"], entry["quality"]))
        return count

    def _rewrite(self) -> None:
        """Keep only the last valid line of each source, in a new file renamed into place (a
        link or a shared inode is replaced, never written through)."""
        live = sorted((off, src) for src, off in self.offsets.items())
        offsets: dict[str, int] = {}
        with self.out.open_read(MANIFEST_NAME) as f, self.out.atomic_writer(MANIFEST_NAME) as w:
            for off, src in live if f is not None else ():
                f.seek(off)
                offsets[src] = w.tell()
                w.write(f.readline(MAX_LINE + 1))
        self.offsets = offsets

    def lookup(self, rel: str) -> dict[str, Any] | None:
        """The last valid line for source `rel` (with "#" and a variant's tag: that output's),
        validated again as it is read (None: none)."""
        with self._lock:
            offset = self.offsets.get(rel)
        if offset is None:
            return None
        with self.out.open_read(MANIFEST_NAME) as f:
            if f is None:
                return None
            f.seek(offset)
            try:
                entry = validate_entry(json.loads(f.readline(MAX_LINE + 1)))
            except (ValueError, UnicodeDecodeError, RecursionError):
                return None
        return entry if entry_key(entry) == rel else None

    def append(self, entry: dict[str, Any]) -> None:
        """Add a line (after its output is in place). A failed write (a full disk) is cut
        back off, so the file stays a sequence of whole lines."""
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        with self._lock, self.out.open_append(MANIFEST_NAME) as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            # A line torn by a kill leaves no newline: start on a fresh line.
            prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
            try:
                data = memoryview(prefix + line)
                while data:
                    data = data[f.write(data) :]
                os.fsync(fd)
            except OSError as exc:
                with suppress(OSError):
                    os.ftruncate(fd, size)
                raise self.out.classify(MANIFEST_NAME, exc) from exc
            self.offsets[entry_key(entry)] = size + len(prefix)
