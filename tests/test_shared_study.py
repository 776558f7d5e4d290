"""Studies shared by many workers: `imgtune tune` processes on one PostgreSQL study (one of them
SIGKILLed mid-trial), `--workers N` on a journal file, a trial whose worker died before its first
heartbeat, `--new-study` while a worker runs, the Optuna heartbeat protocol imgtune implements,
an old SQLite study that still resumes, `imgtune preset` from storage while trials run, the score
cache under several writers, and the PostgreSQL fixture's skip-or-fail decision."""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from optimizer import api
from optimizer import storage as storage_module
from optimizer.cli import app
from optimizer.outcome import ExitCode
from optimizer.search import ScoreCache
from optimizer.storage import StorageSpec, busy_trials, fail_stale
from optimizer.study import study_name_for
from optimizer.targets import parse_target

from . import _postgres
from ._postgres import postgres_url  # noqa: F401 - the fixture
from .conftest import thumbnails

ROOT = Path(__file__).resolve().parent.parent
# Without conftest's IMGTUNE_STUDIES: these runs keep studies/ in their working folder, as a
# user's do, and the tests look for them there.
ENV = {k: v for k, v in os.environ.items() if k != "IMGTUNE_STUDIES"}
ENV.update(COLUMNS="200", PYTHONPATH=str(ROOT))
TARGET = "ssim>=0.9"
S = optuna.trial.TrialState
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Three 64 px thumbnails: a trial takes a fraction of a second."""
    d = tmp_path_factory.mktemp("shared") / "set"
    return thumbnails(
        d, {"chelsea.png": "chelsea", "coffee.png": "coffee", "rocket.png": "rocket"}, side=64
    )


def _tune_cmd(folder: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "optimizer", "tune", str(folder), "--target", TARGET,
            "--device", "cpu", "--json", *args]  # fmt: skip


def _finished(study) -> list:
    return [t for t in study.trials if t.state in (S.COMPLETE, S.PRUNED)]


def _same_preset(a: dict, b: dict) -> None:
    for key in ("params", "pillow_save_kwargs", "max_size", "background", "target", "images"):
        assert a[key] == b[key], key
    assert a["achieved"] == b["achieved"]


def _best_matches(preset: dict, study) -> None:
    """The preset is the study's best feasible trial: its recipe and its bytes."""
    best = study.best_trial
    assert preset["params"] == best.user_attrs["candidate"]
    assert preset["achieved"]["total_bytes"] == int(best.value)
    assert preset["target"]["spec"] == TARGET
    assert preset["achieved"]["quality"]["ssim"]["worst"] >= 0.9


def _kill_mid_trial(open_study, proc, pick, timeout: float = 120) -> tuple[int, int]:
    """Wait until a worker chosen by `pick(pid)` runs a trial, freeze it (SIGSTOP: the trial
    cannot finish between the look and the kill), check the trial still runs, SIGKILL it.
    Returns (pid, the trial's number)."""
    pid, number = _freeze_mid_trial(open_study, proc, pick, timeout)
    os.kill(pid, signal.SIGKILL)
    return pid, number


