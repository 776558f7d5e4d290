"""The per-image job (`optimize_image`) and the run's `QualityPredictor`, on their own."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import pytest

from optimizer import codecs
from optimizer.codecs import quality_grid
from optimizer.errors import UsageError
from optimizer.image_job import FLAT, Job, Status, optimize_image
from optimizer.image_search import ImageSearch
from optimizer.images import load
from optimizer.metrics import MetricSuite
from optimizer.predictor import DEFAULT_START, DEFAULT_STEP, Prediction, QualityPredictor
from optimizer.probe_speed import DEFAULT_PROBE_SPEED
from optimizer.probe_speed import parse as parse_probe_speed
from optimizer.quality_search import cannot_win, lowest_passing
from optimizer.recipe import Candidate
from optimizer.search import ImageSet
from optimizer.targets import parse_target

from .conftest import SAMPLES, thumbnails

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


def test_predictor_learns_the_margin_the_recipe_speed_gains_over_the_probe_speed():
    p = QualityPredictor()
    p.record("avif", 70, won=True)  # no gain known (probe speed off, or not AVIF)
    assert p.snapshot(["avif"]).gains == {}
    for g in (0.01, 0.004, 0.02):
        p.record("avif", 70, won=True, gain=g)
    assert p.snapshot(["avif", "webp"]).gains == {"avif": 0.004}  # the lower quartile
    assert p.snapshot(["webp"]).gains == {}


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


# ----------------------------------------------------------------------------- probe speed


def _scored(monkeypatch, *, fail_speed: int | None = None) -> list[Candidate]:
    """Every candidate scored, in order; with `fail_speed`, those at that AVIF speed are made
    to miss the target (to reach the path where the confirming encode fails)."""
    seen: list[Candidate] = []
    real = ImageSet.score

    def score(self, idx, cand):
        seen.append(cand)
        nbytes, values = real(self, idx, cand)
        if dict(cand.options).get("speed") == fail_speed:
            values = {**values, "ssimulacra2": 0.0}
        return nbytes, values

    monkeypatch.setattr(ImageSet, "score", score)
    return seen


def _reencoded(path, params: dict) -> bytes:
    """The output's recorded params, encoded again from the source."""
    return codecs.encode(load(path).pixels, Candidate.from_dict(params).settings())


def test_avif_is_searched_fast_and_written_at_its_own_speed_when_that_passes_no_larger(
    images, suite, monkeypatch
):
    seen = _scored(monkeypatch)
    job = Job.optimize(TARGET, ["avif"])
    assert job.probe_speed == DEFAULT_PROBE_SPEED == 9
    fresh = MetricSuite.build(["ssimulacra2"], device="cpu")
    for path in images:
        first = optimize_image(path, job, suite=suite, prediction=Prediction())
        learnt = Prediction(gains={"avif": first.gains["avif"]})  # what a run learns from it
        for prediction in (Prediction(), learnt):
            seen.clear()
            r = optimize_image(path, job, suite=suite, prediction=prediction)
            o, found = r.outcome, r.found["avif"]  # found at the probe speed: for the predictor
            speeds = [dict(c.options)["speed"] for c in seen]
            k = speeds.index(6)  # the fast search, then one or two encodes at the recipe's speed
            assert set(speeds[:k]) == {9} and speeds[k:] in ([6], [6, 6], [6, 6, 6]), speeds
            assert found in [c.quality for c in seen[:k]]  # a fast probe's quality
            # first where the fast probes' margin line, moved down by the gain learnt (none:
            # not moved), says the recipe's speed just passes; higher only if that missed
            confirms = [c.quality for c in seen[k:]]
            assert confirms[0] <= found and all(confirms[0] < q <= found for q in confirms[1:])
            assert o.status == Status.WRITTEN and o.meets_target
            fast = codecs.encode(
                load(path).pixels, Candidate.make("avif", found, speed=9).settings()
            )
            assert len(r.payload) <= len(fast)  # never larger than the fast probe's pass
            # passes when scored afresh, and the recorded params are the bytes written
            rescored = fresh.score(fresh.prepare(load(path).pixels), [codecs.decode(r.payload, 3)])
            assert rescored[0]["ssimulacra2"] >= 70
            assert _reencoded(path, o.params) == r.payload
            assert o.encodes == len(seen) and "avif" in r.gains


