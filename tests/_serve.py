"""The real `imgtune serve` for the tests: a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str, port: int | None = None, env: dict | None = None,
          log: Path | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """`imgtune serve ARGS` on `port` (default: a free one), once /readyz answers 200; its
    output to `log` (default: dropped). Returns the process and its base URL."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "optimizer", "serve", "--port", str(port), "--device", "cpu",
           *args]  # fmt: skip
    out = log.open("w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            why = log.read_text()[-3000:] if log else "(no log)"
            raise AssertionError(f"the server did not get ready: {why}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