def _freeze_mid_trial(
    open_study, proc, pick, timeout: float = 120, settled=lambda: True
) -> tuple[int, int]:
    """Wait until a worker chosen by `pick(pid)` runs a trial and leave it frozen (SIGSTOP) in
    the middle of it, at a moment when `settled()`. Returns (pid, the trial's number)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before a trial could be killed"
        study = open_study()
        if study is None:
            time.sleep(0.05)
            continue
        for t in study.get_trials(states=(S.RUNNING,)):
            host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
            if host != HOST or not pid.isdigit() or not pick(int(pid)):
                continue
            os.kill(int(pid), signal.SIGSTOP)
            running = open_study().get_trials(states=(S.RUNNING,))
            if any(r.number == t.number for r in running) and settled():
                return int(pid), t.number
            os.kill(int(pid), signal.SIGCONT)
        time.sleep(0.03)
    raise AssertionError("no worker ran a trial to stop")


def _journal_study(journal: Path, name: str):
    """A function that returns study `name` of the journal file once the file exists (None
    before), its storage opened once."""
    opened = []

    def open_study():
        if not journal.is_file():
            return None
        if not opened:
            opened.append(StorageSpec.parse(str(journal)).open())
        return _opener(opened[0], name)()

    return open_study


def _opener(storage, name: str):
    def open_study():
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # not created yet
            return None

    return open_study


def test_three_tune_processes_on_one_postgres_study_one_killed_mid_trial(
    small,
    tmp_path,
    postgres_url,  # noqa: F811
):
    trials, name = 24, f"shared-{uuid.uuid4().hex[:8]}"
    procs = []
    for i in range(3):
        cmd = _tune_cmd(small, "--storage", postgres_url, "--study-name", name, "--trials",
                        str(trials), "--heartbeat", "1", "--seed", str(i),
                        "--preset-out", str(tmp_path / f"p{i}.json"))  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    t0 = time.monotonic()
    victim = procs[0]
    storage = optuna.storages.RDBStorage(postgres_url)  # one connection pool for the looks
    try:
        _, killed = _kill_mid_trial(_opener(storage, name), victim, lambda pid: pid == victim.pid)
        victim.wait(timeout=30)
        outs = [p.communicate(timeout=240) for p in procs[1:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    print(f"3 workers, one killed: {time.monotonic() - t0:.1f} s")
    assert victim.returncode == -signal.SIGKILL
    for p, (_, stderr) in zip(procs[1:], outs, strict=True):
        assert p.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert len(_finished(study)) == trials  # exactly what was asked, by all workers together
    assert not study.get_trials(states=(S.RUNNING, S.WAITING))  # nothing left running
    dead = study.trials[killed]
    assert dead.state == S.FAIL and dead.user_attrs["worker"] == f"{HOST}:{victim.pid}"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retried and retried[-1].state in (S.COMPLETE, S.PRUNED)  # run again by a survivor
    workers = {t.user_attrs.get("worker") for t in _finished(study)}
    assert len(workers) >= 2  # the survivors shared the work
    presets = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in (1, 2)]
    summaries = [json.loads(stdout) for stdout, _ in outs]
    for preset, summary in zip(presets, summaries, strict=True):
        _best_matches(preset, study)
        assert summary["finished"] == trials and summary["goal"] == trials
    _same_preset(presets[0], presets[1])
    # `imgtune preset` writes the same preset from the server alone, at any time
    r = subprocess.run(
        [sys.executable, "-m", "optimizer", "preset", name, "--storage", postgres_url,
         "--out", str(tmp_path / "again.json")],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    _same_preset(json.loads((tmp_path / "again.json").read_text()), presets[0])


@pytest.fixture(scope="module")
def journal_run(tmp_path_factory):
    """`imgtune tune --workers 2` on the default journal file, its second worker SIGKILLed in
    the middle of a trial. 128 px images: a trial takes long enough for the second process to
    start and join before the first has run them all."""
    root = tmp_path_factory.mktemp("journal")
    folder = thumbnails(
        root / "set", {"chelsea.png": "chelsea", "coffee.png": "coffee", "rocket.png": "rocket"},
        side=128,
    )  # fmt: skip
    name = study_name_for(folder, parse_target(TARGET), "min")
    journal = root / "studies" / f"{name}.journal"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        _tune_cmd(folder, "--trials", "24", "--workers", "2", "--seed", "0"),
        cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        open_study = _journal_study(journal, name)

        child, killed = _kill_mid_trial(open_study, proc, lambda pid: pid != proc.pid)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"--workers 2, 24 trials, one worker killed: {time.monotonic() - t0:.1f} s")
    return root, folder, name, proc, stdout, stderr, child, killed


def test_workers_on_a_journal_file_add_the_trials_asked_for(journal_run):
    root, _, name, proc, stdout, stderr, child, killed = journal_run
    assert proc.returncode == 0, stderr
    assert f"worker 1 (pid {child}) was killed by signal 9" in stderr
    summary = json.loads(stdout)
    journal = root / "studies" / f"{name}.journal"
    assert journal.is_file() and not (root / "studies" / f"{name}.db").exists()
    assert summary["storage"] == str(Path("studies") / f"{name}.journal")
    study = optuna.load_study(study_name=name, storage=StorageSpec.parse(str(journal)).open())
    assert len(_finished(study)) == 24 and summary["finished"] == 24 and summary["workers"] == 2
    assert not study.get_trials(states=(S.RUNNING, S.WAITING))  # nothing left running
    dead = study.trials[killed]
    assert dead.state == S.FAIL and dead.user_attrs["worker"] == f"{HOST}:{child}"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retried and retried[-1].state in (S.COMPLETE, S.PRUNED)  # run again
    workers = {t.user_attrs.get("worker") for t in study.trials}
    assert {f"{HOST}:{proc.pid}", f"{HOST}:{child}"} <= workers  # two processes, one study
    preset = json.loads((root / summary["preset"]).read_text())
    _best_matches(preset, study)


def test_preset_command_writes_what_tune_wrote(journal_run):
    root, small, _, _, stdout, _, _, _ = journal_run
    summary = json.loads(stdout)
    written = json.loads((root / summary["preset"]).read_text())
    runner = CliRunner()
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.delenv("IMGTUNE_STUDIES", raising=False)  # the study is in root's studies/
    try:
        from_storage = runner.invoke(app, ["preset", summary["study"], "--out", "a.json"])
        rescored = runner.invoke(
            app, ["preset", summary["study"], "--images", str(small), "--out", "b.json",
                  "--device", "cpu"],
        )  # fmt: skip
        missing = runner.invoke(app, ["preset", "no-such-study"])
    finally:
        mp.undo()
    assert from_storage.exit_code == 0, from_storage.output
    assert rescored.exit_code == 0, rescored.output
    for out in ("a.json", "b.json"):
        again = json.loads((root / out).read_text())
        _same_preset(again, written)
        assert again["study"]["name"] == summary["study"]
    assert missing.exit_code == ExitCode.NOTHING_DONE and "no such study" in missing.stderr


def test_an_old_sqlite_study_still_opens_and_resumes(small, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    name = study_name_for(small, parse_target(TARGET), "min")
    db = studies / f"{name}.db"
    kw = {"target": TARGET, "device": "cpu", "codecs": "webp", "studies": studies, "seed": 0}
    api.tune(small, trials=3, storage=f"sqlite:///{db}", **kw)
    # As an earlier imgtune left it: no recorded output settings or per-image scores, and a
    # trial left RUNNING by a run that was killed.
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("DELETE FROM study_user_attributes WHERE key IN ('output', 'run')")
    con.execute("DELETE FROM trial_user_attributes WHERE key = 'per_image'")
    con.commit()
    con.close()
    old = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    old.ask()  # RUNNING, never told
    notes: list[str] = []
    r = api.tune(small, trials=2, on_note=notes.append, **kw)  # no storage: the .db is found
    assert r.study.storage == f"sqlite:///{db}" and not list(studies.glob("*.journal"))
    assert any("SQLite file" in n for n in notes), notes
    assert any("queued again" in n for n in notes), notes
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    assert len(_finished(study)) == 5 and not study.get_trials(states=(S.RUNNING, S.WAITING))
    assert r.preset is not None and study.user_attrs["output"]["source_bytes"] > 0
    # --workers needs a storage several processes can write: refused on the SQLite study
    with pytest.raises(api.UsageError, match="SQLite"):
        api.tune(small, trials=1, workers=2, **kw)
    # the best trial may be an old one without stored scores: `preset` says so, or rescores
    best = study.best_trial
    if "per_image" not in best.user_attrs:
        with pytest.raises(api.ImgtuneError, match="--images"):
            api.preset(name, studies=studies)
    path = api.preset(name, images=small, studies=studies, device="cpu", out=tmp_path / "p.json")
    _same_preset(json.loads(path.read_text()), r.preset.to_dict())


def test_preset_of_a_study_without_a_feasible_trial_is_refused(small, tmp_path):
    studies = tmp_path / "studies"
    r = api.tune(
        small, target="ssim>=0.99999", trials=2, codecs="webp", device="cpu", studies=studies,
        study_name="hopeless",
    )  # fmt: skip
    assert r.preset is None and (studies / "hopeless.journal").is_file()
    with pytest.raises(api.ImgtuneError, match="no trial of study 'hopeless' met") as info:
        api.preset("hopeless", studies=studies)
    assert info.value.exit_code == ExitCode.TARGET_MISSED
    assert not (studies / "hopeless.preset.json").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with")
def test_journal_heartbeat_fails_and_requeues_a_dead_workers_trial(tmp_path):
    spec = StorageSpec.parse(str(tmp_path / "s.journal"))
    study = optuna.create_study(study_name="s", storage=spec.open(heartbeat=1))
    alive = study.ask()
    study._storage.record_heartbeat(alive._trial_id)
    fail_stale(study)  # just beaten: not stale
    assert study.trials[alive.number].state == S.RUNNING
    time.sleep(3.5)  # 3 heartbeats of silence, as from a killed worker
    other = optuna.load_study(study_name="s", storage=spec.open(heartbeat=1))  # another worker
    fail_stale(other)
    trials = other.trials
    assert trials[alive.number].state == S.FAIL
    assert [t.state for t in trials[1:]] == [S.WAITING]  # queued to run again
    assert trials[1].system_attrs["failed_trial"] == alive.number
    # ... as a clean copy: not the dead worker's heartbeat (stale at once, failed again before
    # its new worker's first beat) nor what its run recorded (its worker among them)
    assert "imgtune:heartbeat" in trials[0].system_attrs
    assert "imgtune:heartbeat" not in trials[1].system_attrs and not trials[1].user_attrs


def _stores(kind: str, tmp_path: Path, request) -> tuple[str, dict]:
    """(study name, api.tune keywords) for a study on a journal file or on PostgreSQL."""
    if kind == "journal":
        return "s", {"studies": tmp_path / "studies", "study_name": "s"}
    name = f"s-{uuid.uuid4().hex[:8]}"
    url = request.getfixturevalue("postgres_url")
    return name, {"storage": url, "study_name": name, "studies": tmp_path / "studies"}


@pytest.fixture
def far_east(monkeypatch):
    """This process in UTC+9: a naive local time taken for UTC is 9 hours in the future."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with")
