"""A real PostgreSQL for the tests of shared studies.

`postgres_url` (session fixture) is the SQLAlchemy URL of an empty-enough database:
``$IMGTUNE_TEST_POSTGRES`` when set (CI's `.ci/run` starts a server with `.ci/postgres` and sets
it); otherwise a throwaway server this session starts itself with the same script (a temporary
folder, a free loopback port, stopped and deleted at the end; never an apt install from a
test). When neither works the tests that need it are skipped with the reason, except under CI
(``CI`` set), where a missing server is a failure: CI must not go green without them.

Import the fixture into a test module: ``from ._postgres import postgres_url  # noqa: F401``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "postgres"


def unavailable(reason: str, env: Mapping[str, str] = os.environ) -> None:
    """No PostgreSQL for the tests: skip them, saying why; under CI (``CI`` set and not
    empty/0/false) fail instead. Always raises."""
    if env.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI needs a PostgreSQL server for this test: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason} (set IMGTUNE_TEST_POSTGRES, or run .ci/postgres)")


def _check(url: str) -> str | None:
    """None if `url` answers a query, else why not."""
    try:
        import sqlalchemy
    except ImportError as exc:
        return f"SQLAlchemy is not installed ({exc})"
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as con:
            con.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # a missing driver, a refused connection, a bad URL
        return f"{url}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
    return None


def start_throwaway() -> tuple[str, str]:
    """(url, folder) of a server started with `.ci/postgres start` (no apt install). Raises
    RuntimeError with the script's last words when it cannot."""
    env = {**os.environ, "IMGTUNE_PG_NO_INSTALL": "1"}
    try:
        r = subprocess.run(
            ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f".ci/postgres start: {exc}") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RuntimeError(f".ci/postgres start failed: {last}")
    found = {}
    for line in r.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            found[key] = value.strip("'")
    if "IMGTUNE_TEST_POSTGRES" not in found or "IMGTUNE_PG_DIR" not in found:
        raise RuntimeError(f".ci/postgres start printed no URL: {r.stdout!r}")
    return found["IMGTUNE_TEST_POSTGRES"], found["IMGTUNE_PG_DIR"]


def stop_throwaway(folder: str) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", folder], capture_output=True, timeout=120)


def server(env: Mapping[str, str] = os.environ) -> tuple[str, str | None]:
    """(url, folder of a throwaway server to stop, or None): the decision behind the fixture.
    ``IMGTUNE_TEST_POSTGRES`` if set (it must answer), else a throwaway server; when there is
    none, `unavailable` (skip, or fail under CI)."""
    url = env.get("IMGTUNE_TEST_POSTGRES")
    if url:
        problem = _check(url)
        if problem:
            unavailable(f"IMGTUNE_TEST_POSTGRES does not answer: {problem}", env)
        return url, None
    try:
        url, folder = start_throwaway()
    except RuntimeError as exc:
        unavailable(str(exc), env)
    problem = _check(url)
    if problem:
        stop_throwaway(folder)
        unavailable(f"the throwaway server does not answer: {problem}", env)
    return url, folder


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url, folder = server()
    try:
        yield url
    finally:
        if folder is not None:
            stop_throwaway(folder)
