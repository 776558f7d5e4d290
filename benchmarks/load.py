"""Load on `imgtune serve`: N concurrent clients for a while, loopback only, bounded in time.

    python -m benchmarks.load [--clients 8] [--seconds 60] [--workers 2] [--queue 8]
        [--side 256] [--no-write]

Starts the real server (uvicorn in a subprocess, a free port on 127.0.0.1), warms it up, then
runs the clients (threads, each posting one sample image to /v1/optimize again and again with
httpx) for `--seconds` twice in a row. Reports what came back (200s, 503s from the full queue,
anything else), p50/p95 latency of the 200s, throughput, and the server's RSS after the
warm-up, after the first run and after the second (a leak grows it run after run). Results go
to benchmarks/RESULTS.md (section "service-load"). `run_load` is what the tests run for 10 s.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from ._results import write_section

RESULTS = Path(__file__).with_name("RESULTS.md")
SAMPLE = Path(__file__).resolve().parent.parent / "sample_images" / "chelsea.png"


def image(side: int) -> bytes:
    im = Image.open(SAMPLE).convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def run_load(base: str, *, clients: int, seconds: float, body: bytes, headers=None) -> dict:
    """`clients` threads posting `body` to /v1/optimize until `seconds` pass (a request under
    way then finishes). Returns the status counts, the 200s' latencies and the wall time."""
    import httpx

    codes: Counter[int] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120, headers=headers or {}) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/optimize", files={"image": ("a.png", body)})
                    code = r.status_code
                except httpx.TransportError:
                    code = -1  # no answer at all: counted against the service
                dt = time.perf_counter() - t0
                with lock:
                    codes[code] += 1
                    if code == 200:
                        latencies.append(dt)
                if code == 503:
                    time.sleep(0.05)  # a client that honours Retry-After backs off a little

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"codes": dict(codes), "latencies": latencies, "seconds": time.perf_counter() - t0}


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str, port: int | None = None, env: dict | None = None,
                 log: Path | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """`imgtune serve ARGS` (CPU) on 127.0.0.1:`port` (default: a free one), once /readyz
    answers 200; its output to `log` (default: dropped). Returns the process and its URL."""
    import httpx

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
            raise RuntimeError(f"the server did not get ready: {why}")
        time.sleep(0.3)


def summary(r: dict) -> dict:
    lat = np.array(r["latencies"]) if r["latencies"] else np.array([np.nan])
    other = sum(n for c, n in r["codes"].items() if c not in (200, 503))
    return {
        "ok": r["codes"].get(200, 0),
        "busy": r["codes"].get(503, 0),
        "other": other,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "throughput": r["codes"].get(200, 0) / r["seconds"],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    body = image(args.side)
    proc, base = start_server("--workers", str(args.workers), "--queue", str(args.queue))
    try:
        run_load(base, clients=2, seconds=5, body=body)  # warm-up: caches, suites, allocators
        before = rss(proc.pid)
        first = summary(run_load(base, clients=args.clients, seconds=args.seconds, body=body))
        after_first = rss(proc.pid)
        second = summary(run_load(base, clients=args.clients, seconds=args.seconds, body=body))
        after_second = rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    mb = 1024**2
    lines = [
        "## Service under load: `imgtune serve`, loopback",
        "",
        f"Command: `python -m benchmarks.load --clients {args.clients} --seconds "
        f"{args.seconds:g} --workers {args.workers} --queue {args.queue} --side {args.side}`  ",
        f"{args.clients} clients (threads, httpx) posting a {args.side}-px PNG to /v1/optimize "
        f"for {args.seconds:g} s, twice; server: --workers {args.workers} --queue {args.queue}, "
        f"one process, CPU. {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; date {date.today().isoformat()}",
        "",
        "| run | 200 | 503 (queue full) | other | p50 s | p95 s | optimised/s | server RSS after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| warm-up done | | | | | | | {before / mb:.0f} MiB |",
    ]
    for name, s, after in (("first", first, after_first), ("second", second, after_second)):
        lines.append(
            f"| {name} | {s['ok']} | {s['busy']} | {s['other']} | {s['p50']:.2f} | "
            f"{s['p95']:.2f} | {s['throughput']:.2f} | {after / mb:.0f} MiB |"
        )
    print("\n".join(lines))
    if not args.no_write:
        write_section(RESULTS, "service-load", lines)
        print(f"wrote {RESULTS}")
    if first["other"] or second["other"]:
        sys.exit("answers other than 200 and 503 came back")


if __name__ == "__main__":
    main()
