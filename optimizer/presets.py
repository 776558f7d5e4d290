"""Presets: the versioned JSON document a tuned recipe is handed on as.

`imgtune tune` writes one for the smallest recipe that met its target; `apply`, `optimize` and
`export` read it back. It holds the recipe (`params`: codec, quality, codec options, resize filter,
sharpening) and the `pillow_save_kwargs` it amounts to, the box images are fitted inside
(`max_size`), the colour transparency is flattened onto (`background`), the quality target and how
it was aggregated over the images, and as a record of where the recipe came from: the metric suite,
what was achieved, the images (names and SHA-256) and the study that found it, and the versions of
the software used. `schema` is the layout's version; an imgtune reads only its own.

`Preset.from_dict` is the one parser: it validates every field and names the bad one.
"""

from __future__ import annotations

import copy
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .codecs import CODECS
from .errors import UsageError
from .files import atomic_write_text
from .metrics.catalog import OUTPUTS
from .recipe import Candidate
from .targets import Target, TargetError, parse_target
from .transforms import RESIZE_FILTERS, SHARPEN_RANGE

__all__ = [
    "SCHEMA",
    "Preset",
    "PresetError",
    "assemble_preset",
    "build_preset",
    "load_preset",
]

SCHEMA = 1

#: a preset's fields, in the order they are written
_FIELDS = (
    "schema",
    "params",
    "pillow_save_kwargs",
    "max_size",
    "widths",
    "background",
    "target",
    "metrics",
    "achieved",
    "images",
    "study",
    "versions",
)
_PARAMS = ("codec", "quality", "resize_filter", "sharpen", "options")


class PresetError(UsageError):
    """A preset that cannot be read or used: `<source>: <reason>`, the reason naming the field."""


