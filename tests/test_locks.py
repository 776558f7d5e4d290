"""One run per output folder and per SQLite study: a second run is refused with the first's
pid and start time; a killed run's lock goes with its process; lock files are never followed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from optimizer.cli import app
from optimizer.locks import AlreadyRunningError, RunLock
from optimizer.outcome import ExitCode
from optimizer.outdir import LOCK_NAME, OutputDir, UnsafePathError

from .conftest import ROOT, SAMPLES

runner = CliRunner()
# Without conftest's IMGTUNE_STUDIES: these runs keep studies/ in their working folder, as a
# user's do, and the tests look for them there.
ENV = {k: v for k, v in os.environ.items() if k != "IMGTUNE_STUDIES"}
ENV.update(COLUMNS="200", PYTHONPATH=str(ROOT))


def _wait_for_holder(lock: Path, pid: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended ({proc.returncode}) before it was seen")
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{lock} never named pid {pid}")


def test_a_second_holder_is_refused_with_the_first_ones_details(tmp_path):
    path = tmp_path / "x.lock"
    with RunLock(path, "the thing"):
        with pytest.raises(AlreadyRunningError) as info:
            RunLock(path, "the thing").acquire()
        msg = str(info.value)
        assert f"pid {os.getpid()}" in msg and "started 20" in msg and "the thing" in msg
        assert info.value.holder["pid"] == os.getpid()
    assert path.read_text() == ""  # no stale details once released
    with RunLock(path, "the thing") as again:
        assert again.held


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    path = tmp_path / "x.lock"
    code = (
        "import sys, time; from optimizer.locks import RunLock; "
        f"RunLock({str(path)!r}, 'x').acquire(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=ENV)
    try:
        assert proc.stdout.readline().strip() == b"held"
        with pytest.raises(AlreadyRunningError, match=f"pid {proc.pid}"):
            RunLock(path, "x").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(path, "x"):  # nobody cleaned anything up
        pass


def test_a_lock_file_planted_as_a_link_or_hard_link_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    out = OutputDir(tmp_path / "out")
    (out.root / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"), out.lock():
        pass
    (out.root / LOCK_NAME).unlink()
    os.link(victim, out.root / LOCK_NAME)
    with pytest.raises(UnsafePathError, match="hard links"), out.lock():
        pass
    assert victim.read_bytes() == b"keep me"


def _images(folder: Path, n: int, side: int = 96) -> Path:
    folder.mkdir(parents=True)
    base = Image.open(SAMPLES / "coffee.png").convert("RGB")
    for i in range(n):  # distinct content, so nothing is served from a cache
        crop = base.crop((i * 7, i * 5, i * 7 + 3 * side, i * 5 + 2 * side)).resize((side, side))
        crop.save(folder / f"img{i:03d}.png")
    return folder


def test_two_optimize_runs_on_one_out_and_a_kill_then_a_resume(tmp_path):
    src, out = _images(tmp_path / "src", 40), tmp_path / "out"
    cmd = [sys.executable, "-m", "optimizer", "optimize", str(src), str(out), "--jobs", "1"]
    first = subprocess.Popen(
        [*cmd, "--json", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        _wait_for_holder(out / LOCK_NAME, first.pid, first)
        second = runner.invoke(app, ["optimize", str(src), str(out), "--device", "cpu"])
        assert second.exit_code == ExitCode.NOTHING_DONE, second.output
        msg = second.stderr
        assert "in use by another imgtune run" in msg and f"pid {first.pid}" in msg, msg
        assert "started 20" in msg and "optimize" in msg
        assert len(msg.strip().splitlines()) == 1  # one line, no traceback
        first.stdout.readline()  # one image finished, then kill it mid-run
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    third = runner.invoke(app, ["optimize", str(src), str(out), "--json", "--device", "cpu"])
    assert third.exit_code == 0, third.output  # no manual cleanup needed
    records = [json.loads(line) for line in third.stdout.splitlines()][:-1]
    assert len(records) == 40 and {r["status"] for r in records} <= {"written", "up_to_date"}
    assert any(r["status"] == "up_to_date" for r in records)
    assert not list(out.rglob("*.part"))


def test_two_tune_commands_on_one_new_study(tmp_path):
    # Started together: exactly one may hold the SQLite study; the other is refused with its
    # pid before touching the database, and every trial of the first is in the study.
    src = _images(tmp_path / "set", 3, side=128)
    trials = 8
    cmd = [sys.executable, "-m", "optimizer", "tune", str(src), "--strategy", "tpe", "--seed", "1"]
    cmd += ["--codecs", "webp,avif", "--device", "cpu", "--json"]
    # An SQLite study (new studies default to a journal file, which takes many processes).
    cmd += ["--storage", "sqlite:///studies/shared.db", "--study-name", "shared"]
    procs = [
        subprocess.Popen(
            [*cmd, "--trials", str(trials)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for _ in range(2)
    ]
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in procs]
    codes = sorted(r[3] for r in results)
    print("exit codes", codes)
    for _pid, _stdout, stderr, _code in results:
        assert "Traceback" not in stderr and "OperationalError" not in stderr, stderr
    import optuna

    db = next((tmp_path / "studies").glob("*.db"))
    study = optuna.load_study(study_name=db.stem, storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == len(study.trials)  # nothing left RUNNING
    if codes == [0, ExitCode.NOTHING_DONE]:
        (winner,) = [r for r in results if r[3] == 0]
        (loser,) = [r for r in results if r[3] != 0]
        assert f"pid {winner[0]}" in loser[2] and "one process at a time" in loser[2]
        assert len(study.trials) == trials
    else:  # the first finished before the second started: both ran, one after the other
        assert codes == [0, 0] and len(study.trials) == 2 * trials