def test_apply_refine_probes_fast_too_and_apply_alone_encodes_the_recipe_once(
    images, suite, monkeypatch
):
    seen = _scored(monkeypatch)
    recipe = Candidate.make("avif", 90)
    r = optimize_image(
        images[1], Job.apply(recipe, TARGET, refine=True), suite=suite, prediction=Prediction()
    )
    speeds = [dict(c.options)["speed"] for c in seen]
    assert seen[0] == recipe.with_options(speed=9)  # from the preset's quality, at speed 9
    assert speeds[-1] == 6 and r.outcome.status == Status.WRITTEN
    assert _reencoded(images[1], r.outcome.params) == r.payload
    seen.clear()
    r = optimize_image(images[1], Job.apply(recipe, TARGET), suite=suite, prediction=Prediction())
    assert seen == [recipe] and _reencoded(images[1], r.outcome.params) == r.payload


def test_where_the_fast_speed_cannot_pass_or_is_larger_the_recipe_speed_decides(suite):
    # A flat graphic with small text: AVIF at speed 9 drops the screen-content tools, its files
    # are twice speed 6's and score lower, so the fast search gives up on the source's size;
    # the search at the recipe's speed then finds what it found before probe speeds.
    path = SAMPLES / "graphic_text.png"
    target = parse_target("ssimulacra2>=80")
    on, off = (
        optimize_image(path, Job.optimize(target, ["avif"], probe_speed=s), suite=suite,
                       prediction=Prediction())
        for s in (9, None)
    )  # fmt: skip
    assert on.outcome.status == off.outcome.status == Status.WRITTEN
    assert on.payload == off.payload and on.outcome.params == off.outcome.params


def test_a_confirming_encode_that_misses_leaves_the_fast_probe_s_output_recorded_as_such(
    images, suite, monkeypatch
):
    seen = _scored(monkeypatch, fail_speed=6)
    r = optimize_image(
        images[0], Job.optimize(TARGET, ["avif"]), suite=suite, prediction=Prediction()
    )
    o = r.outcome
    assert [dict(c.options)["speed"] for c in seen][-1] == 6  # confirmed, and it missed
    assert o.status == Status.WRITTEN and o.params["options"]["speed"] == 9
    assert o.quality == r.found["avif"]
    assert _reencoded(images[0], o.params) == r.payload  # the speed recorded is the one written


def test_with_probe_speed_off_the_search_is_the_one_before_probe_speeds(images, suite, monkeypatch):
    seen = _scored(monkeypatch)
    src = load(images[0])
    job = Job.optimize(TARGET, ["avif"], probe_speed=None)
    r = optimize_image(images[0], job, suite=suite, prediction=Prediction())
    got = [(c.quality, c.options) for c in seen]
    # the search as it was: the one-recipe core at the recipe's speed, from the default start,
    # giving up only on misses larger than the source, over AVIF's distinct files
    base = Candidate.make("avif", 75)
    search = ImageSearch(ImageSet([src], suite), TARGET, resized=False, source_bytes=src.file_bytes)
    want = lowest_passing(
        lambda q: search.probe(base.with_quality(q)), (0, 100), start=DEFAULT_START["avif"],
        step=DEFAULT_STEP, tolerance=3, flat=FLAT, give_up=cannot_win(src.file_bytes, None),
        grid=quality_grid("avif"),
    )  # fmt: skip
    assert got == [(p.quality, base.options) for p in want.probes]
    assert r.found == {"avif": want.best.quality} and r.outcome.params["options"]["speed"] == 6


def test_the_job_key_holds_the_probe_speed_only_where_it_changes_outputs(suite):
    spec = suite.describe()
    keys = {Job.optimize(TARGET, ["avif"], probe_speed=s).key(spec) for s in (None, 8, 9)}
    assert len(keys) == 3
    # nothing to make faster: WebP, apply without --refine, a recipe already at that speed
    for job in (
        Job.optimize(TARGET, ["webp"]),
        Job.apply(Candidate.make("avif", 60), TARGET),
        Job.apply(Candidate.make("avif", 60, speed=9), TARGET, refine=True),
    ):
        assert job.key(spec) == replace(job, probe_speed=None).key(spec)
    refine = Job.apply(Candidate.make("avif", 60), TARGET, refine=True)
    assert refine.key(spec) != replace(refine, probe_speed=None).key(spec)


@pytest.mark.parametrize("value", [None, "off", " OFF "])
def test_probe_speed_off_is_none(value):
    assert parse_probe_speed(value) is None


@pytest.mark.parametrize("value", [0, 10, "8", 9])
def test_probe_speed_takes_avif_speeds(value):
    assert parse_probe_speed(value) == int(value)


@pytest.mark.parametrize("value", [11, -1, "fast", "9.5", True, 9.0, ""])
def test_a_bad_probe_speed_is_named_with_the_values_it_takes(value):
    with pytest.raises(UsageError, match=r"probe speed must be an AVIF speed 0-10 .* or off, not"):
        parse_probe_speed(value)