@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_run_again(
    small, tmp_path, request, kind, far_east
):
    """Optuna stores a trial, then beats from a thread: a worker killed in between leaves a
    RUNNING trial without a heartbeat, which Optuna's RDB storage never fails (and a journal
    study judged by the trial's start, read in the wrong time zone). Every other worker would
    wait for it for ever; it must be failed, run again, and the run end with its trials."""
    name, where = _stores(kind, tmp_path, request)
    kw = {"target": TARGET, "device": "cpu", "codecs": "webp", "seed": 0, **where}
    api.tune(small, trials=2, heartbeat=1, **kw)
    spec = StorageSpec.parse(where.get("storage") or str(tmp_path / "studies" / "s.journal"))
    orphan = optuna.load_study(study_name=name, storage=spec.open()).ask()  # never beats
    t0 = time.monotonic()
    r = api.tune(small, trials=2, heartbeat=1, timeout=40, **kw)
    took = time.monotonic() - t0
    print(f"{kind}: a trial that never beat, failed and run again: {took:.1f} s")
    study = optuna.load_study(study_name=name, storage=spec.open())
    assert not r.study.interrupted and took < 40
    assert r.study.goal == 4 and len(_finished(study)) == 4  # the trials asked for
    assert not study.get_trials(states=(S.RUNNING, S.WAITING))  # nothing left running
    assert study.trials[orphan.number].state == S.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert [t.state for t in retried] in ([S.COMPLETE], [S.PRUNED])


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with")
def test_busy_trials_tells_a_live_worker_from_a_dead_one(postgres_url):  # noqa: F811
    name = f"busy-{uuid.uuid4().hex[:8]}"
    server = StorageSpec.parse(postgres_url).open(heartbeat=1)  # a grace of 3 s
    study = optuna.create_study(study_name=name, storage=server)
    study_id = server.get_study_id_from_name(name)

    def trial_id(number: int) -> int:
        return server.get_trial_id_from_study_id_trial_number(study_id, number)

    live = study.ask()
    server.record_heartbeat(trial_id(live.number))
    t0 = time.monotonic()
    assert [t.number for t in busy_trials(server, name)] == [live.number]
    silent = study.ask()  # its worker killed before its first beat
    assert [t.number for t in busy_trials(server, name)] == [live.number]
    assert time.monotonic() - t0 < 2  # a beating trial is an answer at once
    time.sleep(3.5)  # the live worker dies: 3 beats of silence
    assert busy_trials(server, name) == []  # the silent one watched until failed
    trials = optuna.load_study(study_name=name, storage=postgres_url).trials
    assert trials[live.number].state == S.FAIL and trials[silent.number].state == S.FAIL
    assert sorted(t.system_attrs["failed_trial"] for t in trials[2:]) == [0, 1]  # run again
    assert busy_trials(server, "no-such-study") == []


