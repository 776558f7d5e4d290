"""The per-image oracle: for each image, each arm (codec + chroma subsampling) and each target, the
lowest quality whose SSIMULACRA2 passes, and the smallest passing file over the arms.

    python -m benchmarks.oracle --corpus DIR [--corpus DIR2] [--targets 60,70,80,85,90]
        [--jobs 2] [--csv FILE] [--no-write]

Arms: AVIF 4:2:0 and 4:4:4 (speed 6), WebP (method 4), JPEG 4:2:0 and 4:4:4 (progressive,
optimised): each codec's default options but the subsampling; no resize, no sharpening. Images
with transparency are flattened on white for JPEG (as `tune` and `bench_optimize` do); AVIF and
WebP keep the alpha. Grey images have no chroma: their 4:4:4 arms are their 4:2:0 files, probed
once.

Which qualities are probed, per image and arm: a coarse pass every 5 qualities over the codec's
range (AVIF and WebP 0..100, JPEG 1..100, the range's bottom included), then, for each target,
every quality from 2 below the last failing coarse quality up to the first passing one. Scores
are nearly but not exactly monotone in quality, so the lowest passing quality is the lowest
probed quality that passes (every quality in the window checked), in steps of 1.

Every probe is cached on disk in benchmarks/.cache/oracle.sqlite (gitignored): (image file
sha256, arm, quality, spec) -> (bytes, ssimulacra2, seconds), where spec hashes the metric's
description, the encoders' versions and each arm's full options, so a change to any of them
measures afresh instead of reusing stale rows. WAL mode and a busy timeout make it safe for the
worker processes (and other runs) writing at once.

Public API: `ARMS`, `arm_candidate`, `measure`, `lowest_passing`, `oracle`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import random
import re
import sqlite3
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date
from pathlib import Path

import pandas as pd

from optimizer.codecs import CODECS
from optimizer.images import iter_image_files
from optimizer.recipe import Candidate

from ._results import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CACHE = ROOT / "benchmarks" / ".cache" / "oracle.sqlite"

ARMS: tuple[str, ...] = ("avif:4:2:0", "avif:4:4:4", "webp", "jpeg:4:2:0", "jpeg:4:4:4")
TARGETS: tuple[float, ...] = (60, 70, 80, 85, 90)
METRIC = "ssimulacra2"
STEP = 5  # the coarse pass: every STEP qualities
BELOW = 2  # the fine window starts this far below the last failing coarse quality
WHITE = (255, 255, 255)  # JPEG flattens transparency on white
#: a grey image's 4:4:4 arm is the same file as its 4:2:0 arm (AVIF writes 4:0:0, JPEG one plane)
GREY_SAME_AS = {"avif:4:4:4": "avif:4:2:0", "jpeg:4:4:4": "jpeg:4:2:0"}
GRAPHIC = re.compile(r"s(\d+)_\d+_\w+\.png")  # a file of benchmarks.graphics
COLUMNS = ["image", "sha", "arm", "quality", "bytes", METRIC]


def arm_candidate(arm: str, quality: int) -> Candidate:
    """The recipe of `arm` at `quality`: the codec's default options but the subsampling."""
    codec, _, subsampling = arm.partition(":")
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    return Candidate.make(codec, quality, **({"subsampling": subsampling} if subsampling else {}))


def quality_range(arm: str) -> tuple[int, int]:
    return CODECS[arm.partition(":")[0]].quality_range


def coarse_qualities(arm: str, step: int = STEP) -> list[int]:
    lo, hi = quality_range(arm)
    return sorted(set(range(hi, lo - 1, -step)) | {lo})


