"""A recipe (`Candidate`): the codec, its quality and options, the resize filter and sharpening.

What a study searches, a preset hands on and a folder job applies; hashable, so it keys the
encode and score caches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .codecs import EncodeSettings
from .errors import UsageError
from .transforms import RESIZE_FILTERS, SHARPEN_RANGE

__all__ = ["Candidate"]


@dataclass(frozen=True)
class Candidate:
    """One recipe. `options` are the codec's full, validated options, sorted by name (as
    `EncodeSettings.make` returns them), so equal recipes are equal keys."""

    codec: str
    quality: int
    resize_filter: str | None = None
    sharpen: float = 1.0
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(
        cls,
        codec: str,
        quality: int,
        *,
        resize_filter: str | None = None,
        sharpen: float = 1.0,
        **options: Any,
    ) -> Candidate:
        """A validated recipe; options not given take the codec's defaults. Raises
        `CodecError` (a `UsageError`) for an unknown codec, option or value."""
        if resize_filter is not None and resize_filter not in RESIZE_FILTERS:
            raise UsageError(
                f"unknown resize filter {resize_filter!r}; known: {', '.join(RESIZE_FILTERS)}"
            )
        if (
            isinstance(sharpen, bool)
            or not isinstance(sharpen, int | float)
            or not SHARPEN_RANGE[0] <= sharpen <= SHARPEN_RANGE[1]
        ):
            raise UsageError(
                f"sharpen must be a number in [{SHARPEN_RANGE[0]:g}, {SHARPEN_RANGE[1]:g}], "
                f"got {sharpen!r}"
            )
        settings = EncodeSettings.make(codec, quality, **options)
        return cls(codec, quality, resize_filter, float(sharpen), settings.options)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        """The inverse of `as_dict` (a preset's `params`, a study's stored trial), validated."""
        if not isinstance(d, dict):
            raise UsageError(f"a recipe must be a JSON object, not {type(d).__name__}")
        unknown = set(d) - {"codec", "quality", "resize_filter", "sharpen", "options"}
        if unknown:
            raise UsageError(f"unknown recipe field(s) {', '.join(sorted(unknown))}")
        if "codec" not in d or "quality" not in d:
            raise UsageError("a recipe needs 'codec' and 'quality'")
        options = d.get("options") or {}
        if not isinstance(options, dict):
            raise UsageError("a recipe's 'options' must be a JSON object")
        return cls.make(
            d["codec"],
            d["quality"],
            resize_filter=d.get("resize_filter"),
            sharpen=d.get("sharpen", 1.0),
            **options,
        )

    def with_quality(self, quality: int) -> Candidate:
        """The same recipe at another quality."""
        settings = EncodeSettings.make(self.codec, quality, **dict(self.options))
        return Candidate(self.codec, quality, self.resize_filter, self.sharpen, settings.options)

    def with_options(self, **changes: Any) -> Candidate:
        """The same recipe with some codec options changed (e.g. subsampling='4:4:4')."""
        settings = EncodeSettings.make(
            self.codec, self.quality, **{**dict(self.options), **changes}
        )
        return Candidate(
            self.codec, self.quality, self.resize_filter, self.sharpen, settings.options
        )

    def settings(self) -> EncodeSettings:
        return EncodeSettings.make(self.codec, self.quality, **dict(self.options))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = dict(self.options)
        return d
