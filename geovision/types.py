"""Small immutable value types shared by every subsystem.

Axis order is always ``(bands, rows, cols)`` for arrays and ``(row, col)`` for
pixel positions; boxes name their layout (``bbox_xyxy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time to keep this module pure
    from rasterio.windows import Window as RioWindow


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels: ``rows [row_off, row_off + height)``, ``cols [col_off, col_off + width)``."""

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("row_off", "col_off", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Window.{name} must be an int, got {value!r}")
        if self.row_off < 0 or self.col_off < 0:
            raise ValueError(f"Window offsets must be >= 0, got row_off={self.row_off}, col_off={self.col_off}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"Window size must be positive, got height={self.height}, width={self.width}")

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(row_slice, col_slice)`` for indexing a ``(rows, cols)`` array."""
        return slice(self.row_off, self.row_end), slice(self.col_off, self.col_end)

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or ``None`` when they do not overlap."""
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)

    def relative_to(self, outer: Window) -> Window:
        """This window in the pixel frame of ``outer`` (which must contain it)."""
        return Window(self.row_off - outer.row_off, self.col_off - outer.col_off, self.height, self.width)

    def to_rasterio(self) -> RioWindow:
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a :class:`~geovision.tiling.grid.TileGrid`.

    ``window`` is the part of the raster the tile covers (clipped to the raster,
    so it is smaller than the tile size only when the raster itself is smaller).
    ``index`` is ``(tile_row, tile_col)`` in the grid.
    """

    index: tuple[int, int]
    window: Window
