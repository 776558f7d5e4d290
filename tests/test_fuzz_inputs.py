"""Fuzz: thousands of damaged image files through `images.load` and through `imgtune optimize`.

The corpus (tests/fuzz_corpus.py, seed `SEED`) is small valid PNG, JPEG, WebP, AVIF, GIF and
TIFF files with one generic or format-aware mutation each. Every case must load, or raise an
`ImageError` subclass whose message is one line naming the file; anything else fails the test
by case id. The loads run in child processes so that a hang or a runaway allocation fails the
test instead of stalling or swapping the machine: each case gets a wall-clock limit
(`faulthandler.dump_traceback_later(exit=True)`, re-armed per case) and each child an address-space
limit (RLIMIT_AS). A child that dies is restarted after the case it died on, so one bad case does
not hide the others.

Reproduce a case:  python -m tests.fuzz_corpus --seed 0 --case ID -o case.EXT
then load("case.EXT") in Python. Another seed: IMGTUNE_FUZZ_SEED=7 pytest tests/test_fuzz_inputs.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from . import fuzz_corpus
from .fuzz_corpus import BOMB_LIMIT, Case

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("IMGTUNE_FUZZ_SEED", "0"))
MIN_CASES = 2000
#: Wall-clock seconds one load may take. The slowest cases are real decodes to 89 MP (a JPEG or
#: AVIF that declares 9459x9459, just below the pixel limit): 2-3 s on a 2-core machine with
#: both workers busy, and up to 14 s for such a JPEG with an ICC profile to convert. A hang never
#: ends, so a generous limit still catches every one, without failing a slow CI machine.
CASE_SECONDS = 20.0
#: Address space of a loading child. The largest legitimate case (89 MP RGBA) peaks at about
#: 1.6 GB resident; a decoder that believed a declared size of gigapixels would hit this limit
#: and raise MemoryError, which load turns into TooManyPixelsError, instead of swapping the
#: machine.
CHILD_MEMORY = 3 << 30
WORKERS = 2
#: A child whose cases, all together, take longer than this is killed (a backstop: the per-case
#: limit should always fire first).
CHILD_SECONDS = 240.0


# ------------------------------------------------------------------------ the loading child


def _child(manifest: str, report: str) -> None:
    """Load every (index, path) of `manifest`; one line per case in the file `report` (not on
    stdout, where a C library's chatter could split a line)."""
    import faulthandler
    import resource
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    faulthandler.enable()  # a crash in a C decoder prints where it was, on stderr
    warnings.simplefilter("ignore")  # Pillow warns about damaged metadata: not the question here
    from optimizer.images import ImageError, load

    with open(report, "a", buffering=1) as out:
        for index, path in json.loads(Path(manifest).read_text()):
            # The parent knows which case ran if the process dies before its result line.
            print(f"START {index}", file=out, flush=True)
            faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
            t0 = time.perf_counter()
            try:
                src = load(path)
                rec = {"outcome": "ok", "size": [src.width, src.height], "channels": src.channels}
            except ImageError as exc:
                rec = {"outcome": type(exc).__name__, "message": str(exc)}
            except Exception as exc:  # exactly what the fuzz test is looking for
                tb = "".join(traceback.format_exception(exc))
                rec = {"outcome": "untyped", "message": f"{type(exc).__name__}: {exc}", "tb": tb}
            faulthandler.cancel_dump_traceback_later()
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            print(f"DONE {index} {json.dumps(rec)}", file=out, flush=True)


def _run_shard(shard: list[tuple[int, str]], workdir: Path, name: str) -> dict[int, dict]:
    """Results of the cases of `shard`, keyed by index. A case that kills or hangs its child
    gets outcome 'died' (with the child's stderr: faulthandler's traceback), and a new child
    goes on with the cases after it."""
    results: dict[int, dict] = {}
    todo = list(shard)
    while todo:
        manifest = workdir / f"shard-{name}-{todo[0][0]}.json"
        report = manifest.with_suffix(".out")
        manifest.write_text(json.dumps(todo))
        code = (
            f"from tests.test_fuzz_inputs import _child; _child({str(manifest)!r}, {str(report)!r})"
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=CHILD_SECONDS,
            )
            stderr, rc = proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if exc.stderr else ""
            rc = f"killed after {CHILD_SECONDS:g} s"
        running = None
        lines = report.read_text().splitlines() if report.exists() else []
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "START":
                running = int(rest)
            elif kind == "DONE":
                i, _, rec = rest.partition(" ")
                results[int(i)] = json.loads(rec)
                running = None
        left = [i for i, _ in todo if i not in results]
        if not left:
            assert rc == 0, f"a loading child failed after its last case ({rc}):\n{stderr[-3000:]}"
            break
        culprit = left[0] if running is None else running
        why = f"hung (over {CASE_SECONDS:g} s)" if "Timeout" in stderr else "killed its process"
        results[culprit] = {
            "outcome": "died",
            "message": f"{why}; exit status {rc}",
            "tb": stderr[-3000:],
        }
        todo = [(i, p) for i, p in todo if i not in results]
    return results


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return list(fuzz_corpus.corpus(SEED))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, cases) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "cases"
    d.mkdir()
    for case in cases:
        (d / case.filename).write_bytes(case.data)
    return d


