"""Scoring across images: stacked references, the batch scorer (one device owner), its device
memory budget, the out-of-memory fallbacks, full float32, and the device in the suite's spec.

Everything runs on the CPU, where the same code runs as on a GPU (the batch scorer is the GPU's
default; here it is asked for); the `cuda` cases run where there is one (`pytest -m gpu`)."""

from __future__ import annotations

import gc
import threading
import warnings

import numpy as np
import pytest
import torch

from optimizer.metrics import MetricSuite
from optimizer.metrics import batching as batching_mod
from optimizer.metrics._base import pick_state, stack_states, state_nbytes
from optimizer.metrics.batching import BatchScorer, DirectScorer, is_out_of_memory

from .conftest import DEVICES, jpeg, noise, read_rgb, sample_paths

FAST = ["ssim", "ms_ssim", "psnr", "ssimulacra2"]


def _crops(h: int, w: int, channels: int = 3) -> list[np.ndarray]:
    """Three different references of one size (crops of the sample photos)."""
    out = []
    for p in sample_paths()[:3]:
        px = read_rgb(p)[:h, :w]
        if channels == 4:
            alpha = np.linspace(40, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
            px = np.dstack([px, alpha.astype(np.uint8)])
        elif channels == 1:
            px = px[:, :, :1]
        out.append(np.ascontiguousarray(px))
    return out


def _candidates(refs: list[np.ndarray]) -> list[np.ndarray]:
    """A JPEG, the reference itself (the middle one) and a noisy copy."""
    a = refs[0]
    colour = a[:, :, :3] if a.shape[2] >= 3 else a[:, :, 0]
    first = jpeg(colour, 40)
    if a.shape[2] == 4:
        first = np.dstack([first, a[:, :, 3]])
    elif a.shape[2] == 1:
        first = np.ascontiguousarray(first[:, :, :1])
    return [first, refs[1], noise(refs[2], 6.0)]


def _singles(suite: MetricSuite, refs, cands) -> list[dict[str, float]]:
    return [suite.score(suite.prepare(r), [c])[0].values for r, c in zip(refs, cands, strict=True)]


def _assert_close(batched, singles, exact=("ssimulacra2",)):
    for b, s in zip(batched, singles, strict=True):
        assert set(b) == set(s)
        for k in b:
            if s[k] == float("inf"):
                assert b[k] == float("inf"), k
            elif k in exact and s[k] == 100.0:
                assert b[k] == 100.0, k  # identical: exactly, in any batch position
            else:
                assert b[k] == pytest.approx(s[k], abs=1e-5), k


def test_stack_states_joins_tensors_and_refuses_what_differs():
    a = {"x": torch.zeros(1, 3, 4, 4), "size": (4, 4), "levels": [torch.ones(1, 2)]}
    b = {"x": torch.ones(1, 3, 4, 4), "size": (4, 4), "levels": [torch.full((1, 2), 2.0)]}
    s = stack_states([a, b])
    assert s["x"].shape == (2, 3, 4, 4) and s["size"] == (4, 4)
    assert s["levels"][0].tolist() == [[1.0, 1.0], [2.0, 2.0]]
    second = pick_state(s, 1)  # and back: the second image's own state
    assert torch.equal(second["x"], b["x"]) and torch.equal(second["levels"][0], b["levels"][0])
    assert pick_state(a, 1)["x"] is a["x"]  # one image's state is its own part
    with pytest.raises(ValueError, match="cannot be batched"):
        stack_states([a, {**b, "size": (5, 4)}])
    with pytest.raises(ValueError, match="cannot be batched"):
        stack_states([a, {**b, "x": torch.ones(1, 3, 5, 4)}])
    assert state_nbytes(a) == (48 + 2) * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [3, 4, 1])
