"""Folder jobs on a real Dask LocalCluster of worker processes: the same files as threads, a
worker killed mid-run costs nothing but time, and a window of tasks in flight, not the folder."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import CancelledError
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from distributed import LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from PIL import Image
from typer.testing import CliRunner

from optimizer import api, cluster
from optimizer.api import SuiteRecipe
from optimizer.batch import horizon
from optimizer.cli import app
from optimizer.manifest import MANIFEST_NAME
from optimizer.outdir import OutputDir
from optimizer.presets import Preset

from ._export_harness import make_preset
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
    assert all(horizon(k) <= k and horizon(k) <= horizon(k + 1) for k in range(20000))
    # a large folder keeps a large cluster busy: the images allowed in flight grow with it,
    # and never drop to none at a power of two
    assert min(k - horizon(k) for k in range(128, 20000)) >= 16
    assert 1000 - horizon(1000) == 125 and 10_000 - horizon(10_000) == 1250
    assert min(k - horizon(k) for k in range(4096, 4200)) >= 4096 // 8
    assert 10**7 - horizon(10**7) == 4096  # what waits to be learnt stays bounded


#: more than one chunk of small images (cluster.CHUNK_IMAGES), so both workers write some
N_SAME = 12


def test_a_local_cluster_writes_the_same_files_as_one_thread(tmp_path):
    src = _folder(tmp_path / "src", N_SAME, 96)
    # --no-learn: each run starts from the shipped model, not from what the one before stored
    common = ["--json", "--target", "ssimulacra2>=75", "--codecs", "webp,avif", "--no-learn"]
    # the thread run and the rerun in this process; the first cluster run as a user starts it
    one = CliRunner().invoke(
        app, ["optimize", str(src), str(tmp_path / "one"), "--jobs", "1", *common]
    )
    assert one.exit_code == 0, one.stderr
    many = _imgtune("optimize", str(src), str(tmp_path / "many"), "--cluster", "local:2", *common)
    assert many.returncode == 0, many.stderr
    a, b = _digests(tmp_path / "one"), _digests(tmp_path / "many")
    assert len(a) == N_SAME + 1 and "imgtune.json" in a and a == b  # and the same imgtune.json
    sa = json.loads(one.stdout.splitlines()[-1])
    sb = json.loads(many.stdout.splitlines()[-1])
    assert sb["counts"]["written"] == N_SAME and sb["retried"] == 0
    assert (sa["output_bytes"], sa["encodes_per_image"]) == (
        sb["output_bytes"],
        sb["encodes_per_image"],
    )
    # a rerun on the cluster finds everything up to date
    again = CliRunner().invoke(
        app, ["optimize", str(src), str(tmp_path / "many"), "--cluster", "local:2", *common]
    )
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["counts"]["up_to_date"] == N_SAME


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
    r = CliRunner().invoke(app, ["optimize", str(src), str(tmp_path / "out"), "--cluster", bad])
    assert r.exit_code == 2 and "--cluster" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class _InFlight(SchedulerPlugin):
    """On the scheduler, at each transition of one run's tasks: the most tasks it held (finished
    or not) and the most not finished yet (waiting, queued, running), with their images. Driven
    by the scheduler's own events, so nothing depends on when it is sampled."""

    name = "imgtune-in-flight"

    def __init__(self, scheduler, prefix: str) -> None:
        self.scheduler, self.prefix = scheduler, prefix
        self.unfinished: dict[str, int] = {}  # key -> its images (the key says how many)
        self.held = self.tasks = self.images = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if not str(key).startswith(self.prefix + "_"):
            return
        if finish in ("waiting", "queued", "processing", "no-worker"):
            self.unfinished[key] = int(key.rpartition("-")[0].rpartition("_")[2])
        else:
            self.unfinished.pop(key, None)
        self.held = max(self.held, len(self.scheduler.tasks))
        self.tasks = max(self.tasks, len(self.unfinished))
        self.images = max(self.images, sum(self.unfinished.values()))


def _watch(dask_scheduler, prefix: str) -> None:
    dask_scheduler.add_plugin(_InFlight(dask_scheduler, prefix))


def _peaks(dask_scheduler) -> dict[str, int]:
    p = dask_scheduler.plugins[_InFlight.name]
    return {"held": p.held, "tasks": p.tasks, "images": p.images, "left": len(p.unfinished)}


