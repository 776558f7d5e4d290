"""Web assets: `optimize --widths --formats` (one output per width and format, each meeting the
target against the source at its own width), OUT/imgtune.json (valid against its schema, stable
across runs) and its `<picture>` snippets, loaded by headless Chromium over HTTP."""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote

import jsonschema
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import optimizer
from optimizer import api
from optimizer.assets import picture
from optimizer.cli import app
from optimizer.errors import UsageError
from optimizer.image_job import Job, Variant
from optimizer.metrics import MetricSuite
from optimizer.targets import parse_target

from ._tools import need_tool
from .conftest import thumbnails

runner = CliRunner()
SCHEMA = json.loads(
    (Path(optimizer.__file__).parent / "schemas" / "imgtune.schema.json").read_text()
)
TARGET = "ssimulacra2>=70"


def _job(**kw) -> Job:
    return Job.optimize(parse_target(TARGET), ["avif", "webp", "jpeg"], **kw)


def test_variants_are_never_wider_than_the_source_and_cross_widths_with_formats():
    job = _job(widths=(480, 960, 1920), formats=("avif", "jpeg"))
    got = [(v.width, v.format) for v in job.variants(1200)]
    # 1920 is wider than the source: its own width instead, never an upscale
    assert got == [(w, f) for w in (480, 960, 1200) for f in ("avif", "jpeg")]
    assert [v.width for v in job.variants(300)] == [300, 300]  # narrower than all
    assert [v.width for v in job.variants(960)] == [480, 480, 960, 960]  # 960 is its width
    assert _job().variants(1200) == [Variant()]  # a plain job: its one output
    assert [v.tag for v in job.variants(500)] == [
        "480w.avif",
        "480w.jpeg",
        "500w.avif",
        "500w.jpeg",
    ]
    assert [v.tag for v in _job(formats=("webp",)).variants(9)] == ["webp"]


def test_a_variant_s_job_searches_its_format_only_at_its_width():
    job = _job(widths=(480,), formats=("avif", "jpeg"))
    v = job.for_variant(Variant(480, "jpeg"))
    assert [b.codec for b in v.bases] == ["jpeg"] and v.max_width == 480
    assert v.keep_formats == ("JPEG",)  # a PNG source is not a JPEG output
    assert job.variant_stem("photos/a", Variant(480, "jpeg")) == "photos/a-480w"
    named = _job(widths=(480,), name_pattern="{stem}@{width}")
    assert named.variant_stem("a", Variant(480)) == "a@480"
    # each variant keys its own outputs; a plain job keeps the key it had before variants
    job = _job(widths=(480, 960), formats=("avif", "jpeg"))
    keys = {job.for_variant(x).key({}) for x in job.variants(1000)}
    assert len(keys) == 4 and _job().for_variant(Variant()) == _job()


