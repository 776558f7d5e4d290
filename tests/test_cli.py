"""`imgtune score` through typer's runner: tables, JSON, CSV, problems and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.cli import app
from optimizer.outcome import ExitCode

from .conftest import SAMPLES

runner = CliRunner()
FREE = ["--metrics", "ssim,ms_ssim,psnr", "--device", "cpu"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    ref, out = root / "ref", root / "out"
    (ref / "sub").mkdir(parents=True)
    out.mkdir()
    for name in ("chelsea", "coffee", "graphic_text"):
        im = Image.open(SAMPLES / f"{name}.png")
        im.save(ref / f"{name}.png")
    Image.open(SAMPLES / "tiger_grayscale_cc0.png").save(ref / "sub" / "tiger.png")
    (out / "sub").mkdir()
    Image.open(ref / "chelsea.png").save(out / "chelsea.jpg", quality=30)
    Image.open(ref / "coffee.png").save(out / "coffee.webp", quality=90)
    Image.open(ref / "graphic_text.png").save(out / "graphic_text.jpg", quality=70)
    Image.open(ref / "sub" / "tiger.png").save(out / "sub" / "tiger.jpg", quality=60)
    (ref / "only_here.png").write_bytes((ref / "coffee.png").read_bytes())
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (ref / "broken.png").write_bytes((ref / "coffee.png").read_bytes())
    (ref / "notes.txt").write_text("not an image, ignored")
    return ref, out


def test_pair_table(folders):
    ref, out = folders
    r = runner.invoke(app, ["score", str(ref / "chelsea.png"), str(out / "chelsea.jpg"), *FREE])
    assert r.exit_code == 0, r.output
    for word in ("ssim_p5", "ms_ssim", "psnr", "composite", "level"):
        assert word in r.output


def test_pair_json_matches_python_api(folders):
    from optimizer.metrics import MetricSuite
    from optimizer.scoring import score_pair

    ref, out = folders
    r = runner.invoke(
        app, ["score", str(ref / "coffee.png"), str(out / "coffee.webp"), *FREE, "--json"]
    )
    assert r.exit_code == 0
    rec = json.loads(r.stdout)
    api = score_pair(
        ref / "coffee.png",
        out / "coffee.webp",
        MetricSuite.build(["ssim", "ms_ssim", "psnr"], device="cpu"),
    )
    assert rec["ssim"] == pytest.approx(api.scores["ssim"])
    assert rec["composite_weights"] == pytest.approx({"ssim": 0.75, "psnr": 0.25})
    assert rec["level"] == api.scores.level


def test_identical_pair_json_has_inf_psnr(folders):
    ref, _ = folders
    r = runner.invoke(
        app, ["score", str(ref / "coffee.png"), str(ref / "only_here.png"), *FREE, "--json"]
    )
    rec = json.loads(r.stdout)
    assert rec["psnr"] == "inf" and rec["composite"] == pytest.approx(1.0)


def test_target_missed_exit_code(folders):
    ref, out = folders
    r = runner.invoke(
        app,
        [
            "score",
            str(ref / "chelsea.png"),
            str(out / "chelsea.jpg"),
            *FREE,
            "--target",
            "ssim>=0.99",
        ],
    )
    assert r.exit_code == ExitCode.TARGET_MISSED
    assert "misses ssim>=0.99" in r.output


def test_bad_target_is_usage_error(folders):
    ref, out = folders
    r = runner.invoke(
        app,
        [
            "score",
            str(ref / "chelsea.png"),
            str(out / "chelsea.jpg"),
            *FREE,
            "--target",
            "ssim=>0.9",
        ],
    )
    assert r.exit_code == ExitCode.USAGE and "'ssim=>0.9'" in r.stderr


def test_unreadable_candidate_nothing_done(folders):
    ref, out = folders
    r = runner.invoke(app, ["score", str(ref / "broken.png"), str(out / "broken.png"), *FREE])
    assert r.exit_code == ExitCode.NOTHING_DONE
    assert "broken.png" in r.stderr and "not an image" in r.stderr


def test_folders_csv_ndjson_and_problems(folders, tmp_path):
    ref, out = folders
    csv = tmp_path / "report.csv"
    r = runner.invoke(app, ["score", str(ref), str(out), *FREE, "--json", "--csv", str(csv)])
    assert r.exit_code == ExitCode.PARTIAL, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    pairs = [x for x in lines if x["type"] == "pair"]
    problems = [x for x in lines if x["type"] == "problem"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["pairs"] == 4 == len(pairs)
    assert {p["name"] for p in pairs} == {"chelsea", "coffee", "graphic_text", "sub/tiger"}
    assert summary["skipped"] == 2 == len(problems)
    reasons = " ".join(p["reason"] for p in problems)
    assert "only_here.png: no counterpart" in reasons and "not an image" in reasons
    assert sum(summary["levels"].values()) == 4
    df = pd.read_csv(csv)
    assert len(df) == 4 and {"ssim", "ssim_p5", "ms_ssim", "psnr", "composite"} <= set(df.columns)
    worst = {m["metric"]: m["worst"] for m in summary["metrics"]}
    assert worst["ssim"] == pytest.approx(df["ssim"].min())


def test_folder_summary_table(folders):
    ref, out = folders
    r = runner.invoke(app, ["score", str(ref), str(out), *FREE, "--target", "composite>=0.85"])
    assert r.exit_code == ExitCode.TARGET_MISSED  # chelsea at quality 30 misses
    assert "4 pairs scored, 2 skipped" in r.stdout and "quality levels:" in r.stdout
    assert "met, " in r.stdout and "skipped:" in r.stderr


def test_all_pairs_fine_exit_zero(folders, tmp_path):
    ref, out = folders
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(ref / "coffee.png", a / "x.png")
    shutil.copy(out / "coffee.webp", b / "x.webp")
    r = runner.invoke(app, ["score", str(a), str(b), *FREE])
    assert r.exit_code == 0, r.output


def test_missing_weights_stop_before_any_work(folders, tmp_path):
    ref, out = folders
    r = runner.invoke(
        app,
        ["score", str(ref), str(out), "--device", "cpu"],
        env={"IMGTUNE_WEIGHTS": str(tmp_path)},
    )
    assert r.exit_code == ExitCode.NOTHING_DONE
    assert "alexnet-owt-7be5be79.pth" in r.stderr and "--metrics ssim,ms_ssim,psnr" in r.stderr
    assert "pairs scored" not in r.stdout


def test_lpips_with_weights_folder(folders, random_weights_dir):
    ref, out = folders
    r = runner.invoke(
        app,
        [
            "score",
            str(ref / "chelsea.png"),
            str(out / "chelsea.jpg"),
            "--device",
            "cpu",
            "--weights",
            str(random_weights_dir),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["lpips"] > 0 and "lpips_p95" in rec and "lpips_category" in rec
    assert rec["composite_weights"]["lpips"] == pytest.approx(3 / 7)


def test_mixed_file_and_folder_is_usage_error(folders):
    ref, out = folders
    r = runner.invoke(app, ["score", str(ref), str(out / "chelsea.jpg"), *FREE])
    assert r.exit_code == ExitCode.USAGE


def test_help_lists_exit_codes_and_is_torch_free():
    r = runner.invoke(app, ["score", "--help"])
    assert "Exit codes" in r.output
    code = (
        "import sys, optimizer.cli, optimizer.targets, optimizer.codecs, optimizer.transforms;"
        " print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_python_m_entry_point():
    res = subprocess.run(
        [sys.executable, "-m", "optimizer", "--version"], capture_output=True, text=True, check=True
    )
    assert res.stdout.startswith("imgtune ")


def test_ssimulacra2_in_score_json_composite_and_target(folders):
    ref, out = folders
    pair = [str(ref / "coffee.png"), str(out / "coffee.webp")]
    r = runner.invoke(
        app, ["score", *pair, "--metrics", "ssimulacra2", "--device", "cpu", "--json"]
    )
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert 50 < rec["ssimulacra2"] < 100
    assert rec["composite"] == pytest.approx(rec["ssimulacra2"] / 100, abs=1e-9)
    # A target on a metric --metrics left out is still judged on a measured value.
    common = ["score", *pair, "--metrics", "ssim", "--device", "cpu", "--json", "--target"]
    met = runner.invoke(app, [*common, f"ssimulacra2>={rec['ssimulacra2'] - 1:.2f}"])
    assert met.exit_code == 0, met.output
    assert json.loads(met.stdout)["ssimulacra2"] == pytest.approx(rec["ssimulacra2"], abs=1e-4)
    missed = runner.invoke(app, [*common, f"ssimulacra2>={rec['ssimulacra2'] + 1:.2f}"])
    assert missed.exit_code == ExitCode.TARGET_MISSED
