"""Where a study is kept, and what keeps a study shared by many workers sound when one dies.

Three kinds of storage (`StorageSpec.parse`):

- an SQLite file (``sqlite:///studies/x.db``): one process at a time (`study` holds a run lock
  beside it); `tune` made these before journal files, and they still open and resume;
- a journal file (a path, ``studies/x.journal``): Optuna's `JournalStorage`, an append-only log
  that several processes on one host write under an OS file lock (`flock`, released by the
  kernel when its holder dies: a killed worker never leaves the file locked);
- a database server (``postgresql+psycopg://user@host/db``, any SQLAlchemy URL Optuna takes):
  workers on many machines.

A worker that dies mid-trial (SIGKILL, a lost machine) would leave its trial RUNNING for ever.
Shared storages therefore record a heartbeat per running trial (Optuna's own for servers; for
journal files, which Optuna 5.0 gives none, imgtune's): a trial whose worker has been silent
for `GRACE_BEATS` heartbeats is failed by whichever worker looks next (before each trial, and
while waiting for the last trials) and queued again (`requeue`, at most `MAX_RETRY` times per
trial). A trial that never beat at all (its worker killed between creating it and its first
beat: Optuna beats from a thread started after the trial is stored, and its RDB storage never
fails a trial without a beat) is failed once a worker has watched it silent for as long
(`_SilenceWatch`: this process's clock, so no two machines' clocks are compared).

Optuna has no public interface for a storage's heartbeat: both storages here implement the
protocol of `optuna.storages._heartbeat.BaseHeartbeat`, which `Study.optimize` and
`optuna.storages.fail_stale_trials` use. `_heartbeat_base` is the one import of it, and
tests/test_shared_study.py checks that protocol and that Optuna still calls it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ImgtuneError, UsageError

__all__ = [
    "DEFAULT_HEARTBEAT",
    "GRACE_BEATS",
    "JOURNAL_SUFFIX",
    "MAX_RETRY",
    "StorageSpec",
    "busy_trials",
    "fail_orphans",
    "fail_stale",
    "requeue",
]

#: seconds between a running trial's heartbeats on a shared storage
DEFAULT_HEARTBEAT = 10
#: a trial whose worker has not beaten for this many heartbeats is failed (and retried)
GRACE_BEATS = 3
#: how often one trial is queued again after its worker died
MAX_RETRY = 2
JOURNAL_SUFFIX = ".journal"
_BEAT = "imgtune:heartbeat"

Kind = Literal["memory", "sqlite", "journal", "server"]


@dataclass(frozen=True)
class StorageSpec:
    """Which storage a study lives in: `kind` and `location` (a URL, or the journal's path).
    Plain strings, so a worker process receives it pickled and opens its own connection."""

    kind: Kind
    location: str

    @classmethod
    def parse(cls, storage: str | None) -> StorageSpec:
        """`None`/``"memory"``: in memory; a URL: SQLite or a server; anything else: the path of
        a journal file (``journal:PATH`` also reads as one)."""
        if storage is None or storage == "memory":
            return cls("memory", "memory")
        if "://" in storage:
            scheme = storage.split("://", 1)[0].lower()
            return cls("sqlite" if scheme.startswith("sqlite") else "server", storage)
        path = storage.removeprefix("journal:")
        if Path(path).suffix.lower() in (".db", ".sqlite", ".sqlite3"):
            raise UsageError(
                f"--storage {storage}: an SQLite study is given as a URL (sqlite:///{path}); "
                "a plain path names a journal file (studies/NAME.journal)"
            )
        if not path:
            raise UsageError("--storage: empty path")
        return cls("journal", path)

    @property
    def shared(self) -> bool:
        """Several processes may add trials to it at once."""
        return self.kind in ("journal", "server")

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file of an ``sqlite:///`` URL (None for other storages or `:memory:`)."""
        if self.kind != "sqlite" or not self.location.startswith("sqlite:///"):
            return None
        path = self.location.removeprefix("sqlite:///").split("?")[0]
        return path if path and path != ":memory:" else None

    @property
    def display(self) -> str:
        """The location as written in messages, presets and summaries: a password in a URL is
        replaced by ***."""
        return re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", self.location)

    def open(self, *, heartbeat: int | None = None) -> Any:
        """An Optuna storage for this spec (a new connection: one per process). `heartbeat`
        (seconds) turns on the dead-worker detection of shared storages."""
        import optuna

        if heartbeat is not None and heartbeat < 1:
            raise UsageError(f"heartbeat must be at least 1 second, got {heartbeat}")
        if self.kind == "memory":
            return optuna.storages.InMemoryStorage()
        if self.kind == "sqlite":
            return self.location  # Optuna's default RDB storage, as tune always opened it
        stale = requeue if heartbeat else None
        journal_class, server_class = _storage_classes()
        if self.kind == "journal":
            path = Path(self.location)
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=FlockJournalLock(str(path))
            )
            return journal_class(
                backend,
                heartbeat_interval=heartbeat,
                grace_period=GRACE_BEATS * heartbeat if heartbeat else None,
                stale_trial_callback=stale,
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return server_class(
                    self.location,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=heartbeat,
                    grace_period=GRACE_BEATS * heartbeat if heartbeat else None,
                    heartbeat_stale_trial_callback=stale,
                )
        except ImportError as exc:
            raise ImgtuneError(
                f"storage {self.display}: no database driver for it ({exc}); PostgreSQL needs "
                "psycopg (installed with imgtune: postgresql+psycopg://...)"
            ) from None
        except Exception as exc:  # SQLAlchemy's errors: a refused connection, a bad URL
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImgtuneError(f"storage {self.display}: cannot open it: {reason}") from None


def requeue(study, trial) -> None:
    """Queue a failed trial of a dead worker to run again (at most `MAX_RETRY` times): Optuna's
    `RetryHeartbeatStaleTrialCallback` (``failed_trial``, ``retry_history``), given a copy of
    the trial without what its run recorded. Optuna's copies every attribute, and the copy
    would start with the dead worker's last heartbeat (stale at once, failed again before its
    first beat) and its ``worker`` (failed again if that worker's death is noticed late)."""
    import copy

    import optuna

    clean = copy.deepcopy(trial)
    clean.user_attrs = {}
    clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != _BEAT}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, clean)


