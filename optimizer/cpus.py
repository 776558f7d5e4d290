"""How many cores this process may really use, and torch's thread pool sized from them.

`os.cpu_count()` counts the machine's cores, not this process's: a container limited by a
cgroup CPU quota, or a process pinned with `taskset`, sees all of them, and thread pools sized
from it oversubscribe the cores it has. `available()` takes the smallest of the affinity mask
and the cgroup quota.

Under contention (another busy process on the same cores: a CI runner, a shared server),
OpenMP's default wait policy makes each of torch's threads spin at the end of every parallel
region until the slowest one arrives; one descheduled thread then stalls the others. Measured
(benchmarks/RESULTS.md, "Thread pools under contention"): `optimize --jobs 1` beside one busy
process took twice as long as alone with spinning threads, 1.4x with passive ones.
`passive_wait()` sets that policy for this process and its children, unless the user set it;
it must run before torch loads OpenMP (`optimizer` runs it at import).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available", "passive_wait", "threads_per_job"]

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def _quota(v2: Path = _CGROUP_V2, v1: tuple[Path, Path] = _CGROUP_V1) -> float | None:
    """The cgroup CPU quota in cores (v2 `cpu.max`, else v1 cfs files), or None if unlimited."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1[0].read_text())
        period_us = int(v1[1].read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup quota (rounded up:
    a quota of 1.5 cores keeps 2 threads busy)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = _quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def threads_per_job(jobs: int) -> int:
    """torch threads for each of `jobs` concurrent jobs: the available cores shared out."""
    return max(1, available() // max(1, jobs))


def passive_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning (see the module's docstring)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