@pytest.fixture(scope="module")
def results(cases, corpus_dir) -> dict[str, dict]:
    """case id -> what load did: outcome (ok, an ImageError class, untyped, died), message."""
    indexed = [(i, str(corpus_dir / c.filename)) for i, c in enumerate(cases)]
    # Interleaved shards share out the few slow cases (real decodes near the pixel limit).
    shards = [indexed[k::WORKERS] for k in range(WORKERS)]
    workdir = corpus_dir.parent
    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(_run_shard, shards, [workdir] * WORKERS, map(str, range(WORKERS))))
    merged = {i: rec for part in done for i, rec in part.items()}
    print(f"\n{len(cases)} fuzz cases loaded in {time.perf_counter() - t0:.1f} s")
    return {cases[i].id: rec for i, rec in sorted(merged.items())}


def _table(cases: list[Case], results: dict[str, dict]) -> str:
    """Outcome counts per mutation and per base, for the report and for failure messages."""
    kinds = sorted({r["outcome"] for r in results.values()}, key=lambda k: (k != "ok", k))
    short = {k: k.replace("ImageError", "").replace("Error", "") or k for k in kinds}
    lines = []
    for key in ("mutation", "base"):
        rows: dict[str, Counter] = defaultdict(Counter)
        for c in cases:
            rows[getattr(c, key)][results.get(c.id, {"outcome": "missing"})["outcome"]] += 1
        head = f"{key:<18}{'cases':>6}" + "".join(f"{short[k][:9]:>10}" for k in kinds)
        lines += [head, "-" * len(head)]
        for name, cnt in rows.items():
            total = sum(cnt.values())
            lines.append(f"{name:<18}{total:>6}" + "".join(f"{cnt[k]:>10}" for k in kinds))
        lines.append("")
    return "\n".join(lines)


def _explain(case: Case, rec: dict) -> str:
    how = f"python -m tests.fuzz_corpus --seed {SEED} --case {case.id} -o /tmp/case.{case.ext}"
    return f"{case.id} [{case.note}]: {rec['message']}\n    reproduce: {how}\n{rec.get('tb', '')}"


# ------------------------------------------------------------------------ load()


def _digest(cases) -> str:
    h = hashlib.sha256()
    for c in cases:
        h.update(c.id.encode() + b"\0" + c.data)
    return h.hexdigest()