def test_candidates_of_different_images_in_one_batch_equal_single_scores(device, channels):
    suite = MetricSuite.build(FAST, device=device)
    for h, w in ((64, 80), (97, 131)):
        refs = _crops(h, w, channels)
        cands = _candidates(refs)
        prepared = [suite.prepare(r) for r in refs]
        batched = [s.values for s in suite.score_pairs(list(zip(prepared, cands, strict=True)))]
        _assert_close(batched, _singles(suite, refs, cands))
        assert batched[1]["ssimulacra2"] == 100.0 and batched[1]["psnr"] == float("inf")
        # every position: the identical candidate first and last too
        for order in ((1, 0, 2), (0, 2, 1)):
            got = suite.score_pairs([(prepared[i], cands[i]) for i in order])
            assert got[order.index(1)]["ssimulacra2"] == 100.0


@pytest.mark.parametrize("device", DEVICES)
def test_lpips_and_dists_batch_across_images_whole_and_tiled(device, all_weights_dir):
    suite = MetricSuite.build(["lpips", "dists"], device=device, weights_dir=all_weights_dir)
    refs = _crops(72, 88)
    cands = _candidates(refs)
    want = _singles(suite, refs, cands)
    prepared = [suite.prepare(r) for r in refs]
    got = [s.values for s in suite.score_pairs(list(zip(prepared, cands, strict=True)))]
    _assert_close(got, want)
    # LPIPS in tiles of 64 px with 32 of context: the tiled path, batched (DISTS tiles alike,
    # through the same `_tiles`; its VGG16 on every tile would cost this test 15 s)
    suite = MetricSuite([suite.metrics[0]], device=device)
    suite.metrics[0].tile, suite.metrics[0].margin = 64, 32
    refs = _crops(160, 144)
    cands = _candidates(refs)
    prepared = [suite.prepare(r) for r in refs]
    assert all(p.per_background[0]["lpips"].reference is not None for p in prepared)
    got = [s.values for s in suite.score_pairs(list(zip(prepared, cands, strict=True)))]
    _assert_close(got, _singles(suite, refs, cands))


def test_candidates_that_cannot_share_a_batch_are_refused_by_the_suite():
    suite = MetricSuite.build(["psnr"], device="cpu")
    a, b = _crops(40, 48)[:2], _crops(40, 56)[:1]
    with pytest.raises(ValueError, match="cannot share a batch"):
        suite.score_pairs([(suite.prepare(a[0]), a[0]), (suite.prepare(b[0]), b[0])])


def _scorer(names=FAST, **kw) -> tuple[MetricSuite, BatchScorer]:
    suite = MetricSuite.build(names, device="cpu", batching=True)
    return suite, BatchScorer(suite, **kw)


def test_the_batch_scorer_batches_across_images_and_sizes():
    suite, scorer = _scorer(latency=0.5)
    small, large = _crops(48, 64), _crops(72, 56)
    refs = small + large
    cands = _candidates(small) + _candidates(large)
    with scorer:
        prepared = [scorer.prepare(r) for r in refs]
        futures = [scorer.submit(p, c) for p, c in zip(prepared, cands, strict=True)]
        got = [f.result(timeout=60).values for f in futures]
    _assert_close(got, _singles(suite, refs, cands))
    # six requests, two sizes: two batches of three (the sizes never share one)
    assert scorer.stats.requests == 6
    assert scorer.stats.batches == 2 and scorer.stats.largest_batch == 3


