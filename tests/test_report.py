"""`imgtune report` and `tune --report`: one self-contained HTML file, rendered in headless
Chromium: no script errors, the charts drew (plotly SVGs with points), a non-blank screenshot."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.cli import app

from ._tools import need_tool
from .conftest import SAMPLES

runner = CliRunner()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    src = root / "small"
    src.mkdir()
    for name in ("coffee", "chelsea", "rocket"):
        im = Image.open(SAMPLES / f"{name}.png")
        im.thumbnail((160, 160))
        im.save(src / f"{name}.png")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.delenv("IMGTUNE_STUDIES", raising=False)  # studies/ in the folder, as a user's
    r = runner.invoke(
        app,
        ["tune", str(src), "--trials", "8", "--seed", "3", "--strategy", "bisect", "--report", "."],
    )
    mp.undo()
    return root, src, r


def _chromium() -> str:
    return need_tool("chromium").path


def _render(exe: str, html_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += ["--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0", *args]
    cmd.append(html_path.as_uri())
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_tune_writes_a_self_contained_report(tuned):
    root, _, r = tuned
    assert r.exit_code == 0, r.output
    reports = list((root / "studies").glob("*.report.html"))
    assert len(reports) == 1
    text = reports[0].read_text()
    # offline: no script or stylesheet fetched from anywhere
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", text)
    assert "Plotly" in text and text.count("<img alt=") == 6  # 3 images x 2 crops, inline
    for heading in ("Summary", "Bytes and quality", "Optimisation history", "importances"):
        assert heading in text


def test_report_renders_in_chromium_without_errors_and_the_charts_draw(tuned, tmp_path):
    exe = _chromium()
    root, _, _ = tuned
    report = next((root / "studies").glob("*.report.html"))
    dom = _render(exe, report, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines() if "Uncaught" in line]
    assert not errors, errors
    assert dom.stdout.count('class="main-svg"') >= 3  # the three charts drew
    assert dom.stdout.count('class="point"') >= 5  # trial markers in the scatter
    shot = tmp_path / "shot.png"
    r = _render(exe, report, f"--screenshot={shot}", "--window-size=1200,1600")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert px.std() > 20  # not a blank page


def test_report_command_from_the_study_with_crops(tuned):
    root, src, _ = tuned
    name = next((root / "studies").glob("*.journal")).stem
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.delenv("IMGTUNE_STUDIES", raising=False)  # studies/ in the folder, as a user's
    try:
        r = runner.invoke(app, ["report", name, "--images", str(src), "--out", "again.html"])
        missing = runner.invoke(app, ["report", "no-such-study"])
    finally:
        mp.undo()
    assert r.exit_code == 0, r.output
    text = (root / "again.html").read_text()
    assert text.count("<img alt=") == 6 and "Pareto front" in text
    assert missing.exit_code == 4 and "no such study" in missing.stderr