def test_picture_puts_modern_formats_first_and_sizes_the_fallback():
    vs = [
        {"path": f"d/a b-{w}w.{e}", "format": f, "width": w, "height": w // 2}
        for w in (960, 480)
        for f, e in (("jpeg", "jpg"), ("avif", "avif"), ("webp", "webp"))
    ]
    html = picture(vs)
    lines = html.splitlines()
    assert lines[1].startswith('  <source type="image/avif" srcset="d/a%20b-480w.avif 480w, ')
    assert lines[2].startswith('  <source type="image/webp"')
    assert '<img src="d/a%20b-960w.jpg"' in lines[3]
    assert 'width="960" height="480"' in lines[3] and 'sizes="100vw"' in lines[3]
    assert picture([{**vs[1], "width": None}]).count("<source") == 0  # AVIF only: the <img>


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"widths": "480,x"}, "not a width"),
        ({"widths": "480", "max_width": 300}, "leave out --max-width"),
        ({"formats": "avif,gif"}, "gif not known"),
        ({"formats": "avif", "quality": "lossless"}, "--quality lossless"),
        ({"widths": "480", "name_pattern": "{width}-{stem}"}, "must start with {stem}"),
        ({"widths": "480", "name_pattern": "{stem}/{width}"}, "beside its source"),
        ({"widths": "480", "name_pattern": "{stem}-{height}"}, "must start with {stem}"),
        ({"name_pattern": "{stem}-{width}"}, "give --widths too"),
    ],
)
def test_bad_web_options_are_refused_before_any_work(tmp_path, kw, message):
    src = thumbnails(tmp_path / "src", {"a.png": "chelsea"}, side=64)
    with pytest.raises(UsageError, match=re.escape(message)):
        api.optimize(src, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A folder of three sources (one narrower than every width but the smallest, one turned by
    EXIF, one with transparency) optimised into widths x formats, with the HTML."""
    root = tmp_path_factory.mktemp("assets")
    src = thumbnails(root / "src", {"a.png": "chelsea", "sub/b c.png": "coffee"}, side=160)
    im = Image.open(src / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 160x106, shown 106 wide
    im.convert("RGB").save(src / "turned.jpg", quality=95, exif=exif.tobytes())
    rgba = Image.open(src / "sub/b c.png").convert("RGBA")
    rgba.putalpha(200)
    rgba.save(src / "alpha.png")
    out = root / "out"
    args = [
        "optimize", str(src), str(out), "--target", TARGET, "--widths", "64,128,400",
        "--formats", "avif,jpeg", "--html", "--json", "--no-learn",
    ]  # fmt: skip
    r = runner.invoke(app, args)
    return src, out, r, args


def test_every_variant_meets_the_target_against_the_source_at_its_own_width(built):
    src, out, r, _ = built
    assert r.exit_code == 1, r.output  # some skipped: the transparent source's JPEG outputs
    doc = json.loads((out / "imgtune.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    clause = parse_target(TARGET).clauses[0]
    seen = {}
    for name, item in doc["images"].items():
        ref = Image.open(src / name)
        from PIL import ImageOps

        ref = ImageOps.exif_transpose(ref)
        for v in item["variants"]:
            assert v["status"] == "written" and v["meets_target"] is True
            path = out / v["path"]
            assert path.stat().st_size == v["bytes"]
            got = Image.open(path)
            assert got.size == (v["width"], v["height"])
            assert v["width"] <= ref.width  # never upscaled
            assert got.format == {"avif": "AVIF", "jpeg": "JPEG"}[v["format"]]
            # the reference at its width: Pillow's Lanczos on the oriented source, here
            mode = "RGBA" if ref.mode in ("RGBA", "LA", "P") and "A" in got.mode else "RGB"
            want = ref.convert(mode).resize(got.size, Image.Resampling.LANCZOS)
            score = suite.score_pair(np.asarray(want), np.asarray(got.convert(mode))).values[
                "ssimulacra2"
            ]
            assert score >= clause.value - 0.5, (v["path"], score)
            seen.setdefault(name, set()).add((v["width"], v["format"]))
    # a.png is 160 wide: 64, 128 and its own width (400 is wider); one file per format each
    assert seen["a.png"] == {(w, f) for w in (64, 128, 160) for f in ("avif", "jpeg")}
    assert {w for w, _ in seen["turned.jpg"]} == {64, 106}  # shown 106 wide (EXIF)
    assert seen["alpha.png"] == {(w, "avif") for w in (64, 128, 160)}  # JPEG has no alpha
    assert (out / "sub" / "b c-64w.avif").is_file()


def test_the_transparent_source_s_jpeg_outputs_are_reported_by_name(built):
    _, _, r, _ = built
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    skipped = [x for x in lines if x.get("status") == "skipped"]
    assert {x["variant"] for x in skipped} == {"64w.jpeg", "128w.jpeg", "160w.jpeg"}
    assert all("alpha.png (" in x["error"] and "--background" in x["error"] for x in skipped)
    summary = lines[-1]
    assert summary["summary"] and summary["sources"] == 4


def test_a_rerun_changes_nothing_and_writes_the_same_document(built):
    _, out, _, args = built
    before = (out / "imgtune.json").read_bytes()
    stamp = (out / "imgtune.json").stat().st_mtime_ns
    r = runner.invoke(app, args)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    statuses = {x["status"] for x in lines if "status" in x}
    assert statuses == {"up_to_date", "skipped"}, statuses
    assert (out / "imgtune.json").read_bytes() == before  # a build can cache on it
    assert (out / "imgtune.json").stat().st_mtime_ns == stamp  # not even rewritten


class _Logged(http.server.SimpleHTTPRequestHandler):
    fetched: list[str] = []

    def log_message(self, *args):  # quiet; every GET is noted
        pass

    def do_GET(self):
        type(self).fetched.append(self.path)
        super().do_GET()


def test_the_html_loads_in_chromium_and_the_browser_fetches_avif(built, tmp_path):
    exe = need_tool("chromium").path
    _, out, _, _ = built
    doc = json.loads((out / "imgtune.json").read_text())
    # The snippets as a build would paste them, and a script that reports what each <img> shows.
    page = out / "check.html"
    page.write_text(
        "<!doctype html><html><body>"
        + "".join(item["html"] for item in doc["images"].values())
        + """<script>
window.addEventListener('load', () => {
  const r = [...document.images].map(i => [i.complete, i.naturalWidth, i.currentSrc]);
  const pre = document.createElement('pre'); pre.id = 'result';
  pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
});</script></body></html>"""
    )
    handler = functools.partial(_Logged, directory=str(out))
    _Logged.fetched = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/check.html"
        cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,8000"]
        cmd += ["--virtual-time-budget=15000", "--dump-dom", url]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
    assert dom.returncode == 0, dom.stderr[-2000:]
    result = json.loads(re.search(r'<pre id="result">(.*?)</pre>', dom.stdout).group(1))
    assert len(result) == len(doc["images"])
    for complete, natural, current in result:
        assert complete and natural > 0, (complete, natural, current)
        assert current.endswith(".avif"), current  # Chromium shows AVIF: it took the <source>
    fetched = sorted(p for p in _Logged.fetched if p not in ("/check.html", "/favicon.ico"))
    # no JPEG fetched: of each image, the widest AVIF (a 1200 px window wants more than any)
    widest = sorted(
        "/" + quote(max((v for v in item["variants"] if v["format"] == "avif"),
                        key=lambda v: v["width"])["path"])
        for item in doc["images"].values()
    )  # fmt: skip
    assert fetched == widest


def test_an_up_to_date_output_keeps_the_status_its_run_gave_it(tmp_path):
    from optimizer.assets import AssetWriter
    from optimizer.image_job import ImageOutcome, Status
    from optimizer.outdir import OutputDir

    out = OutputDir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")  # an existing output (its size is in the record)
    rows = [
        ImageOutcome("a.png", Status.UP_TO_DATE, output="a.png", width=1, height=1),
        ImageOutcome("b.png", Status.UP_TO_DATE, output="b.avif", codec="avif", width=1,
                     height=1, meets_target=True),
        ImageOutcome("c.png", Status.UP_TO_DATE, output="c.png", codec="avif", width=1,
                     height=1, meets_target=False),
        ImageOutcome("d.png", Status.UP_TO_DATE, output="d.avif", codec="avif", width=1,
                     height=1, meets_target=False),
    ]  # fmt: skip
    w = AssetWriter(out, target="ssimulacra2>=80")
    with w.open():
        for o in rows:
            w.add(o)
        w.commit()
    doc = json.loads((tmp_path / "imgtune.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    got = {k: v["variants"][0]["status"] for k, v in doc["images"].items()}
    assert got == {"a.png": "kept", "b.png": "written", "c.png": "missed", "d.png": "best_effort"}