def test_threads_share_the_one_owner():
    suite, scorer = _scorer(["ssimulacra2", "psnr"], latency=0.2)
    refs = _crops(48, 64)
    cands = _candidates(refs)
    results: dict[int, float] = {}
    start = threading.Barrier(3)

    def image(i: int) -> None:
        p = scorer.prepare(refs[i])
        start.wait()
        results[i] = scorer.score(p, cands[i])["ssimulacra2"]

    threads = [threading.Thread(target=image, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = [s["ssimulacra2"] for s in _singles(suite, refs, cands)]
    assert [results[i] for i in range(3)] == pytest.approx(want, abs=1e-5)
    assert results[1] == 100.0
    assert scorer.stats.largest_batch > 1  # they met in a batch
    scorer.close()


def test_the_owner_thread_ends_when_idle_and_starts_again(monkeypatch):
    monkeypatch.setattr(batching_mod, "IDLE_EXIT_S", 0.05)
    _, scorer = _scorer(["psnr"], latency=0.0)
    ref = _crops(32, 32)[0]
    p = scorer.prepare(ref)
    first = scorer.score(p, noise(ref))["psnr"]
    owner = scorer._thread
    assert owner is not None
    owner.join(5)
    assert not owner.is_alive() and scorer._thread is None
    assert scorer.score(p, noise(ref))["psnr"] == first  # a new owner serves it
    scorer.close()


def test_one_bad_candidate_fails_alone(monkeypatch):
    suite, scorer = _scorer(["psnr"], latency=0.5)
    psnr = suite.metrics[0]
    real = psnr.score

    def picky(candidates, prepared):
        if bool((candidates[:, 0, 0, 0] * 255).round().eq(7).any()):
            raise ValueError("candidate 7 is bad")
        return real(candidates, prepared)

    monkeypatch.setattr(psnr, "score", picky)
    refs = _crops(32, 40)
    cands = [noise(r) for r in refs]
    cands[1][0, 0, 0] = 7
    cands[0][0, 0, 0] = cands[2][0, 0, 0] = 9
    with scorer:
        futures = [scorer.submit(scorer.prepare(r), c) for r, c in zip(refs, cands, strict=True)]
        assert futures[0].result(60)["psnr"] > 20 and futures[2].result(60)["psnr"] > 20
        with pytest.raises(ValueError, match="candidate 7 is bad"):
            futures[1].result(60)


def test_references_over_half_the_budget_wait_on_the_host():
    suite, probe = _scorer(["ssim", "psnr"])
    refs = _crops(48, 64)
    one = state_nbytes(probe.prepare(refs[0]).per_background)
    # room for one reference in half the budget, and for one candidate in what is left
    budget = 2 * one + 1
    _, scorer = _scorer(["ssim", "psnr"], budget_bytes=budget, latency=0.5)
    prepared = [scorer.prepare(r) for r in refs]
    assert [p.on_host for p in prepared] == [False, True, True]
    assert scorer.resident == one and scorer.stats.host_references == 2
    cands = _candidates(refs)
    limit = scorer.batch_pixel_limit()
    assert limit == (budget - one) // scorer.bytes_per_pixel
    with scorer:
        futures = [scorer.submit(p, c) for p, c in zip(prepared, cands, strict=True)]
        got = [f.result(60).values for f in futures]
    _assert_close(got, _singles(suite, refs, cands))
    pixels = 48 * 64
    assert scorer.stats.largest_batch == max(1, limit // pixels)
    del prepared, futures
    gc.collect()
    assert scorer.resident == 0  # a reference's bytes are returned when it is dropped


def test_a_larger_budget_admits_larger_batches():
    sizes = {}
    for budget in (10**6, 10**9):
        _, scorer = _scorer(["psnr"], budget_bytes=budget, latency=0.5)
        refs = _crops(48, 64)
        with scorer:
            futures = [scorer.submit(scorer.prepare(r), noise(r)) for r in refs]
            [f.result(60) for f in futures]
        sizes[budget] = scorer.stats.largest_batch
    assert sizes[10**6] == 1 and sizes[10**9] == 3


def _oom(*_a, **_k):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_out_of_memory_halves_the_batch_and_retries(monkeypatch):
    suite, scorer = _scorer(["ssimulacra2", "psnr"], latency=0.5)
    metric = suite.metrics[0]
    real = metric.score
    sizes = []

    def small_batches_only(candidates, prepared):
        sizes.append(candidates.shape[0])
        if candidates.shape[0] > 1:
            _oom()
        return real(candidates, prepared)

    monkeypatch.setattr(metric, "score", small_batches_only)
    refs = _crops(40, 48) + _crops(40, 48)[:1]
    cands = [noise(r, 4.0 + i) for i, r in enumerate(refs)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a retry at a smaller batch is not worth a warning
        with scorer:
            prepared = [scorer.prepare(r) for r in refs]
            futures = [scorer.submit(p, c) for p, c in zip(prepared, cands, strict=True)]
            got = [f.result(60).values for f in futures]
    monkeypatch.setattr(metric, "score", real)
    _assert_close(got, _singles(suite, refs, cands))
    assert sizes[:3] == [4, 2, 1]  # four, then halves, then one at a time
    assert scorer.stats.out_of_memory == 3 and scorer.stats.cpu_fallbacks == 0
    assert scorer.max_batch_pixels == 40 * 48  # the next batches start small


def test_out_of_memory_alone_scores_on_the_cpu_with_a_warning(monkeypatch):
    suite, scorer = _scorer(["ssimulacra2", "psnr"], latency=0.5)
    twin = MetricSuite.build(["ssimulacra2", "psnr"], device="cpu", batching=False)
    scorer._twin = twin  # the "CPU" here: the scorer's own suite is the device that fails
    monkeypatch.setattr(suite.metrics[0], "score", _oom)
    refs = _crops(40, 48)
    cands = _candidates(refs)
    with pytest.warns(RuntimeWarning, match="scored on the CPU") as caught, scorer:
        prepared = [scorer.prepare(r) for r in refs]
        got = [scorer.score(p, c).values for p, c in zip(prepared, cands, strict=True)]
        again = scorer.score(prepared[0], cands[0]).values
    _assert_close(got, _singles(twin, refs, cands))
    assert again == got[0]
    assert len([w for w in caught if "scored on the CPU" in str(w.message)]) == 3  # per image
    assert scorer.stats.cpu_fallbacks == 3
    assert all(p._twin is not None for p in prepared)


def test_out_of_memory_preparing_sends_the_image_to_the_cpu(monkeypatch):
    suite, scorer = _scorer(["psnr"])
    scorer._twin = MetricSuite.build(["psnr"], device="cpu", batching=False)
    monkeypatch.setattr(suite.metrics[0], "prepare", _oom)
    ref = _crops(40, 48)[0]
    with pytest.warns(RuntimeWarning, match="preparing a 48x40 reference"):
        p = scorer.prepare(ref)
    assert p.on_twin
    assert scorer.score(p, ref)["psnr"] == float("inf")
    assert scorer.stats.requests == 0  # never queued for the device


def test_cudnn_allocation_failures_count_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(MemoryError())


def test_scoring_runs_without_tf32_and_restores_the_flags(monkeypatch):
    suite = MetricSuite.build(["psnr"], device="cpu")
    seen = []
    real = suite.metrics[0].score

    def record(candidates, prepared):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(candidates, prepared)

    monkeypatch.setattr(suite.metrics[0], "score", record)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ref = _crops(32, 32)[0]
        suite.score(suite.prepare(ref), [noise(ref)])
        assert seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_spec_names_device_and_precision_and_keys_the_score_cache(tmp_path):
    from optimizer.codecs import EncodeSettings
    from optimizer.images import load
    from optimizer.recipe import Candidate
    from optimizer.search import ImageSet

    suite = MetricSuite.build(["psnr"], device="cpu")
    spec = suite.spec()
    assert spec["device"] == "cpu" and "TF32 off" in spec["precision"]
    assert {k: v for k, v in spec.items() if k not in ("device", "precision")} == (suite.describe())
    src = [load(sample_paths()[0])]
    cache = tmp_path / "scores.sqlite"
    cand = Candidate("jpeg", 70, None, 1.0, EncodeSettings.make("jpeg", 70).options)
    first = ImageSet(src, suite, cache_path=cache)
    first.score(0, cand)
    same = ImageSet(src, suite, cache_path=cache)
    same.score(0, cand)
    assert same.cache_hits == 1
    gpu = MetricSuite.build(["psnr"], device="cpu")
    gpu.spec_device = "cuda"  # as a suite on a GPU names itself
    assert gpu.spec() != spec and gpu.describe() == suite.describe()
    other = ImageSet(src, gpu, cache_path=cache)
    other.score(0, cand)
    assert other.cache_hits == 0  # CPU scores are not served to a GPU run


def test_the_default_scorer_is_direct_on_the_cpu():
    suite = MetricSuite.build(["psnr"], device="cpu")
    assert isinstance(suite.scorer, DirectScorer) and suite.scorer is suite.scorer
    assert isinstance(MetricSuite.build(["psnr"], device="cpu", batching=True).scorer, BatchScorer)


@pytest.mark.gpu
def test_on_cuda_the_suite_batches_by_default_within_the_free_memory():
    suite = MetricSuite.build(["psnr"], device="cuda")
    scorer = suite.scorer
    assert isinstance(scorer, BatchScorer)
    free, _ = torch.cuda.mem_get_info()
    assert 0 < scorer.budget <= free
    assert suite.spec()["device"] == "cuda"
    assert suite.cpu_twin().device.type == "cpu"


def test_gpu_memory_values_are_parsed_or_refused():
    from optimizer.api import gpu_memory_budget
    from optimizer.errors import UsageError

    assert gpu_memory_budget(None) is None
    assert gpu_memory_budget("60%") == pytest.approx(0.6)
    assert gpu_memory_budget("2G") == 2 << 30
    for bad in ("0%", "150%", "lots%"):
        with pytest.raises(UsageError, match="share must be in"):
            gpu_memory_budget(bad)
    for bad in ("off", "-1G", "12X"):
        with pytest.raises(UsageError, match="--gpu-memory takes a size .* not '"):
            gpu_memory_budget(bad)


def test_the_cli_prints_a_warning_as_one_line(monkeypatch, capsys):
    import warnings as w

    from optimizer.cli import one_line_warnings

    monkeypatch.setattr(w, "showwarning", w.showwarning)  # put back after the test
    one_line_warnings()
    with w.catch_warnings():
        w.simplefilter("always")
        w.warn(
            "out of cuda memory scoring a 6000x4000 candidate alone", RuntimeWarning, stacklevel=1
        )
    err = capsys.readouterr().err
    assert err.strip() == "warning: out of cuda memory scoring a 6000x4000 candidate alone"


def test_an_image_sent_to_the_cpu_does_not_hold_up_the_others(monkeypatch):
    suite, scorer = _scorer(["psnr"], latency=0.0)
    twin = MetricSuite.build(["psnr"], device="cpu", batching=False)
    scorer._twin = twin
    psnr = suite.metrics[0]
    real = psnr.score

    def no_room_for_seven(candidates, prepared):  # "out of memory" for the marked image only
        if bool((candidates[:, 0, 0, 0] * 255).round().eq(7).any()):
            _oom()
        return real(candidates, prepared)

    monkeypatch.setattr(psnr, "score", no_room_for_seven)
    release = threading.Event()
    cpu_score = twin.score

    def slow_cpu(prepared, candidates):
        assert release.wait(30)
        return cpu_score(prepared, candidates)

    monkeypatch.setattr(twin, "score", slow_cpu)
    big, other = _crops(32, 40)[:2]
    marked = noise(big)
    marked[0, 0, 0] = 7
    with pytest.warns(RuntimeWarning, match="scored on the CPU"), scorer:
        on_cpu = scorer.submit(scorer.prepare(big), marked)
        on_device = scorer.submit(scorer.prepare(other), noise(other))
        assert on_device.result(30)["psnr"] > 20  # served while the CPU one still waits
        assert not on_cpu.done()
        release.set()
        assert on_cpu.result(30)["psnr"] > 20
