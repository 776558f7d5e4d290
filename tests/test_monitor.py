"""Quality thresholds (`optimizer.monitor`) and `imgtune check`, the CI gate: one degraded image
in a folder exits non-zero and the JUnit XML and GitHub annotations name it."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.cli import app
from optimizer.monitor import QualityMonitor, Thresholds, tail
from optimizer.targets import parse_target

from .conftest import SAMPLES

runner = CliRunner()


def test_the_tail_is_the_bad_end_for_either_direction():
    values = list(range(100))
    assert tail(parse_target("ssimulacra2>=1").clauses[0], values) == 4
    assert tail(parse_target("lpips<=1").clauses[0], values) == 95


def test_thresholds_judge_the_tail_not_the_mean():
    th = Thresholds.parse("ssimulacra2>=80", "ssimulacra2>=60")
    good = [{"ssimulacra2": 90.0}] * 19
    assert th.judge(good)["level"] == "ok"
    # one in twenty far below: the mean is still 85.5, the tail is not
    assert th.judge([*good, {"ssimulacra2": 0.0}])["level"] == "critical"
    assert th.judge([*good, {"ssimulacra2": 70.0}, {"ssimulacra2": 70.0}])["level"] == "warning"
    assert th.item_level({"ssimulacra2": 70.0}) == "warning"
    assert th.item_level({"ssimulacra2": 10.0}) == "critical"


def test_the_monitor_reports_only_changes_of_level_over_its_window():
    mon = QualityMonitor(Thresholds.parse("ssimulacra2>=80", "ssimulacra2>=60"), window=10)
    events = [mon.add({"ssimulacra2": 90.0}) for _ in range(10)]
    assert events == [None] * 10
    e = mon.add({"ssimulacra2": 10.0})
    assert e is not None and (e["from"], e["to"]) == ("ok", "critical")
    assert mon.add({"ssimulacra2": 10.0}) is None  # still critical: no new event
    later = [mon.add({"ssimulacra2": 90.0}) for _ in range(10)]  # the bad ones leave
    assert [e and e["to"] for e in later] == [None] * 9 + ["ok"]
    stats = mon.stats()
    assert stats["count"] == 10 and stats["fail_misses"] == 0
    assert stats["metrics"]["ssimulacra2"]["mean"] == pytest.approx(90.0)


@pytest.fixture
def folders(tmp_path):
    originals, encoded = tmp_path / "orig", tmp_path / "enc"
    originals.mkdir()
    encoded.mkdir()
    for name in ("chelsea", "coffee", "rocket", "astronaut", "twins_cc0"):
        im = Image.open(SAMPLES / f"{name}.png").convert("RGB")
        im.thumbnail((128, 128))
        im.save(originals / f"{name}.png")
        im.save(encoded / f"{name}.jpg", quality=3 if name == "rocket" else 95)
    return originals, encoded


def test_check_fails_on_one_degraded_image_and_names_it(folders, tmp_path):
    originals, encoded = folders
    junit = tmp_path / "report.xml"
    r = runner.invoke(
        app,
        ["check", str(originals), str(encoded), "--warn", "ssimulacra2>=80", "--fail",
         "ssimulacra2>=50", "--junit", str(junit), "--github"],
    )  # fmt: skip
    assert r.exit_code == 3, r.output
    assert f"::error file={encoded / 'rocket.jpg'},title=imgtune check::rocket" in r.stdout
    assert r.stdout.count("::error") == 1
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "5" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["rocket"]
    assert suite.find("properties/property[@name='level']").get("value") == "critical"


def test_check_passes_a_good_folder_and_warnings_do_not_fail(folders, tmp_path):
    originals, encoded = folders
    Image.open(originals / "rocket.png").save(encoded / "rocket.jpg", quality=95)
    r = runner.invoke(
        app, ["check", str(originals), str(encoded), "--fail", "ssimulacra2>=50", "--json"]
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["level"] == "ok" and len(result["pairs"]) == 5
    r = runner.invoke(app, ["check", str(originals), str(encoded), "--warn", "ssimulacra2>=99"])
    assert r.exit_code == 0 and "warning" in r.stderr
    r = runner.invoke(app, ["check", str(originals), str(encoded)])
    assert r.exit_code == 2 and "--warn and/or --fail" in r.stderr
