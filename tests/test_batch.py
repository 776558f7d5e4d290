"""`imgtune optimize` and `imgtune apply`: targets met on re-scoring, originals kept byte for
byte, resumable (a second run encodes nothing, a killed run resumes to the same result), bad
files skipped, NDJSON, reports, and memory that does not grow with the folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.assets import ASSETS_NAME
from optimizer.batch import run_folder
from optimizer.cli import app
from optimizer.image_job import Job
from optimizer.images import load
from optimizer.manifest import MANIFEST_NAME
from optimizer.metrics import MetricSuite
from optimizer.outcome import ExitCode
from optimizer.outdir import LOCK_NAME
from optimizer.predictor import QualityPredictor
from optimizer.recipe import Candidate
from optimizer.scoring import score_pair
from optimizer.targets import parse_target

from .conftest import ROOT, SAMPLES, thumbnails

runner = CliRunner()
TARGET = "ssimulacra2>=80"
#: imgtune's own files in OUT beside the outputs
OURS = (MANIFEST_NAME, LOCK_NAME, ASSETS_NAME)


def _ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt")
    src, out = root / "src", root / "out"
    shutil.copytree(SAMPLES, src, ignore=shutil.ignore_patterns("*.md"))
    # --no-learn: it starts from the shipped model whatever earlier tests stored, as the
    # tests' own runs (each in a fresh studies folder) do.
    r = runner.invoke(
        app,
        ["optimize", str(src), str(out), "--jobs", "1", "--json", "--device", "cpu", "--no-learn"],
    )
    lines = _ndjson(r.stdout)
    return src, out, r, lines


def test_every_written_output_meets_the_target_when_rescored(optimized):
    src, out, r, lines = optimized
    assert r.exit_code == 0, r.output
    images, summary = lines[:-1], lines[-1]
    assert summary["summary"] and summary["counts"]["written"] == len(images) == 8
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")  # fresh: nothing cached
    tgt = parse_target(TARGET)
    for rec in images:
        assert rec["status"] == "written" and rec["meets_target"]
        produced = out / rec["output"]
        assert produced.suffix == ".avif" or produced.suffix == ".webp"
        assert produced.stat().st_size == rec["output_bytes"] < rec["source_bytes"]
        result = score_pair(src / rec["source"], produced, suite, target=tgt)
        assert not result.missed, (rec["source"], result.scores.values)
        assert result.scores["ssimulacra2"] == pytest.approx(rec["scores"]["ssimulacra2"], abs=1e-3)
    assert summary["output_bytes"] == sum(r["output_bytes"] for r in images)


def test_encodes_per_image_is_reported_and_below_eight(optimized):
    _, _, r, lines = optimized
    summary = lines[-1]
    per_image = [rec["encodes"] for rec in lines[:-1]]
    assert summary["encodes_per_image"] == pytest.approx(sum(per_image) / len(per_image), abs=1e-3)
    # about half of them AVIF probes at speed 9, an eighth of a speed-6 encode's time each;
    # 5.9 with --probe-speed off (benchmarks/RESULTS.md, bench_optimize)
    assert summary["encodes_per_image"] < 8, per_image


def test_a_second_run_encodes_nothing(optimized):
    src, out, _, lines = optimized
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    r = runner.invoke(app, ["optimize", str(src), str(out), "--jobs", "2", "--json"])
    assert r.exit_code == 0, r.output
    again = _ndjson(r.stdout)
    assert {rec["status"] for rec in again[:-1]} == {"up_to_date"}
    assert (
        again[-1]["encodes_per_image"] == 0
        and again[-1]["output_bytes"] == lines[-1]["output_bytes"]
    )
    # (the lock file records each run's holder)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in OURS}
    assert after and all(after[p] == before[p] for p in after)  # no output rewritten


def test_a_killed_run_resumes_to_the_same_result(optimized, tmp_path):
    src, out_full, _, lines = optimized
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "optimizer", "optimize", str(src), str(out), "--jobs", "1"]
    cmd += ["--json", "--device", "cpu"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    for done, _line in enumerate(proc.stdout, 1):  # kill mid-way through the fourth image
        if done == 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = [p for p in out.rglob("*") if p.is_file() and p.name not in OURS]
    assert 3 <= len(finished) < 8
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    resumed = _ndjson(r.stdout)
    assert sum(rec["status"] == "up_to_date" for rec in resumed[:-1]) >= 3
    want = {p.relative_to(out_full): p.read_bytes() for p in out_full.rglob("*") if p.is_file()}
    got = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    want.pop(Path(MANIFEST_NAME))
    got.pop(Path(MANIFEST_NAME))
    assert got.keys() == want.keys()  # no .part files left, no stray outputs
    assert all(got[k] == want[k] for k in want), [k for k in want if got[k] != want[k]]


def _small_set(root: Path) -> Path:
    src = root / "src"
    (src / "nested dir é").mkdir(parents=True)
    Image.open(SAMPLES / "chelsea.png").save(src / "nested dir é" / "cat.png")
    Image.open(SAMPLES / "chelsea.png").convert("RGB").save(src / "cat.jpg", quality=95)
    # a 79-byte 1-bit PNG (a checkerboard) that no lossy encoder beats (lossless WebP does)
    checker = (np.indices((48, 48)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checker).convert("1").save(src / "flat.png", optimize=True)
    # an already small JPEG: matching its own pixels takes more bytes than it has
    Image.open(SAMPLES / "rocket.png").convert("RGB").save(src / "small.jpg", quality=20)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "notes.txt").write_text("ignored")
    return src


def test_bad_files_are_skipped_kept_originals_are_identical_and_names_do_not_collide(tmp_path):
    src = _small_set(tmp_path)
    out = tmp_path / "out"
    csv = tmp_path / "report.csv"
    r = runner.invoke(
        app, ["optimize", str(src), str(out), "--json", "--report", str(csv), "--jobs", "2"]
    )
    assert r.exit_code == ExitCode.PARTIAL, r.output  # one skipped file, the rest done
    recs = {rec["source"]: rec for rec in _ndjson(r.stdout)[:-1]}
    assert recs["broken.png"]["status"] == "skipped" and "broken.png" in r.stderr
    flat = recs["flat.png"]  # two colours: lossless tried after the lossy search, and smaller
    assert flat["status"] == "written" and flat["codec"] == "webp-lossless"
    assert flat["output"] == "flat.webp" and flat["output_bytes"] < flat["source_bytes"] == 79
    grey, back = load(src / "flat.png").pixels, load(out / "flat.webp").pixels  # WebP: RGB
    assert np.array_equal(np.broadcast_to(grey, back.shape), back)
    small = recs["small.jpg"]
    assert small["status"] == "kept" and small["meets_target"] and small["output"] == "small.jpg"
    assert (out / "small.jpg").read_bytes() == (src / "small.jpg").read_bytes()
    assert recs["nested dir é/cat.png"]["output"].startswith("nested dir é/cat.")
    assert recs["cat.jpg"]["output"].startswith("cat.")  # no clash with nested/cat
    import pandas as pd

    table = pd.read_csv(csv)
    assert set(table["source"]) == set(recs)
    assert {"source_bytes", "output_bytes", "ratio", "params", "encodes", "ssimulacra2"} <= set(
        table.columns
    )


def test_same_stem_in_one_folder_keeps_both(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.open(SAMPLES / "coffee.png").save(src / "a.png")
    Image.open(SAMPLES / "chelsea.png").convert("RGB").save(src / "a.jpg", quality=95)
    out = tmp_path / "out"
    r = runner.invoke(app, ["optimize", str(src), str(out), "--json", "--codecs", "webp"])
    assert r.exit_code == 0, r.output
    names = sorted(rec["output"] for rec in _ndjson(r.stdout)[:-1])
    assert names == ["a.jpg.webp", "a.png.webp"]


def test_unreachable_target_keeps_the_original_or_writes_flagged_best_effort(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.open(SAMPLES / "rocket.png").save(src / "rocket.png")
    common = ["--target", "ssimulacra2>=99.5", "--codecs", "webp", "--json"]
    r = runner.invoke(app, ["optimize", str(src), str(tmp_path / "o1"), *common])
    assert r.exit_code == ExitCode.TARGET_MISSED
    rec = _ndjson(r.stdout)[0]
    assert rec["status"] == "missed" and rec["meets_target"] is False
    assert (tmp_path / "o1" / "rocket.png").read_bytes() == (src / "rocket.png").read_bytes()
    assert not list((tmp_path / "o1").glob("*.webp"))  # nothing that misses is written
    r = runner.invoke(app, ["optimize", str(src), str(tmp_path / "o2"), *common, "--best-effort"])
    assert r.exit_code == ExitCode.TARGET_MISSED
    rec = _ndjson(r.stdout)[0]
    assert rec["status"] == "best_effort" and rec["output"] == "rocket.webp"
    assert (tmp_path / "o2" / "rocket.webp").stat().st_size == rec["output_bytes"]


def test_a_changed_target_redoes_outputs_and_removes_stale_ones(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.open(SAMPLES / "coffee.png").save(src / "coffee.png")
    out = tmp_path / "out"
    r1 = runner.invoke(app, ["optimize", str(src), str(out), "--codecs", "webp", "--json"])
    r2 = runner.invoke(
        app, ["optimize", str(src), str(out), "--codecs", "avif", "--json", "--quality", "low"]
    )
    a, b = _ndjson(r1.stdout)[0], _ndjson(r2.stdout)[0]
    assert a["status"] == b["status"] == "written"
    assert sorted(p.name for p in out.iterdir()) == sorted([*OURS, "coffee.avif"])
    assert b["scores"]["ssimulacra2"] >= 50 and b["output_bytes"] < a["output_bytes"]


def test_probe_speed_is_explained_checked_and_part_of_the_job(tmp_path):
    r = runner.invoke(app, ["optimize", "--help"], env={"COLUMNS": "200"})
    assert "--probe-speed" in r.output and "N|off" in r.output and "[default: 9]" in r.output
    src = thumbnails(tmp_path / "src", {"coffee.png": "coffee"})
    out = tmp_path / "out"
    for cmd in (["optimize", str(src), str(out)], ["apply", "p.json", str(src), str(out)]):
        r = runner.invoke(app, [*cmd, "--probe-speed", "fast"])
        assert r.exit_code == ExitCode.USAGE
        said = " ".join(r.output.replace("│", " ").split())  # the error box wraps lines
        assert "probe speed must be an AVIF speed 0-10 (10 fastest) or off, not 'fast'" in said
    assert not out.exists()  # refused before any work
    statuses = []
    for speed in ("off", "off", "9"):
        r = runner.invoke(
            app, ["optimize", str(src), str(out), "--codecs", "avif", "--json",
                  "--probe-speed", speed],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        statuses.append(_ndjson(r.stdout)[0]["status"])
    assert statuses == ["written", "up_to_date", "written"]  # another setting, another job


def test_an_up_to_date_image_teaches_the_predictor_what_it_taught_when_done(tmp_path):
    # The manifest keeps the qualities each image's searches found (at the probe speed, which
    # the written quality need not be) and the margin AVIF's own speed gained over it, so a
    # resumed run starts the next images as a fresh one does
    names = ("chelsea", "coffee", "rocket", "astronaut", "twins_cc0")
    src = thumbnails(tmp_path / "src", {f"{k}.png": n for k, n in enumerate(names)})
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    job = Job.optimize(parse_target(TARGET), ["avif", "webp"])
    fresh, resumed = QualityPredictor(), QualityPredictor()
    run_folder(src, tmp_path / "out", job, suite=suite, predictor=fresh)
    again = run_folder(src, tmp_path / "out", job, suite=suite, predictor=resumed)
    assert again.counts["up_to_date"] == len(names)
    assert fresh.history.keys() == {"avif", "webp"}
    assert resumed.history == fresh.history and resumed.wins == fresh.wins
    assert resumed.gains == fresh.gains and fresh.gains.keys() == {"avif"}


def test_output_inside_source_and_source_inside_output_are_refused(tmp_path):
    src = _small_set(tmp_path)
    r = runner.invoke(app, ["optimize", str(src), str(src / "out")])
    assert r.exit_code == ExitCode.USAGE and "must not be" in r.stderr
    # SRC inside OUT: a kept original mirrored to OUT/x could land on the source SRC/x.
    r = runner.invoke(app, ["optimize", str(src), str(tmp_path)])
    assert r.exit_code == ExitCode.USAGE and "source folder must not be inside" in r.stderr


def test_links_leading_out_of_src_are_skipped_by_name_unless_followed(tmp_path):
    src = thumbnails(tmp_path / "src", {"coffee.png": "coffee"})
    elsewhere = thumbnails(
        tmp_path / "elsewhere", {"chelsea.png": "chelsea", "photos/rocket.png": "rocket"}
    )
    (src / "cat.png").symlink_to(elsewhere / "chelsea.png")
    (src / "more").symlink_to(elsewhere / "photos")
    (src / "inside.png").symlink_to(src / "coffee.png")  # inside SRC: always followed
    out = tmp_path / "out"
    r = runner.invoke(app, ["optimize", str(src), str(out), "--json", "--device", "cpu"])
    assert r.exit_code == ExitCode.PARTIAL, r.output
    recs = {rec["source"]: rec for rec in _ndjson(r.stdout)[:-1]}
    assert set(recs) == {"cat.png", "coffee.png", "inside.png", "more"}
    for rel, target in (("cat.png", "chelsea.png"), ("more", "photos")):
        assert recs[rel]["status"] == "skipped" and "--follow-symlinks" in recs[rel]["error"]
        line = next(x for x in r.stderr.splitlines() if f"{rel}:" in x)
        assert "leads outside the source folder" in line and target in line
    assert recs["inside.png"]["status"] == recs["coffee.png"]["status"] == "written"
    assert not (out / "cat.avif").exists() and not (out / "more").exists()
    r = runner.invoke(
        app, ["optimize", str(src), str(out), "--json", "--device", "cpu", "--follow-symlinks"]
    )
    assert r.exit_code == 0, r.output
    assert (out / "cat.avif").is_file() and (out / "more" / "rocket.avif").is_file()


def _preset(tmp_path: Path, codec="webp", quality=70, target=TARGET) -> Path:
    preset = json.loads((ROOT / "tests" / "data" / "preset_webp.json").read_text())
    preset["params"]["codec"], preset["params"]["quality"] = codec, quality
    preset["target"]["spec"] = target
    p = tmp_path / "preset.json"
    p.write_text(json.dumps(preset))
    return p


def test_apply_reports_misses_and_refine_makes_each_image_just_pass(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("astronaut", "coffee", "rocket", "twins_cc0"):
        Image.open(SAMPLES / f"{name}.png").save(src / f"{name}.png")
    preset = _preset(tmp_path, quality=80)
    r = runner.invoke(app, ["apply", str(preset), str(src), str(tmp_path / "a"), "--json"])
    plain = {rec["source"]: rec for rec in _ndjson(r.stdout)[:-1]}
    assert {rec["quality"] for rec in plain.values()} == {80}
    assert all(rec["encodes"] == 1 for rec in plain.values())
    missed = [s for s, rec in plain.items() if rec["status"] == "missed"]
    assert r.exit_code == (ExitCode.TARGET_MISSED if missed else ExitCode.OK)
    for s in missed:  # reported by name; the original kept, nothing that misses written
        assert s in r.stderr
        assert (tmp_path / "a" / s).read_bytes() == (src / s).read_bytes()
    r = runner.invoke(
        app, ["apply", str(preset), str(src), str(tmp_path / "b"), "--json", "--refine"]
    )
    assert r.exit_code == 0, r.output
    refined = {rec["source"]: rec for rec in _ndjson(r.stdout)[:-1]}
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    tgt = parse_target(TARGET)
    for s, rec in refined.items():
        assert rec["status"] == "written" and rec["codec"] == "webp"
        assert not score_pair(src / s, tmp_path / "b" / rec["output"], suite, target=tgt).missed
    assert len({rec["quality"] for rec in refined.values()}) > 1  # adapted per image


def test_memory_does_not_grow_with_the_folder(tmp_path):
    # Apply (one encode per image) over 300 and then 1,500 tiny files: the peak of Python's
    # allocations (numpy included) stays flat. The per-file bookkeeping (paths, manifest
    # lines) is under 1 KB a file. tracemalloc counts every thread's allocations, and in a
    # full suite a thread an earlier test left winding down once added 8 MB to one run's
    # peak: a large peak is measured again on a folder of its own, and the smaller one kept.
    rng = np.random.default_rng(0)
    suite = MetricSuite.build(["psnr"], device="cpu")
    job = Job.apply(Candidate.make("webp", 80), parse_target("psnr>=10"))

    def peak(n: int, k: int) -> int:
        src = tmp_path / f"src{n}-{k}"
        src.mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                src / f"{i:05d}.png"
            )
        tracemalloc.start()
        summary = run_folder(src, tmp_path / f"out{n}-{k}", job, suite=suite, jobs=2)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert summary.counts["skipped"] == 0 and sum(summary.counts.values()) == n, summary
        return top

    small, large = peak(300, 0), peak(1500, 0)
    if large >= small + 1200 * 1024:
        large = min(large, peak(1500, 1))
    assert large < small + 1200 * 1024, (small, large)  # < 1 KB per extra file


def test_ctrl_c_stops_cleanly_with_whole_files_and_exit_130(optimized, tmp_path):
    src = optimized[0]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "optimizer", "optimize", str(src), str(out), "--jobs", "1"]
    proc = subprocess.Popen(
        [*cmd, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.readline()  # one image finished
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    summary = _ndjson(rest)[-1]
    assert summary["summary"] and summary["interrupted"] is True
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".part")]
    for p in files:
        if p.name not in OURS:
            Image.open(p).load()  # every output is a whole, decodable file


def test_a_codec_that_cannot_hold_the_image_is_not_offered_for_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    strip = np.repeat(rng.integers(60, 200, (17_000 // 50, 1, 3), dtype=np.uint8), 50, axis=0)
    Image.fromarray(np.repeat(strip, 16, axis=1)).save(src / "tall.png")  # 16 x 17,000
    Image.fromarray(np.zeros((33_000, 12, 3), np.uint8)).save(src / "taller.png")
    out = tmp_path / "out"
    r = runner.invoke(app, ["optimize", str(src), str(out), "--json", "--device", "cpu"])
    assert r.exit_code == ExitCode.PARTIAL, r.output
    recs = {rec["source"]: rec for rec in _ndjson(r.stdout)[:-1]}
    assert recs["tall.png"]["status"] in ("written", "kept")  # WebP's 16,383 px left it AVIF
    assert recs["tall.png"]["codec"] in (None, "avif")
    taller = recs["taller.png"]
    assert taller["status"] == "skipped" and "avif 32768, webp 16383 px" in taller["error"]
    assert "failed" not in r.stderr  # named limits, not a surprise
