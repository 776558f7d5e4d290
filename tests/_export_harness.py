"""Run an exported command with the real tool and measure its output against imgtune's own."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from optimizer import codecs, transforms
from optimizer.export import render
from optimizer.images import load
from optimizer.recipe import Candidate

from ._tools import Tool, find

ROOT = Path(__file__).resolve().parent.parent
PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
BOX = (320, 320)


def make_preset(codec: str, quality: int, *, sharpen: float = 1.0, options=None, box=BOX) -> dict:
    preset = json.loads((ROOT / "tests" / "data" / "preset_webp.json").read_text())
    opts = dict(codecs.EncodeSettings.make(codec, quality, **(options or {})).options)
    preset["params"] = {
        "codec": codec,
        "quality": quality,
        "resize_filter": "lanczos",
        "sharpen": sharpen,
        "options": opts,
    }
    preset["pillow_save_kwargs"] = codecs.EncodeSettings.make(
        codec, quality, **opts
    ).pillow_kwargs()
    preset["max_size"] = list(box) if box else None
    preset["target"]["spec"] = "ssimulacra2>=70"
    return preset


#: the tools (names in tests/_tools.py) each exporter's output needs
TOOLS = {
    "cwebp": ("cwebp",),
    "avifenc": ("avifenc",),
    "cjpeg": ("imagemagick", "cjpeg"),
    "vips": ("vips",),
    "vipsthumbnail": ("vipsthumbnail",),
    "magick": ("imagemagick",),
    "sharp": ("node", "sharp"),
    "pillow-python": (),
}


def genuine(fmt: str) -> dict[str, Tool]:
    """The tools `fmt` needs, found by tests/_tools.py; a test calls need_tool first."""
    tools = {t: find(t) for t in TOOLS[fmt]}
    missing = [t.message for t in tools.values() if t.path is None]
    if missing:
        raise RuntimeError("; ".join(missing))
    return tools


def shell_prelude(tools: dict[str, Tool]) -> str:
    """Shell functions that send each command name the exporter prints to the genuine tool, so a
    stand-in earlier on PATH is never run (ImageMagick 6 answers to `magick` as `convert`)."""
    command = {"imagemagick": "magick"}
    return "".join(
        f'{command.get(name, name)}() {{ {shlex.quote(t.path)} "$@"; }}\n'
        for name, t in tools.items()
    )


def run_shell(fmt: str, text: str, shell: list[str], cwd: Path | None = None):
    """Run an exported command as printed (its comment lines included) under `shell`."""
    script = shell_prelude(genuine(fmt)) + text
    return subprocess.run([*shell, script], capture_output=True, text=True, cwd=cwd)


def run_export(fmt: str, preset: dict, src: Path, out: Path) -> None:
    text = render(preset, fmt, input=str(src), output=str(out))
    if fmt == "pillow-python":
        ns: dict = {}
        exec(compile(text, "<export>", "exec"), ns)  # noqa: S102 - the exported snippet itself
        ns["encode"](str(src), str(out))
        return
    if fmt == "sharp":
        tools = genuine(fmt)
        script = out.with_suffix(".js")
        script.write_text(text)
        env = {**os.environ, "NODE_PATH": tools["sharp"].path}
        r = subprocess.run(
            [tools["node"].path, str(script), str(src), str(out)],
            capture_output=True,
            text=True,
            env=env,
        )
    else:
        r = run_shell(fmt, text, ["bash", "-euo", "pipefail", "-c"])
    if r.returncode != 0:
        raise RuntimeError(f"{fmt} failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def measure(fmt: str, preset: dict, image: Path, tmp: Path) -> dict:
    """Run the tool; return its output's format, size and SSIMULACRA2 against imgtune's
    reference, beside imgtune's own encode of the same preset."""
    from optimizer.metrics import MetricSuite  # imports torch: only where a tool is measured

    src = load(image)
    p = preset["params"]
    max_w, max_h = preset.get("max_size") or (None, None)
    size = transforms.fit_size(src.width, src.height, max_width=max_w, max_height=max_h)
    ref = transforms.reference(src.pixels, size)
    out = tmp / f"{image.stem}-{fmt}-{p['codec']}.{ {'jpeg': 'jpg'}.get(p['codec'], p['codec']) }"
    run_export(fmt, preset, image, out)
    got = Image.open(out)
    got.load()
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    prepared = suite.prepare(ref[:, :, :3] if ref.shape[2] == 4 else ref)
    pixels = np.asarray(got.convert("RGB" if ref.shape[2] in (3, 4) else "L"))
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    tool_score = suite.score(prepared, [pixels])[0]["ssimulacra2"] if got.size == size else None
    cand = Candidate.from_dict(p)
    ours_px = transforms.apply(
        src.pixels, size=size if size != (src.width, src.height) else None, sharpen=cand.sharpen
    )
    data = codecs.encode(ours_px, cand.settings())
    ours = suite.score(prepared, [codecs.decode(data, channels=ref.shape[2])])[0]["ssimulacra2"]
    return {
        "format": got.format,
        "size": got.size,
        "expected_size": size,
        "bytes": out.stat().st_size,
        "ours_bytes": len(data),
        "score": tool_score,
        "ours": ours,
    }
