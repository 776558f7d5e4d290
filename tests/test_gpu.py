"""The CUDA paths (marked `gpu`; skipped without CUDA): each metric gives the CPU's numbers on
the GPU, for one candidate and for a batch, and a folder job runs end to end on the device.

Run them where a GPU is: `python -m pytest -m gpu -q`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import SAMPLES, blur, jpeg, noise, read_rgb, thumbnails

pytestmark = pytest.mark.gpu

#: (metric, output, absolute tolerance CUDA vs CPU): float32 kernels differ in summation order
CASES = [
    ("ssim", "ssim", 1e-4),
    ("ssim", "ssim_p5", 1e-3),
    ("ms_ssim", "ms_ssim", 1e-4),
    ("psnr", "psnr", 1e-3),
    ("ssimulacra2", "ssimulacra2", 0.05),
]


def _candidates(ref: np.ndarray) -> list[np.ndarray]:
    return [jpeg(ref, 30), jpeg(ref, 80), blur(ref, 1.0), noise(ref, 6.0)]


def test_auto_picks_cuda():
    from optimizer.metrics import MetricSuite

    assert MetricSuite.build(["psnr"], device="auto").device.type == "cuda"


@pytest.mark.parametrize("metric,output,tol", CASES)
def test_cuda_matches_cpu_one_by_one_and_batched(metric, output, tol):
    from optimizer.metrics import MetricSuite

    ref = read_rgb(SAMPLES / "chelsea.png")
    cands = _candidates(ref)
    cpu = MetricSuite.build([metric], device="cpu")
    gpu = MetricSuite.build([metric], device="cuda")
    want = [s[output] for s in cpu.score(cpu.prepare(ref), cands)]
    prepared = gpu.prepare(ref)
    batched = [s[output] for s in gpu.score(prepared, cands)]
    single = [gpu.score(prepared, [c])[0][output] for c in cands]
    assert batched == pytest.approx(want, abs=tol)
    assert single == pytest.approx(want, abs=tol)
    assert len(set(want)) == len(want)  # the candidates differ, so the comparison means something


def _on_cpu_and_cuda(metric: str, weights_dir, ref, cands) -> dict[str, list[float]]:
    """`metric`'s scores of `cands` against `ref`, per device."""
    from optimizer.metrics import MetricSuite

    got = {}
    for device in ("cpu", "cuda"):
        suite = MetricSuite.build([metric], device=device, weights_dir=weights_dir)
        got[device] = [s[metric] for s in suite.score(suite.prepare(ref), cands)]
    return got


def test_cuda_lpips_matches_cpu(random_weights_dir):
    ref = read_rgb(SAMPLES / "coffee.png")
    got = _on_cpu_and_cuda("lpips", random_weights_dir, ref, _candidates(ref))
    assert got["cuda"] == pytest.approx(got["cpu"], abs=1e-4)


def test_cuda_dists_and_fid_features_match_cpu(all_weights_dir):
    """DISTS and the FID Inception on CUDA (TF32 off while scoring, as everywhere) against the
    CPU, compared relatively: float32 convolutions still sum in other orders."""
    from optimizer.metrics.set_metrics import InceptionFeatures

    ref = read_rgb(SAMPLES / "coffee.png")
    cands = _candidates(ref)
    got = _on_cpu_and_cuda("dists", all_weights_dir, ref, cands)
    assert got["cuda"] == pytest.approx(got["cpu"], rel=1e-2)
    feats = {
        d: InceptionFeatures(d, weights_dir=all_weights_dir).features([ref, *cands]).cpu().numpy()
        for d in ("cpu", "cuda")
    }
    scale = np.abs(feats["cpu"]).max()
    assert np.abs(feats["cuda"] - feats["cpu"]).max() < 1e-2 * scale


def test_identical_images_score_as_identical_on_cuda():
    # exactly 100: the blur of reference and candidate in one call makes them equal bit for bit
    from optimizer.metrics import MetricSuite

    ref = read_rgb(SAMPLES / "rocket.png")
    suite = MetricSuite.build(["ssimulacra2", "ssim", "psnr"], device="cuda")
    s = suite.score(suite.prepare(ref), [ref])[0]
    assert s["ssimulacra2"] == 100.0
    assert s["ssim"] == pytest.approx(1.0, abs=1e-6) and s["psnr"] == float("inf")


def test_optimize_on_cuda_writes_outputs_that_meet_the_target_scored_on_the_cpu(tmp_path):
    from typer.testing import CliRunner

    from optimizer.cli import app
    from optimizer.metrics import MetricSuite
    from optimizer.scoring import score_pair
    from optimizer.targets import parse_target

    src = thumbnails(tmp_path / "src", {"coffee.png": "coffee", "chelsea.png": "chelsea"}, 256)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["optimize", str(src), str(out), "--device", "cuda", "--json"])
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines()][:-1]
    cpu = MetricSuite.build(["ssimulacra2"], device="cpu")
    target = parse_target("ssimulacra2>=80")
    for rec in records:
        assert rec["status"] == "written"
        result = score_pair(src / rec["source"], out / rec["output"], cpu, target=target)
        assert not result.missed
        assert result.scores["ssimulacra2"] == pytest.approx(rec["scores"]["ssimulacra2"], abs=0.1)


def test_the_batch_scorer_on_cuda_batches_images_and_falls_back_to_the_real_cpu(monkeypatch):
    """The run's scorer on a GPU: candidates of three images in one batch equal single
    scores, and an injected out-of-memory sends an image to the CPU twin (built from the
    suite's recipe), with a warning."""
    import torch

    from optimizer.metrics import MetricSuite
    from optimizer.metrics.batching import BatchScorer

    suite = MetricSuite.build(["ssimulacra2", "psnr"], device="cuda")
    assert isinstance(suite.scorer, BatchScorer)
    refs = [read_rgb(SAMPLES / n)[:200, :240] for n in ("coffee.png", "chelsea.png", "rocket.png")]
    cands = [jpeg(refs[0], 40), refs[1], noise(refs[2], 5.0)]
    scorer = BatchScorer(suite, latency=0.5)
    prepared = [scorer.prepare(r) for r in refs]
    futures = [scorer.submit(p, c) for p, c in zip(prepared, cands, strict=True)]
    got = [f.result(60)["ssimulacra2"] for f in futures]
    want = [
        suite.score(suite.prepare(r), [c])[0]["ssimulacra2"]
        for r, c in zip(refs, cands, strict=True)
    ]
    assert got == pytest.approx(want, abs=1e-5) and got[1] == 100.0
    assert scorer.stats.largest_batch == 3

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(suite.metrics[0], "score", oom)
    with pytest.warns(RuntimeWarning, match="scored on the CPU"):
        fallback = scorer.score(prepared[0], cands[0])["ssimulacra2"]
    cpu = MetricSuite.build(["ssimulacra2"], device="cpu")
    assert fallback == pytest.approx(cpu.score_pair(refs[0], cands[0])["ssimulacra2"], abs=1e-6)
    assert scorer._twin is not None and scorer._twin.device.type == "cpu"
    scorer.close()
