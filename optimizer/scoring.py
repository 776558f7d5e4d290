"""`score`: compare candidate images with their references, one pair or two folders.

The Python API behind `imgtune score`. Loading goes through `images.load`, so every bad input
becomes a one-line `Problem` naming the file, and the run goes on with the other pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .images import DEFAULT_MAX_PIXELS, ImageError, iter_image_files, load
from .metrics.catalog import OUTPUTS
from .outcome import RunCounts
from .targets import Target

if TYPE_CHECKING:
    import pandas as pd

    from .metrics.catalog import CompositeSpec
    from .metrics.set_metrics import SetScorer
    from .metrics.suite import MetricSuite, Scores

__all__ = ["PairResult", "Problem", "ScoreReport", "pair_files", "score_dirs", "score_pair"]


@dataclass(frozen=True)
class Problem:
    """An input that was skipped: the file at fault and a one-line message that names it."""

    path: Path | None
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class PairResult:
    name: str
    reference: Path
    candidate: Path
    scores: Scores
    missed: tuple[str, ...] = ()
    #: the target judged (None: none given) and the composite's weights, for whoever prints
    target: Target | None = field(default=None, compare=False)
    composite: CompositeSpec | None = field(default=None, compare=False, repr=False)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reference": str(self.reference),
            "candidate": str(self.candidate),
            **self.scores.as_dict(),
            "meets_target": not self.missed,
            "missed": list(self.missed),
        }


@dataclass
class ScoreReport:
    results: list[PairResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    interrupted: bool = False
    target: Target | None = None
    composite: CompositeSpec | None = field(default=None, repr=False)
    #: FID/KID of the scored pairs as two sets (`SetScorer.result()` plus `describe`), when asked
    set_metrics: dict[str, Any] | None = None

    @property
    def counts(self) -> RunCounts:
        missed = sum(1 for r in self.results if r.missed)
        return RunCounts(done=len(self.results) - missed, skipped=len(self.problems), missed=missed)

    def frame(self) -> pd.DataFrame:
        """One row per scored pair (the CSV report)."""
        import pandas as pd

        rows = [r.record() for r in self.results]
        for row in rows:
            row["missed"] = ";".join(row["missed"])
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """Per metric: count, mean, worst (by the metric's own direction)."""
        import pandas as pd

        df = self.frame()
        rows = []
        for name in [c for c in df.columns if c in OUTPUTS]:
            col = df[name].astype(float)
            worst = col.min() if OUTPUTS[name].higher_is_better else col.max()
            rows.append(
                {
                    "metric": name,
                    "count": int(col.count()),
                    "mean": float(col.mean()),
                    "worst": float(worst),
                }
            )
        return pd.DataFrame(rows)

    def level_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.scores.level] = out.get(r.scores.level, 0) + 1
        return out


def score_pair(
    reference: str | Path,
    candidate: str | Path,
    suite: MetricSuite,
    *,
    target: Target | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    animated: str = "refuse",
    name: str | None = None,
    set_scorer: SetScorer | None = None,
) -> PairResult:
    """Score one candidate file against its reference file (raises `ImageError`/`ValueError`);
    `set_scorer` also takes in the pair's Inception features for the set metrics."""
    ref = load(reference, max_pixels=max_pixels, min_side=suite.min_side, animated=animated)
    cand = load(candidate, max_pixels=max_pixels, min_side=suite.min_side, animated=animated)
    if (ref.width, ref.height) != (cand.width, cand.height):
        raise ValueError(
            f"{candidate}: is {cand.width}x{cand.height} but its reference {reference} is "
            f"{ref.width}x{ref.height}; scores need equal sizes"
        )
    # Through the suite's scorer: on a GPU, pairs scored at once (the service's concurrent
    # requests) share batches, and out of memory falls back to the CPU instead of failing.
    scorer = suite.scorer
    scores = scorer.score(scorer.prepare(ref.pixels), cand.pixels)
    if set_scorer is not None:
        set_scorer.add(ref.pixels, cand.pixels)
    missed = tuple(str(c) for c in target.failures(scores.values)) if target else ()
    return PairResult(
        name or Path(candidate).name,
        Path(reference),
        Path(candidate),
        scores,
        missed,
        target,
        suite.composite,
    )


def _index(root: Path, follow_symlinks: bool) -> tuple[dict[str, Path], list[Problem]]:
    by_key: dict[str, list[Path]] = {}
    refused: list[Problem] = []
    for p in iter_image_files(root, follow_symlinks=follow_symlinks):
        if isinstance(p, ImageError):  # a link out of the folder: named, not read
            refused.append(Problem(p.path, str(p)))
            continue
        key = p.relative_to(root).with_suffix("").as_posix()
        by_key.setdefault(key, []).append(p)
    index, problems = {}, refused
    for key, paths in by_key.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(Problem(paths[0].parent, f"{key}: ambiguous, several files ({names})"))
        else:
            index[key] = paths[0]
    return index, problems


def pair_files(
    reference: str | Path, candidate: str | Path, *, follow_symlinks: bool = False
) -> tuple[list[tuple[str, Path, Path]], list[Problem]]:
    """Pair images by relative path without extension (`a/x.png` with `b/x.webp`). Links that
    lead out of their folder are problems unless `follow_symlinks`."""
    a, pa = _index(Path(reference), follow_symlinks)
    b, pb = _index(Path(candidate), follow_symlinks)
    pairs = [(k, a[k], b[k]) for k in sorted(a.keys() & b.keys())]
    problems = pa + pb
    problems += [
        Problem(a[k], f"{a[k]}: no counterpart in {candidate}") for k in sorted(a.keys() - b.keys())
    ]
    problems += [
        Problem(b[k], f"{b[k]}: no counterpart in {reference}") for k in sorted(b.keys() - a.keys())
    ]
    return pairs, problems


def score_dirs(
    reference: str | Path,
    candidate: str | Path,
    suite: MetricSuite,
    *,
    target: Target | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    animated: str = "refuse",
    on_result: Callable[[PairResult | Problem], None] | None = None,
    pairs: Iterable[tuple[str, Path, Path]] | None = None,
    follow_symlinks: bool = False,
    set_scorer: SetScorer | None = None,
) -> ScoreReport:
    """Score every pair of two folders; unpaired and unreadable files become `problems`.
    With `set_scorer`, the scored pairs' FID/KID (originals against candidates, as two sets)
    are in `report.set_metrics`, for the pairs scored before an interruption too."""
    report = ScoreReport(target=target, composite=suite.composite)
    if pairs is None:
        pairs, report.problems = pair_files(reference, candidate, follow_symlinks=follow_symlinks)
        if on_result:
            for p in report.problems:
                on_result(p)
    try:
        for key, ra, cb in pairs:
            try:
                item: PairResult | Problem = score_pair(
                    ra, cb, suite, target=target, max_pixels=max_pixels, animated=animated,
                    name=key, set_scorer=set_scorer,
                )  # fmt: skip
                report.results.append(item)
            except (ImageError, ValueError) as exc:
                item = Problem(getattr(exc, "path", cb), str(exc))
                report.problems.append(item)
            if on_result:
                on_result(item)
    except KeyboardInterrupt:
        report.interrupted = True
    if set_scorer is not None:
        report.set_metrics = {**set_scorer.result(), "method": set_scorer.describe()}
    return report
