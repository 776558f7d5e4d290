"""The output folder: names from data are checked, nothing is written, renamed or deleted
through a symbolic link or outside the folder, and temp files of a killed run are cleaned."""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import suppress

import pytest

from optimizer.outdir import (
    OutputDir,
    OutputUnwritableError,
    UnsafePathError,
    check_relative,
    check_roots,
    output_names,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "x\0y", "a" * 5000, None, 3],
)
def test_names_that_leave_the_folder_are_refused(name):
    with pytest.raises(UnsafePathError):
        check_relative(name)


@pytest.mark.parametrize("name", ["a.avif", "sub dir/é x.webp", "a..b.png", ".hidden", "C:x"])
def test_ordinary_names_pass(name):
    assert "/".join(check_relative(name)) == name


def test_write_is_atomic_and_replaces_a_planted_link_not_its_target(tmp_path):
    out = OutputDir(tmp_path / "out")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    (out.root / "a.avif").symlink_to(victim)
    out.write_bytes("a.avif", b"new")
    assert victim.read_bytes() == b"keep me"
    assert not (out.root / "a.avif").is_symlink() and (out.root / "a.avif").read_bytes() == b"new"
    out.write_bytes("deep/er/b.webp", b"x")
    assert (out.root / "deep" / "er" / "b.webp").read_bytes() == b"x"
    assert not [p for p in out.root.rglob("*.part")]


def test_nothing_goes_through_a_symlinked_folder_inside_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.avif").write_bytes(b"theirs")
    out = OutputDir(tmp_path / "out")
    (out.root / "evil").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        out.write_bytes("evil/x.avif", b"ours")
    assert not out.remove("evil/x.avif", sha256=_sha(b"theirs"))
    assert out.sha256("evil/x.avif") is None
    with out.open_read("evil/x.avif") as f:
        assert f is None
    assert (outside / "x.avif").read_bytes() == b"theirs" and len(list(outside.iterdir())) == 1


def test_a_link_swapped_in_after_the_check_is_still_not_followed(tmp_path):
    # The walk opens each folder with O_NOFOLLOW as it goes, so a folder replaced by a link
    # between two writes (or between a check and a write) stops the second write.
    outside = tmp_path / "outside"
    outside.mkdir()
    out = OutputDir(tmp_path / "out")
    out.write_bytes("sub/a.avif", b"1")
    (out.root / "sub" / "a.avif").unlink()
    (out.root / "sub").rmdir()
    (out.root / "sub").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        out.write_bytes("sub/a.avif", b"2")
    assert list(outside.iterdir()) == []


def test_remove_deletes_only_an_unchanged_file_of_ours(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.write_bytes("a.avif", b"ours")
    assert not out.remove("a.avif", sha256=_sha(b"something else"))
    assert (out.root / "a.avif").exists()
    outside = tmp_path / "t.txt"
    outside.write_bytes(b"ours")  # same content, reached through a link: not ours to delete
    (out.root / "l.avif").symlink_to(outside)
    assert not out.remove("l.avif", sha256=_sha(b"ours"))
    assert outside.exists() and (out.root / "l.avif").is_symlink()
    assert out.remove("a.avif", sha256=_sha(b"ours")) and not (out.root / "a.avif").exists()


def test_clean_partials_removes_temp_files_only(tmp_path):
    out = OutputDir(tmp_path / "out")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".x.avif.abcd1234.part").write_bytes(b"theirs")
    (out.root / "sub").mkdir()
    (out.root / "sub" / ".a.avif.0f1e2d3c.part").write_bytes(b"half")
    (out.root / ".b.webp.k2j3h4g5.part").write_bytes(b"half")  # older mkstemp names
    (out.root / "notes.part").write_bytes(b"a user's file")
    (out.root / ".x.avif.abcd1234.part.keep").write_bytes(b"not a temp file")
    (out.root / "linked").symlink_to(outside)
    (out.root / ".l.avif.00000000.part").symlink_to(outside / ".x.avif.abcd1234.part")
    assert out.clean_partials() == 2
    left = sorted(p.name for p in out.root.rglob("*"))
    assert left == sorted(
        ["sub", "notes.part", ".x.avif.abcd1234.part.keep", "linked", ".l.avif.00000000.part"]
    )
    assert (outside / ".x.avif.abcd1234.part").read_bytes() == b"theirs"


