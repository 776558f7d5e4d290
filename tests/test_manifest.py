"""A manifest is data anyone with write access to OUT can change: hostile lines are reported
and ignored (their images redone), never obeyed, and nothing outside OUT changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.cli import app
from optimizer.manifest import MANIFEST_NAME, MAX_LINE, Manifest, validate_entry
from optimizer.outdir import OutputDir

from .conftest import thumbnails

runner = CliRunner()
ARGS = ["--jobs", "1", "--json", "--device", "cpu"]


def _tree(root: Path) -> dict[str, str]:
    """Every file and link under `root`: content hash (links: their target), for comparison."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _sources(root: Path) -> Path:
    return thumbnails(root / "src", {"a.png": "coffee", "b.png": "chelsea", "sub/c.png": "rocket"})


def _line(source: str, output, sha: str = "0" * 64, **extra) -> str:
    entry = {
        "source": source,
        "status": "written",
        "output": output,
        "job": "an-earlier-job",  # not this run's: the image is redone, stale outputs removed
        "sha256": "1" * 64,
        "output_sha256": sha,
        "source_bytes": 100,
        "output_bytes": 10,
        "codec": "avif",
        "quality": 60,
        "params": {},
        "scores": {},
        "meets_target": True,
        "encodes": 3,
        "error": None,
        **extra,
    }
    return json.dumps(entry)


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_hostile_manifest_lines_touch_nothing_outside_out_and_the_images_are_redone(tmp_path):
    src = _sources(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious")
    sha = hashlib.sha256(b"precious").hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    (out / "evil").symlink_to(outside)  # a folder inside OUT that leads out of it
    lines = [
        _line("a.png", "../outside/victim.txt", sha),
        "{not json",  # invalid JSON mid-file
        _line("b.png", str(victim), sha),  # absolute
        _line("sub/c.png", "evil/victim.txt", sha),  # through the symlinked folder
        _line("sub/c.png", "sub/c\0.avif", sha),  # NUL
        _line("a.png", "a.avif", sha, padding="x" * (10 * 1024 * 1024)),  # a 10 MB line
        "[" * 100_000 + "]" * 100_000,  # nesting deep enough to exhaust a recursive parser
        _line("../../a.png", "a.avif", sha),
        _line("a.png", "a.avif", sha, output_bytes="10"),
    ]
    (out / MANIFEST_NAME).write_text("\n".join(lines) + "\n")
    before_outside, before_src = _tree(outside), _tree(src)

    r = runner.invoke(app, ["optimize", str(src), str(out), *ARGS])

    assert r.exit_code == 0, r.output
    assert _tree(outside) == before_outside and victim.read_bytes() == b"precious"
    assert _tree(src) == before_src
    records = _records(r.stdout)
    assert [x["status"] for x in records[:-1]] == ["written"] * 3  # every image redone
    assert records[-1]["manifest_problems"] == len(lines)
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == len(lines) and all("ignored" in w for w in warnings), r.stderr
    assert "line 1: output '../outside/victim.txt' has an empty, '.' or '..' part" in r.stderr
    assert "longer than" in r.stderr and "NUL" in r.stderr and "absolute" in r.stderr
    assert (out / "evil").is_symlink()  # not ours: left alone
    for rel in ("a.avif", "b.avif", "sub/c.avif"):
        Image.open(out / rel).load()

    # The manifest was rewritten with only valid lines: the next run is quiet and does nothing.
    again = runner.invoke(app, ["optimize", str(src), str(out), *ARGS])
    assert again.exit_code == 0 and "warning" not in again.stderr, again.output
    assert {x["status"] for x in _records(again.stdout)[:-1]} == {"up_to_date"}
    assert _tree(outside) == before_outside


def test_a_manifest_planted_as_a_link_is_neither_read_nor_written_through(tmp_path):
    src = _sources(tmp_path)
    outside = tmp_path / "outside.jsonl"
    outside.write_text(_line("a.png", "a.avif") + "\n")
    before = outside.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).symlink_to(outside)
    r = runner.invoke(app, ["optimize", str(src), str(out), *ARGS])
    assert r.exit_code == 0, r.output
    assert "symbolic link" in r.stderr and outside.read_bytes() == before
    assert not (out / MANIFEST_NAME).is_symlink()
    assert len((out / MANIFEST_NAME).read_text().splitlines()) == 3


def test_an_output_path_through_a_symlinked_folder_is_refused_by_name(tmp_path):
    src = _sources(tmp_path)  # sub/c.png's output is OUT/sub/c.avif
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    r = runner.invoke(app, ["optimize", str(src), str(out), *ARGS])
    assert r.exit_code == 1, r.output  # the others done, this one named
    by_source = {x["source"]: x for x in _records(r.stdout)[:-1]}
    assert by_source["sub/c.png"]["status"] == "skipped"
    assert "symbolic link" in by_source["sub/c.png"]["error"]
    assert by_source["a.png"]["status"] == by_source["b.png"]["status"] == "written"
    assert list(outside.iterdir()) == []


def test_a_stale_output_is_removed_only_if_it_is_the_one_we_wrote(tmp_path):
    src = _sources(tmp_path)
    out = tmp_path / "out"
    args = [str(src), str(out), *ARGS, "--target", "ssimulacra2>=60"]
    first = runner.invoke(app, ["optimize", *args, "--codecs", "webp"])
    assert first.exit_code == 0, first.output
    (out / "b.webp").write_bytes(b"edited by someone since")
    r = runner.invoke(app, ["optimize", *args, "--codecs", "avif"])
    assert r.exit_code == 0, r.output
    assert not (out / "a.webp").exists() and not (out / "sub" / "c.webp").exists()
    assert (out / "b.webp").read_bytes() == b"edited by someone since"


def test_validate_entry_names_the_bad_field():
    good = json.loads(_line("a.png", "a.avif"))
    assert validate_entry(good) is good
    learnt = {**good, "found": {"avif": 70, "webp": 80}, "gains": {"avif": 0.008}}
    assert validate_entry(learnt) is learnt  # what the predictor learnt, for a resumed run
    for field, value in [
        ("status", "deleted"),
        ("sha256", "zz"),
        ("output_bytes", -1),
        ("quality", True),
        ("scores", {"ssim": "high"}),
        ("job", "j" * 65),
        ("found", {"avif": -3}),
        ("found", {"../x": 70}),
        ("found", [70]),
        ("gains", {"avif": "much"}),
        ("gains", {"avif": float("nan")}),
    ]:
        with pytest.raises(ValueError, match=field):
            validate_entry({**good, field: value})


def test_lines_are_read_in_bounded_memory_and_a_torn_last_line_is_cut_off(tmp_path):
    out = OutputDir(tmp_path / "out")
    good = _line("a.png", "a.avif")
    huge = '{"source": "' + "x" * (3 * MAX_LINE) + '"}'
    (out.root / MANIFEST_NAME).write_text(f"{good}\n{huge}\n{good}\n" + good[:40])
    m = Manifest(out)
    assert m.bad_lines == 2 and "a.png" in m.offsets
    assert m.lookup("a.png")["output"] == "a.avif"
    m.append(json.loads(_line("b.png", "b.avif")))
    again = Manifest(out)
    assert again.bad_lines == 0 and set(again.offsets) == {"a.png", "b.png"}
