"""The learned quality model: its features, its fit and Bayesian update, the search it guides
(per-image chroma subsampling, settling on a just-passing probe) and the learning loop."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from optimizer.features import FEATURES, image_features, jpeg_quality
from optimizer.quality_model import (
    DEFAULT_MODEL,
    ModelLearner,
    QualityModel,
    arm_of,
    store_path,
)
from optimizer.quality_search import Probe, lowest_passing

from .conftest import SAMPLES, read_rgb

RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------------- features


def test_features_see_detail_noise_flatness_and_colours():
    flat = np.full((300, 400, 3), 120, np.uint8)
    noisy = np.clip(flat + RNG.normal(0, 12, flat.shape), 0, 255).astype(np.uint8)
    photo = read_rgb(SAMPLES / "chelsea.png")
    f_flat, f_noisy, f_photo = (image_features(x) for x in (flat, noisy, photo))
    assert set(f_flat) == set(FEATURES)
    assert f_flat["grad"] == 0 and f_flat["hf"] == 0 and f_flat["flat"] == 1.0
    assert f_noisy["hf"] > f_photo["hf"] > 0 and f_noisy["flat"] < 0.05
    assert f_flat["colours"] == 0.0 and f_photo["colours"] > 0.4  # one colour vs thousands
    assert f_photo["colourful"] > f_flat["colourful"] == 0.0
    # Deterministic: the same pixels, the same numbers.
    assert image_features(photo) == f_photo


def test_features_of_grey_and_alpha_images():
    rgba = np.dstack([read_rgb(SAMPLES / "coffee.png"), np.full((400, 600), 200, np.uint8)])
    f = image_features(rgba)
    assert f["alpha"] == 1.0 and f["grey"] == 0.0
    grey = read_rgb(SAMPLES / "coffee.png")[..., :1]
    g = image_features(grey)
    assert g["grey"] == 1.0 and g["chroma"] == 0.0 and g["colourful"] == 0.0


@pytest.mark.parametrize("q", [8, 20, 49, 50, 83, 95, 100])
def test_a_jpeg_source_s_own_quality_is_read_from_its_tables(q):
    buf = io.BytesIO()
    Image.fromarray(read_rgb(SAMPLES / "chelsea.png")).save(buf, "JPEG", quality=q)
    assert jpeg_quality(Image.open(buf).quantization) == q
    assert jpeg_quality(None) is None


# ----------------------------------------------------------------------- the model, synthetic


def _feats(rng) -> dict[str, float]:
    return {k: float(rng.uniform(0, 1)) for k in FEATURES}


def _truth(f: dict[str, float], t: float) -> float:
    # quality rises with detail and the target, and more steeply for detailed images
    return 40 + 30 * f["grad"] - 10 * f["flat"] + (t - 80) * (1 + f["hf"])


def _rows(n: int, rng, arm="avif:4:2:0", shift=0.0) -> list[dict]:
    rows = []
    for _ in range(n):
        f, t = _feats(rng), float(rng.choice([70, 80, 90]))
        q = _truth(f, t) + shift + rng.normal(0, 1.0)
        log_bpp = -3 + 2 * f["grad"] + rng.normal(0, 0.05)
        rows.append({"features": f, "arm": arm, "target": t, "quality": q,
                     "log_bpp": log_bpp, "slope": 0.01})  # fmt: skip
    return rows


def test_the_model_learns_what_quality_an_image_needs_and_a_constant_guess_would_not():
    rng = np.random.default_rng(1)
    model = QualityModel.fit("ssimulacra2", _rows(200, rng))
    test = _rows(100, np.random.default_rng(2))
    got = np.array([model.guess("avif:4:2:0", r["features"], r["target"]).quality for r in test])
    want = np.array([r["quality"] for r in test])
    err = np.abs(got - want).mean()
    constant = np.abs(want.mean() - want).mean()
    assert err < 1.5 < constant / 3  # within the noise; a constant guess is off by many steps
    g = model.guess("avif:4:2:0", test[0]["features"], 80)
    assert 0.5 < g.quality_sd < 2.0  # the residual noise (1.0) is what it reports
    assert model.guess("webp", test[0]["features"], 80) is None  # an arm it never saw


def test_a_saved_model_and_its_light_copy_guess_the_same():
    model = QualityModel.fit("ssimulacra2", _rows(60, np.random.default_rng(3)))
    f = _feats(np.random.default_rng(4))

    def q(m):
        return m.guess("avif:4:2:0", f, 85)

    d = json.loads(json.dumps(model.as_dict()))
    assert q(QualityModel.from_dict(d)) == q(model) == q(model.light())
    with pytest.raises(ValueError, match="not an imgtune quality model"):
        QualityModel.from_dict({**d, "features": ["grad"]})


def test_a_user_s_observations_move_the_model_towards_their_images():
    base = QualityModel.fit("ssimulacra2", _rows(200, np.random.default_rng(5)))
    theirs = _rows(60, np.random.default_rng(6), shift=10.0)  # their images need 10 steps more
    updated = base.update(theirs)
    probe = _rows(50, np.random.default_rng(8), shift=10.0)

    def mean_err(m):
        return np.mean(
            [
                m.guess("avif:4:2:0", r["features"], r["target"]).quality - r["quality"]
                for r in probe
            ]
        )

    assert mean_err(base) < -8  # the shipped model guesses 10 too low for them
    assert abs(mean_err(updated)) < 3  # after their 60 images it is close
    assert base.update([]).guess("avif:4:2:0", probe[0]["features"], 80) == base.guess(
        "avif:4:2:0", probe[0]["features"], 80
    )


def test_arm_names():
    assert arm_of("avif", {"speed": 6, "subsampling": "4:4:4"}) == "avif:4:4:4"
    assert arm_of("webp", (("method", 4),)) == "webp"


# ----------------------------------------------------------------------------- the learner


def test_the_learner_keeps_observations_for_the_next_run_and_survives_a_torn_line(tmp_path):
    base = QualityModel.fit("ssimulacra2", _rows(100, np.random.default_rng(9)))
    store = store_path(tmp_path, "ssimulacra2")
    first = ModelLearner(base, store, "ssimulacra2")
    assert first.current().guess("avif:4:2:0", _feats(RNG), 80) is not None
    theirs = _rows(40, np.random.default_rng(10), shift=10.0)
    for r in theirs:
        first.add([r])
    assert len(store.read_text().splitlines()) == 40
    with store.open("a") as fh:
        fh.write('{"features": {"grad": 0.1')  # a run killed mid-line
    second = ModelLearner(base, store, "ssimulacra2")
    assert len(second.rows) == 40
    f = theirs[0]["features"]
    # The second run starts where the first ended, not from the shipped model.
    assert second.current().guess("avif:4:2:0", f, 80).quality == pytest.approx(
        first.current().guess("avif:4:2:0", f, 80).quality, abs=1.0
    )
    assert (
        second.current().guess("avif:4:2:0", f, 80).quality
        > base.guess("avif:4:2:0", f, 80).quality + 5
    )


def test_a_metric_without_a_shipped_model_gets_one_from_enough_observations(tmp_path):
    learner = ModelLearner(None, store_path(tmp_path, "psnr"), "psnr")
    assert learner.current() is None
    learner.add(_rows(39, np.random.default_rng(11)))
    assert learner.current() is None
    learner.add(_rows(1, np.random.default_rng(12)))
    assert learner.current() is not None and learner.current().metric == "psnr"


# ------------------------------------------------------------------------------- the search


def _probe_fn(crossing: float, slope: float = 0.01):
    calls = []

    def probe(q: int) -> Probe:
        calls.append(q)
        m = slope * (q - crossing)
        return Probe(q, 1000 + 10 * q, m >= 0, m)

    return probe, calls


def test_a_slope_aims_the_second_probe_and_a_just_passing_probe_settles_the_search():
    # Margin falls 0.01 a step; the lowest pass is 62 (61.7 crosses zero).
    probe, calls = _probe_fn(crossing=61.7)
    r = lowest_passing(probe, (0, 100), start=62, step=2, slope=0.01)
    assert r.best.quality == 62 and calls == [62]  # passes by 0.003 < a step: 61 would miss
    probe, calls = _probe_fn(crossing=61.7)
    r = lowest_passing(probe, (0, 100), start=70, step=2, slope=0.01)
    assert r.best.quality == 62 and calls == [70, 62]  # aimed at the crossing, then settled
    probe, calls = _probe_fn(crossing=61.7)
    r = lowest_passing(probe, (0, 100), start=55, step=2, slope=0.01)
    assert r.best.quality == 62 and calls == [55, 62]  # from below, the same
    # A wrong slope costs probes, never the answer: the local slope of two probes takes over.
    probe, calls = _probe_fn(crossing=61.7, slope=0.002)
    r = lowest_passing(probe, (0, 100), start=70, step=2, slope=0.01, tolerance=1)
    assert r.best.quality == 62 and len(calls) <= 6  # slower: the blend trusts it 2 steps
    probe, calls = _probe_fn(crossing=61.7)
    r = lowest_passing(probe, (0, 100), start=62, step=2, tolerance=1)
    assert r.best.quality == 62 and calls[:2] == [62, 60]  # without a slope: a probe below


# ------------------------------------------------------------------------- the shipped model


def test_the_shipped_model_is_there_and_names_its_training_data():
    model = QualityModel.load(DEFAULT_MODEL)
    assert model.metric == "ssimulacra2"
    assert {"avif:4:2:0", "avif:4:4:4", "webp", "jpeg:4:2:0", "jpeg:4:4:4"} <= set(model.quality)
    assert any("kodak" in c for c in model.trained_on["corpora"])
    # More quality for a higher target, for a photo.
    f = image_features(read_rgb(SAMPLES / "chelsea.png"))
    q70, q90 = (model.guess("avif:4:2:0", f, t).quality for t in (70, 90))
    assert q90 > q70 + 5
    assert all(math.isfinite(v) for v in (q70, q90))


# ----------------------------------------------------------------------- the learning loop


def _crops(folder, offset: int) -> None:
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.png"):
        px = read_rgb(SAMPLES / name)
        for k in range(2):
            y, x = 40 * k + offset, 60 * k + offset
            Image.fromarray(px[y : y + 120, x : x + 160]).save(folder / f"{name[:-4]}-{k}.png")


def _poor_model(path) -> None:
    """A model sure that every image needs quality 20 (far too low for ssimulacra2>=80)."""
    rng = np.random.default_rng(13)
    rows = []
    for arm in ("avif:4:2:0", "avif:4:4:4", "webp"):
        for _ in range(40):
            t = float(rng.choice([70, 90]))
            q = 20 + rng.normal(0, 1)
            rows.append({"features": _feats(rng), "arm": arm, "target": t, "quality": q,
                         "log_bpp": -3.0, "slope": 0.01})  # fmt: skip
    QualityModel.fit("ssimulacra2", rows).save(path)


def test_a_second_folder_costs_fewer_encodes_after_a_first_taught_the_model(tmp_path):
    """The learning loop: each run's results refine the user's model in --studies, so a
    catalogue's later images cost less than its first. Start from a model that is badly wrong
    for these images, to make the lesson visible."""
    from optimizer.api import optimize

    _crops(tmp_path / "a", 0)
    _crops(tmp_path / "b", 30)
    model = tmp_path / "poor.json"
    _poor_model(model)
    studies = tmp_path / "studies"
    kw = {"model": str(model), "studies": studies, "jobs": 1}
    first = optimize(tmp_path / "a", tmp_path / "out-a", **kw)
    assert store_path(studies, "ssimulacra2").exists()
    second = optimize(tmp_path / "b", tmp_path / "out-b", **kw)
    # The same folder b without what a taught: as expensive as a was.
    fresh = optimize(tmp_path / "b", tmp_path / "out-b2", **{**kw, "studies": tmp_path / "s2"})
    assert first.counts["written"] == second.counts["written"] == 8
    # (a run learns from its own first images too, so the fresh run recovers part of the
    # lesson by itself: 6.6 encodes an image against the second run's 5.0, measured)
    assert second.encodes_per_image < 0.8 * fresh.encodes_per_image
    assert second.encodes_per_image < first.encodes_per_image
    # --no-learn reads nothing and writes nothing.
    lines = store_path(studies, "ssimulacra2").read_text().splitlines()
    optimize(tmp_path / "b", tmp_path / "out-b3", **{**kw, "learn": False})
    assert store_path(studies, "ssimulacra2").read_text().splitlines() == lines


def test_a_tune_study_s_encodes_teach_the_model_too(tmp_path):
    from optimizer.api import tune

    _crops(tmp_path / "a", 0)
    studies = tmp_path / "studies"
    tune(tmp_path / "a", trials=3, seed=1, codecs="avif", studies=studies, sharpen=False)
    rows = [json.loads(x) for x in store_path(studies, "ssimulacra2").read_text().splitlines()]
    assert rows, "the study taught nothing"
    assert {r["arm"] for r in rows} <= {"avif:4:2:0", "avif:4:4:4"}
    assert all(r["target"] == 80 and 0 <= r["quality"] <= 100 for r in rows)
    # Each label is pinned by the study's own probes: a pass there, a miss within two below.
    assert all(set(r["features"]) == set(FEATURES) for r in rows)
    before = len(rows)
    tune(tmp_path / "a", trials=4, seed=1, codecs="avif", studies=studies, sharpen=False,
         learn=False)  # fmt: skip
    assert len(store_path(studies, "ssimulacra2").read_text().splitlines()) == before


def _red_text_on_blue() -> np.ndarray:
    from PIL import ImageDraw

    im = Image.new("RGB", (320, 200), (20, 40, 200))
    d = ImageDraw.Draw(im)
    for row in range(8):
        d.text((8, 6 + 24 * row), "Chroma subsampling smears red on blue " * 2, fill=(230, 20, 20))
    # A grainy background, as a photo has: a lossless file would be far larger than a lossy one.
    grain = np.random.default_rng(3).normal(0, 5, (200, 320, 1))
    return np.clip(np.asarray(im) + grain, 0, 255).astype(np.uint8)


def test_the_model_chooses_chroma_subsampling_per_image():
    """4:4:4 where colour detail needs it (red text on blue), searched first rather than as a
    fallback; a grey image has only the 4:2:0 arms (no chroma to subsample)."""
    from optimizer.model_search import plan, worth_searching
    from optimizer.recipe import Candidate

    model = QualityModel.load(DEFAULT_MODEL)
    bases = [Candidate.make("avif", 75), Candidate.make("webp", 75)]
    text = worth_searching(plan(model, 80, bases, image_features(_red_text_on_blue()), grey=False))
    assert text[0].name == "avif:4:4:4"
    grey = read_rgb(SAMPLES / "coffee.png")[..., :1]
    arms = plan(model, 80, bases, image_features(grey), grey=True)
    assert {a.name for a in arms} <= {"avif:4:2:0", "webp"} and arms


def test_optimize_writes_4_4_4_where_it_wins_without_the_fallback(tmp_path):
    from optimizer.api import optimize

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_red_text_on_blue()).save(src / "text.png")
    got = {}
    for model in ("auto", "off"):
        outcomes = []
        optimize(src, tmp_path / model, jobs=1, learn=False, model=model, on_result=outcomes.append)
        got[model] = outcomes[0]
    o, off = got["auto"], got["off"]
    assert o.status == "written" and o.meets_target
    assert o.params["options"]["subsampling"] == "4:4:4"
    # Without the model 4:4:4 is reached only through the fallback, after 4:2:0 failed
    # (14 encodes, measured); with it, 4:4:4 is searched first (6 encodes, measured). Its file
    # is far larger than the model guessed on this drawing, so 4:2:0 and WebP, still expected
    # smaller, get two probes each before their flat misses end them (`beaten_by_guess`).
    assert off.params["options"]["subsampling"] == "4:4:4"
    assert o.encodes + 4 <= off.encodes and o.output_bytes <= off.output_bytes


def test_an_arm_whose_file_came_out_far_larger_than_guessed_reopens_the_ranking():
    """The first arm's file against the guesses: where it is far larger than its own guess, an
    arm expected (even after moving its guess by half that miss) to beat it by REVISE_GAP is
    searched too; where the first arm came out as guessed, none is."""
    import math

    from optimizer.model_search import REVISE_GAP, Arm, beaten_by_guess
    from optimizer.quality_model import ArmGuess
    from optimizer.recipe import Candidate

    px = 100_000

    def arm(sub: str, nbytes: float) -> Arm:
        g = ArmGuess(50.0, 3.0, math.log(nbytes / px), 0.3, 0.01)
        return Arm(Candidate.make("avif", 50, subsampling=sub), f"avif:{sub}", g)

    first, other = arm("4:2:0", 9000), arm("4:4:4", 9300)
    assert beaten_by_guess([other], [first], 9100, px) == []  # as guessed: nothing more
    assert beaten_by_guess([other], [first], 9300 * 1.2, px) == []  # a miss they share
    # 4:2:0 needed twice its guess: 4:4:4's guess moved by half that (x1.41) still beats it
    assert beaten_by_guess([other], [first], 18000, px) == [other]
    # ...by more than REVISE_GAP only: the guess where it stops being worth an encode
    edge = 18000 / (math.sqrt(18000 / 9000) * REVISE_GAP)
    near, far = arm("4:4:4", edge * 0.99), arm("4:4:4", edge * 1.01)
    assert beaten_by_guess([near, far], [first], 18000, px) == [near]
    assert beaten_by_guess([other], [], 18000, px) == []  # nothing searched: no evidence


def test_learning_moves_every_arm_s_size_together_so_the_ranking_stays_the_trained_one():
    """Observations of one arm only (the one that was searched), its files 30% larger than
    expected: every arm's expected size moves up by nearly the same amount, so the arms' order
    is the trained model's; the quality guesses still learn per arm."""
    import math

    base = QualityModel.load(DEFAULT_MODEL)
    f = image_features(read_rgb(SAMPLES / "chelsea.png"))
    f["log_mp"] = -1.5
    arms = ["avif:4:2:0", "avif:4:4:4", "webp"]
    rows = []
    for _ in range(30):
        g = base.guess("avif:4:4:4", f, 80)
        rows.append(
            {"features": f, "arm": "avif:4:4:4", "target": 80.0, "quality": g.quality + 6,
             "log_bpp": g.log_bpp + math.log(1.3)}
        )  # fmt: skip
    updated = base.update(rows)
    before = {a: base.guess(a, f, 80) for a in arms}
    after = {a: updated.guess(a, f, 80) for a in arms}
    shift = {a: after[a].log_bpp - before[a].log_bpp for a in arms}
    assert shift["avif:4:2:0"] > 0.2 and abs(shift["webp"] - shift["avif:4:2:0"]) < 1e-9
    assert 0 <= shift["avif:4:4:4"] - shift["avif:4:2:0"] < 0.02  # its own: a little
    assert sorted(arms, key=lambda a: after[a].log_bpp) == sorted(
        arms, key=lambda a: before[a].log_bpp
    )
    assert after["avif:4:4:4"].quality - before["avif:4:4:4"].quality > 3  # learnt per arm
    assert abs(after["webp"].quality - before["webp"].quality) < 1e-9
