"""Tiles for the networks that score large images piece by piece (LPIPS, DISTS).

Each tile's core (`tile` px, starting on a multiple of the network's total stride) is run with
`margin` px of context; a layer of stride s maps the core's pixels to rows y0 // s .. y1 // s of
the whole image's layer (to its end for the last tile), so per-tile outputs line up with the
whole image's. One place for that arithmetic, whatever the metric does with the layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ALIGN", "Tile", "check_tiling", "is_tiled", "tiles"]

#: every network tiled here reaches a total stride of 16, so tiles start on multiples of it
ALIGN = 16


def check_tiling(what: str, tile: int, margin: int) -> None:
    if tile % ALIGN or margin % ALIGN or tile <= 0 or margin < 0:
        raise ValueError(f"{what} tile ({tile}) and margin ({margin}) must be multiples of 16")


def is_tiled(h: int, w: int, tile: int, margin: int) -> bool:
    """Whether an h x w image is larger than one tile with its context on a side."""
    side = tile + 2 * margin
    return h > side or w > side


@dataclass(frozen=True)
class Tile:
    """A core [y0, y1) x [x0, x1) of an h x w image and its context [cy0, cy1) x [cx0, cx1)."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int
    h: int
    w: int

    @property
    def context(self) -> tuple[slice, slice]:
        """(rows, columns) of the image the network is run on."""
        return slice(self.cy0, self.cy1), slice(self.cx0, self.cx1)

    def core(self, stride: int, shape: tuple[int, int]):
        """For a layer of `stride` whose whole-image map is `shape` (rows, columns): the core's
        (rows, columns) in the whole map, and the same cells in the tile's own map."""
        hk, wk = shape
        r0, r1 = self.y0 // stride, (self.y1 // stride if self.y1 < self.h else hk)
        c0, c1 = self.x0 // stride, (self.x1 // stride if self.x1 < self.w else wk)
        oy, ox = self.cy0 // stride, self.cx0 // stride
        return (slice(r0, r1), slice(c0, c1)), (slice(r0 - oy, r1 - oy), slice(c0 - ox, c1 - ox))


def tiles(h: int, w: int, tile: int, margin: int) -> Iterator[Tile]:
    """The tiles of an h x w image, row by row."""
    for y0 in range(0, h, tile):
        y1 = min(h, y0 + tile)
        for x0 in range(0, w, tile):
            x1 = min(w, x0 + tile)
            yield Tile(
                y0, y1, x0, x1, max(0, y0 - margin), min(h, y1 + margin),
                max(0, x0 - margin), min(w, x1 + margin), h, w,
            )  # fmt: skip
