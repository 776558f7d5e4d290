"""`python -m benchmarks.gpu`: what a CUDA device does for imgtune's scoring, measured.

1. Pairs per second for each metric at 768x512 and 3840x2160, at batch 1 (one candidate per
   call) and batched (several candidates of one reference in one call), with the largest
   |CUDA - CPU| difference on the same pairs.
2. Across images, as a run scores: every candidate against its own reference (different
   images of one size), one per call against all of them through the `BatchScorer` (one owner
   of the device, micro-batches), and whether the batched scores equal the single ones.
3. TF32: LPIPS's CUDA-vs-CPU difference with cuDNN's TF32 convolutions on (torch's default on
   Ampere and later) and off, and through the suite (which turns it off while scoring).
4. Batch positions: the reference itself scored at each position of a batch of three
   (SSIMULACRA2 must give 100, SSIM 1).
5. End to end: `imgtune optimize` on a folder with `--device cuda` against `--device cpu`
   (images per second, same outputs?), and on CUDA under a small `--gpu-memory`.

On a machine without CUDA it says so and exits 0 (nothing to measure). Writes its tables into
benchmarks/RESULTS.md (section `gpu`) with the GPU's name and the command.

    python -m benchmarks.gpu [--folder sample_images] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from ._results import write_section
from .bench_metrics import make_pair_set

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SIZES = {"768x512": (768, 512), "3840x2160": (3840, 2160)}
#: candidates per size, and how many of them form one batch in the batched rows
COUNTS = {"768x512": (32, 32), "3840x2160": (8, 4)}
METRICS = ("ssimulacra2", "ssim", "ms_ssim", "psnr", "lpips")
#: the output compared between devices for each metric
OUTPUT = {"ms_ssim": "ms_ssim", "ssim": "ssim", "psnr": "psnr", "lpips": "lpips"}


def pair_set(size: tuple[int, int], n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    return make_pair_set(n, size)


def _suite(name: str, device: str, wdir: Path):
    from optimizer.metrics import MetricSuite

    return MetricSuite.build([name], device=device, weights_dir=wdir)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator, cuDNN's algorithm choice
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # scores come back as Python floats: the device has finished
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(name: str, size_name: str, wdir: Path, repeats: int) -> dict:
    n, batch = COUNTS[size_name]
    ref, cands = pair_set(SIZES[size_name], n)
    gpu = _suite(name, "cuda", wdir)
    prepared = gpu.prepare(ref)
    h, w = ref.shape[:2]
    gpu.batch_pixels = h * w  # batch 1
    t1 = _best(lambda: gpu.score(prepared, cands), repeats)
    gpu.batch_pixels = h * w * batch
    tb = _best(lambda: gpu.score(prepared, cands), repeats)
    out = OUTPUT.get(name, name)
    got = [s[out] for s in gpu.score(prepared, cands)]
    k = 2 if size_name != "768x512" else n  # the CPU reference values: a few pairs at 4K
    cpu = _suite(name, "cpu", wdir)
    want = [s[out] for s in cpu.score(cpu.prepare(ref), cands[:k])]
    diff = max(abs(a - b) for a, b in zip(got[:k], want, strict=True))
    return {
        "metric": name,
        "size": size_name,
        "n": n,
        "batch": batch,
        "pps1": n / t1,
        "ppsb": n / tb,
        "diff": diff,
        "compared": k,
    }


def cross_image(name: str, size_name: str, wdir: Path, repeats: int) -> dict:
    """Each candidate against its own reference (the images differ: shifted copies), one per
    call as a run asks: scored one at a time, and through the batch scorer."""
    from optimizer.metrics.batching import BatchScorer

    n, batch = COUNTS[size_name]
    ref, cands = pair_set(SIZES[size_name], n)
    refs = [np.ascontiguousarray(np.roll(ref, 7 * i, axis=1)) for i in range(n)]
    cands = [np.ascontiguousarray(np.roll(c, 7 * i, axis=1)) for i, c in enumerate(cands)]
    cands[n // 2] = refs[n // 2]  # one identical pair, in the middle of a batch
    suite = _suite(name, "cuda", wdir)
    h, w = ref.shape[:2]
    scorer = BatchScorer(suite, max_batch_pixels=h * w * batch)
    prepared = [scorer.prepare(r) for r in refs]
    singles = []

    def one_by_one() -> None:
        singles[:] = [suite.score(p, [c])[0] for p, c in zip(prepared, cands, strict=True)]

    batched = []

    def through_scorer() -> None:
        futures = [scorer.submit(p, c) for p, c in zip(prepared, cands, strict=True)]
        batched[:] = [f.result() for f in futures]

    t1 = _best(one_by_one, repeats)
    tb = _best(through_scorer, repeats)
    out = OUTPUT.get(name, name)
    diff = max(abs(a[out] - b[out]) for a, b in zip(batched, singles, strict=True))
    scorer.close()
    return {
        "metric": name, "size": size_name, "n": n, "batch": batch, "pps1": n / t1,
        "ppsb": n / tb, "diff": diff, "identical": batched[n // 2][out],
        "largest": scorer.stats.largest_batch,
    }  # fmt: skip


def tf32_lpips(wdir: Path) -> dict:
    """LPIPS's largest |CUDA - CPU|: the metric called directly with TF32 on and off, and
    through the suite (TF32 off while it scores, whatever the flags)."""
    import torch

    def to_tensor(px: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(px).permute(2, 0, 1)[None].float().div(255)

    ref, cands = pair_set(SIZES["768x512"], 8)
    cpu = _suite("lpips", "cpu", wdir)
    want = np.array([s["lpips"] for s in cpu.score(cpu.prepare(ref), cands)])
    gpu = _suite("lpips", "cuda", wdir)
    metric = gpu.metrics[0]
    y = to_tensor(ref).cuda()
    out = {}
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.inference_mode():
                got = np.array([metric(to_tensor(c).cuda(), y)["lpips"].item() for c in cands])
            out[tf32] = float(np.abs(got - want).max())
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        got = np.array([s["lpips"] for s in gpu.score(gpu.prepare(ref), cands)])
        out["suite"] = float(np.abs(got - want).max())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def batch_positions(wdir: Path) -> list[tuple[str, list[float]]]:
    ref, cands = pair_set(SIZES["768x512"], 2)
    rows = []
    for name, out in (("ssimulacra2", "ssimulacra2"), ("ssim", "ssim")):
        suite = _suite(name, "cuda", wdir)
        prepared = suite.prepare(ref)
        values = []
        for pos in range(3):
            batch = list(cands)
            batch.insert(pos, ref)
            values.append(suite.score(prepared, batch)[pos][out])
        rows.append((name, values))
    return rows


def end_to_end(folder: Path, device: str, gpu_memory: str | None = None) -> dict:
    from optimizer.api import optimize

    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        optimize(
            folder, Path(tmp) / "out", device=device, gpu_memory=gpu_memory,
            on_result=outcomes.append,
        )  # fmt: skip
        dt = time.perf_counter() - t0
    outs = sorted((o.source, str(o.status), o.codec, o.quality) for o in outcomes)
    label = device + (f" --gpu-memory {gpu_memory}" if gpu_memory else "")
    return {"device": label, "images": len(outcomes), "s": dt, "outputs": outs}


def _every_metric_and_size(measure, wdir: Path, repeats: int, line) -> list[dict]:
    """`measure` for each size and metric, each row printed by `line` as it comes."""
    rows = []
    for size_name in SIZES:
        for name in METRICS:
            rows.append(measure(name, size_name, wdir, repeats))
            print(line(rows[-1]))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=ROOT / "sample_images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "benchmarks.gpu: no CUDA device here (torch.cuda.is_available() is False); "
            "nothing measured"
        )
        return
    from ._weights import random_alexnet_dir

    wdir = random_alexnet_dir()
    gpu_name = torch.cuda.get_device_name(0)
    threads = torch.get_num_threads()  # before optimize() sizes its own pools
    print(f"{gpu_name}, torch {torch.__version__}, {threads} CPU threads")
    rows = _every_metric_and_size(
        throughput,
        wdir,
        args.repeats,
        lambda r: (
            f"{r['metric']} {r['size']}: batch 1 {r['pps1']:.1f} pairs/s, batch "
            f"{r['batch']} {r['ppsb']:.1f} pairs/s, max |cuda-cpu| {r['diff']:.2e} "
            f"({r['compared']} pairs)"
        ),
    )
    across = _every_metric_and_size(
        cross_image,
        wdir,
        args.repeats,
        lambda r: (
            f"{r['metric']} {r['size']} across {r['n']} images: one by one "
            f"{r['pps1']:.1f} pairs/s, batch scorer {r['ppsb']:.1f} pairs/s (largest batch "
            f"{r['largest']}), max |batched-single| {r['diff']:.1e}, "
            f"identical pair {r['identical']}"
        ),
    )
    tf32 = tf32_lpips(wdir)
    print(
        f"lpips max |cuda-cpu|: TF32 on {tf32[True]:.2e}, off {tf32[False]:.2e}, "
        f"through the suite {tf32['suite']:.2e}"
    )
    positions = batch_positions(wdir)
    for name, values in positions:
        print(f"{name} of the reference at batch positions 1..3: {values}")
    e2e = [end_to_end(args.folder, d) for d in ("cpu", "cuda")]
    e2e.append(end_to_end(args.folder, "cuda", gpu_memory="256M"))
    same = e2e[0]["outputs"] == e2e[1]["outputs"] == e2e[2]["outputs"]
    for r in e2e:
        print(f"optimize --device {r['device']}: {r['images']} images in {r['s']:.1f} s")
    print(f"same codec and quality per image on every row: {same}")
    if args.no_write:
        return
    command = "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## GPU: metric throughput, CUDA-vs-CPU numbers, end-to-end optimize",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {gpu_name}, {platform.machine()}, {threads} CPU threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}; date "
        f"{date.today().isoformat()}  ",
        "LPIPS backbone: random AlexNet (no pretrained weights there; timing unaffected)",
        "",
        "Pairs per second (JPEG q30..q95 of coffee; best of the repeats after a warm-up), "
        "one candidate per call and several of one reference per call; the last "
        "column is the largest |CUDA - CPU| over the pairs compared.",
        "",
        "| metric | size | pairs | batch 1 (pairs/s) | batched | batched (pairs/s) | "
        "max abs CUDA-CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['metric']} | {r['size']} | {r['n']} | {r['pps1']:.1f} | {r['batch']} | "
            f"{r['ppsb']:.1f} | {r['diff']:.1e} ({r['compared']} pairs) |"
            for r in rows
        ),
        "",
        "Across images, as a run scores (each candidate against its own reference: shifted "
        "copies of coffee, one of them scored against itself), one call per candidate: "
        "scored one at a time, and through the batch scorer (`optimizer.metrics.batching`, "
        "what `tune` and `optimize` use on a GPU).",
        "",
        "| metric | size | images | one at a time (pairs/s) | batch scorer (pairs/s) | "
        "largest batch | max abs batched-single | identical pair |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['metric']} | {r['size']} | {r['n']} | {r['pps1']:.1f} | {r['ppsb']:.1f} | "
            f"{r['largest']} | {r['diff']:.1e} | {r['identical']:.6f} |"
            for r in across
        ),
        "",
        f"LPIPS, largest |CUDA - CPU| on 8 pairs, the metric called directly: cuDNN TF32 on "
        f"(torch's default) {tf32[True]:.1e}, off {tf32[False]:.1e}; through the suite with "
        f"the flags on (it turns TF32 off while scoring) {tf32['suite']:.1e}.",
        "",
        "The reference scored as its own candidate at batch positions 1, 2, 3 (of 3): "
        + "; ".join(f"{n} {', '.join(f'{v:.6f}' for v in vals)}" for n, vals in positions)
        + ".",
        "",
        f"End to end, `optimize` on `{args.folder.name}` (default target and codecs):",
        "",
        "| device | images | seconds | images/s |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {r['device']} | {r['images']} | {r['s']:.1f} | {r['images'] / r['s']:.2f} |"
            for r in e2e
        ),
        "",
        f"Same codec and quality chosen per image on every row: {'yes' if same else 'no'}.",
    ]
    write_section(RESULTS, "gpu", lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
