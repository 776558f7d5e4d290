"""`optimize --max-bytes`: outputs under a byte budget, the highest-scoring encode found under it
(checked against a scan of every quality), with or without a target; a budget nothing meets is
reported per image. Real encoders, small images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer import api
from optimizer.cli import app
from optimizer.codecs import decode, encode
from optimizer.errors import UsageError
from optimizer.metrics import MetricSuite
from optimizer.recipe import Candidate

from .conftest import thumbnails

runner = CliRunner()


def _run(src, out, *args: str) -> list[dict]:
    r = runner.invoke(
        app, ["optimize", str(src), str(out), "--codecs", "avif,webp", "--json", *args]
    )
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines and lines[-1].get("summary"), r.output
    return lines[:-1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    src = thumbnails(root / "src", {"a.png": "coffee"}, side=96)
    return root, src


def test_parse_bytes_units():
    assert api.parse_bytes("150KB") == 150_000 and api.parse_bytes("150 KiB") == 153_600
    assert api.parse_bytes("1.5MB") == 1_500_000 and api.parse_bytes(2048) == 2048
    for bad in ("150XB", "-3", "KB", "0"):
        with pytest.raises(UsageError, match="--max-bytes"):
            api.parse_bytes(bad)


def test_alone_it_writes_the_highest_scoring_encode_under_the_budget(photo):
    root, src = photo
    budget = 1500
    [o] = _run(src, root / "alone", "--max-bytes", str(budget))
    assert o["status"] == "written" and o["meets_target"] is None
    assert o["output_bytes"] <= budget == 1500
    assert (root / "alone" / o["output"]).stat().st_size == o["output_bytes"]
    # The scan: every quality of both codecs; the ten highest that fit in each are scored (a
    # lower quality scores lower: dips span a step or two), and the best of them is the answer.
    px = np.asarray(Image.open(src / "a.png").convert("RGB"))
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    best = -np.inf
    for codec in ("avif", "webp"):
        files = [encode(px, Candidate.make(codec, q).settings()) for q in range(0, 101)]
        fit = [data for data in files if len(data) <= budget]
        for data in fit[-10:]:
            got = decode(data, channels=3)
            best = max(best, suite.score_pair(px, got).values["ssimulacra2"])
    assert np.isfinite(best)
    # what the bisection found is the scan's best (within a JPEG-like dip's worth)
    assert o["scores"]["ssimulacra2"] >= best - 0.5, (o, best)


def test_a_source_that_fits_is_the_best_there_is(photo):
    root, src = photo
    size = (src / "a.png").stat().st_size
    [o] = _run(src, root / "fits", "--max-bytes", str(size + 10))
    assert o["status"] == "kept" and o["output_bytes"] == size


def test_with_a_target_the_passing_file_if_it_fits_else_the_best_under_flagged(photo):
    root, src = photo
    [free] = _run(src, root / "t0", "--target", "ssimulacra2>=70")
    [roomy] = _run(src, root / "t1", "--target", "ssimulacra2>=70", "--max-bytes", "100KB")
    assert roomy["status"] == free["status"] == "written"
    assert roomy["output_bytes"] == free["output_bytes"]  # the budget changes nothing
    tight = free["output_bytes"] // 2
    [o] = _run(src, root / "t2", "--target", "ssimulacra2>=70", "--max-bytes", str(tight))
    assert o["status"] == "best_effort" and o["meets_target"] is False
    assert o["output_bytes"] <= tight and o["scores"]["ssimulacra2"] < 70
    assert f"fits in {tight:,} bytes" in o["error"] and "a.png" in o["error"]


def test_a_budget_nothing_meets_keeps_the_source_or_writes_the_smallest(photo):
    root, src = photo
    [o] = _run(src, root / "n0", "--max-bytes", "40")
    assert o["status"] == "missed" and o["output"] == "a.png"
    assert "no avif/webp encode fits in 40 bytes" in o["error"]
    assert (root / "n0" / "a.png").read_bytes() == (src / "a.png").read_bytes()
    [e] = _run(src, root / "n1", "--max-bytes", "40", "--best-effort")
    assert e["status"] == "best_effort" and e["output_bytes"] > 40
    assert e["output_bytes"] == int(
        e["error"].split("the smallest is ")[1].split(" ")[0].replace(",", "")
    )
