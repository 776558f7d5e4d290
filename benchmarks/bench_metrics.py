"""Composite candidates per second at 768x512: imgtune's suite against the seed's approach.

The seed scored each pair from scratch: skimage SSIM (float64), a fresh `lpips` call on the pair
(reference features recomputed every time) and PSNR. imgtune prepares the reference once and
scores candidates in batches in torch. Both must give the same numbers; the script checks that.

    python -m benchmarks.bench_metrics [--candidates 16] [--weights DIR] [--device cpu]

Without real LPIPS weights (`--weights DIR` or the torch cache), a randomly initialised AlexNet
is used for *both* sides: the timing is the same, the numbers are still compared like for like.
Writes its table into benchmarks/RESULTS.md (between its markers) with the command line.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from optimizer.metrics import MetricSuite
from optimizer.metrics.lpips_metric import LPIPS, find_backbone_weights

from ._results import write_section
from ._weights import random_alexnet_dir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SIZE = (768, 512)


def make_pair_set(n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    src = Image.open(ROOT / "sample_images" / "coffee.png").convert("RGB")
    ref = src.resize(SIZE, Image.Resampling.LANCZOS)
    cands = []
    for q in np.linspace(30, 95, n).round().astype(int):
        buf = io.BytesIO()
        ref.save(buf, "JPEG", quality=int(q))
        cands.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.asarray(ref), cands


def weights_dir(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), "real (from --weights)"
    try:
        return find_backbone_weights("alex", allow_download=False).parent, "real (torch cache)"
    except Exception:  # noqa: BLE001 - no real weights here: time a random backbone instead
        return (
            random_alexnet_dir(),
            "random AlexNet (no pretrained weights on this machine; timing unaffected)",
        )


def seed_scores(ref: np.ndarray, cands: list[np.ndarray], lpips_module, device) -> list[float]:
    """The straightforward approach: everything recomputed per pair."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    out = []
    for c in cands:
        a, b = ref / 255.0, c / 255.0
        s = structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=-1,
        )
        p = peak_signal_noise_ratio(a, b, data_range=1)

        def t(x):
            return torch.from_numpy(x).permute(2, 0, 1)[None].float().to(device)

        with torch.no_grad():
            d = lpips_module(t(a), t(b), normalize=True).item()
        out.append((0.3 * (1 - d) + 0.3 * s + 0.1 * min(p / 50, 1)) / 0.7)
    return out


def ours_scores(suite: MetricSuite, ref: np.ndarray, cands: list[np.ndarray]) -> list[float]:
    prepared = suite.prepare(ref)
    return [s.composite for s in suite.score(prepared, cands)]


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up (allocations, thread pools)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return best, res


def run(device: str, n: int, wdir: Path, repeats: int) -> dict:
    dev = torch.device(device)
    ref, cands = make_pair_set(n)
    metric = LPIPS(dev, weights_dir=wdir)
    from optimizer.metrics.psnr import PSNR
    from optimizer.metrics.ssim import SSIM

    suite = MetricSuite([metric, SSIM(dev), PSNR(dev)], device=dev)
    # The seed uses the lpips package as shipped (default layout), loaded with the same weights.
    from optimizer.metrics.lpips_metric import load_lpips_network

    stock = load_lpips_network("alex", wdir).to(dev)
    seed_t, seed_vals = timed(lambda: seed_scores(ref, cands, stock, dev), repeats)
    ours_t, ours_vals = timed(lambda: ours_scores(suite, ref, cands), repeats)
    diff = float(np.max(np.abs(np.array(seed_vals) - np.array(ours_vals))))
    return {
        "device": str(dev),
        "n": n,
        "seed_cps": n / seed_t,
        "ours_cps": n / ours_t,
        "ratio": seed_t / ours_t,
        "max_diff": diff,
    }


def write_results(rows: list[dict], command: str, weights_note: str) -> None:
    lines = [
        "## Metric throughput: composite (LPIPS + SSIM + PSNR) candidates per second, 768x512",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, Python {platform.python_version()}, torch {torch.__version__}; "
        f"date {date.today().isoformat()}  ",
        f"LPIPS backbone: {weights_note}",
        "",
        "| device | candidates | seed approach (cand/s) | imgtune (cand/s) | speed-up | "
        "max composite difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['n']} | {r['seed_cps']:.2f} | {r['ours_cps']:.2f} | "
            f"{r['ratio']:.2f}x | {r['max_diff']:.1e} |"
        )
    lines += [
        "",
        "Seed approach: per pair, skimage SSIM (float64) + `lpips` as shipped on the pair "
        "(reference features recomputed) + PSNR. imgtune: reference prepared once (SSIM "
        "statistics, LPIPS features), candidates scored under a pixel budget (one at a time on "
        "the CPU, measured fastest there; large batches on CUDA), LPIPS channels-last on the CPU. "
        "Goal: at least 3x.",
        "",
        "Why the CPU ratio stops near 2x (measured with torch's profiler at 768x512, 2 cores): "
        "one AlexNet forward costs 85-100 ms and the seed pays two, so caching the reference "
        "saves at most half of LPIPS; our torch SSIM costs 45-75 ms (two depthwise 11-tap "
        "convolutions over 9 planes at ~22 ms each are the floor; grouped conv beat conv1d, "
        "unfold and shifted sums) against skimage's ~140 ms. Seed ~340 ms vs ours >= ~150 ms "
        "per candidate bounds the ratio near 2.3x with exact numbers.",
    ]
    write_section(RESULTS, "bench_metrics", lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", help="folder with the real AlexNet checkpoint")
    ap.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, + cuda)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    wdir, note = weights_dir(args.weights)
    rows = []
    for d in devices:
        r = run(d, args.candidates, wdir, args.repeats)
        rows.append(r)
        print(
            f"{d}: seed {r['seed_cps']:.2f} cand/s, imgtune {r['ours_cps']:.2f} cand/s, "
            f"{r['ratio']:.2f}x, max composite difference {r['max_diff']:.1e}"
        )
        if r["max_diff"] > 1e-4:
            sys.exit(f"numbers differ by {r['max_diff']}: the comparison is void")
    if not args.no_write:
        command = "python -m benchmarks.bench_metrics " + " ".join(argv or sys.argv[1:])
        write_results(rows, command.strip(), note)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
