"""`tune --widths`: one recipe that holds at every width (each image counted once per width), a
preset that records them, `apply` making each width, and `export --to sharp` looping over them
with the real sharp (the same names and sizes as `apply`)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.cli import app
from optimizer.errors import UsageError
from optimizer.export import render
from optimizer.presets import Preset, PresetError, load_preset
from optimizer.search import widths_for

from ._tools import need_tool
from .conftest import thumbnails

runner = CliRunner()


def test_widths_for_never_upscales():
    assert widths_for(1000, (480, 960, 1920)) == [480, 960, 1000]
    assert widths_for(960, (480, 960, 1920)) == [480, 960]
    assert widths_for(300, (480, 960)) == [300]
    assert widths_for(2000, (960, 480)) == [480, 960]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tw")
    src = thumbnails(root / "src", {"a.png": "chelsea", "b.png": "coffee"}, side=128)
    im = Image.open(src / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned: 85 wide
    im.convert("RGB").save(src / "turned.jpg", quality=95, exif=exif.tobytes())
    r = runner.invoke(
        app,
        ["tune", str(src), "--widths", "64,1000", "--trials", "4", "--seed", "1",
         "--quality", "low", "--codecs", "avif", "--preset-out", str(root / "p.json")],
    )  # fmt: skip
    return root, src, r


def test_the_preset_holds_at_every_width_and_records_them(tuned):
    root, _, r = tuned
    assert r.exit_code == 0, r.output
    p = json.loads((root / "p.json").read_text())
    assert p["widths"] == [64, 1000] and p["max_size"] is None
    # each image once per width (1000 is wider than all: their own widths), each meeting it
    per = p["achieved"]["per_image"]
    assert set(per) == {"a.png@64w", "a.png@128w", "b.png@64w", "b.png@128w",
                        "turned.jpg@64w", "turned.jpg@85w"}  # fmt: skip
    assert all(v["ssimulacra2"] >= 50 for v in per.values())
    assert p["achieved"]["source_bytes"] == sum(
        f.stat().st_size for f in (root / "src").iterdir()
    )  # each source once


def test_a_preset_s_widths_are_validated():
    base = json.loads(json.dumps(Preset.from_dict(_minimal()).to_dict()))
    with pytest.raises(PresetError, match="widths"):
        Preset.from_dict({**base, "widths": [480, -1]})
    with pytest.raises(PresetError, match="not both"):
        Preset.from_dict({**base, "widths": [480], "max_size": [480, 480]})
    assert Preset.from_dict({**base, "widths": [960, 480]}).widths == (480, 960)
    assert "widths" not in Preset.from_dict(base).to_dict()  # old presets stay as they were


def _minimal() -> dict:
    return {
        "schema": 1,
        "params": {
            "codec": "webp",
            "quality": 77,
            "resize_filter": None,
            "sharpen": 1.0,
            "options": {"method": 4},
        },  # fmt: skip
        "target": {"spec": "ssimulacra2>=70"},
    }


def test_apply_makes_every_width_and_sharp_makes_the_same_files(tuned, tmp_path):
    root, src, _ = tuned
    out = tmp_path / "out"
    r = runner.invoke(app, ["apply", str(root / "p.json"), str(src), str(out), "--json"])
    assert r.exit_code == 0, r.output
    made = {p.name: Image.open(p).size for p in out.glob("*.avif")}
    # 85 x 64/128 = 42.5: halves round up, as sharp and libvips round them
    assert made == {
        "a-64w.avif": (64, 43), "a-128w.avif": (128, 85), "b-64w.avif": (64, 43),
        "b-128w.avif": (128, 85), "turned-64w.avif": (64, 96), "turned-85w.avif": (85, 128),
    }  # fmt: skip
    doc = json.loads((out / "imgtune.json").read_text())
    assert {v["path"] for item in doc["images"].values() for v in item["variants"]} == set(made)
    # the same loop in sharp, with the real sharp
    node, sharp = need_tool("node").path, need_tool("sharp").path
    script = tmp_path / "encode.js"
    script.write_text(render(load_preset(root / "p.json"), "sharp"))
    theirs = tmp_path / "sharp"
    theirs.mkdir()
    for name in ("a.png", "b.png", "turned.jpg"):
        stem = name.rsplit(".", 1)[0]
        run = subprocess.run(
            [node, str(script), str(src / name), str(theirs / f"{stem}.avif")],
            capture_output=True, text=True, env={**os.environ, "NODE_PATH": sharp},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert {p.name: Image.open(p).size for p in theirs.glob("*.avif")} == made


def test_exporters_that_make_one_file_refuse_a_preset_with_widths(tuned):
    root, _, _ = tuned
    p = load_preset(root / "p.json")
    with pytest.raises(UsageError, match="--to sharp makes every width"):
        render(p, "cwebp")
    assert json.loads(render(p, "json"))["widths"] == [64, 1000]
    assert "widths = [64, 1000]" in render(p, "toml")
