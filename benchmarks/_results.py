"""Each benchmark owns one marked section of benchmarks/RESULTS.md and rewrites only that."""

from __future__ import annotations

from pathlib import Path

from optimizer.files import atomic_write_text


def write_section(results: Path, name: str, lines: list[str]) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join([begin, *lines, end])
    text = results.read_text() if results.exists() else "# Benchmark results\n\n"
    if begin in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(results, text)