def test_a_fifo_under_an_output_name_does_not_hang_a_read(tmp_path):
    out = OutputDir(tmp_path / "out")
    os.mkfifo(out.root / "a.avif")
    result = []
    t = threading.Thread(target=lambda: result.append(out.sha256("a.avif")), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and result == [None]


def test_source_and_output_folders_must_be_apart(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    check_roots(tmp_path / "src", tmp_path / "out")
    for src, out in [("src", "src"), ("src", "src/sub"), ("src/sub", "src")]:
        with pytest.raises(ValueError, match="must not be"):
            check_roots(tmp_path / src, tmp_path / out)


def test_output_names_mirror_the_tree_and_keep_same_stem_files_apart(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "d" / "b.png"]
    assert output_names(paths, tmp_path) == {
        paths[0]: "a.png",
        paths[1]: "a.jpg",
        paths[2]: "d/b",
    }


# --- a full disk and a read-only folder, on a real small filesystem ------------------------


def _mount_tmpfs(where, size: str) -> None:
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root to mount (running unprivileged)")
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")


def _remount(where, options: str) -> None:
    import subprocess

    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


@pytest.fixture
def small_fs(tmp_path):
    import subprocess

    mnt = tmp_path / "mnt"
    yield mnt
    if mnt.is_mount():
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _small_sources(root, n: int):
    from PIL import Image

    from .conftest import SAMPLES

    src = root / "src"
    src.mkdir()
    base = Image.open(SAMPLES / "coffee.png").convert("RGB")
    for i in range(n):
        base.crop((i * 40, 0, i * 40 + 192, 192)).resize((96, 96)).save(src / f"img{i}.png")
    return src


def _optimize(src, out, *extra):
    from typer.testing import CliRunner

    from optimizer.cli import app

    args = ["optimize", str(src), str(out), "--jobs", "1", "--json", "--device", "cpu", *extra]
    return CliRunner().invoke(app, args)


def _manifest_is_whole_and_true(out) -> int:
    """Every manifest line parses, and the output it names is there with its hash."""
    import json

    from optimizer.manifest import MANIFEST_NAME

    path = out / MANIFEST_NAME
    lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
    for raw in lines:
        assert raw.endswith(b"\n")
        entry = json.loads(raw)
        assert _sha((out / entry["output"]).read_bytes()) == entry["output_sha256"]
    return len(lines)


def test_a_full_disk_stops_the_run_with_one_line_and_the_next_run_resumes(tmp_path, small_fs):
    src = _small_sources(tmp_path, 6)
    _mount_tmpfs(small_fs, "16k")  # four pages: the lock, the manifest and two outputs
    out = small_fs / "out"
    r = _optimize(src, out)
    assert r.exit_code == 4, r.output
    assert r.stderr.count("\n") == 1 and "No space left on device" in r.stderr, r.stderr
    assert "run the same command again" in r.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    finished = _manifest_is_whole_and_true(out)
    assert 1 <= finished < 6
    _remount(small_fs, "size=2m")
    again = _optimize(src, out)
    assert again.exit_code == 0, again.output
    statuses = [
        line.split('"status": "')[1].split('"')[0] for line in again.stdout.splitlines()[:-1]
    ]
    assert statuses.count("up_to_date") == finished and len(statuses) == 6
    assert _manifest_is_whole_and_true(out) == 6


def test_a_read_only_output_folder_stops_with_one_line(tmp_path, small_fs):
    src = _small_sources(tmp_path, 2)
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount it is
        _mount_tmpfs(small_fs, "1m")
        out = small_fs / "out"
        out.mkdir()
        make_ro, make_rw = (lambda: _remount(small_fs, "ro")), (lambda: _remount(small_fs, "rw"))
    else:
        out = tmp_path / "out"
        out.mkdir()
        make_ro, make_rw = (lambda: out.chmod(0o555)), (lambda: out.chmod(0o755))
    make_ro()
    try:
        r = _optimize(src, out)
        nested = _optimize(src, out / "new" / "folder")
    finally:
        make_rw()
    for result in (r, nested):
        assert result.exit_code == 4, result.output
        assert result.stderr.count("\n") == 1 and "cannot write" in result.stderr, result.stderr
    assert sorted(p.name for p in out.iterdir()) == []
    again = _optimize(src, out)
    assert again.exit_code == 0, again.output
    assert _manifest_is_whole_and_true(out) == 2


def test_a_manifest_line_cut_by_a_full_disk_is_taken_back(small_fs):
    import json

    from optimizer.manifest import MANIFEST_NAME, Manifest

    _mount_tmpfs(small_fs, "16k")
    out = OutputDir(small_fs / "out")
    entry = {
        "source": "a.png", "status": "written", "output": "a.avif", "job": "j",
        "sha256": "1" * 64, "output_sha256": "2" * 64, "source_bytes": 9, "output_bytes": 9,
        "codec": "avif", "quality": 50, "error": "x" * 3800,
    }  # fmt: skip
    m = Manifest(out)
    m.append(entry)  # most of the first page
    # every page that is left
    with open(out.root / "filler", "wb", buffering=0) as f, suppress(OSError):
        while f.write(b"f" * 512):
            pass
    size = (out.root / MANIFEST_NAME).stat().st_size
    with pytest.raises(OutputUnwritableError, match="No space left"):
        m.append({**entry, "source": "b.png", "output": "b.avif"})  # needs a new page
    assert (out.root / MANIFEST_NAME).stat().st_size == size  # the partial line is gone
    assert [
        json.loads(x)["source"] for x in (out.root / MANIFEST_NAME).read_text().splitlines()
    ] == ["a.png"]
