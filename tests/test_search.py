"""tune: presets that meet the target, optimality on a small grid, resume, cache, early stop."""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.cli import app
from optimizer.codecs import EncodeSettings, decode, encode
from optimizer.images import load
from optimizer.metrics import MetricSuite
from optimizer.outcome import ExitCode
from optimizer.recipe import Candidate
from optimizer.search import ImageSet, SearchSpace, evaluate
from optimizer.study import StudyMismatchError, run_study
from optimizer.targets import parse_target

from .conftest import SAMPLES

#: these tests were written for (and exercise) Optuna's own sampling of every dimension
tpe_study = functools.partial(run_study, strategy="tpe")

TARGET = parse_target("ssim>=0.95,ssim_p5>=0.85")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Four 96x96 crops of different content: fast, and still disagreeing about quality."""
    d = tmp_path_factory.mktemp("set")
    for name, box in [
        ("chelsea", (150, 60)),
        ("graphic_text", (20, 60)),
        ("coffee", (250, 120)),
        ("tiger_grayscale_cc0", (200, 200)),
    ]:
        im = Image.open(SAMPLES / f"{name}.png")
        im.crop((*box, box[0] + 96, box[1] + 96)).save(d / f"{name}.png")
    return d


@pytest.fixture(scope="module")
def suite():
    return MetricSuite.build(["ssim"], device="cpu")


def _images(folder, suite, **kw):
    return ImageSet([load(p) for p in sorted(folder.glob("*.png"))], suite, **kw)


def test_preset_reencoded_independently_meets_target(small_set, suite, tmp_path):
    images = _images(small_set, suite)
    space = SearchSpace.default(["jpeg", "webp"], resized=False)
    result = tpe_study(images, TARGET, space, trials=25, seed=3)
    assert result.best is not None and result.best.feasible
    cand = result.best.candidate
    fresh = MetricSuite.build(["ssim"], device="cpu")  # nothing shared with the search
    total = 0
    for p in sorted(small_set.glob("*.png")):
        src = load(p)
        from optimizer.transforms import apply

        px = apply(src.pixels, sharpen=cand.sharpen)
        data = encode(px, EncodeSettings.make(cand.codec, cand.quality, **dict(cand.options)))
        total += len(data)
        scores = fresh.score_pair(src.pixels, decode(data, channels=src.channels))
        assert TARGET.met(scores.values), (p.name, scores.values)
    assert total == result.best.total_bytes


# A small space (two codecs, no resize, sharpening fixed) small enough to search exhaustively.
GRID_SPACE = SearchSpace(
    codecs=("jpeg", "webp"),
    quality={"jpeg": (89, 96), "webp": (89, 96)},
    filters=None,
    sharpen=None,
    options={"jpeg": {"subsampling": ("4:4:4",)}, "webp": {"method": (4,)}},
)


def _smallest_feasible_on_grid(images) -> float:
    """The exhaustive oracle over GRID_SPACE, run inside the test."""
    grid = []
    for codec, q in itertools.product(GRID_SPACE.codecs, range(89, 97)):
        opts = {"subsampling": "4:4:4"} if codec == "jpeg" else {"method": 4}
        cand = Candidate(codec, q, None, 1.0, EncodeSettings.make(codec, q, **opts).options)
        ev = evaluate(images, cand, TARGET, stop_early=False)
        if ev.feasible:
            grid.append(ev.total_bytes)
    assert grid, "the test grid must contain feasible points"
    return min(grid)


@pytest.mark.parametrize(("strategy", "trials"), [("tpe", 40), ("bisect", 6)])
def test_best_is_no_larger_than_any_feasible_grid_point(small_set, suite, strategy, trials):
    images = _images(small_set, suite)
    result = tpe_study(images, TARGET, GRID_SPACE, trials=trials, seed=0, strategy=strategy)
    assert result.best is not None
    assert result.best.total_bytes <= _smallest_feasible_on_grid(images)


def test_cache_hit_reencodes_nothing(small_set, suite):
    images = _images(small_set, suite)
    cand = Candidate("webp", 80, None, 1.0, EncodeSettings.make("webp", 80).options)
    a = evaluate(images, cand, TARGET, stop_early=False)
    encodes, hits = images.encodes, images.cache_hits
    b = evaluate(images, cand, TARGET, stop_early=False)
    assert images.encodes == encodes and images.cache_hits == hits + len(images.items)
    assert a.per_image == b.per_image


def test_early_termination_happens_and_keeps_the_answer(small_set, suite):
    images = _images(small_set, suite)
    for q in (30, 50, 70, 90):
        cand = Candidate("jpeg", q, None, 1.0, EncodeSettings.make("jpeg", q).options)
        full = evaluate(images, cand, TARGET, stop_early=False)
        before = images.encodes
        fresh = _images(small_set, suite)
        early = evaluate(fresh, cand, TARGET)
        assert early.feasible == full.feasible
        if not full.feasible:
            assert fresh.encodes < len(images.items)  # stopped at the first miss
        else:
            assert early.total_bytes == full.total_bytes
        assert images.encodes == before
    # a running total above the best feasible total is pruned
    cand = Candidate("jpeg", 95, None, 1.0, EncodeSettings.make("jpeg", 95).options)
    pruned = evaluate(_images(small_set, suite), cand, TARGET, best_total=1000)
    assert pruned.pruned and not pruned.feasible


def test_resume_adds_trials_and_mismatch_is_an_error(small_set, suite, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = SearchSpace.default(["webp"], resized=False, sharpen=False)
    r1 = tpe_study(
        _images(small_set, suite), TARGET, space, trials=5, seed=1, storage=storage, study_name="s"
    )
    r2 = tpe_study(
        _images(small_set, suite), TARGET, space, trials=4, seed=1, storage=storage, study_name="s"
    )
    assert (r1.trials, r2.trials) == (5, 9)
    with pytest.raises(StudyMismatchError, match="target"):
        tpe_study(
            _images(small_set, suite),
            parse_target("ssim>=0.9"),
            space,
            trials=1,
            storage=storage,
            study_name="s",
        )
    r3 = tpe_study(
        _images(small_set, suite),
        parse_target("ssim>=0.9"),
        space,
        trials=2,
        storage=storage,
        study_name="s",
        new_study=True,
    )
    assert r3.trials == 2


def test_alpha_images_are_not_offered_jpeg(suite, tmp_path):
    d = tmp_path / "alpha"
    d.mkdir()
    Image.open(SAMPLES / "portrait_alpha_cc0.png").crop((150, 100, 246, 196)).save(d / "a.png")
    images = _images(d, suite)
    with pytest.raises(ValueError, match="JPEG needs a background"):
        tpe_study(images, TARGET, SearchSpace.default(["jpeg", "webp"], resized=False), trials=1)
    r = CliRunner().invoke(
        app,
        [
            "tune",
            str(d),
            "--target",
            "ssim>=0.9",
            "--trials",
            "3",
            "--strategy",
            "bisect",
            "--seed",
            "0",
            "--storage",
            f"sqlite:///{tmp_path / 'a.db'}",
            "--preset-out",
            str(tmp_path / "p.json"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "JPEG is not offered" in r.stderr
    assert json.loads((tmp_path / "p.json").read_text())["params"]["codec"] != "jpeg"


def test_cli_tune_writes_preset_outputs_and_csv(small_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "tune",
            str(small_set),
            "--target",
            "ssim>=0.95",
            "--trials",
            "8",
            "--seed",
            "2",
            "--out",
            str(out),
            "--codecs",
            "jpeg,webp",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    preset = json.loads((tmp_path / summary["preset"]).read_text())
    assert preset["schema"] == 1 and preset["target"]["spec"] == "ssim>=0.95"
    assert preset["achieved"]["quality"]["ssim"]["worst"] >= 0.95
    assert {i["name"] for i in preset["images"]} == {p.name for p in small_set.glob("*.png")}
    assert sum(o["bytes"] for o in summary["outputs"]) <= summary["total_bytes"]
    for o in summary["outputs"]:
        assert (tmp_path / o["output"]).is_file()  # absolute, or relative to the cwd
    assert list(Path(os.environ["IMGTUNE_STUDIES"]).glob("*.trials.csv"))  # conftest's
    src_sizes = {p.name: p.stat().st_size for p in small_set.glob("*.png")}
    assert all(o["bytes"] <= src_sizes[o["name"]] for o in summary["outputs"])


def test_cli_infeasible_target_exit_3_and_no_preset(small_set, tmp_path):
    preset = tmp_path / "p.json"
    r = CliRunner().invoke(
        app,
        [
            "tune",
            str(small_set),
            "--target",
            "ssim>=0.99999",
            "--trials",
            "3",
            "--codecs",
            "jpeg",
            "--device",
            "cpu",
            "--storage",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--preset-out",
            str(preset),
        ],
    )
    assert r.exit_code == ExitCode.TARGET_MISSED
    assert "no recipe met the target" in r.stderr and "closest" in r.stderr
    assert not preset.exists()


def test_cli_malformed_target_and_level(small_set):
    r = CliRunner().invoke(app, ["tune", str(small_set), "--target", "ssim>>0.9"])
    assert r.exit_code == ExitCode.USAGE and "'ssim>>0.9'" in r.stderr
    r = CliRunner().invoke(app, ["tune", str(small_set), "--quality", "ultra"])
    assert r.exit_code == ExitCode.USAGE and "lossless-looking" in r.stderr


def test_resized_set_scores_against_lanczos_reference(small_set, suite):
    images = _images(small_set, suite, max_width=48)
    assert images.resized
    space = SearchSpace.default(["webp"], resized=images.resized)
    assert space.filters is not None and "lanczos" in space.filters
    cand = Candidate("webp", 90, "nearest", 1.0, EncodeSettings.make("webp", 90).options)
    ev = evaluate(images, cand, parse_target("ssim>=0.1"), stop_early=False)
    assert all(np.isfinite(v["ssim"]) for v in ev.per_image.values())
    assert SearchSpace.default(["webp"], resized=False).filters is None


@pytest.mark.parametrize(
    ("codec", "opts"), [("jpeg", {"subsampling": "4:4:4"}), ("webp", {"method": 4}), ("avif", {})]
)
def test_bisect_finds_the_lowest_feasible_quality(small_set, suite, codec, opts):
    from optimizer.search import bisect_quality

    images = _images(small_set, suite)

    def cand(q):
        return Candidate(codec, q, None, 1.0, EncodeSettings.make(codec, q, **opts).options)

    before = images.encodes
    ev = bisect_quality(images, cand(100), TARGET, bounds=(40, 100))
    probes = images.encodes - before
    scan = [
        q for q in range(40, 101) if evaluate(images, cand(q), TARGET, stop_early=False).feasible
    ]
    assert ev.feasible and ev.candidate.quality == min(scan)
    assert probes < 61 * len(images.items) / 4  # far fewer encodes than scanning


def test_bisect_reports_infeasible_top(small_set, suite):
    from optimizer.search import bisect_quality

    images = _images(small_set, suite)
    c = Candidate("jpeg", 60, None, 1.0, EncodeSettings.make("jpeg", 60).options)
    ev = bisect_quality(images, c, parse_target("ssim>=0.99999"), bounds=(30, 60))
    assert not ev.feasible and ev.candidate.quality == 60


def test_unknown_strategy_is_refused(small_set, suite):
    with pytest.raises(ValueError, match="bisect, tpe"):
        tpe_study(_images(small_set, suite), TARGET, GRID_SPACE, trials=1, strategy="anneal")


def test_cli_strategy_ranges_and_bad_range(small_set, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "tune",
            str(small_set),
            "--target",
            "ssim>=0.95",
            "--strategy",
            "bisect",
            "--trials",
            "3",
            "--codecs",
            "webp",
            "--quality-range",
            "webp=60-99",
            "--device",
            "cpu",
            "--storage",
            f"sqlite:///{tmp_path / 'b.db'}",
            "--preset-out",
            str(tmp_path / "b.json"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    q = json.loads(r.stdout)["params"]["quality"]
    assert 60 <= q <= 99
    r = CliRunner().invoke(
        app, ["tune", str(small_set), "--codecs", "webp", "--quality-range", "webp=90-40"]
    )
    assert r.exit_code == ExitCode.USAGE and "'webp=90-40'" in r.stderr
    r = CliRunner().invoke(
        app,
        [
            "tune",
            str(small_set),
            "--strategy",
            "anneal",
            "--trials",
            "1",
            "--storage",
            f"sqlite:///{tmp_path / 'c.db'}",
        ],
    )
    assert r.exit_code == ExitCode.USAGE and "bisect, tpe" in r.stderr


def test_parallel_jobs_share_the_cache_safely(small_set, suite):
    images = _images(small_set, suite)
    space = SearchSpace.default(["jpeg", "webp"], resized=False, sharpen=False)
    # Threads interleave, so the trial sequence is not repeatable: use a target every recipe
    # in the space meets, and check the shared bookkeeping instead.
    result = tpe_study(images, parse_target("ssim>=0.5"), space, trials=12, seed=0, jobs=2)
    assert result.trials == 12 and result.best is not None and result.best.feasible
    # every (image, recipe) pair was encoded at most once across the threads
    assert images.encodes == len(images.cache) and result.encodes <= len(images.cache)


def test_interrupt_keeps_finished_trials_and_resumes(small_set, suite, tmp_path):
    storage = f"sqlite:///{tmp_path / 'i.db'}"
    space = SearchSpace.default(["webp"], resized=False, sharpen=False)
    seen = []

    def ctrl_c_on_third(ev):
        seen.append(ev)
        if len(seen) == 3:
            raise KeyboardInterrupt

    r = tpe_study(
        _images(small_set, suite),
        TARGET,
        space,
        trials=10,
        seed=0,
        storage=storage,
        study_name="i",
        on_trial=ctrl_c_on_third,
    )
    assert r.interrupted
    import optuna

    study = optuna.load_study(study_name="i", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2  # the two finished trials survive the interrupt
    r2 = tpe_study(
        _images(small_set, suite), TARGET, space, trials=3, seed=0, storage=storage, study_name="i"
    )
    assert not r2.interrupted and r2.trials == r.trials + 3


def test_disk_cache_serves_a_later_run_and_respects_the_metric_spec(small_set, suite, tmp_path):
    db = tmp_path / "scores.sqlite"
    cand = Candidate("webp", 77, None, 1.0, EncodeSettings.make("webp", 77).options)
    first = _images(small_set, suite, cache_path=db)
    a = evaluate(first, cand, TARGET, stop_early=False)
    assert first.encodes == len(first.items)
    later = _images(small_set, MetricSuite.build(["ssim"], device="cpu"), cache_path=db)
    b = evaluate(later, cand, TARGET, stop_early=False)
    assert later.encodes == 0 and later.cache_hits == len(later.items)
    assert a.per_image == b.per_image
    other_metrics = _images(
        small_set, MetricSuite.build(["ssim", "psnr"], device="cpu"), cache_path=db
    )
    evaluate(other_metrics, cand, TARGET, stop_early=False)
    assert other_metrics.encodes == len(other_metrics.items)  # another spec: no stale scores
    resized = _images(small_set, suite, cache_path=db, max_width=64)
    evaluate(resized, Candidate("webp", 77, "lanczos", 1.0, cand.options), TARGET, stop_early=False)
    assert resized.encodes == len(resized.items)


def test_a_damaged_or_foreign_cache_row_is_a_miss_never_a_pass(small_set, suite, tmp_path):
    import sqlite3

    db = tmp_path / "scores.sqlite"
    cand = Candidate("webp", 77, None, 1.0, EncodeSettings.make("webp", 77).options)
    first = _images(small_set, suite, cache_path=db)
    a = evaluate(first, cand, TARGET, stop_early=False)
    con = sqlite3.connect(db)
    keys = [k for (k,) in con.execute("SELECT key FROM scores ORDER BY key")]
    assert len(keys) == 4
    damage = [
        ("scores", '{"ssim": 1.0}'),  # another suite's outputs: a pass it never scored
        ("scores", "not json"),
        ("scores", "[" * 10_000 + "]" * 10_000),
        ("bytes", -5),
    ]
    for key, (column, value) in zip(keys, damage, strict=True):
        con.execute(f"UPDATE scores SET {column} = ? WHERE key = ?", (value, key))
    con.commit()
    con.close()
    later = _images(small_set, suite, cache_path=db)
    b = evaluate(later, cand, TARGET, stop_early=False)
    assert later.encodes == 4 and later.cache_hits == 0  # every damaged row rescored
    assert b.per_image == a.per_image


def test_cli_tune_out_mirrors_the_tree_and_refuses_a_folder_inside_the_set(
    small_set, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    tree = tmp_path / "tree"
    shutil.copytree(small_set, tree / "sub")
    shutil.copy(small_set / "coffee.png", tree / "coffee.png")  # the same name, two folders
    args = ["tune", str(tree), "--target", "ssim>=0.5", "--trials", "2", "--strategy", "tpe"]
    args += ["--codecs", "webp", "--device", "cpu", "--json"]
    r = CliRunner().invoke(app, [*args, "--out", str(tree / "sub" / "out")])
    assert r.exit_code == ExitCode.USAGE and "must not be" in r.stderr, r.output
    assert not (tmp_path / "studies").exists()  # refused before any work
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("[!.]*") if p.is_file())
    assert "coffee.webp" in written and "sub/coffee.webp" in written and len(written) == 5


def test_seed_makes_the_study_repeatable(small_set, suite):
    space = SearchSpace.default(["jpeg", "webp"], resized=False)
    runs = [tpe_study(_images(small_set, suite), TARGET, space, trials=8, seed=7) for _ in range(2)]
    assert runs[0].best.candidate == runs[1].best.candidate
    a = [t.params for t in runs[0].study.trials]
    assert a == [t.params for t in runs[1].study.trials]


def test_cli_reports_codecs_and_writes_trials_csv_with_custom_storage(
    small_set, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        app,
        [
            "tune",
            str(small_set),
            "--target",
            "ssim>=0.9",
            "--trials",
            "3",
            "--strategy",
            "bisect",
            "--seed",
            "0",
            "--storage",
            f"sqlite:///{tmp_path / 'elsewhere.db'}",
            "--study-name",
            "mine",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert {"jpeg", "webp", "avif"} <= set(s["codecs_available"])
    assert "jxl" not in s["codecs_searched"]  # only on request
    assert (Path(os.environ["IMGTUNE_STUDIES"]) / "mine.trials.csv").is_file()  # conftest's
