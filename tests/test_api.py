"""The Python API: the commands' defaults, README lines that run, modules that import alone."""

from __future__ import annotations

import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

import optimizer
from optimizer import api
from optimizer.cli import app

from .conftest import thumbnails

ROOT = Path(__file__).resolve().parent.parent

#: CLI option -> (API keyword, how a CLI default reads as the API's)
RENAMED = {
    "out_dir": ("out", None),
    "no_resize_search": ("resize_search", lambda v: not v),
    "no_sharpen": ("sharpen", lambda v: not v),
}


def _cli_defaults(name: str) -> dict[str, object]:
    command = typer.main.get_command(app).commands[name]
    return {p.name: p.default for p in command.params if not p.required}


def _as_api(value: object) -> object:
    if isinstance(value, str) and "," in value:
        return tuple(value.split(","))
    return value


@pytest.mark.parametrize(
    "command, function, cli_only",
    [
        ("tune", api.tune, {"as_json"}),
        ("optimize", api.optimize, {"as_json", "report"}),
        ("apply", api.apply, {"as_json", "report"}),
        ("score", api.score, {"as_json", "csv"}),
        ("report", api.report, set()),
    ],
)
def test_api_defaults_are_the_commands_defaults(command, function, cli_only):
    params = inspect.signature(function).parameters
    compared = 0
    for option, default in _cli_defaults(command).items():
        if option in cli_only:
            continue
        keyword, convert = RENAMED.get(option, (option, None))
        if command == "report" and option == "out_file":
            keyword = "out"
        assert keyword in params, f"imgtune {command} --{option} has no API keyword"
        p = params[keyword]
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{keyword} is not keyword-only"
        want = convert(default) if convert else default
        assert _as_api(p.default) == _as_api(want), f"{command}: {keyword}"
        compared += 1
    assert compared >= 3
    # and the API has nothing the command lacks, but callbacks, a reusable suite and the
    # studies folder (the command's is fixed: ./studies)
    extra = {
        k
        for k, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not k.startswith("on_")
    }
    cli = {RENAMED.get(o, (o, None))[0] for o in _cli_defaults(command)} | {"out"}
    assert extra - cli <= {"suite", "studies"}


def test_api_and_command_agree_on_the_default_target():
    assert inspect.signature(api.tune).parameters["quality"].default == "high"
    assert _cli_defaults("tune")["quality"] == "high"
    codecs = ("avif", "webp", "webp-lossless", "png")  # the lossless ones where they win
    assert inspect.signature(api.optimize).parameters["codecs"].default == codecs
    assert _cli_defaults("optimize")["codecs"] == ",".join(codecs)
    assert inspect.signature(api.tune).parameters["strategy"].default == "bisect"
    assert inspect.signature(api.tune).parameters["trials"].default == 20


#: Run in a fresh interpreter: imports the third-party libraries (not imgtune), then forks one
#: child per module name read from stdin, which imports that module first and alone. A cycle in
#: imgtune's imports shows only when its module is imported first; what was loaded before the
#: fork is never imgtune's, so each child is as fresh as a new interpreter for that purpose, and
#: the seconds of importing torch are paid once instead of once per module. Where there is no
#: fork (Windows), each module gets a new interpreter of its own: slower, the same check.
_ZYGOTE = """
import os, subprocess, sys, traceback
import numpy, PIL.Image, torch, pandas, optuna, skimage, typer, rich  # noqa: F401
assert not [m for m in sys.modules if m == "optimizer" or m.startswith("optimizer.")]


def forked(name):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(name)
            os._exit(0)
        except BaseException:
            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        last = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return (last or f"exit status {status}") if status else None


def spawned(name):
    p = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
    return (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1] if p.returncode else None


for name in sys.stdin.read().split():
    failed = (forked if hasattr(os, "fork") else spawned)(name)
    if failed:
        print(f"{name}: {failed}")
"""


def test_every_module_imports_first_in_a_fresh_interpreter(tmp_path):
    names = sorted(m.name for m in pkgutil.walk_packages(optimizer.__path__, prefix="optimizer."))
    assert "optimizer.cli.tune" in names and "optimizer.quality_search" in names
    # and one module known to fail, so a harness that reports nothing cannot pass
    (tmp_path / "broken_mod.py").write_text("import optimizer\nraise ImportError('cycle here')\n")
    r = subprocess.run(
        [sys.executable, "-c", _ZYGOTE],
        input="\n".join([*names, "broken_mod"]),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "broken_mod: ImportError: cycle here", r.stdout


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Python section has examples"
    return "\n".join(blocks)


def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """Exactly the README's lines, in a folder whose sample_images are small copies."""
    code = _readme_python()
    for call in ("optimizer.tune(", "optimizer.optimize(", "optimizer.score("):
        assert call in code
    thumbnails(
        tmp_path / "sample_images",
        {"chelsea.png": "chelsea", "coffee.png": "coffee", "rocket.png": "rocket"},
        side=64,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGTUNE_STUDIES")  # as a user runs it: studies/ in the working folder
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert (tmp_path / "optimised" / ".imgtune-manifest.jsonl").is_file()
    assert list((tmp_path / "studies").glob("*.preset.json"))
    assert "ssimulacra2" in printed


def test_every_benchmark_the_readme_names_exists_and_has_a_main():
    import importlib

    text = (ROOT / "README.md").read_text()
    names = sorted(set(re.findall(r"python -m (benchmarks\.\w+)", text)))
    assert "benchmarks.trial" in names and "benchmarks.oracle" in names
    for name in names:
        assert callable(importlib.import_module(name).main), name