def _freeze_worker(folder: Path, cwd: Path, *args: str):
    """An `imgtune tune` on `folder`'s default journal study, frozen in the middle of a trial:
    (process, study opener, trial number)."""
    name = study_name_for(folder, parse_target(TARGET), "min")
    journal = cwd / "studies" / f"{name}.journal"
    proc = subprocess.Popen(
        _tune_cmd(folder, "--trials", "50", *args), cwd=cwd, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    open_study = _journal_study(journal, name)

    def lock_free() -> bool:  # frozen holding the journal's lock, it would block every reader
        import fcntl

        fd = os.open(f"{journal}.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    _, number = _freeze_mid_trial(open_study, proc, lambda pid: pid == proc.pid, settled=lock_free)
    return proc, open_study, number


def test_new_study_is_refused_while_a_worker_runs_trials_of_it(small, tmp_path):
    """`--new-study` deletes the study: under a worker running a trial of it, that worker's
    work would be lost. Refused, naming the study and the worker; a worker whose study is
    deleted all the same (a --new-study between two of its trials) stops with one line."""
    name = study_name_for(small, parse_target(TARGET), "min")
    worker, open_study, number = _freeze_worker(small, tmp_path, "--heartbeat", "10")
    try:
        r = subprocess.run(
            _tune_cmd(small, "--trials", "1", "--heartbeat", "10", "--new-study"),
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == ExitCode.NOTHING_DONE, r.stderr
        assert f"study '{name}'" in r.stderr and f"{HOST}:{worker.pid}" in r.stderr, r.stderr
        assert "--new-study would delete it under them" in r.stderr, r.stderr
        study = open_study()
        assert study.trials[number].state == S.RUNNING  # untouched
        # deleted all the same, as a --new-study that found the worker between two trials
        optuna.delete_study(study_name=name, storage=StorageSpec.parse(
            str(tmp_path / "studies" / f"{name}.journal")).open())  # fmt: skip
        os.kill(worker.pid, signal.SIGCONT)
        _, stderr = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
    assert worker.returncode == ExitCode.NOTHING_DONE, stderr
    assert f"study '{name}'" in stderr and "was deleted while this process ran" in stderr
    assert "Traceback" not in stderr, stderr


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_heartbeat_protocol_is_the_one_imgtune_implements(tmp_path):
    """The journal heartbeat rests on Optuna's private `BaseHeartbeat` (Optuna 5.0 exports no
    public one): if Optuna renames or changes it, or stops beating through it, this fails."""
    base = storage_module._heartbeat_base()
    assert base.__abstractmethods__ == {
        "record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
        "get_heartbeat_stale_trial_callback",
    }  # fmt: skip
    journal_class, server_class = storage_module._storage_classes()
    assert issubclass(journal_class, base) and issubclass(server_class, base)
    assert issubclass(server_class, optuna.storages.RDBStorage)
    backend = StorageSpec.parse(str(tmp_path / "p.journal")).open(heartbeat=1)
    assert isinstance(backend, journal_class)
    study = optuna.create_study(study_name="p", storage=backend)
    study.optimize(lambda trial: time.sleep(1.2) or 1.0, n_trials=1)  # Optuna beats through it
    assert isinstance(study.trials[0].system_attrs.get("imgtune:heartbeat"), float)
    seen = []
    backend._get_stale_trial_ids = lambda study_id: seen.append(study_id) or []
    optuna.storages.fail_stale_trials(study)  # ... and asks it for stale trials
    assert seen == [backend.get_study_id_from_name("p")]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with")
def test_the_server_heartbeat_table_is_where_imgtune_reads_it(postgres_url):  # noqa: F811
    """A server study's trials without a heartbeat are found in Optuna's table of heartbeats
    (no public query for it): a beaten trial is not listed, a silent one is."""
    name = f"beats-{uuid.uuid4().hex[:8]}"
    server = StorageSpec.parse(postgres_url).open(heartbeat=1)
    study = optuna.create_study(study_name=name, storage=server)
    study_id = server.get_study_id_from_name(name)
    beaten, silent, done = study.ask(), study.ask(), study.ask()
    study.tell(done, 1.0)
    ids = [server.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in
           (beaten, silent)]  # fmt: skip
    server.record_heartbeat(ids[0])
    assert server.unbeaten_trial_ids(study_id) == [ids[1]]


def test_preset_takes_the_best_finished_feasible_trial_while_others_run(
    small,
    tmp_path,
    postgres_url,  # noqa: F811
):
    """`imgtune preset` on a study other workers still add to: a running trial (scores
    recorded, not yet told), a smaller infeasible one and a smaller failed one are not the
    best; the preset replaces the old file whole."""
    name = f"pre-{uuid.uuid4().hex[:8]}"
    kw = {"target": TARGET, "device": "cpu", "codecs": "webp", "seed": 0, "heartbeat": 1}
    api.tune(small, trials=3, storage=postgres_url, study_name=name,
                 studies=tmp_path / "studies", **kw)  # fmt: skip
    study = optuna.load_study(study_name=name, storage=postgres_url)
    best = study.best_trial
    other = {**best.user_attrs["candidate"], "quality": best.user_attrs["candidate"]["quality"] - 9}

    def fake(feasible: bool):
        t = study.ask()
        for key, value in best.user_attrs.items():
            t.set_user_attr(key, value)
        t.set_user_attr("candidate", other)
        t.set_constraint("target", -1.0 if feasible else 0.5)
        return t

    fake(feasible=True)  # running: everything recorded, not finished
    study.tell(fake(feasible=False), 1.0)  # smaller, misses the target
    study.tell(fake(feasible=True), state=S.FAIL)  # its worker failed it
    out = tmp_path / "preset.json"
    out.write_text("an older preset")
    r = subprocess.run(
        [sys.executable, "-m", "optimizer", "preset", name, "--storage", postgres_url,
         "--out", str(out)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    preset = json.loads(out.read_text())
    _best_matches(preset, study)
    assert preset["study"]["trials"] == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".preset")] == []


def test_storage_spec_parsing_and_hidden_passwords():
    assert StorageSpec.parse(None).kind == "memory"
    assert StorageSpec.parse("sqlite:///studies/x.db").sqlite_path == "studies/x.db"
    assert StorageSpec.parse("studies/x.journal") == StorageSpec("journal", "studies/x.journal")
    server = StorageSpec.parse("postgresql+psycopg://me:s3cret@db.example:5432/studies")
    assert server.kind == "server" and server.shared
    assert "s3cret" not in server.display and "me:***@db.example" in server.display
    with pytest.raises(api.UsageError, match="sqlite:///"):
        StorageSpec.parse("studies/x.db")


_HAMMER = textwrap.dedent(
    """
    import hashlib, json, random, sys
    from optimizer.search import ScoreCache

    def row(key):  # what every writer stores under `key`
        h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        return h % 100_000 + 1, json.dumps({"ssim": (h % 997) / 997, "key": key})

    cache = ScoreCache(sys.argv[1])
    rng = random.Random(int(sys.argv[2]))
    wrong = hits = 0
    for i in range(int(sys.argv[3])):
        key = f"k{rng.randrange(400)}"
        if rng.random() < 0.5:
            cache.put(key, *row(key))
        got = cache.get(f"k{rng.randrange(400)}") if rng.random() < 0.5 else cache.get(key)
        if got is not None:
            hits += 1
            k = json.loads(got[1])["key"]
            wrong += tuple(got) != row(k)
    print(json.dumps({"wrong": wrong, "hits": hits, "failures": cache.failures}))
    """
)


def test_score_cache_under_two_writing_processes(tmp_path):
    db = tmp_path / "scores.sqlite"
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(db), str(seed), "3000"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for seed in (1, 2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    print(f"two processes x 3000 cache operations: {time.monotonic() - t0:.1f} s")
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0 and not stderr, stderr  # never raised
        counts = json.loads(stdout)
        assert counts["wrong"] == 0 and counts["hits"] > 100, counts


def test_score_cache_held_locked_is_a_miss_not_an_error(tmp_path):
    import sqlite3

    db = tmp_path / "scores.sqlite"
    cache = ScoreCache(db, busy_timeout=0.1, attempts=3)
    cache.put("a", 10, "{}")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    holder.execute("INSERT INTO scores VALUES ('b', 1, '{}')")
    t0 = time.monotonic()
    cache.put("c", 20, "{}")  # cannot get the write lock: dropped, not raised
    assert time.monotonic() - t0 < 5 and cache.failures == 1
    assert cache.get("a") == (10, "{}")  # WAL: reads go on beside the writer
    assert cache.get("b") is None  # not committed yet: a miss
    holder.execute("COMMIT")
    holder.close()
    assert cache.get("c") is None and cache.get("b") == (1, "{}")
    cache.put("c", 20, "{}")
    assert cache.get("c") == (20, "{}")
    # an unusable file is a cache that always misses, never an error
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not an SQLite file" * 100)
    broken = ScoreCache(bad)
    assert broken.get("a") is None and broken.put("a", 1, "{}") is None


def test_postgres_fixture_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    for env in ({"CI": "true"}, {"CI": "1"}):
        with pytest.raises(pytest.fail.Exception, match="CI needs a PostgreSQL"):
            _postgres.unavailable("no server", env)
    for env in ({}, {"CI": ""}, {"CI": "false"}):
        with pytest.raises(pytest.skip.Exception, match="no server"):
            _postgres.unavailable("no server", env)
    # no URL given and a server that cannot be started: fail under CI, skip elsewhere, with
    # the script's own last words as the reason
    broken = tmp_path / "postgres"
    broken.write_text("echo 'postgres: no PostgreSQL server (initdb) here' >&2; exit 1\n")
    monkeypatch.setattr(_postgres, "SCRIPT", broken)
    with pytest.raises(pytest.fail.Exception, match="no PostgreSQL server .initdb. here"):
        _postgres.server({"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL server .initdb. here"):
        _postgres.server({})
    # a URL that does not answer is no server either
    dead = "postgresql+psycopg://nobody@127.0.0.1:9/none"
    with pytest.raises(pytest.fail.Exception, match="does not answer"):
        _postgres.server({"CI": "1", "IMGTUNE_TEST_POSTGRES": dead})


def test_preset_command_and_api_share_their_defaults():
    from .test_api import _cli_defaults

    cli = _cli_defaults("preset")
    params = inspect.signature(api.preset).parameters
    assert set(cli) == {"storage", "images", "out_file", "weights", "device"}
    for option, default in cli.items():
        keyword = "out" if option == "out_file" else option
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[keyword].default == default, option