def test_a_window_is_in_flight_whatever_the_folder(tmp_path, monkeypatch):
    # 2,000 16x16 images through `apply` (one JPEG encode and a PSNR each) on local:2. Watched:
    # the scheduler's tasks (a plugin), the windows the driver was given, each write, and the
    # driver's Python objects after 700 images and after 2,000.
    n, early = 2000, 700
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            src / f"{i:05d}.png"
        )
    data = make_preset("jpeg", 80, box=None)
    data["target"]["spec"] = "psnr>=10"
    # Durability is not what this measures, and three fsyncs an image on a shared CI disk
    # would double the run; every write still goes through the temp file and the rename.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    writes: Counter[str] = Counter()
    write_bytes = OutputDir.write_bytes

    def counted_write(self, rel: str, body: bytes) -> None:
        writes[rel] += 1
        write_bytes(self, rel, body)

    monkeypatch.setattr(OutputDir, "write_bytes", counted_write)
    windows: list[int] = []
    window = cluster.Cluster.window
    monkeypatch.setattr(
        cluster.Cluster, "window", lambda self: windows.append(window(self)) or windows[-1]
    )
    peaks: dict[str, int] = {}
    drive = cluster.Cluster.drive

    def watched_drive(self, *args, **kwargs):
        self.client.run_on_scheduler(_watch, prefix=self.prefix)
        summary = drive(self, *args, **kwargs)
        peaks.update(self.client.run_on_scheduler(_peaks))
        return summary

    monkeypatch.setattr(cluster.Cluster, "drive", watched_drive)
    objects: dict[int, int] = {}
    alive: Counter[str] = Counter()
    done = 0

    def on_result(outcome) -> None:
        nonlocal done
        done += 1
        if done in (early, n):
            gc.collect()
            found = gc.get_objects()
            objects[done] = len(found)
            if done == n:
                alive.update(type(o).__name__ for o in found)
            del found

    out = tmp_path / "out"
    t0 = time.perf_counter()
    summary = api.apply(
        Preset.from_dict(data), src, out, cluster="local:2", device="cpu", on_result=on_result
    )
    seconds = time.perf_counter() - t0
    print(f"{n} images on local:2 in {seconds:.1f} s ({n / summary.seconds:.0f} images/s)")

    # (a) in flight: two tasks per worker thread (2 x 2), each of at most CHUNK_IMAGES images
    assert len(windows) >= n, "the window is asked for before every image"
    assert max(windows) <= 2 * 2 * cluster.CHUNK_IMAGES
    assert peaks["tasks"] <= 2 * 2 and peaks["images"] <= max(windows), peaks
    # A finished task is released right after its images are written; the release can trail
    # the next submission by a message, never by a window.
    assert peaks["held"] <= 2 * 2 * 2 and peaks["left"] == 0, peaks
    # (b) the driver holds the window, not the folder: fewer new Python objects than images
    # over the last 1,300 (a future, a result or a path kept per image would be 1,300 or more)
    assert objects[n] - objects[early] < (n - early) * 3 // 4, objects
    for kind in ("Future", "_Chunk", "_Image", "_Slot", "ImageResult"):
        assert alive[kind] <= 2 * max(windows), (kind, alive[kind])
    # (c) every image written once, and the manifest says so
    assert summary.counts["written"] + summary.counts["kept"] == n, summary.counts
    assert summary.retried == 0 and summary.counts["skipped"] == 0
    lines = [json.loads(x) for x in (out / MANIFEST_NAME).read_text().splitlines()]
    assert sorted(x["source"] for x in lines) == sorted(p.name for p in src.iterdir())
    assert sorted(writes) == sorted(x["output"] for x in lines) and set(writes.values()) == {1}
    for x in lines:
        body = (out / x["output"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == x["output_sha256"]


def test_the_window_follows_workers_that_join_and_leave_a_scheduler(monkeypatch):
    # --cluster tcp://: the window is read again while the run goes (here at every image)
    monkeypatch.setattr(cluster, "WINDOW_REFRESH_S", 0.0)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as local:
        recipe = SuiteRecipe(("psnr",), device="cpu")
        with cluster.open_cluster(local.scheduler_address, recipe) as c:
            assert c.window() == 2
            local.scale(3)
            c.client.wait_for_workers(3, timeout=60)
            assert c.window() == 6
            local.scale(1)
            deadline = time.monotonic() + 60
            while len(c.client.nthreads()) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.window() == 2


class KilledWorker(Exception):
    """Named as Dask's: what a task's result raises once every worker that ran it died."""


class _Done:
    def __init__(self, value=None, error=None) -> None:
        self.value, self.error = value, error

    def result(self):
        if self.error:
            raise self.error
        return self.value

    def done(self) -> bool:
        return True

    def cancel(self) -> None:
        pass

    def cancelled(self) -> bool:
        return False


def _fake_cluster(sent: list) -> cluster.Cluster:
    c = cluster.Cluster(SimpleNamespace(nthreads=lambda: {"w1": 1, "w2": 1}), recipe=None)

    def task(fn, images, *args):
        sent.append((fn.__name__, images))
        if fn is cluster.remote_chunk:  # args: job, recipe, [(path, prediction, name, stem)]
            if any(a[0] == "bad" for a in args[2]):
                return _Done(error=KilledWorker("bad"))
            return _Done([f"ok {a[0]}" for a in args[2]])
        return _Done(error=KilledWorker(args[0])) if args[0] == "bad" else _Done(f"ok {args[0]}")

    c.task = task
    return c


def test_small_images_share_a_task_and_large_ones_run_alone():
    sent: list = []
    c, job = _fake_cluster(sent), object()
    tiny = [c.submit(f"t{i}", job, None, "n", "s", pixels=16 * 16) for i in range(9)]
    assert sent == [("remote_chunk", 8)]  # full: sent; the ninth waits for company
    assert c.window() == 2 * 2 * cluster.CHUNK_IMAGES  # two tasks a thread, 8 images a task
    big = c.submit("big", job, None, "n", "s", pixels=cluster.CHUNK_PIXELS)
    assert sent == [("remote_chunk", 8), ("remote_chunk", 1), ("remote_chunk", 1)]
    assert c.window() == 2 * 2
    assert [h.result() for h in tiny] == [f"ok t{i}" for i in range(9)]
    assert big.result() == "ok big"


def test_a_chunk_that_kills_its_workers_reruns_one_image_a_task():
    sent: list = []
    c, job = _fake_cluster(sent), object()
    a, bad, b = (c.submit(p, job, None, p, p, pixels=256) for p in ("a", "bad", "b"))
    assert sent == []
    assert a.result() == "ok a"  # waited on: the open chunk is sent, dies, is split
    with pytest.raises(KilledWorker):
        bad.result()  # only the image that kills its workers is lost
    assert b.result() == "ok b"
    assert sent == [("remote_chunk", 3)] + [("remote_optimize", 1)] * 3


def test_one_image_failing_costs_its_chunk_mates_nothing(monkeypatch):
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    def fake(path, *args):
        if path == "odd":
            raise Unpicklable("odd image")
        if path == "bad":
            raise ValueError("bad image")
        return f"ok {path}"

    monkeypatch.setattr(cluster, "remote_optimize", fake)
    out = cluster.remote_chunk(None, None, [(p, None, p, p) for p in ("a", "bad", "odd", "b")])
    assert out[0] == "ok a" and out[3] == "ok b"
    assert isinstance(out[1], ValueError)
    assert isinstance(out[2], RuntimeError) and str(out[2]) == "Unpicklable: odd image"


def test_reruns_are_counted_in_images_from_the_run_s_task_prefixes():
    scheduler = SimpleNamespace(
        task_prefixes={
            "imgtune_ab12cd34_8": SimpleNamespace(suspicious=1),  # a chunk of 8 rerun once
            "imgtune_ab12cd34_1": SimpleNamespace(suspicious=2),
            "imgtune_ffffffff_8": SimpleNamespace(suspicious=5),  # another run's
            "imgtune_ab12cd34_x": SimpleNamespace(suspicious=7),
        }
    )
    assert cluster._rerun_count(scheduler, prefix="imgtune_ab12cd34") == 10


def test_a_chunk_cancelled_before_it_was_sent_never_goes_out():
    sent: list = []
    c, job = _fake_cluster(sent), object()
    a = c.submit("a", job, None, "a", "a", pixels=256)
    a.cancel()  # Ctrl-C: the driver cancels what is pending
    assert a.cancelled() and not a.done()
    with pytest.raises(CancelledError):
        a.result()
    assert sent == []


def test_device_cuda_on_a_cluster_needs_workers_that_declare_a_gpu(tmp_path):
    src = _folder(tmp_path / "src", 2, 32)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as local,
        pytest.raises(api.UsageError) as err,
    ):
        api.optimize(src, tmp_path / "out", cluster=local.scheduler_address, device="cuda")
    msg = str(err.value)
    assert "--resources GPU=1" in msg and "none of the 1 workers" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class _Restrictions(SchedulerPlugin):
    """The resources each of one run's tasks asked for, as the scheduler saw them."""

    name = "imgtune-restrictions"

    def __init__(self, scheduler, prefix: str) -> None:
        self.scheduler, self.prefix, self.seen = scheduler, prefix, {}

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is not None and str(key).startswith(self.prefix + "_"):
            self.seen[str(key)] = dict(ts.resource_restrictions or {})


def test_gpu_tasks_go_only_to_workers_that_declare_a_gpu_and_share_it(tmp_path):
    # Every task asks for a share of a GPU: a worker with one declared GPU takes as many
    # images at once as it has threads (up to IMAGES_PER_GPU; they share its batch scorer),
    # and one with 2 GPU declared and 1 thread only one. The suite stays on the CPU here (no
    # CUDA in CI): what is tested is the routing.
    from optimizer.batch import run_folder
    from optimizer.image_job import Job
    from optimizer.predictor import QualityPredictor
    from optimizer.targets import parse_target

    src = _folder(tmp_path / "src", 6, 48)
    recipe = SuiteRecipe(("ssimulacra2",), device="cpu")
    local = LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
        resources={"GPU": 1},
    )  # fmt: skip
    with (
        local,
        cluster.open_cluster(
            local.scheduler_address, recipe, resources=cluster.resources_for("cuda")
        ) as c,
    ):
        assert c.window() == 4  # 2 x the worker's two threads, each with a share of its GPU
        few = {"nthreads": 1, "resources": {"GPU": 1}}
        many = {"nthreads": 64, "resources": {"GPU": 1}}
        share = cluster.resources_for("cuda")
        assert cluster._capacity(few, share) == 1
        assert cluster._capacity(many, share) == cluster.IMAGES_PER_GPU
        assert cluster._capacity({"nthreads": 8, "resources": {}}, share) == 0
        c.client.run_on_scheduler(
            lambda dask_scheduler, prefix: dask_scheduler.add_plugin(
                _Restrictions(dask_scheduler, prefix)
            ),
            prefix=c.prefix,
        )
        job = Job.optimize(parse_target("ssimulacra2>=70"), ["jpeg"])
        summary = run_folder(
            src, tmp_path / "out", job, suite=recipe.build(), cluster=c,
            predictor=QualityPredictor(),
        )  # fmt: skip
        seen = c.client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[_Restrictions.name].seen
        )
    assert summary.searched == 6 and summary.counts["written"] + summary.counts["kept"] == 6
    assert seen and all(r == {"GPU": 1 / cluster.IMAGES_PER_GPU} for r in seen.values())
    assert cluster.resources_for("auto") is None and cluster.resources_for("cpu") is None


