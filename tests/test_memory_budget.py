"""Folder jobs admit images by pixels: what is in flight fits the memory budget."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from optimizer import batch
from optimizer.api import memory_budget
from optimizer.batch import WORKING_SET_PER_PIXEL, run_folder
from optimizer.image_job import Job
from optimizer.metrics import MetricSuite
from optimizer.recipe import Candidate
from optimizer.targets import parse_target

from .conftest import SAMPLES


def _folder(tmp_path, sizes):
    src = tmp_path / "src"
    src.mkdir()
    photo = Image.open(SAMPLES / "chelsea.png").convert("RGB")
    for i, side in enumerate(sizes):
        photo.resize((side, side)).save(src / f"{i:02d}.png")
    return src


def _counting(monkeypatch):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "alone": None, "running": 0}
    real = batch.optimize_image

    def counted(path, job, **kw):
        w, h = Image.open(path).size
        with lock:
            state["now"] += w * h
            state["running"] += 1
            state["peak"] = max(state["peak"], state["now"])
            if w * h > 4096:
                state["alone"] = state["running"] == 1
            else:
                state["small_peak"] = max(state.get("small_peak", 0), state["now"])
        time.sleep(0.05)  # long enough for the others to be admitted if they would be
        try:
            return real(path, job, **kw)
        finally:
            with lock:
                state["now"] -= w * h
                state["running"] -= 1

    monkeypatch.setattr(batch, "optimize_image", counted)
    return state


def test_in_flight_pixels_stay_inside_the_budget_and_a_big_image_runs_alone(tmp_path, monkeypatch):
    sizes = [64] * 6 + [160] + [64] * 5  # 4,096 px each, and one of 25,600 px
    src = _folder(tmp_path, sizes)
    state = _counting(monkeypatch)
    suite = MetricSuite.build(["psnr"], device="cpu")
    job = Job.apply(Candidate.make("webp", 80), parse_target("psnr>=10"))
    budget = 2 * 4096 * WORKING_SET_PER_PIXEL  # two small images at a time
    summary = run_folder(src, tmp_path / "out", job, suite=suite, jobs=4, memory=budget)
    assert summary.counts["written"] == len(sizes)
    assert state["small_peak"] == 2 * 4096  # two at a time, never three
    assert state["alone"] is True  # larger than the budget: admitted only with nothing else
    assert state["peak"] == 160 * 160
    # without a budget the same run has more in flight
    state.update(now=0, peak=0, small_peak=0)
    run_folder(src, tmp_path / "out2", job, suite=suite, jobs=4)
    assert state["small_peak"] > 2 * 4096


def test_a_metric_with_large_feature_maps_counts_in_the_budget(tmp_path, monkeypatch):
    """DISTS declares 1.7 KB a pixel (VGG16's maps); a metric that doubles the working set
    halves what the same budget admits."""
    from optimizer.metrics.dists_metric import DISTS
    from optimizer.metrics.psnr import PSNR

    assert DISTS.working_set_per_pixel > 10 * WORKING_SET_PER_PIXEL

    class Heavy(PSNR):
        working_set_per_pixel = WORKING_SET_PER_PIXEL

    src = _folder(tmp_path, [64] * 6)
    state = _counting(monkeypatch)
    suite = MetricSuite([Heavy("cpu")], device="cpu")
    assert suite.working_set_per_pixel == WORKING_SET_PER_PIXEL
    job = Job.apply(Candidate.make("webp", 80), parse_target("psnr>=10"))
    budget = 2 * 4096 * WORKING_SET_PER_PIXEL  # two light images, or one heavy one
    summary = run_folder(src, tmp_path / "out", job, suite=suite, jobs=4, memory=budget)
    assert summary.counts["written"] == 6
    assert state["small_peak"] == 4096


@pytest.mark.parametrize(
    "text, expected",
    [("8G", 8 << 30), ("500M", 500 << 20), ("1.5K", 1536), (4096, 4096), ("off", None)],
)
def test_memory_budget_reads_sizes(text, expected):
    assert memory_budget(text) == expected


@pytest.mark.parametrize("bad", ["x", "0", "-1G", "8X", 0])
def test_a_bad_memory_budget_is_a_usage_error(bad):
    from optimizer.errors import UsageError

    with pytest.raises(UsageError, match="memory"):
        memory_budget(bad)


def test_the_default_budget_is_half_the_ram():
    import psutil

    assert memory_budget(None) == psutil.virtual_memory().total // 2
