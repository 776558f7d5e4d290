"""Smoke test of the search benchmark harness (benchmarks/search.py) on two tiny images and a
tiny grid: the oracle is exact (equals a brute-force pass without early stopping) and no
feasible grid recipe or fixed default is smaller than it."""

from __future__ import annotations

from PIL import Image

from benchmarks.search import Grid, load_corpus, run, table
from optimizer.metrics import MetricSuite
from optimizer.search import ImageSet, SearchSpace, evaluate
from optimizer.targets import parse_target

from .conftest import SAMPLES


def test_harness_invariants_on_a_tiny_grid(tmp_path):
    corpus = tmp_path / "tiny"
    corpus.mkdir()
    for name in ("coffee", "chelsea"):
        im = Image.open(SAMPLES / f"{name}.png").convert("RGB")
        im.thumbnail((64, 64))
        im.save(corpus / f"{name}.png")
    grid = Grid(("webp",), step=20, sharpen=(0.75, 1.0))
    res = run(
        corpus,
        "ssimulacra2>=40",
        budgets=(4,),
        seeds=(1,),
        grid=grid,
        codecs=("webp",),
        cache=False,
    )
    orc = res["oracle"]
    best = orc["best"].total_bytes
    assert orc["pairs"] == orc["grid"] * 2 == 2 * 2 * 4 * 2  # options x qualities x sharpen
    assert orc["encodes"] <= orc["pairs"]
    assert all(best <= b for b in orc["feasible"].values())
    # exact despite early stopping: a brute-force pass finds the same smallest feasible recipe
    target = parse_target("ssimulacra2>=40")
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    images = ImageSet(load_corpus(corpus, 8), suite)
    brute = [
        evaluate(images, c, target, stop_early=False)
        for c in grid.recipes(SearchSpace.default(["webp"], resized=False))
    ]
    assert min(e.total_bytes for e in brute if e.feasible) == best
    for alt in res["alternatives"]:
        if alt["name"].startswith(("fixed webp", "best single")) and alt["meets"]:
            assert alt["bytes"] >= best
    text = "\n".join(table(res, "smoke"))
    assert "Oracle:" in text and "| tpe | 4 |" in text and "| bisect | 4 |" in text
