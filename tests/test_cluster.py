"""Folder jobs on a real Dask LocalCluster of worker processes: the same files as threads, and a
worker killed mid-run costs nothing but time."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from optimizer.batch import horizon
from optimizer.manifest import MANIFEST_NAME

from .conftest import ROOT, SAMPLES

NAMES = ["astronaut", "chelsea", "coffee", "rocket", "twins_cc0", "tiger_grayscale_cc0"]


def _folder(root: Path, n: int, side: int) -> Path:
    """n photos (crops of the samples at several offsets), `side` px."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.open(SAMPLES / f"{NAMES[i % len(NAMES)]}.png").convert("RGB")
        off = 7 * (i // len(NAMES))
        im = im.crop((off, off, off + 3 * side, off + 3 * side)).resize((side, side))
        (root / f"d{i % 3}").mkdir(exist_ok=True)
        im.save(root / f"d{i % 3}" / f"img{i:03d}.png")
    return root


def _imgtune(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "optimizer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def _digests(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".imgtune")
    }


def test_horizon_learns_from_a_fixed_set_of_earlier_images():
    assert [horizon(k) for k in range(9)] == [0, 1, 2, 2, 4, 4, 4, 4, 8]
    assert horizon(40) == 32 and horizon(49) == 33 and horizon(64) == 64
    assert all(horizon(k) <= k and horizon(k) <= horizon(k + 1) for k in range(5000))


def test_a_local_cluster_writes_the_same_files_as_one_thread(tmp_path):
    src = _folder(tmp_path / "src", 21, 96)
    common = ["--json", "--target", "ssimulacra2>=75", "--codecs", "webp,avif"]
    one = _imgtune("optimize", str(src), str(tmp_path / "one"), "--jobs", "1", *common)
    assert one.returncode == 0, one.stderr
    many = _imgtune("optimize", str(src), str(tmp_path / "many"), "--cluster", "local:2", *common)
    assert many.returncode == 0, many.stderr
    a, b = _digests(tmp_path / "one"), _digests(tmp_path / "many")
    assert len(a) == 21 and a == b
    sa = json.loads(one.stdout.splitlines()[-1])
    sb = json.loads(many.stdout.splitlines()[-1])
    assert sb["counts"]["written"] == 21 and sb["retried"] == 0
    assert (sa["output_bytes"], sa["encodes_per_image"]) == (
        sb["output_bytes"],
        sb["encodes_per_image"],
    )
    # a rerun on the cluster finds everything up to date
    again = _imgtune("optimize", str(src), str(tmp_path / "many"), "--cluster", "local:2", *common)
    assert json.loads(again.stdout.splitlines()[-1])["counts"]["up_to_date"] == 21


def _workers(pid: int) -> list[psutil.Process]:
    """The cluster's worker processes: children of this run spawned by multiprocessing."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_worker_killed_mid_run_costs_only_a_rerun(tmp_path):
    src = _folder(tmp_path / "src", 16, 320)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "optimizer", "optimize", str(src), str(out), "--json",
         "--codecs", "avif", "--cluster", "local:2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        manifest = out / MANIFEST_NAME
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (
            manifest.is_file() and manifest.read_text().count("\n") >= 2
        ):
            time.sleep(0.2)
        workers = _workers(proc.pid)
        assert len(workers) == 2, "expected two worker processes"
        os.kill(workers[0].pid, signal.SIGKILL)  # mid-image: every worker always has one
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["counts"]["written"] + summary["counts"]["kept"] == 16
    assert summary["retried"] >= 1, summary
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert sorted(x["source"] for x in lines) == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*.png")
    )  # every image exactly once
    for x in lines:
        body = (out / x["output"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == x["output_sha256"]
    assert not [p for p in out.rglob("*.part")]


@pytest.mark.parametrize("bad", ["local:0", "local:x", "nowhere"])
def test_a_bad_cluster_address_is_a_usage_error(tmp_path, bad):
    src = _folder(tmp_path / "src", 1, 32)
    r = _imgtune("optimize", str(src), str(tmp_path / "out"), "--cluster", bad)
    assert r.returncode == 2 and "--cluster" in r.stderr and r.stderr.count("\n") == 1
