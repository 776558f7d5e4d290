"""One image of a folder job: the smallest output meeting the target, or why there is none.

`optimize_image` is a pure function of its arguments (a source path, the job's settings, a metric
suite and a `Prediction`) that reads the source and writes nothing: it returns the outcome, the
bytes to write and the qualities it found. Its inputs and outputs pickle, so it can run in
another process or on another machine; `batch.run_folder` drives it over a folder.

Per image, each allowed codec's lowest passing quality is found with `quality_search` (a first
probe at the predicted quality, a step out to bracket, interpolation to `tolerance`). A codec is
dropped as soon as it cannot win: a miss already larger than the best passing output so far
(bytes grow with quality), or a pass whose bytes, extrapolated down to the target, still are.
Where nothing passes even at the top, chroma subsampling is usually the culprit (flat colour,
small text): the codecs that have 4:4:4 are searched again with it. AVIF is searched at a fast
encoder speed (`Job.probe_speed`) and its output encoded at the recipe's own speed where that
should just pass (`probe_speed`); the output's params name the speed of the bytes written.

Rules: an output never misses the target unless `best_effort` (then it is flagged); an output
is never larger than its source (the source is kept instead, whole files compared) unless it is
resized, which makes the sizes incomparable.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from . import lossless, model_search
from .codecs import CODECS, quality_grid
from .image_search import ImageSearch
from .images import DEFAULT_MAX_PIXELS, AnimatedPolicy, ImageError, SourceImage, load
from .predictor import Prediction
from .probe_speed import DEFAULT_PROBE_SPEED, fast_recipe
from .quality_search import Probe, lowest_passing
from .recipe import Candidate
from .search import DEFAULT_NAME_PATTERN, ImageSet, widths_for
from .targets import Target

__all__ = [
    "FLAT",
    "FORMATS",
    "ImageOutcome",
    "ImageResult",
    "Job",
    "Mode",
    "Status",
    "Variant",
    "optimize_image",
]

Mode = Literal["optimize", "apply"]
#: the quality of `optimize`'s per-codec recipes before the search replaces it (part of the
#: job's key, so it stays what earlier manifests recorded)
PLACEHOLDER_QUALITY = 75
#: margin change per quality step below which quality is judged not to matter (4:2:0 searches
#: give up there and the 4:4:4 retry takes over)
FLAT = 2e-4
#: what `--formats` names: a format -> the extension of its files (its codecs: those writing
#: it, lossy and lossless: webp is WebP and lossless WebP)
FORMATS = {"avif": ".avif", "webp": ".webp", "jpeg": ".jpg", "jxl": ".jxl"}
#: the formats a browser shows: an output of a width or format variant may be the source itself
#: (kept: nothing smaller passed) only where the source is in one of them, or in its format
WEB_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF")
#: `--keep-metadata`: what an encoded output carries. Its pixels are always sRGB (`load`
#: converts a source's profile) and turned as EXIF orientation says (the tag is never kept).
#: auto: an sRGB profile where the source had another (its colours were converted: the tag says
#: so to apps that treat untagged files otherwise), nothing else; none: nothing; icc: an sRGB
#: profile always; all: that, and the source's EXIF (orientation removed) and XMP.
METADATA = ("auto", "none", "icc", "all")
#: bytes a container spends around embedded blocks (segment and box headers), kept out of a
#: `--max-bytes` budget along with the blocks themselves
METADATA_SLACK = 256


def srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def metadata_for(path: Path, src: SourceImage, mode: str) -> dict[str, bytes]:
    """The blocks an encoded output of `src` carries under `--keep-metadata mode`."""
    if mode == "none":
        return {}
    converted = any(n.startswith("converted from ICC profile") for n in src.notes)
    out = {"icc": srgb_profile()} if converted or mode in ("icc", "all") else {}
    if mode == "all":
        from PIL import Image

        try:
            with Image.open(path) as im:
                exif = im.getexif()
                xmp = im.info.get("xmp")
                if exif:
                    exif.pop(0x0112, None)  # the pixels are turned already
                    out["exif"] = exif.tobytes()
                if isinstance(xmp, bytes | str) and xmp:
                    out["xmp"] = xmp.encode() if isinstance(xmp, str) else xmp
        except Exception:  # unreadable metadata: the pixels matter, not it
            pass
    return out


@dataclass(frozen=True)
class Variant:
    """One output of an image: at a `--widths` width (None: the source's size, or the
    `--max-width`/`--max-height` box) in a `--formats` format (None: the smallest of the job's
    codecs)."""

    width: int | None = None
    format: str | None = None

    @property
    def tag(self) -> str:
        """How the manifest tells an image's variants apart ("480w.avif", "960w", "jpeg"), or
        "" for the one output of a job without variants."""
        return ".".join(
            ([f"{self.width}w"] if self.width else []) + ([self.format] if self.format else [])
        )


class Status(StrEnum):
    """What happened to one image (written as its string in JSON, CSV and the manifest)."""

    #: an encode that meets the target
    WRITTEN = "written"
    #: the source copied: nothing smaller passed
    KEPT = "kept"
    #: nothing met the target; the source copied (without --best-effort)
    MISSED = "missed"
    #: the closest encode written though it misses the target (flagged)
    BEST_EFFORT = "best_effort"
    #: unreadable or unusable input; nothing written
    SKIPPED = "skipped"
    #: done by an earlier run with the same job; nothing redone
    UP_TO_DATE = "up_to_date"


STATUSES = tuple(s.value for s in Status)


@dataclass(frozen=True)
class Job:
    """What a run does to every image. Its `key` decides whether an earlier output still holds."""

    mode: Mode
    target: Target
    #: per codec, the recipe searched or applied (quality: the preset's, or a placeholder)
    bases: tuple[Candidate, ...]
    search: bool = True  # optimize, or apply --refine; False: the recipe's quality as is
    best_effort: bool = False
    background: tuple[int, int, int] | None = None
    max_width: int | None = None
    max_height: int | None = None
    tolerance: int = 3
    #: per codec (lo, hi) quality bounds of the search
    bounds: tuple[tuple[str, tuple[int, int]], ...] = ()
    #: AVIF speed the search probes at (the output then encoded at the recipe's own speed, see
    #: `probe_speed`); None: probe at the recipe's speed
    probe_speed: int | None = DEFAULT_PROBE_SPEED
    #: lossless recipes (`optimizer.lossless`): under a lossy target, tried after the search
    #: where they may win; under the `lossless` target, the only ones
    lossless: tuple[Candidate, ...] = ()
    #: one output per width (`variants`), each no wider than its source
    widths: tuple[int, ...] = ()
    #: one output per format (`FORMATS`), each the smallest passing file of that format
    formats: tuple[str, ...] = ()
    #: the names of width variants, without the extension
    name_pattern: str = DEFAULT_NAME_PATTERN
    #: the source formats (Pillow's names) an output may be the source itself in (None: any)
    keep_formats: tuple[str, ...] | None = None
    #: every output at most this many bytes (`within_budget`)
    max_bytes: int | None = None
    #: with `max_bytes`: no target to meet, the highest-scoring encode under the budget
    budget_only: bool = False
    #: what an encoded output carries from its source (`METADATA`)
    keep_metadata: str = "auto"
    #: how sources are read (not part of `key`: they change which files load, not an output)
    max_pixels: int = DEFAULT_MAX_PIXELS
    animated: AnimatedPolicy = "refuse"

    @classmethod
    def optimize(
        cls,
        target: Target,
        codecs: Sequence[str],
        *,
        bounds: dict[str, tuple[int, int]] | None = None,
        **settings: Any,
    ) -> Job:
        """`optimize`'s job: each codec's default recipe, its quality searched per image."""
        bases = tuple(Candidate.make(c, PLACEHOLDER_QUALITY) for c in codecs)
        return cls(
            "optimize", target, bases, search=True, bounds=tuple(sorted((bounds or {}).items())),
            **settings,
        )  # fmt: skip

    @classmethod
    def apply(cls, recipe: Candidate, target: Target, *, refine: bool = False, **settings: Any):
        """`apply`'s job: one recipe on every image, its quality searched only with `refine`."""
        return cls("apply", target, (recipe,), search=refine, **settings)

    def goal(self) -> str:
        """What the outputs were held to, in words (the run's summary)."""
        if self.max_bytes is None:
            return str(self.target)
        within = f"at most {self.max_bytes:,} bytes"
        if self.budget_only:
            return f"the best {self.target.clauses[0].metric} in {within}"
        return f"{self.target}, {within}"

    def variants(self, width: int) -> list[Variant]:
        """The outputs of a source `width` pixels wide (after EXIF orientation): one per
        `widths` width no wider than it, and its own width where a width asked for is wider
        (never upscaled: the largest screens get the most the source has, as eleventy-img
        does), times one per `formats` format; one plain output without either."""
        widths: list[int | None] = [None]
        if self.widths:
            widths = list(widths_for(width, self.widths))
        return [Variant(w, f) for w in widths for f in (self.formats or (None,))]

    def for_variant(self, v: Variant) -> Job:
        """The job of one variant: its width as the box, its format's codecs only, and the
        source kept (nothing smaller passed) only where its format is one the variant may be."""
        if not v.tag:
            return self
        bases, lossless, keep = self.bases, self.lossless, WEB_FORMATS
        if v.format is not None:
            ext = FORMATS[v.format]
            bases = tuple(b for b in bases if CODECS[b.codec].extension == ext)
            lossless = tuple(c for c in lossless if CODECS[c.codec].extension == ext)
            keep = tuple(sorted({CODECS[b.codec].pil_format for b in bases}))  # a stable key
        return replace(
            self, bases=bases, lossless=lossless, max_width=v.width or self.max_width,
            widths=(), formats=(), name_pattern=DEFAULT_NAME_PATTERN, keep_formats=keep,
        )  # fmt: skip

    def variant_stem(self, stem: str, v: Variant) -> str:
        """The output path of variant `v` of the source whose plain output stem is `stem`."""
        if v.width is None:
            return stem
        folder, _, name = stem.rpartition("/")
        named = self.name_pattern.format(stem=name, width=v.width)
        return f"{folder}/{named}" if folder else named

    def bounds_for(self, codec: str) -> tuple[int, int]:
        return dict(self.bounds).get(codec, CODECS[codec].quality_range)

    @property
    def fast_probes(self) -> bool:
        """Whether `probe_speed` changes anything: a search, of a recipe it makes faster."""
        return self.search and any(fast_recipe(b, self.probe_speed) for b in self.bases)

    def key(self, metric_spec: dict[str, Any]) -> str:
        # probe_speed only where it changes outputs: other jobs keep the keys they had before
        # it existed, so their outputs stay up to date
        fast = {"probe_speed": self.probe_speed} if self.fast_probes else {}
        # and lossless recipes only where there are some, likewise; and variants
        extra = {"lossless": [c.as_dict() for c in self.lossless]} if self.lossless else {}
        if self.widths or self.formats:
            extra["variants"] = [list(self.widths), list(self.formats), self.name_pattern]
        if self.keep_formats is not None:
            extra["keep_formats"] = list(self.keep_formats)
        if self.max_bytes is not None:
            extra["max_bytes"] = [self.max_bytes, self.budget_only]
        if self.keep_metadata != "auto":
            extra["keep_metadata"] = self.keep_metadata
        blob = json.dumps(
            {
                **fast,
                **extra,
                "mode": self.mode,
                "target": str(self.target),
                "bases": [b.as_dict() for b in self.bases],
                "search": self.search,
                "best_effort": self.best_effort,
                "background": self.background,
                "max": [self.max_width, self.max_height],
                "tolerance": self.tolerance,
                "bounds": self.bounds,
                "metrics": metric_spec,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ImageOutcome:
    """One image's result: what NDJSON prints, the CSV report holds and the manifest keeps."""

    source: str  # path relative to SRC
    status: Status
    source_bytes: int = 0
    output: str | None = None  # path relative to OUT
    output_bytes: int = 0
    codec: str | None = None
    quality: int | None = None
    params: dict[str, Any] | None = None
    scores: dict[str, float] = field(default_factory=dict)
    meets_target: bool | None = None
    encodes: int = 0
    error: str | None = None
    #: which of the image's outputs (`Variant.tag`); None: its only one
    variant: str | None = None
    #: the output's size in pixels
    width: int | None = None
    height: int | None = None

    @property
    def saved_bytes(self) -> int:
        return self.source_bytes - self.output_bytes if self.output else 0

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        d["saved_bytes"] = self.saved_bytes
        d["ratio"] = (
            round(self.output_bytes / self.source_bytes, 6)
            if self.output and self.source_bytes
            else None
        )
        d["scores"] = {k: (None if math.isinf(v) else v) for k, v in self.scores.items()}
        return d


@dataclass
class ImageResult:
    """What `optimize_image` hands back (all of it pickles)."""

    outcome: ImageOutcome
    #: the bytes to write to `outcome.output`; None: copy the source (or nothing, if skipped)
    payload: bytes | None = None
    #: codec -> the lowest passing quality this image needed (for the run's predictor; at the
    #: probe speed where the codec has one)
    found: dict[str, int] = field(default_factory=dict)
    #: codec -> the margin its recipe's speed had over the probe speed's (for the predictor)
    gains: dict[str, float] = field(default_factory=dict)
    #: the codec of the output, if an encode was chosen
    winner: str | None = None
    #: training rows for the learned model (`model_search.observations`)
    observations: list[dict[str, Any]] = field(default_factory=list)


def stem_with(stem: str, suffix: str) -> str:
    return stem if stem.endswith(suffix) else stem + suffix


def names_of(path: Path, name: str | None, stem: str | None) -> tuple[str, str]:
    """The source as reported (`name`, default the file name) and its output's path without the
    extension (`stem`, default the name without its suffix)."""
    rel = name or path.name
    return rel, stem or Path(rel).with_suffix("").as_posix()


def load_or_skip(path: Path, job: Job, suite, rel: str) -> SourceImage | ImageResult:
    """The decoded source, or the result of an image skipped because it cannot be used."""
    try:
        return load(path, max_pixels=job.max_pixels, min_side=suite.min_side, animated=job.animated)
    except ImageError as exc:
        return ImageResult(ImageOutcome(rel, Status.SKIPPED, error=str(exc)))


def optimize_image(
    path: Path,
    job: Job,
    *,
    suite,
    prediction: Prediction,
    name: str | None = None,
    stem: str | None = None,
) -> ImageResult:
    """Search (or apply) `job` on one image. `name`: the source as reported (its path relative
    to SRC; default the file name); `stem`: its output's path relative to OUT without the
    extension (default `name` without its suffix). Reads `path`, writes nothing."""
    if job.target.lossless:  # identical pixels: no search, no score (optimizer.lossless)
        return lossless.optimize_image(path, job, suite=suite, name=name, stem=stem)
    rel, stem = names_of(path, name, stem)
    src = load_or_skip(path, job, suite, rel)
    if isinstance(src, ImageResult):
        return src
    outcome = ImageOutcome(rel, Status.KEPT, source_bytes=src.file_bytes)
    images = ImageSet(
        [src],
        suite,
        max_width=job.max_width,
        max_height=job.max_height,
        background=job.background,
        keep_encoded=True,
    )
    bases = [b for b in job.bases if CODECS[b.codec].supports_alpha or not src.has_alpha]
    if src.has_alpha and job.background is not None:
        bases = list(job.bases)  # JPEG allowed: flattened onto the background
    if not bases:
        outcome.status = Status.SKIPPED
        outcome.error = (
            f"{path}: has transparency and the allowed codecs have none; give --background"
        )
        return ImageResult(outcome)
    w, h = images.items[0].size
    fits = [b for b in bases if max(w, h) <= CODECS[b.codec].max_side]
    if not fits:
        limits = ", ".join(f"{b.codec} {CODECS[b.codec].max_side}" for b in bases)
        outcome.status = Status.SKIPPED
        outcome.error = (
            f"{path}: {w}x{h} has a side longer than the allowed codecs hold ({limits} px); "
            "fit it with --max-width/--max-height or allow another codec"
        )
        return ImageResult(outcome)
    # The source may be the output (nothing smaller passed) only at its own size, and in a
    # format the output may have (a variant asked for AVIF is not a JPEG source).
    comparable = not images.resized and (job.keep_formats is None or src.format in job.keep_formats)
    outcome.width, outcome.height = w, h
    meta = metadata_for(path, src, job.keep_metadata)
    if meta and job.max_bytes is not None:  # the blocks count against the budget
        job = replace(job, max_bytes=max(1, job.max_bytes - _overhead(meta)))
    search = ImageSearch(images, job.target, resized=not comparable, source_bytes=src.file_bytes)
    if job.budget_only:
        return within_budget(path, src, images, search, job, fits, outcome, stem, comparable, meta)
    found: dict[str, int] = {}
    observed: list[dict[str, Any]] = []
    t = (
        model_search.model_target(prediction.model, job.target)
        if job.search and job.mode == "optimize"
        else None
    )
    modelled: set[str] = set()  # codecs the model's arms searched
    if t is not None:
        features = model_search.features_of(src, (w, h))
        modelled = {b.codec for b in fits if prediction.model.knows(b.codec)}
        results, arms = model_search.search_arms(
            search, prediction.model, t, fits, features, grey=src.is_grey, pixels=w * h,
            bounds=job.bounds_for, tolerance=job.tolerance, flat=FLAT,
        )  # fmt: skip
        for arm in arms:  # what the run's median predictor learns too
            r = results[arm.name]
            if r.best is not None and arm.base.codec not in found:
                found[arm.base.codec] = r.best.quality
        observed = model_search.observations(
            results, features, t, w * h, lambda name: job.bounds_for(name.split(":")[0])[0]
        )
    for codec in prediction.order([b.codec for b in fits if b.codec not in modelled]):
        for base in (b for b in fits if b.codec == codec):
            if job.search:
                q0, step = prediction.guess(codec)
                if job.mode == "apply" and codec not in prediction.seen:
                    q0 = base.quality  # --refine starts at the preset's quality
                r = search.run(
                    base, start=q0, step=step, bounds=job.bounds_for(codec),
                    tolerance=job.tolerance, probe_speed=job.probe_speed,
                    gain=prediction.gains.get(codec),
                    flat=FLAT if dict(base.options).get("subsampling") == "4:2:0"
                    and not src.is_grey else None,
                )  # fmt: skip
            else:  # the recipe's own quality: one probe, kept if it passes
                q = base.quality
                r = search.run(base, start=q, step=1, bounds=(q, q), tolerance=0, prune=False)
            if r.best is not None:  # at the probe speed: what the next images' searches start from
                found[codec] = r.best.quality
    if search.best is None and not any(p.passed for p in search.probes) and not src.is_grey:
        # Nothing passed, even at the top: on flat colour and small text the culprit is usually
        # chroma subsampling, not quality. Try the codecs that have 4:4:4 with it.
        for base in fits:
            if dict(base.options).get("subsampling") != "4:2:0" or base.codec in modelled:
                continue
            q0, step = prediction.guess(base.codec)
            q = base.quality
            search.run(
                base.with_options(subsampling="4:4:4"),
                start=q0 if job.search else q,
                step=step,
                bounds=job.bounds_for(base.codec) if job.search else (q, q),
                tolerance=job.tolerance,
                keep_first=False,
                probe_speed=job.probe_speed if job.search else None,
            )
    lossless.consider(search, images, job)  # a lossless file, where it may beat the lossy ones
    outcome.encodes = images.encodes
    gains = {c: g for c, g in search.gains.items() if c in found}  # the 4:4:4 retry's aside
    if job.max_bytes is not None and not _fits(search, src, comparable, job.max_bytes):
        result = within_budget(
            path, src, images, search, job, fits, outcome, stem, comparable, meta
        )
        result.found, result.gains, result.observations = found, gains, observed
        return result
    result = ImageResult(outcome, found=found, gains=gains, observations=observed)
    if search.best is not None:
        cand, values = search.best.result
        result.payload = images.render_with(0, cand, **meta)
        result.winner = cand.codec
        _fill(outcome, Status.WRITTEN, stem=stem, cand=cand, probe=search.best, values=values)
        outcome.output_bytes = len(result.payload)
        return result
    # Nothing passed and beat the source. Did anything pass at all?
    passing = any(p.passed for p in search.probes)
    # A search stopped by the source's size: passing would take more bytes than the original.
    too_large = comparable and any(p.bytes >= src.file_bytes for p in search.probes)
    if passing or too_large:
        # The original is kept: it is the reference, so it meets any target (no scores needed).
        outcome.meets_target = True
        outcome.status = Status.KEPT
        outcome.output = stem_with(stem, Path(rel).suffix)
        outcome.output_bytes = src.file_bytes
        return result
    if not search.probes:
        outcome.status, outcome.error = Status.SKIPPED, f"{path}: no codec could be tried"
        return result
    closest = max(search.probes, key=lambda p: p.margin)
    c, values = closest.result
    missed = (
        f"{path}: no {'/'.join(b.codec for b in fits)} encode met {job.target}; "
        f"closest: {c.codec} q{c.quality}"
        + "".join(f", {k}={values[k]:.4g}" for k in job.target.metrics)
    )
    if job.best_effort:
        data = images.render_with(0, c, **meta)
        if not comparable or len(data) < src.file_bytes:
            result.payload = data
            _fill(outcome, Status.BEST_EFFORT, stem=stem, cand=c, probe=closest, values=values)
            outcome.output_bytes = len(data)
            outcome.error = missed + "; written anyway (--best-effort)"
            return result
    outcome.status = Status.MISSED
    outcome.meets_target = False
    outcome.scores = dict(values)
    outcome.codec, outcome.quality, outcome.params = c.codec, c.quality, c.as_dict()
    outcome.output = stem_with(stem, Path(rel).suffix)
    outcome.output_bytes = src.file_bytes
    outcome.error = missed + (
        "; original kept" if not job.best_effort else "; original kept (smaller)"
    )
    return result


def _overhead(meta: dict[str, bytes]) -> int:
    return sum(len(v) for v in meta.values()) + METADATA_SLACK


def _fits(search: ImageSearch, src: SourceImage, comparable: bool, budget: int) -> bool:
    """Whether what the target's search would write (its best, else the source) fits."""
    if search.best is not None:
        return search.best.bytes <= budget
    passing = any(p.passed for p in search.probes)
    return comparable and passing and src.file_bytes <= budget


def within_budget(
    path: Path,
    src: SourceImage,
    images: ImageSet,
    search: ImageSearch,
    job: Job,
    fits: Sequence[Candidate],
    outcome: ImageOutcome,
    stem: str,
    comparable: bool,
    meta: dict[str, bytes],
) -> ImageResult:
    """The highest-scoring encode of at most `job.max_bytes` (imgproxy's "size" mode): per codec,
    the highest quality whose file fits (a bisection on bytes: encodes, not scored; over the
    distinct files only where the codec has a grid), then those scored, the best margin on
    the target winning. Without a target to meet (`budget_only`) it is written as the answer;
    with one, only because no passing file fits, so flagged (best_effort). Where nothing fits,
    the source is kept (or, with `best_effort`, the smallest encode written, flagged); where the
    source itself fits and may be the output, it is the best there is."""
    budget = job.max_bytes
    assert budget is not None
    asked = budget + _overhead(meta) if meta else budget  # what the user gave
    result = ImageResult(outcome)
    if job.budget_only and comparable and src.file_bytes <= asked:
        outcome.status, outcome.meets_target = Status.KEPT, None
        outcome.output = stem_with(stem, Path(outcome.source).suffix)
        outcome.output_bytes = src.file_bytes
        return result
    chosen: list[Probe] = []
    smallest: tuple[int, Candidate] | None = None
    for base in fits:
        grid = None if src.has_alpha else quality_grid(base.codec)

        def size(q: int, base: Candidate = base) -> Probe:
            n = len(images.encode(0, base.with_quality(q)))
            # log bytes: nearly a straight line in quality, so the secant aims well
            return Probe(q, n, n > budget, math.log(max(n, 1) / budget))

        r = lowest_passing(size, job.bounds_for(base.codec), grid=grid)
        low = min(r.probes, key=lambda p: p.bytes)
        if smallest is None or low.bytes < smallest[0]:
            smallest = (int(low.bytes), base.with_quality(low.quality))
        under = [p for p in r.probes if not p.passed]
        if under:  # the highest quality that fits, scored (its bytes are kept: no re-encode)
            p = search.probe(base.with_quality(max(under, key=lambda p: p.quality).quality))
            search.probes.append(p)
            chosen.append(p)
    outcome.encodes = images.encodes
    kb = f"{asked:,} bytes"
    if chosen:
        best = max(chosen, key=lambda p: p.margin)
        cand, values = best.result
        result.payload = images.render_with(0, cand, **meta)
        result.winner = cand.codec
        met = best.passed or job.budget_only
        _fill(outcome, Status.WRITTEN if met else Status.BEST_EFFORT, stem=stem, cand=cand,
              probe=best, values=values)  # fmt: skip
        outcome.output_bytes = len(result.payload)
        if job.budget_only:
            outcome.meets_target = None  # no target: the best under the budget
        elif not best.passed:
            outcome.error = (
                f"{path}: no file meeting {job.target} fits in {kb}; the best under it written "
                f"({cand.codec} q{cand.quality}, "
                + ", ".join(f"{k}={values[k]:.4g}" for k in job.target.metrics)
                + ")"
            )
        return result
    assert smallest is not None
    nbytes, cand = smallest
    missed = f"{path}: no {'/'.join(b.codec for b in fits)} encode fits in {kb}; the smallest is "
    missed += f"{nbytes:,} bytes ({cand.codec} q{cand.quality})"
    if job.best_effort:
        p = search.probe(cand)
        c, values = p.result
        result.payload = images.render_with(0, c, **meta)
        _fill(outcome, Status.BEST_EFFORT, stem=stem, cand=c, probe=p, values=values)
        outcome.output_bytes = len(result.payload)
        outcome.meets_target = False
        outcome.error = missed + "; written anyway (--best-effort)"
        outcome.encodes = images.encodes
        return result
    outcome.status, outcome.meets_target = Status.MISSED, False
    outcome.output = stem_with(stem, Path(outcome.source).suffix)
    outcome.output_bytes = src.file_bytes
    outcome.error = missed + "; original kept"
    return result


def _fill(
    o: ImageOutcome, status: Status, *, stem: str, cand: Candidate, probe: Probe, values: dict
) -> None:
    o.status = status
    o.output = stem_with(stem, CODECS[cand.codec].extension)
    o.output_bytes = int(probe.bytes)
    o.codec, o.quality, o.params = cand.codec, cand.quality, cand.as_dict()
    o.scores = dict(values)
    o.meets_target = status == Status.WRITTEN
