"""Device names: only auto, cpu, cuda and cuda:N (N on this machine), refused in one line before
any work; and out of memory is not mistaken for a compiler failure."""

from __future__ import annotations

import warnings

import pytest
import torch
from typer.testing import CliRunner

from optimizer.cli import app
from optimizer.metrics._base import compiled, resolve_device

from .conftest import SAMPLES


@pytest.mark.parametrize("name", ["meta", "mps", "xpu", "cpu:0", "cuda:x", "gpu", ""])
def test_unknown_devices_are_refused(name):
    with pytest.raises(ValueError, match="unknown device .*: use auto, cpu, cuda or cuda:N"):
        resolve_device(name)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(torch.device("meta"))


def test_known_devices():
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want


def test_a_cuda_index_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:7' asked for, but this machine has 1 CUDA device"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device is available here"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "meta"], "unknown device 'meta'"),
        (["--device", "cuda:99"], "CUDA device"),  # none here; fewer than 100 on a GPU machine
    ],
)
def test_the_commands_refuse_in_one_line(tmp_path, args, message):
    src = str(SAMPLES / "coffee.png")
    r = CliRunner().invoke(app, ["score", src, src, "--metrics", "psnr", *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["optimize", str(SAMPLES), str(tmp_path / "out"), *args])
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["optimize", "tune"])
def test_a_bad_gpu_memory_is_refused_in_one_line_before_any_work(tmp_path, command):
    out = tmp_path / "out"
    args = [str(SAMPLES), str(out)] if command == "optimize" else [str(SAMPLES), "--out", str(out)]
    r = CliRunner().invoke(
        app,
        [command, *args, "--gpu-memory", "150%", "--trials", "1"][
            : None if command == "tune" else -2
        ],
    )
    assert r.exit_code == 2 and "--gpu-memory share must be in (0%, 100%]" in r.output
    assert "Traceback" not in r.output and not out.exists()


def test_out_of_memory_is_not_a_compiler_failure(monkeypatch):
    """`compiled` falls back to eager kernels when compiling fails, but re-raises an
    out-of-memory error (eager kernels would run out too; the caller decides what to do)."""

    def eager(x):
        return x + 1

    def oom(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: oom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "torch.compile failed" warning either
        with pytest.raises(torch.OutOfMemoryError):
            compiled(eager)(torch.zeros(1))

    def broken(x):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        assert compiled(eager)(torch.zeros(1)).item() == 1


def test_every_tensor_comes_to_the_cpu_before_numpy():
    """numpy() on a CUDA tensor raises: every call in the code, the tests and the benchmarks
    goes through cpu() first (free on the CPU), so none breaks on a GPU."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    bare = re.compile(r"(?<!\.cpu\(\))\.numpy\(\)")
    found = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("optimizer", "tests", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert not found, found
