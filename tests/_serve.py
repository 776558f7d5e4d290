"""The real `imgtune serve` for the tests: a subprocess on a free loopback port, started as
the load benchmark starts it (`benchmarks.load.start_server`)."""

from __future__ import annotations

import subprocess

from benchmarks.load import free_port
from benchmarks.load import start_server as start

__all__ = ["free_port", "start", "stop"]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