def test_corpus_is_deterministic_and_large(cases):
    # Another process (other hash seed, nothing cached) makes the same bytes from the seed.
    code = (
        "from tests import fuzz_corpus as f, test_fuzz_inputs as t; "
        f"print(t._digest(f.corpus({SEED})))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == _digest(cases)
    one = cases[len(cases) // 2]
    assert fuzz_corpus.case_by_id(SEED, one.id).data == one.data
    assert len({c.id for c in cases}) == len(cases) >= MIN_CASES
    families = Counter(fuzz_corpus.family(c.base) for c in cases)
    assert set(families) == {"png", "jpeg", "webp", "avif", "gif", "tiff"}, families


def test_every_base_image_is_valid(tmp_path):
    # Mutating images that were already broken would test nothing: the bases must load, with
    # the alpha they were made with, and the animated ones be refused as animated.
    from optimizer.images import AnimatedImageError, load

    with_alpha = {
        "png_rgba",
        "png_palette_trns",
        "webp_lossless",
        "webp_alpha",
        "avif_alpha",
        "tiff_lzw",
    }
    for base, (ext, _) in fuzz_corpus.BASES.items():
        path = tmp_path / f"{base}.{ext}"
        path.write_bytes(fuzz_corpus.base_bytes(SEED, base))
        if base in ("png_apng", "gif_animated", "tiff_multipage"):
            with pytest.raises(AnimatedImageError):
                load(path)
            src = load(path, animated="first")
        else:
            src = load(path)
        assert min(src.width, src.height) >= 24 and max(src.width, src.height) <= 64, base
        assert src.has_alpha == (base in with_alpha), base


def test_every_case_loads_or_raises_a_typed_one_line_error(cases, results, corpus_dir):
    table = _table(cases, results)
    print(f"\n{len(cases)} cases, seed {SEED}\n{table}")
    slow = sorted(((r["seconds"], cid) for cid, r in results.items() if "seconds" in r))[-5:]
    print("slowest:", ", ".join(f"{cid} {s:.1f} s" for s, cid in reversed(slow)))
    assert len(results) == len(cases) >= MIN_CASES, table
    by_id = {c.id: c for c in cases}
    bad = [
        _explain(by_id[cid], rec)
        for cid, rec in results.items()
        if rec["outcome"] in ("untyped", "died")
    ]
    assert not bad, f"{len(bad)} of {len(cases)} cases escaped as untyped errors or hung:\n" + (
        "\n".join(bad[:20]) + f"\n{table}"
    )
    for cid, rec in results.items():
        if rec["outcome"] == "ok":
            continue
        path = str(corpus_dir / by_id[cid].filename)
        msg = rec["message"]
        assert "\n" not in msg and path in msg, f"{cid}: message {msg!r} must be 1 line with {path}"


def test_declared_sizes_meet_the_pixel_limit_exactly(cases, results):
    # A header that declares more pixels than the limit is refused by size, before decoding,
    # unless the header is too broken to give a size at all. One that declares the limit or
    # fewer is never refused by size (an out-of-memory refusal says so), so the boundary is
    # neither off by one nor skipped.
    checked = Counter()
    for c in cases:
        rec = results[c.id]
        if c.declared is None or rec["outcome"] in ("untyped", "died"):
            continue
        w, h = c.declared
        msg = rec.get("message", "")
        if w * h > BOMB_LIMIT:
            checked["above"] += 1
            header_broken = "Image" in rec["outcome"] and "reading the" in msg and "header" in msg
            assert rec["outcome"] == "TooManyPixelsError" or header_broken, (
                f"{c.id} [{c.note}]: {rec['outcome']} {msg}"
            )
        else:
            checked["at or below"] += 1
            if rec["outcome"] == "TooManyPixelsError":
                assert "ran out of memory" in msg, f"{c.id} [{c.note}]: {msg}"
            if (w, h) == (math.isqrt(BOMB_LIMIT),) * 2 and rec["outcome"] == "ok":
                assert rec["size"] == [w, h]
                checked["just below, decoded"] += 1
    assert checked["above"] >= 50 and checked["at or below"] >= 20, checked
    assert checked["just below, decoded"] >= 1, checked
    print("declared sizes checked:", dict(checked))


# ------------------------------------------------------------------------ imgtune optimize


# Pillow warns about the damaged metadata it skips (as `imgtune` itself silences in `main`).
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
def test_optimize_skips_every_bad_input_by_name(cases, results, corpus_dir, tmp_path):
    from typer.testing import CliRunner

    from optimizer import images
    from optimizer.cli import app
    from optimizer.outcome import ExitCode

    by_id = {c.id: c for c in cases}
    bad = [cid for cid, r in results.items() if r["outcome"] not in ("ok", "untyped", "died")]
    # A few that load, of several formats, small enough to optimise in a second or two.
    good, formats = [], set()
    for cid, r in results.items():
        c = by_id[cid]
        small = r["outcome"] == "ok" and min(r["size"]) >= 16 and max(r["size"]) <= 64
        if small and c.ext not in formats and c.mutation in fuzz_corpus.GENERIC:
            good.append(cid)
            formats.add(c.ext)
    assert len(bad) >= 1000 and 5 <= len(good) <= 10, (len(bad), good)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for cid in bad + good:
        name = by_id[cid].filename
        (src / name).write_bytes((corpus_dir / name).read_bytes())
    args = ["optimize", str(src), str(out), "--jobs", "1", "--json", "--device", "cpu"]
    r = CliRunner().invoke(app, args)

    assert r.exc_info is None or r.exc_info[0] is SystemExit, "".join(
        traceback.format_exception(*r.exc_info)
    )
    assert "Traceback" not in r.output
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    records = {rec["source"]: rec for rec in lines[:-1]}
    assert summary.get("summary") is True and len(records) == len(bad) + len(good)
    for cid in bad:
        name = by_id[cid].filename
        rec = records[name]
        assert rec["status"] == "skipped" and rec["output"] is None, (cid, rec)
        # Named by its full path, one line, for the reason load gave (not a generic failure).
        reason = getattr(images, results[cid]["outcome"]).reason
        assert str(src.resolve() / name) in rec["error"] and "\n" not in rec["error"], (cid, rec)
        assert reason in rec["error"], (cid, rec["error"], results[cid]["message"])
        assert not any(out.glob(Path(name).stem + ".*")), cid
    for cid in good:
        rec = records[by_id[cid].filename]
        assert rec["status"] in ("written", "kept"), (cid, rec)
        assert (out / rec["output"]).is_file(), (cid, rec)
    outputs = {p.name for p in out.iterdir() if not p.name.startswith(".")} - {"imgtune.json"}
    assert outputs == {records[by_id[cid].filename]["output"] for cid in good}
    doc = json.loads((out / "imgtune.json").read_text())  # for builds: the good ones only
    assert {v["path"] for item in doc["images"].values() for v in item["variants"]} == outputs
    assert summary["counts"]["skipped"] == len(bad)
    assert r.exit_code == ExitCode.PARTIAL == 1, r.output[-2000:]
