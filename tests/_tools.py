"""The external tools the tests run, found by what they are rather than by name.

A name on PATH proves little: Windows ships a `convert` that converts FAT disks, and sandboxes put
stand-ins in front of real programs. So each candidate on PATH, in PATH order, is asked for its
version or help (with a timeout) and kept only if the answer carries the tool's signature; a
same-named program without it counts as not installed, and the reason names it.

`need_tool(name)` is what tests call: a missing tool skips the test, naming the tool and why,
unless IMGTUNE_REQUIRE_TOOLS=1 (set by CI), where it fails the test with the same message.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = ".ci/install-tools installs it"


@dataclass(frozen=True)
class _Spec:
    label: str
    names: tuple[str, ...]  # executable names, preferred first
    args: tuple[str, ...]
    signature: str  # a regex the genuine tool's output matches (re.MULTILINE)
    what: str  # "is not <what>" in the reason
    timeout: float = 15


_SPECS = {
    "imagemagick": _Spec(
        "ImageMagick",
        ("magick", "convert"),
        ("-version",),
        r"^Version: ImageMagick \d",
        "ImageMagick",
    ),
    # -version prints a bare number, which any program could print: the usage line is specific
    "cwebp": _Spec(
        "cwebp", ("cwebp",), ("-h",), r"cwebp \[options\] -q quality", "libwebp's cwebp"
    ),
    # an encoder must be compiled in, or avifenc only converts nothing
    "avifenc": _Spec(
        "avifenc", ("avifenc",), ("--version",), r"^Version: \d+\.\d+.*\[enc", "libavif's avifenc"
    ),
    "cjpeg": _Spec(
        "cjpeg (libjpeg-turbo)",
        ("cjpeg",),
        ("-version",),
        r"libjpeg-turbo version \d",
        "libjpeg-turbo's cjpeg",
    ),
    "vips": _Spec("vips", ("vips",), ("--version",), r"^vips-\d+\.\d+", "libvips"),
    "vipsthumbnail": _Spec(
        "vipsthumbnail", ("vipsthumbnail",), ("--version",), r"^vips-\d+\.\d+", "libvips"
    ),
    # evaluating an expression shows a JavaScript runtime, not just something printing v20
    "node": _Spec(
        "node",
        ("node",),
        ("-p", "process.release.name + ' ' + process.version"),
        r"^node v\d+\.",
        "Node.js",
    ),
    # Debian's chromium wrapper may print shell warnings first, hence MULTILINE
    "chromium": _Spec(
        "chromium",
        ("chromium", "chromium-browser"),
        ("--version",),
        r"^Chromium \d+\.",
        "Chromium",
        timeout=60,
    ),
    # Debian's chromium-driver: what selenium drives the browser through (the web page's test)
    "chromedriver": _Spec(
        "chromedriver",
        ("chromedriver",),
        ("--version",),
        r"^ChromeDriver \d+\.",
        "ChromeDriver",
        timeout=60,
    ),
}
_SHARP = "sharp (npm package)"
_SHARP_PROBE = (
    "process.stdout.write('sharp ' + require('sharp/package.json').version"
    " + ' libvips ' + require('sharp').versions.vips)"
)
NAMES = (*_SPECS, "sharp")


@dataclass(frozen=True)
class Tool:
    name: str
    label: str
    path: str | None  # the genuine executable, absolute (sharp: its node_modules folder)
    version: str = ""  # the line that matched the signature
    reason: str = ""  # why it is not installed, when path is None

    @property
    def message(self) -> str:
        return f"{self.label} not installed: {self.reason} ({INSTALL_HINT})"


def _candidates(names: tuple[str, ...], path: str) -> list[str]:
    """Every executable of these names on `path`, in preference then PATH order, each file once."""
    found, seen = [], set()
    for name in names:
        for d in path.split(os.pathsep):
            exe = shutil.which(name, path=d or ".")
            if exe and os.path.realpath(exe) not in seen:
                seen.add(os.path.realpath(exe))
                found.append(os.path.abspath(exe))
    return found


def _probe(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    try:
        r = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:g} s"
    except OSError as exc:
        return None, f"cannot run: {exc.strerror or exc}"
    return r.returncode, r.stdout.decode(errors="replace")


def _shown(out: str) -> str:
    out = " ".join(out.split())
    return repr(out[:120] + ("..." if len(out) > 120 else ""))


@functools.cache
def _find(name: str, path: str, sharp_dir: str | None) -> Tool:
    env = {**os.environ, "PATH": path}
    if name == "sharp":
        node = _find("node", path, None)
        if node.path is None:
            return Tool(name, _SHARP, None, reason=f"it runs on node, and {node.reason}")
        dirs = [d for d in (sharp_dir, str(ROOT / ".ci" / "node")) if d]
        tried = []
        for d in dirs:
            modules = Path(d).resolve() / "node_modules"
            rc, out = _probe(
                [node.path, "-e", _SHARP_PROBE], {**env, "NODE_PATH": str(modules)}, 30
            )
            m = re.search(r"^sharp \d+\.\d+\.\d+ libvips \d", out, re.MULTILINE)
            if rc == 0 and m:
                return Tool(name, _SHARP, str(modules), version=out.strip())
            tried.append(f"node cannot load sharp from {modules} ({_shown(out)})")
        return Tool(
            name, _SHARP, None, reason="; ".join(tried) + " (IMGTUNE_SHARP_DIR or .ci/node)"
        )
    spec = _SPECS[name]
    rejected = []
    for exe in _candidates(spec.names, path):
        base = Path(exe).name
        shown_cmd = " ".join([base, *spec.args])
        rc, out = _probe([exe, *spec.args], env, spec.timeout)
        m = re.search(spec.signature, out, re.MULTILINE) if rc is not None else None
        if m:
            line = out[m.start() :].splitlines()[0].strip()
            return Tool(name, spec.label, exe, version=line)
        if rc is None:
            rejected.append(f"{base} at {exe}: `{shown_cmd}` gave {out}")
        else:
            rejected.append(
                f"{base} at {exe} is not {spec.what} (`{shown_cmd}` printed: {_shown(out)})"
            )
    if not rejected:
        return Tool(name, spec.label, None, reason=f"no {' or '.join(spec.names)} on PATH")
    return Tool(name, spec.label, None, reason="; ".join(rejected))


def find(name: str, path: str | None = None) -> Tool:
    """The first genuine `name` on `path` (default: PATH); cached per (name, PATH)."""
    if name not in NAMES:
        raise KeyError(f"unknown tool {name!r}; known: {', '.join(NAMES)}")
    path = os.environ.get("PATH", os.defpath) if path is None else path
    return _find(name, path, os.environ.get("IMGTUNE_SHARP_DIR") if name == "sharp" else None)


def tools_required() -> bool:
    return os.environ.get("IMGTUNE_REQUIRE_TOOLS") == "1"


def need_tool(name: str) -> Tool:
    """The genuine tool, or the test is skipped (failed under IMGTUNE_REQUIRE_TOOLS=1) naming it
    and why it is missing."""
    tool = find(name)
    if tool.path is None:
        if tools_required():
            pytest.fail(f"{tool.message} [IMGTUNE_REQUIRE_TOOLS=1]", pytrace=False)
        pytest.skip(tool.message)
    return tool