def _kind(v: Any) -> str:
    """`v`'s JSON type, for messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v!r}"
    return "an array" if isinstance(v, list | tuple) else "an object"


def _aggregate_ok(how: Any) -> bool:
    """min, mean or pNN with 0 < NN < 100 (as `study.run_study` takes it)."""
    if how in ("min", "mean"):
        return True
    return (
        isinstance(how, str)
        and how.startswith("p")
        and how[1:].isdigit()
        and how[1:].isascii()
        and 0 < int(how[1:]) < 100
    )


def _params_field(params: dict[str, Any]) -> str:
    """Which field of `params` `Candidate.from_dict` refused (its checks, in its order)."""
    if set(params) - set(_PARAMS) or "codec" not in params or "quality" not in params:
        return "params"
    options = params.get("options") or {}
    if not isinstance(options, dict):
        return "params.options"
    rf = params.get("resize_filter")
    if rf is not None and rf not in RESIZE_FILTERS:
        return "params.resize_filter"
    sharpen = params.get("sharpen", 1.0)
    if (
        isinstance(sharpen, bool)
        or not isinstance(sharpen, int | float)
        or not SHARPEN_RANGE[0] <= sharpen <= SHARPEN_RANGE[1]
    ):
        return "params.sharpen"
    codec, quality = params["codec"], params["quality"]
    if codec not in CODECS:
        return "params.codec"
    lo, hi = CODECS[codec].quality_range
    if isinstance(quality, bool) or not isinstance(quality, int) or not lo <= quality <= hi:
        return "params.quality"
    for name, value in options.items():
        opt = CODECS[codec].options.get(name)
        if opt is None:
            return f"params.options.{name}"
        try:
            opt.check(codec, name, value)
        except ValueError:
            return f"params.options.{name}"
    return "params"


def _candidate(params: Any, bad) -> Candidate:
    """`params` as a `Candidate`; `bad(field, reason)` makes the error."""
    if not isinstance(params, dict):
        raise bad("params", f"the recipe must be a JSON object, not {_kind(params)}")
    if "codec" in params and not isinstance(params["codec"], str):
        raise bad("params.codec", f"must be a string, not {_kind(params['codec'])}")
    rf = params.get("resize_filter")
    if rf is not None and not isinstance(rf, str):
        raise bad("params.resize_filter", f"must be a string or null, not {_kind(rf)}")
    try:
        return Candidate.from_dict(params)
    except (ValueError, TypeError) as exc:
        raise bad(_params_field(params), str(exc)) from None


@dataclass(frozen=True)
class Preset:
    """A parsed, validated preset. Build one with `from_dict`, `load_preset` or `build_preset`;
    `to_dict` gives back the JSON layout, `save` writes it."""

    candidate: Candidate  # JSON "params"
    target: str  # JSON target.spec
    aggregate: str  # JSON target.aggregate: "min", "mean" or "pNN"
    max_size: tuple[int | None, int | None] | None  # the box images are fitted inside
    background: tuple[int, int, int] | None  # what transparency is flattened onto, for JPEG
    pillow_save_kwargs: dict[str, Any]  # Image.save() keyword arguments of `candidate`
    metrics: dict[str, Any] = field(default_factory=dict)  # the metric suite's spec
    achieved: dict[str, Any] = field(default_factory=dict)  # quality and bytes achieved
    images: list[dict[str, str]] = field(default_factory=list)  # name and sha256 of each image
    study: dict[str, Any] = field(default_factory=dict)  # name, storage, trials
    versions: dict[str, str] = field(default_factory=dict)  # software versions used
    schema: int = SCHEMA
    #: the widths the recipe was tuned to hold at (tune --widths): apply makes each
    widths: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "preset") -> Preset:
        """Parse and validate a preset's JSON value. Raises `PresetError` ("<source>: <field>:
        <reason>") for anything out of place. `schema`, `params` and `target` are needed; the
        record fields (metrics, achieved, images, study, versions) default to empty and
        `pillow_save_kwargs` to the recipe's own."""

        def bad(where: str, reason: str) -> PresetError:
            return PresetError(f"{source}: {where}: {reason}" if where else f"{source}: {reason}")

        if not isinstance(data, dict):
            raise bad("", f"a preset must be a JSON object, not {_kind(data)}")
        unknown = [k for k in data if k not in _FIELDS]
        if unknown:
            raise bad(
                "",
                f"unknown field(s) {', '.join(map(repr, unknown))}; "
                f"a preset has: {', '.join(_FIELDS)}",
            )
        if "schema" not in data:
            raise bad("schema", f"missing: not an imgtune preset (schema {SCHEMA})")
        schema = data["schema"]
        if type(schema) is not int or schema != SCHEMA:
            raise bad("", f"preset schema {schema!r}; this imgtune reads {SCHEMA}")
        if "params" not in data:
            raise bad("params", "missing: a preset needs its recipe")
        candidate = _candidate(data["params"], bad)

        if "target" not in data:
            raise bad(
                "target", 'missing: a preset needs its quality target, e.g. {"spec": "ssim>=0.95"}'
            )
        tgt = data["target"]
        if not isinstance(tgt, dict):
            raise bad(
                "target",
                "must be a JSON object such as "
                f'{{"spec": "ssimulacra2>=80", "aggregate": "min"}}, not {_kind(tgt)}',
            )
        extra = [k for k in tgt if k not in ("spec", "aggregate")]
        if extra:
            raise bad("target", f"unknown field(s) {', '.join(map(repr, extra))}")
        spec = tgt.get("spec")
        if not isinstance(spec, str):
            raise bad(
                "target.spec", f"must be a string such as 'ssimulacra2>=80', not {_kind(spec)}"
            )
        try:
            parse_target(spec)
        except TargetError as exc:
            raise bad("target.spec", str(exc)) from None
        aggregate = tgt.get("aggregate", "min")
        if not _aggregate_ok(aggregate):
            raise bad(
                "target.aggregate", f"must be min, mean or pNN (e.g. p10), not {_kind(aggregate)}"
            )

        size = data.get("max_size")
        if size is not None:
            if (
                not isinstance(size, list | tuple)
                or len(size) != 2
                or not all(v is None or (type(v) is int and v > 0) for v in size)
                or (size[0] is None and size[1] is None)
            ):
                raise bad(
                    "max_size",
                    "must be null or [WIDTH, HEIGHT], each a positive integer or null (not both), "
                    f"not {json.dumps(size) if isinstance(size, list | tuple) else _kind(size)}",
                )
            size = (size[0], size[1])
        widths = data.get("widths") or []
        if not isinstance(widths, list) or not all(type(w) is int and w > 0 for w in widths):
            raise bad("widths", f"must be an array of positive integers, not {_kind(widths)}")
        if widths and size is not None:
            raise bad("widths", "a preset has widths or a max_size, not both")
        bg = data.get("background")
        if bg is not None:
            if (
                not isinstance(bg, list | tuple)
                or len(bg) != 3
                or not all(type(c) is int and 0 <= c <= 255 for c in bg)
            ):
                raise bad(
                    "background",
                    "must be null or [R, G, B], integers in [0, 255], "
                    f"not {json.dumps(bg) if isinstance(bg, list | tuple) else _kind(bg)}",
                )
            bg = (bg[0], bg[1], bg[2])

        want = candidate.settings().pillow_kwargs()
        kwargs = data.get("pillow_save_kwargs", want)
        if not isinstance(kwargs, dict):
            raise bad("pillow_save_kwargs", f"must be a JSON object, not {_kind(kwargs)}")
        if kwargs != want or any(type(v) is not type(want[k]) for k, v in kwargs.items()):
            raise bad(
                "pillow_save_kwargs",
                f"{json.dumps(kwargs)} are not what params save with: {json.dumps(want)}",
            )

        record: dict[str, Any] = {}
        for name in ("metrics", "achieved", "study", "versions"):
            v = data.get(name, {})
            if not isinstance(v, dict):
                raise bad(name, f"must be a JSON object, not {_kind(v)}")
            if name == "versions" and not all(isinstance(x, str) for x in v.values()):
                raise bad(name, "must map each package to its version string")
            record[name] = copy.deepcopy(v)
        images = data.get("images", [])
        if not isinstance(images, list) or not all(
            isinstance(it, dict) and all(isinstance(x, str) for x in it.values()) for it in images
        ):
            raise bad("images", 'must be an array of {"name": ..., "sha256": ...} objects')

        return cls(
            candidate=candidate,
            target=spec,
            aggregate=aggregate,
            max_size=size,
            background=bg,
            pillow_save_kwargs=dict(kwargs),
            images=copy.deepcopy(images),
            schema=schema,
            widths=tuple(sorted(set(widths))),
            **record,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout, fields in the order a preset file has them (a copy)."""
        return {
            "schema": self.schema,
            "params": self.candidate.as_dict(),
            "pillow_save_kwargs": dict(self.pillow_save_kwargs),
            "max_size": list(self.max_size) if self.max_size is not None else None,
            **({"widths": list(self.widths)} if self.widths else {}),
            "background": list(self.background) if self.background is not None else None,
            "target": {"spec": self.target, "aggregate": self.aggregate},
            "metrics": copy.deepcopy(self.metrics),
            "achieved": copy.deepcopy(self.achieved),
            "images": copy.deepcopy(self.images),
            "study": copy.deepcopy(self.study),
            "versions": dict(self.versions),
        }

    def save(self, path: str | Path) -> Path:
        """Write the preset to `path` atomically (a reader never sees half a file)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def parsed_target(self) -> Target:
        return parse_target(self.target)


def load_preset(path: str | Path) -> Preset:
    """Read and parse a preset file; any problem is a `PresetError` naming `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"{path}: cannot read the preset: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PresetError(f"{path}: not a preset: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(f"{path}: not a preset: not JSON ({exc})") from None
    return Preset.from_dict(data, source=str(path))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("imgtune", "pillow", "optuna", "torch", "lpips", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def build_preset(
    result, images, target, *, aggregate: str, default_jpeg_bytes: int | None = None
) -> Preset:
    """The preset for a feasible `study.StudyResult` (never for one that misses its target).
    `default_jpeg_bytes`: what the images take as default JPEGs, recorded in `achieved`."""
    ev = result.best
    if ev is None or not ev.feasible:
        raise ValueError("no feasible recipe: a preset must not claim a target it does not meet")
    return assemble_preset(
        ev.candidate,
        ev.per_image,
        target,
        aggregate=aggregate,
        max_size=(
            (max(it.size[0] for it in images.items), max(it.size[1] for it in images.items))
            if images.resized and not images.widths
            else None
        ),
        widths=images.widths,
        background=images.background,
        metrics=images.suite.describe(),
        images=images.fingerprint(),
        source_bytes=images.source_bytes,
        study={"name": result.study_name, "storage": result.storage, "trials": result.trials},
        default_jpeg_bytes=default_jpeg_bytes,
    )


def assemble_preset(
    candidate: Candidate,
    per_image: dict[str, dict[str, float]],
    target: Target,
    *,
    aggregate: str,
    max_size: tuple[int, int] | list[int] | None,
    background: tuple[int, int, int] | list[int] | None,
    metrics: dict[str, Any],
    images: list[dict[str, str]],
    source_bytes: int,
    study: dict[str, Any],
    default_jpeg_bytes: int | None = None,
    widths: tuple[int, ...] = (),
) -> Preset:
    """A preset from its parts: the recipe and every image's bytes and scores under it (from a
    fresh evaluation, or as a study's trial recorded them), the set's box, background, metric
    suite, fingerprint and source bytes, and where it came from. The caller has checked that
    the recipe meets `target`."""
    quality = {}
    for metric in target.metrics:
        vals = [v[metric] for v in per_image.values()]
        worst = min(vals) if OUTPUTS[metric].higher_is_better else max(vals)
        quality[metric] = {"worst": worst, "mean": sum(vals) / len(vals)}
    total = int(sum(v["bytes"] for v in per_image.values()))
    achieved: dict[str, Any] = {
        "quality": quality,
        "total_bytes": total,
        "source_bytes": source_bytes,
        "saved_bytes": source_bytes - total,
        "per_image": {
            name: {k: (None if v == float("inf") else v) for k, v in vals.items()}
            for name, vals in per_image.items()
        },
    }
    if default_jpeg_bytes is not None:
        achieved["default_jpeg_bytes"] = default_jpeg_bytes
    return Preset(
        candidate=candidate,
        target=str(target),
        aggregate=aggregate,
        max_size=(max_size[0], max_size[1]) if max_size else None,
        background=(background[0], background[1], background[2]) if background else None,
        pillow_save_kwargs=candidate.settings().pillow_kwargs(),
        metrics=copy.deepcopy(metrics),
        achieved=achieved,
        images=copy.deepcopy(images),
        study=dict(study),
        versions=_versions(),
        widths=tuple(widths),
    )
