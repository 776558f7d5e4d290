"""tests/_tools.py: external tools are known by what they answer, not by their name on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._tools import ROOT, find, need_tool

FAKE_ANSWER = "Converts FAT volumes to NTFS."  # what Windows' convert.exe is about


def _fakes(tmp_path: Path) -> Path:
    """A folder with a `convert` and a `magick` that run fine but are not ImageMagick."""
    fake = tmp_path / "fake bin"
    fake.mkdir()
    for name in ("convert", "magick"):
        (fake / name).write_text(f"#!/bin/sh\necho '{FAKE_ANSWER}'\n")
        (fake / name).chmod(0o755)
    return fake


def test_a_same_named_stand_in_is_not_taken_for_imagemagick(tmp_path):
    fake = _fakes(tmp_path)
    alone = find("imagemagick", path=str(fake))
    assert alone.path is None
    assert f"convert at {fake / 'convert'} is not ImageMagick" in alone.reason
    assert f"magick at {fake / 'magick'} is not ImageMagick" in alone.reason
    assert FAKE_ANSWER in alone.reason and alone.message.startswith("ImageMagick not installed")
    # the genuine one further down PATH is found, by its absolute path
    real = need_tool("imagemagick")
    behind = find("imagemagick", path=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert behind.path == real.path and os.path.isabs(behind.path)
    assert behind.version.startswith("Version: ImageMagick")


def test_a_program_that_cannot_run_is_named_not_raised(tmp_path):
    broken = tmp_path / "cjpeg"
    broken.write_text("#!/no/such/interpreter\n")
    broken.chmod(0o755)
    tool = find("cjpeg", path=str(tmp_path))
    assert tool.path is None and f"cjpeg at {broken}: `cjpeg -version` gave cannot run" in (
        tool.reason
    )
    assert "no avifenc on PATH" in find("avifenc", path=str(tmp_path / "empty")).reason


def test_a_missing_tool_skips_locally_and_fails_when_required(tmp_path, monkeypatch):
    fake = _fakes(tmp_path)
    monkeypatch.setenv("PATH", str(fake))
    monkeypatch.delenv("IMGTUNE_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="ImageMagick not installed: magick at"):
        need_tool("imagemagick")
    monkeypatch.setenv("IMGTUNE_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="ImageMagick not installed: magick at"):
        need_tool("imagemagick")


def test_the_readme_test_command_skips_past_a_fake_convert_and_ci_fails_on_it(tmp_path):
    """The README's pytest, on the magick tests, with fake `convert` and `magick` first on PATH."""
    fake = _fakes(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "IMGTUNE_REQUIRE_TOOLS"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["tests/test_export.py", "-k", "magick and odd_paths_run"]

    def pytest_with(path: str, **extra: str) -> subprocess.Popen:
        run_env = {**env, "PATH": path, **extra}
        return subprocess.Popen(cmd, cwd=ROOT, env=run_env, stdout=subprocess.PIPE, text=True)

    # both at once: each spends seconds importing
    local = pytest_with(f"{fake}{os.pathsep}{env['PATH']}")
    # no real ImageMagick at all: only the fakes and the folder of this Python
    ci = pytest_with(f"{fake}{os.pathsep}{Path(sys.executable).parent}", IMGTUNE_REQUIRE_TOOLS="1")
    local_out, ci_out = local.communicate(timeout=300)[0], ci.communicate(timeout=300)[0]
    ran = "2 passed" if find("imagemagick").path else "2 skipped"
    assert local.returncode == 0 and ran in local_out, local_out[-3000:]
    assert ci.returncode == 1 and "2 failed" in ci_out, ci_out[-3000:]
    assert f"ImageMagick not installed: magick at {fake / 'magick'}" in ci_out
