"""The per-image job (`optimize_image`) and the run's `QualityPredictor`, on their own."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest

from optimizer.image_job import Job, Status, optimize_image
from optimizer.metrics import MetricSuite
from optimizer.predictor import DEFAULT_START, DEFAULT_STEP, Prediction, QualityPredictor
from optimizer.recipe import Candidate
from optimizer.targets import parse_target

from .conftest import thumbnails

TARGET = parse_target("ssimulacra2>=70")


# ------------------------------------------------------------------------------- predictor


def test_predictor_starts_from_defaults_then_the_median_of_what_images_needed():
    p = QualityPredictor({"webp": 70})
    assert p.predict("avif") == (DEFAULT_START["avif"], DEFAULT_STEP)
    assert p.predict("webp") == (70, DEFAULT_STEP)  # a preset's start overrides the default
    assert p.predict("newcodec") == (75, DEFAULT_STEP)
    for q in (60, 64, 70, 52, 66):
        p.record("avif", q, won=True)
    # median 64; spread (quartiles 60..66) + 2 = 8
    assert p.predict("avif") == (64, 8)
    for q in (64,) * 20:
        p.record("avif", q, won=False)
    assert p.predict("avif") == (64, 3)  # all alike: the smallest step


def test_predictor_keeps_a_window_of_recent_images():
    p = QualityPredictor(window=3)
    for q in (10, 20, 90, 91, 92):
        p.record("webp", q, won=False)
    assert p.predict("webp")[0] == 91  # 10 and 20 fell out of the window


def test_predictor_orders_codecs_by_wins_and_snapshots_what_it_would_predict():
    p = QualityPredictor()
    p.record("webp", 80, won=True)
    p.record("webp", 82, won=True)
    p.record("avif", 60, won=True)
    snap = p.snapshot(["avif", "webp", "jpeg"])
    assert snap.order(["avif", "webp", "jpeg"]) == ["webp", "avif", "jpeg"]
    assert {c: snap.guess(c) for c in ("avif", "webp", "jpeg")} == {
        c: p.predict(c) for c in ("avif", "webp", "jpeg")
    }
    assert snap.seen == {"avif", "webp"}
    # a snapshot is plain data: it pickles, and later records do not change it
    again = pickle.loads(pickle.dumps(snap))
    p.record("jpeg", 50, won=True)
    assert again == snap and "jpeg" not in snap.seen


def test_predictor_records_from_many_threads_lose_nothing():
    p = QualityPredictor(window=10_000)

    def work(k: int) -> None:
        for i in range(500):
            p.record("avif", 40 + (i + k) % 20, won=i % 2 == 0)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(p.history["avif"]) == 4000 and p.wins["avif"] == 2000


# ------------------------------------------------------------------------------ image job


@pytest.fixture(scope="module")
def suite():
    return MetricSuite.build(["ssimulacra2"], device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = thumbnails(tmp_path_factory.mktemp("imgs"), {"c.png": "chelsea", "k.png": "coffee"})
    return [folder / "c.png", folder / "k.png"]


def test_optimize_image_finds_a_passing_output_and_reports_what_it_found(images, suite):
    job = Job.optimize(TARGET, ["webp", "avif"])
    r = optimize_image(images[0], job, suite=suite, prediction=Prediction(), name="a/x.png")
    o = r.outcome
    assert o.status == Status.WRITTEN and o.meets_target and o.scores["ssimulacra2"] >= 70
    assert o.source == "a/x.png" and o.output == f"a/x{'.avif' if o.codec == 'avif' else '.webp'}"
    assert r.winner == o.codec and r.found[o.codec] == o.quality
    assert len(r.payload) == o.output_bytes < o.source_bytes
    assert o.encodes >= 2


def test_optimize_image_applies_a_recipe_as_is_without_search(images, suite):
    recipe = Candidate.make("webp", 90)
    job = Job.apply(recipe, parse_target("ssimulacra2>=10"))
    r = optimize_image(images[1], job, suite=suite, prediction=Prediction())
    assert r.outcome.status == Status.WRITTEN and r.outcome.quality == 90
    assert r.outcome.encodes == 1 and r.found == {"webp": 90}


def test_optimize_image_names_an_unreadable_file(tmp_path, suite):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    job = Job.optimize(TARGET, ["webp"])
    r = optimize_image(bad, job, suite=suite, prediction=Prediction())
    assert r.outcome.status == Status.SKIPPED and str(bad) in r.outcome.error
    assert r.payload is None and r.found == {}


def test_optimize_image_runs_in_another_process_with_the_same_result(images, suite):
    """Inputs and outputs pickle: the job can be shipped to another process (or machine)."""
    job = Job.optimize(TARGET, ["webp"], tolerance=2)
    prediction = QualityPredictor({"webp": 60}).snapshot(["webp"])
    here = optimize_image(images[0], job, suite=suite, prediction=prediction)
    ctx = multiprocessing.get_context("spawn")  # nothing inherited: all it has is pickled
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        there = pool.submit(
            optimize_image, images[0], job, suite=suite, prediction=prediction
        ).result()
    assert there.outcome == here.outcome and there.payload == here.payload
    assert there.found == here.found and there.winner == here.winner


def test_the_job_key_ignores_how_sources_are_read_but_not_what_is_made(suite):
    a = Job.optimize(TARGET, ["webp"])
    spec = suite.describe()
    assert a.key(spec) == Job.optimize(TARGET, ["webp"], max_pixels=1000).key(spec)
    assert a.key(spec) != Job.optimize(TARGET, ["webp"], tolerance=2).key(spec)
    assert a.key(spec) != Job.optimize(TARGET, ["avif"]).key(spec)