_MAPPED = """
import ctypes, sys
from optimizer.cluster import restore_malloc_thresholds

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = Mallinfo2
print(restore_malloc_thresholds() if sys.argv[1] == "restore" else False)
before = libc.mallinfo2().hblks
blocks = [libc.malloc(4 << 20) for _ in range(4)]  # the size of an image job's arrays
print(libc.mallinfo2().hblks - before)  # how many glibc mapped on their own, not from its heap
for b in blocks:
    libc.free(b)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the fix is for glibc's malloc, which only Linux has: elsewhere a Dask worker has "
    "no such threshold to restore",
)
def test_workers_get_back_the_malloc_thresholds_dask_s_environment_takes_away():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set, which freezes glibc's mmap
    threshold at 128 KiB: every array is mapped afresh, page-faulted and zeroed (33 s of system
    time in a 54 s Kodak run). The worker restores heap reuse for arrays up to 32 MiB."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}

    def mapped(mode: str, env=env) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED, mode], env=env, capture_output=True, text=True,
            check=True, cwd=ROOT,
        ).stdout.split()  # fmt: skip
        return out[0], int(out[1])

    assert mapped("leave") == ("False", 4)  # what a Dask worker gets: each block its own map
    assert mapped("restore") == ("True", 0)  # from the heap, reused when freed
    # Outside a Dask worker (no such variable) nothing is touched: glibc's own thresholds.
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    assert mapped("restore", clean)[0] == "False"


def test_the_job_key_names_the_device_the_workers_score_on():
    # The workers say what `--device auto` is on them (here the CPU); tasks that take a GPU
    # resource are on CUDA whatever this process has.
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as local:
        with cluster.open_cluster(local.scheduler_address, SuiteRecipe(("psnr",))) as c:
            assert c.device_kind() == "cpu"
        c.resources = {"GPU": 1}
        assert c.device_kind() == "cuda"