class FlockJournalLock:
    """The journal file's write lock as an OS file lock (`flock` on ``<journal>.lock``): the
    kernel releases it when its holder exits, killed or not, so no worker ever waits for a dead
    one (Optuna's own symlink and open-file locks are broken only after a 30 s grace)."""

    def __init__(self, journal: str) -> None:
        self._path = journal + ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self._path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def _heartbeat_base() -> type:
    """Optuna's heartbeat protocol, `optuna.storages._heartbeat.BaseHeartbeat` (a private module:
    Optuna exports no public base for it, and gives only its RDB storage a heartbeat).
    `Study.optimize` beats through a storage that is an instance of it, and
    `fail_stale_trials` asks it `_get_stale_trial_ids`; tests/test_shared_study.py
    (test_optuna_heartbeat_protocol_is_the_one_imgtune_implements) fails if that changes."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return BaseHeartbeat


class _SilenceWatch:
    """When this process first saw each RUNNING trial that has no heartbeat at all. Its worker
    beats within moments of creating it, so one silent for a whole grace period is dead.
    Measured on this process's clock: no other machine's clock is trusted."""

    def __init__(self) -> None:
        self._since: dict[int, float] = {}
        self._lock = threading.Lock()  # --jobs threads share a storage

    def overdue(self, silent: list[int], grace: float) -> list[int]:
        now = time.monotonic()
        with self._lock:
            self._since = {i: self._since.get(i, now) for i in silent}
            return [i for i, seen in self._since.items() if now - seen > grace]


def _grace(storage) -> float:
    return storage.grace_period or 2 * (storage.heartbeat_interval or 0)


# A server's RUNNING trials without a row in Optuna's heartbeat table (its schema since
# Optuna 2.9; RDBStorage has no public query for it; tests check it against a real server).
_UNBEATEN_SQL = """
SELECT t.trial_id FROM trials t
WHERE t.study_id = :study_id AND t.state = 'RUNNING'
  AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)