def spec(suite) -> str:
    """What a cached probe depends on besides the image, arm and quality."""
    from PIL import __version__ as pillow
    from PIL import features

    blob = json.dumps(
        {
            "metric": suite.describe(),
            "pillow": pillow,
            "encoders": {k: features.version(k) for k in ("avif", "webp", "jpg")},
            "arms": {a: arm_candidate(a, 50).as_dict()["options"] for a in ARMS},
            "background": WHITE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ProbeCache:
    """(sha, arm, quality, spec) -> (bytes, score, seconds) in SQLite; several processes write at
    once (WAL, busy timeout, retries). A write that still cannot get through is dropped (that
    probe is measured again by a later run), never an error."""

    def __init__(self, path: Path, *, timeout: float = 60.0, attempts: int = 5):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.attempts = attempts
        self.con = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        self._retry(lambda: self.con.execute("PRAGMA journal_mode=WAL"))
        self.con.execute("PRAGMA synchronous=NORMAL")
        self._retry(
            lambda: self.con.execute(
                "CREATE TABLE IF NOT EXISTS probes (sha TEXT, arm TEXT, quality INTEGER, "
                "spec TEXT, bytes INTEGER, score REAL, seconds REAL, "
                "PRIMARY KEY (sha, arm, quality, spec))"
            )
        )

    def _retry(self, op):
        for attempt in range(self.attempts):
            try:
                return op()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
        return None

    def rows(self, sha: str, spec_: str) -> dict[tuple[str, int], tuple[int, float, float]]:
        cur = self._retry(
            lambda: self.con.execute(
                "SELECT arm, quality, bytes, score, seconds FROM probes WHERE sha = ? AND spec = ?",
                (sha, spec_),
            ).fetchall()
        )
        return {(a, q): (b, s, t) for a, q, b, s, t in cur or ()}

    def put(self, sha: str, arm: str, quality: int, spec_: str, row: tuple) -> None:
        self._retry(
            lambda: self.con.execute(
                "INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sha, arm, quality, spec_, *row),
            )
        )

    def close(self) -> None:
        self.con.close()


# One suite and one cache connection per worker process, built once.
_WORKER: dict = {}


def _init_worker(cache_path: str) -> None:
    import torch

    from optimizer.metrics import MetricSuite

    torch.set_num_threads(1)
    suite = MetricSuite.build([METRIC], device="cpu")
    _WORKER.update(suite=suite, spec=spec(suite), cache=ProbeCache(Path(cache_path)))


def _measure_image(path: str, targets: tuple[float, ...]) -> dict:
    """Probe one image's arms (cache first); the rows, new encodes and their seconds."""
    from optimizer.images import load
    from optimizer.search import ImageSet

    t0 = time.perf_counter()
    suite, spec_, cache = _WORKER["suite"], _WORKER["spec"], _WORKER["cache"]
    try:
        src = load(path, min_side=suite.min_side)
    except Exception as exc:  # noqa: BLE001 - the same skips as imgtune, said out loud
        return {"path": path, "error": f"{type(exc).__name__}: {exc}"}
    images = ImageSet([src], suite, background=WHITE)
    known = cache.rows(src.sha256, spec_)
    grey = src.channels in (1, 2)
    probes: dict[tuple[str, int], tuple[int, float]] = {}
    new = 0
    new_seconds = 0.0

    def probe(arm: str, q: int) -> float:
        nonlocal new, new_seconds
        if (arm, q) in probes:
            return probes[(arm, q)][1]
        same = GREY_SAME_AS.get(arm, arm) if grey else arm
        hit = known.get((same, q))
        if hit is None:
            t = time.perf_counter()
            nbytes, values = images.score(0, arm_candidate(same, q))
            hit = (nbytes, float(values[METRIC]), time.perf_counter() - t)
            cache.put(src.sha256, same, q, spec_, hit)
            known[(same, q)] = hit
            new += 1
            new_seconds += hit[2]
        probes[(arm, q)] = hit[:2]
        return hit[1]

    for arm in ARMS:
        lo, _ = quality_range(arm)
        coarse = coarse_qualities(arm)
        scores = {q: probe(arm, q) for q in coarse}
        for target in targets:
            passing = [q for q in coarse if scores[q] >= target]
            if not passing:
                continue  # nothing in range passes: no row for this arm and target
            first = min(passing)
            below = [q for q in coarse if q < first]
            if below:
                for q in range(max(lo, max(below) - BELOW), first):
                    probe(arm, q)
    rows = [
        {"image": src.path.name, "sha": src.sha256, "arm": a, "quality": q, "bytes": b, METRIC: s}
        for (a, q), (b, s) in probes.items()
    ]
    return {
        "path": path,
        "rows": rows,
        "new": new,
        "new_seconds": new_seconds,
        "probe_seconds": sum(
            known[(GREY_SAME_AS.get(a, a) if grey else a, q)][2] for a, q in probes
        ),
        "seconds": time.perf_counter() - t0,
    }


def measure(
    paths: list[Path],
    targets=TARGETS,
    jobs: int = 2,
    *,
    cache_path: Path = CACHE,
) -> pd.DataFrame:
    """Probe every image of `paths` (cache first, on `jobs` processes) enough to know each arm's
    lowest passing quality at each target. Columns image (file name), sha, arm, quality, bytes,
    ssimulacra2: every probe made, from the cache or new. `attrs` holds encodes (new probes),
    encode_seconds (their encode + score time), probe_seconds (the same for every probe,
    cached ones as first measured), seconds (wall) and skipped (names)."""
    t0 = time.perf_counter()
    targets = tuple(float(t) for t in targets)
    paths = [Path(p) for p in paths]
    results: dict[str, dict] = {}

    def report(k: int, res: dict) -> None:
        name = Path(res["path"]).name
        if "error" in res:
            print(f"[{k}/{len(paths)}] {name}: skipped ({res['error']})", file=sys.stderr)
            return
        print(
            f"[{k}/{len(paths)}] {name}: {len(res['rows'])} probes, {res['new']} new "
            f"({res['new_seconds']:.0f} s of encodes), {res['seconds']:.0f} s; "
            f"{time.perf_counter() - t0:.0f} s elapsed",
            file=sys.stderr,
            flush=True,
        )

    if jobs <= 1:
        _init_worker(str(cache_path))
        for k, p in enumerate(paths, 1):
            results[str(p)] = _measure_image(str(p), targets)
            report(k, results[str(p)])
    else:
        ctx = multiprocessing.get_context("spawn")  # torch in a forked child is asking for trouble
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(str(cache_path),)
        ) as pool:
            futures = [pool.submit(_measure_image, str(p), targets) for p in paths]
            for k, fut in enumerate(as_completed(futures), 1):
                res = fut.result()
                results[res["path"]] = res
                report(k, res)
    ok = [results[str(p)] for p in paths if "rows" in results[str(p)]]
    table = pd.DataFrame([r for res in ok for r in res["rows"]], columns=COLUMNS)
    table["arm"] = pd.Categorical(table["arm"], categories=ARMS)
    table = table.sort_values(["image", "arm", "quality"], kind="stable").reset_index(drop=True)
    table["arm"] = table["arm"].astype(str)
    table.attrs.update(
        encodes=sum(r["new"] for r in ok),
        encode_seconds=sum(r["new_seconds"] for r in ok),
        probe_seconds=sum(r["probe_seconds"] for r in ok),
        seconds=time.perf_counter() - t0,
        skipped=[Path(r["path"]).name for r in results.values() if "error" in r],
    )
    return table


def lowest_passing(table: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per image and arm, the lowest probed quality whose score meets `target`, and its bytes;
    no row where nothing in range passes. Columns image, arm, quality, bytes."""
    ok = table[table[METRIC] >= target]
    if ok.empty:
        return pd.DataFrame(columns=["image", "arm", "quality", "bytes"])
    idx = ok.groupby(["image", "arm"], sort=False)["quality"].idxmin()
    out = ok.loc[idx.values, ["image", "arm", "quality", "bytes"]]
    return out.sort_values(["image", "arm"], key=_arm_order).reset_index(drop=True)


def oracle(table: pd.DataFrame, target: float, arms=ARMS) -> pd.DataFrame:
    """Per image, the smallest of `arms`' lowest-passing files (ties: the first of `arms`).
    Columns image, arm, quality, bytes; no row for an image no arm can pass."""
    lp = lowest_passing(table, target)
    lp = lp[lp["arm"].isin(list(arms))]
    if lp.empty:
        return lp.reset_index(drop=True)
    rank = lp["arm"].map({a: i for i, a in enumerate(arms)})
    lp = lp.assign(_rank=rank).sort_values(["image", "bytes", "_rank"])
    return lp.groupby("image", sort=True).head(1).drop(columns="_rank").reset_index(drop=True)


def _arm_order(col: pd.Series) -> pd.Series:
    if col.name == "arm":
        return col.map({a: i for i, a in enumerate(ARMS)})
    return col


# --- the command line -----------------------------------------------------------------------

GROUPS = {
    "avif (either)": ("avif:4:2:0", "avif:4:4:4"),
    "jpeg (either)": ("jpeg:4:2:0", "jpeg:4:4:4"),
}


def summarise(table: pd.DataFrame, target: float) -> dict:
    images = sorted(table["image"].unique())
    best = oracle(table, target)
    alone = {}
    for name, arms in [*((a, (a,)) for a in ARMS), *GROUPS.items()]:
        o = oracle(table, target, arms)
        alone[name] = {"bytes": int(o["bytes"].sum()), "missing": len(images) - len(o)}
    wins = best["arm"].value_counts().to_dict()
    return {
        "target": target,
        "images": len(images),
        "covered": len(best),
        "bytes": int(best["bytes"].sum()),
        "alone": alone,
        "wins": {a: int(wins.get(a, 0)) for a in ARMS},
    }


def _cell(total: int, missing: int, ref: int) -> str:
    if missing:
        return f"{total:,} ({missing} never pass)"
    return f"{total:,} ({100 * (total / ref - 1):+.1f}%)" if ref else f"{total:,}"


def corpus_lines(name: str, table: pd.DataFrame, targets, source_bytes: int) -> list[str]:
    a = table.attrs
    n = table["image"].nunique()
    lines = [
        f"### `{name}`: {n} images, {source_bytes:,} bytes",
        "",
        f"Probes: {len(table):,} ({len(table) / max(n, 1):.0f} per image); encodes made by this "
        f"run: {a['encodes']:,}; encode + score time of all the probes (as first measured, "
        f"one core each): {a['probe_seconds'] / 60:.0f} min.",
    ]
    seeds = {m.group(1) for m in map(GRAPHIC.fullmatch, table["image"].unique()) if m}
    if len(seeds) == 1 and all(GRAPHIC.fullmatch(x) for x in table["image"].unique()):
        lines[-1] = (
            f"Rendered by `python -m benchmarks.graphics --out DIR --seed {seeds.pop()} "
            f"--count {n}`. " + lines[-1]
        )
    lines += [
        "",
        "| ssimulacra2 >= | oracle bytes | "
        + " | ".join(f"{x} alone" for x in [*ARMS, *GROUPS])
        + " | wins ("
        + ", ".join(ARMS)
        + ") |",
        "| ---: | ---: | " + " | ".join("---:" for _ in [*ARMS, *GROUPS]) + " | --- |",
    ]
    for t in targets:
        s = summarise(table, t)
        miss = f" ({s['images'] - s['covered']} never pass)" if s["covered"] < s["images"] else ""
        lines.append(
            f"| {t:g} | {s['bytes']:,}{miss} | "
            + " | ".join(
                _cell(s["alone"][x]["bytes"], s["alone"][x]["missing"], s["bytes"])
                for x in [*ARMS, *GROUPS]
            )
            + " | "
            + " / ".join(str(s["wins"][x]) for x in ARMS)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", action="append", required=True, help="a folder (repeatable)")
    ap.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS))
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--csv", help="write every probe (all corpora) to this CSV file")
    ap.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = ap.parse_args(argv)
    targets = tuple(float(t) for t in args.targets.split(","))
    command = "python -m benchmarks.oracle " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## Per-image oracle: the smallest passing file per image over five arms",
        "",
        f"Command: `{command.strip()}`  ",
        f"{platform.machine()}, Python {platform.python_version()}, "
        f"{args.jobs} worker process(es); date {date.today()}",
        "",
        "Arms: AVIF 4:2:0 and 4:4:4 (speed 6), WebP (method 4), JPEG 4:2:0 and 4:4:4 "
        "(progressive, optimised); no resize, no sharpening. Per image and arm, the lowest "
        "quality (steps of 1) whose SSIMULACRA2 meets the target: a coarse pass every 5 "
        "qualities, then every quality from 2 below the last failing coarse one to the first "
        "passing one. The oracle takes, per image, the smallest of the arms' files; an arm "
        "'alone' takes that arm's file on every image (percent: against the oracle; 'never "
        "pass': images where no quality of the arm meets the target, left out of its total). "
        "Wins: how many images each arm gives the oracle's file. JPEG flattens transparency on "
        "white (scored against the flattened source); grey images' 4:4:4 arms are their 4:2:0 "
        "files. Probes are cached in benchmarks/.cache/oracle.sqlite: a rerun encodes nothing.",
    ]
    frames = []
    for corpus in map(Path, args.corpus):
        paths = [p for p in iter_image_files(corpus, follow_symlinks=True) if isinstance(p, Path)]
        if not paths:
            raise SystemExit(f"{corpus}: no image")
        print(f"{corpus}: {len(paths)} images", file=sys.stderr)
        table = measure(paths, targets, jobs=args.jobs)
        frames.append(table.assign(corpus=corpus.name))
        src_bytes = sum(p.stat().st_size for p in paths if p.name in set(table["image"]))
        part = corpus_lines(corpus.name, table, targets, src_bytes)
        if table.attrs["skipped"]:
            part += ["", f"Skipped: {', '.join(table.attrs['skipped'])}."]
        print("\n".join(part))
        print(f"({table.attrs['seconds']:.0f} s wall)\n")
        lines += ["", *part]
    if args.csv:
        pd.concat(frames).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if not args.no_write:
        write_section(RESULTS, "oracle", lines)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
