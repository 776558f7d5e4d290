"""Thread pools sized from the cores this process may use, and OpenMP's passive wait."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from optimizer import cpus


@pytest.mark.parametrize(
    ("v2", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000\n", 0.5)],
)
def test_quota_reads_cgroup_v2(tmp_path, v2, expected):
    (tmp_path / "cpu.max").write_text(v2)
    missing = (tmp_path / "no_quota", tmp_path / "no_period")
    assert cpus._quota(tmp_path / "cpu.max", missing) == expected


@pytest.mark.parametrize(("quota", "expected"), [("-1", None), ("300000", 3.0)])
def test_quota_falls_back_to_cgroup_v1(tmp_path, quota, expected):
    (tmp_path / "q").write_text(quota + "\n")
    (tmp_path / "p").write_text("100000\n")
    assert cpus._quota(tmp_path / "absent", (tmp_path / "q", tmp_path / "p")) == expected


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cpus._quota(tmp_path / "a", (tmp_path / "b", tmp_path / "c")) is None


def test_quota_caps_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(cpus, "_quota", lambda: 2.5)
    assert cpus.available() == 3
    assert cpus.threads_per_job(1) == 3
    assert cpus.threads_per_job(2) == 1
    assert cpus.threads_per_job(8) == 1  # never zero
    monkeypatch.setattr(cpus, "_quota", lambda: 0.2)
    assert cpus.available() == 1


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"),
    reason="os.sched_setaffinity is Linux-only: this platform cannot pin a process to one core",
)
def test_a_pinned_process_counts_only_its_cores():
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from optimizer import cpus; print(cpus.available(), os.cpu_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pinned, machine = map(int, out.stdout.split())
    assert pinned == 1
    assert machine >= 1


def test_importing_optimizer_sets_a_passive_wait_unless_the_user_chose():
    code = "import os, optimizer; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "ACTIVE"


def test_a_folder_job_gives_each_job_its_share_of_the_pinned_cores(tmp_path):
    """`optimize --jobs 1` pinned to one core runs torch on one thread, not the machine's."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(src / "a.png")
    code = (
        "import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "import torch; torch.set_num_threads(4); import optimizer; "
        "optimizer.optimize(sys.argv[1], sys.argv[2], jobs=1, codecs=['jpeg']); "
        "print(torch.get_num_threads())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(src), str(tmp_path / "out")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert run.stdout.strip().splitlines()[-1] == "1"
