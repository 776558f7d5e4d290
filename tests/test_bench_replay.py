"""benchmarks/replay.py: an ImageSearch whose probes are the oracle's measurements."""

from __future__ import annotations

import pandas as pd

from benchmarks.replay import OracleSearch
from optimizer.quality_search import lowest_passing
from optimizer.recipe import Candidate


def _table() -> pd.DataFrame:
    rows = [
        {"arm": "avif:4:2:0", "quality": q, "bytes": 1000 + 50 * q, "ssimulacra2": 20 + q}
        for q in (40, 45, 50, 55, 56, 57, 58, 59, 60, 65)
    ]
    return pd.DataFrame(rows)


def test_probes_read_the_table_and_interpolate_what_it_lacks():
    s = OracleSearch(_table(), 78.0, has_alpha=True, source_bytes=10**6)
    p = s.probe(Candidate.make("avif", 58, subsampling="4:2:0"))
    assert (p.quality, p.bytes, p.passed, s.interpolated) == (58, 3900, True, 0)
    q = s.probe(Candidate.make("avif", 42, subsampling="4:2:0"))  # between 40 and 45
    assert s.interpolated == 1 and not q.passed and round(q.bytes, 1) == 3097.6  # log-linear
    assert q.result[1]["ssimulacra2"] == 62.0


def test_a_search_over_it_finds_the_table_s_lowest_pass():
    s = OracleSearch(_table(), 78.0, has_alpha=True, source_bytes=10**6)
    base = Candidate.make("avif", 50, subsampling="4:2:0")
    r = lowest_passing(lambda q: s.probe(base.with_quality(q)), (0, 100), start=50, step=5)
    assert r.best.quality == 58 and r.best.bytes == 3900