"""


def _make_storage_classes() -> tuple[type, type]:
    import optuna
    import sqlalchemy

    class HeartbeatJournalStorage(optuna.storages.JournalStorage, _heartbeat_base()):
        """Optuna's `JournalStorage` with the heartbeat Optuna gives only its RDB storage: each
        running trial's worker appends ``imgtune:heartbeat`` (the host's clock: a journal file
        is shared by processes of one host) every `heartbeat_interval` seconds; a RUNNING trial
        whose last beat is older than `grace_period`, or that never beat while this process
        watched it for as long, is stale."""

        def __init__(
            self, backend, *, heartbeat_interval=None, grace_period=None, stale_trial_callback=None
        ) -> None:
            super().__init__(backend)
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period
            self.stale_trial_callback = stale_trial_callback
            self._silence = _SilenceWatch()

        def record_heartbeat(self, trial_id: int) -> None:
            # The trial may have been failed by another worker meanwhile: nothing to record.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, KeyError):
                self.set_trial_system_attr(trial_id, _BEAT, time.time())

        def unbeaten_trial_ids(self, study_id: int) -> list[int]:
            """The study's RUNNING trials that have never beaten."""
            running = optuna.trial.TrialState.RUNNING
            return [
                self.get_trial_id_from_study_id_trial_number(study_id, t.number)
                for t in self.get_all_trials(study_id, deepcopy=False, states=(running,))
                if not isinstance(t.system_attrs.get(_BEAT), int | float)
            ]

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            grace, now = _grace(self), time.time()
            running = optuna.trial.TrialState.RUNNING
            stale, silent = [], []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(running,)):
                beat = t.system_attrs.get(_BEAT)
                trial_id = self.get_trial_id_from_study_id_trial_number(study_id, t.number)
                if not isinstance(beat, int | float):
                    silent.append(trial_id)
                elif now - beat > grace:
                    stale.append(trial_id)
            return stale + self._silence.overdue(silent, grace)

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return self.stale_trial_callback

    class HeartbeatRDBStorage(optuna.storages.RDBStorage):
        """Optuna's `RDBStorage`, whose heartbeat skips a RUNNING trial that never beat (its
        worker killed before the first beat: it would stay RUNNING for ever, and every other
        worker wait for it); such a trial is stale here once this process has watched it
        silent for the grace period."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._silence = _SilenceWatch()

        def unbeaten_trial_ids(self, study_id: int) -> list[int]:
            """The study's RUNNING trials that have never beaten."""
            with self.engine.connect() as con:
                rows = con.execute(sqlalchemy.text(_UNBEATEN_SQL), {"study_id": study_id})
                return [int(r[0]) for r in rows]

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            stale = super()._get_stale_trial_ids(study_id)
            return stale + self._silence.overdue(self.unbeaten_trial_ids(study_id), _grace(self))

    return HeartbeatJournalStorage, HeartbeatRDBStorage


def _storage_classes() -> tuple[type, type]:
    """(journal, server) storage classes with heartbeats; made on first use so that importing
    this module does not import Optuna."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _make_storage_classes()
    return _CLASSES


_CLASSES: tuple[type, type] | None = None


def fail_stale(study) -> None:
    """Fail (and queue again) the study's trials whose worker stopped beating; nothing for a
    storage without heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def busy_trials(backend, study_name: str) -> list:
    """The RUNNING trials of a stored study whose workers are alive, as far as heartbeats tell
    (`backend`: a `StorageSpec.open` storage with heartbeats): trials of dead workers are failed
    first (and queued again); a trial that never beat is watched until it does or is failed
    (a grace period at most: such trials are rare, left by a worker killed as it began one).
    [] when there is no such study."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=backend)
        study_id = backend.get_study_id_from_name(study_name)
    except KeyError:
        return []
    running = (optuna.trial.TrialState.RUNNING,)
    unbeaten = getattr(backend, "unbeaten_trial_ids", None)
    interval = backend.heartbeat_interval or 1
    until = time.monotonic() + _grace(backend) + 2 * interval
    while True:
        fail_stale(study)
        trials = study.get_trials(deepcopy=False, states=running)
        if not trials or unbeaten is None or time.monotonic() > until:
            return trials
        silent = set(unbeaten(study_id))
        ids = {
            t.number: backend.get_trial_id_from_study_id_trial_number(study_id, t.number)
            for t in trials
        }
        if any(ids[t.number] not in silent for t in trials):  # beating: alive
            return [t for t in trials if ids[t.number] not in silent]
        time.sleep(min(1.0, interval))


def fail_orphans(study) -> int:
    """Fail, and queue again, every RUNNING trial of a study that no process can be running:
    an SQLite study under its run lock, whose RUNNING trials were left by a killed run. Returns
    how many."""
    import optuna

    n = 0
    running = optuna.trial.TrialState.RUNNING
    for t in study.get_trials(deepcopy=False, states=(running,)):
        try:
            frozen = study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue
        requeue(study, frozen)
        n += 1
    return n
