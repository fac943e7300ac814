"""Tile-grid math: which pixels each tile covers. Pure: no I/O, no rasterio, no dask, no torch.

Edge tiles stay full size: the last tile of a row or column slides back inside
the raster (as SAHI and raster-vision do), so every tile batches with the
others and the stitcher, not the model, deals with the larger overlap there.
Only a raster smaller than one tile gives a smaller window, which the reader
pads up to the tile size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from geovision.types import Tile, Window


def axis_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels.

    Consecutive tiles overlap by exactly ``overlap`` pixels, except the last pair,
    which overlaps by more so that the last tile ends at ``size`` while staying
    ``tile`` pixels long. A raster no larger than one tile gets one start, 0.

    >>> axis_starts(1000, 512, 64)
    [0, 448, 488]
    """
    if size <= 0:
        raise ValueError(f"axis size must be positive, got {size}")
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be >= 0 and smaller than the tile size ({tile}), got {overlap}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


@dataclass(frozen=True, slots=True)
class TileGrid:
    """Overlapping tiles over a ``height`` x ``width`` pixel raster.

    Args:
        height: raster rows (pixels).
        width: raster columns (pixels).
        tile_size: tile edge (pixels).
        overlap: pixels shared by neighbouring tiles; ``0 <= overlap < tile_size``.
    """

    height: int
    width: int
    tile_size: int
    overlap: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"raster size must be positive, got height={self.height}, width={self.width}")
        if self.tile_size <= 0:
            raise ValueError(f"tile_size must be positive, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(
                f"overlap must be >= 0 and smaller than tile_size ({self.tile_size}), got {self.overlap}"
            )

    @property
    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.tile_size, self.overlap)

    @property
    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.tile_size, self.overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """``(tile_rows, tile_cols)``."""
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def __iter__(self) -> Iterator[Tile]:
        """Tiles in row-major order (the order the stitcher finishes blocks in)."""
        th, tw = min(self.tile_size, self.height), min(self.tile_size, self.width)
        for i, r in enumerate(self.row_starts):
            for j, c in enumerate(self.col_starts):
                yield Tile((i, j), Window(r, c, th, tw))

    @property
    def tiles(self) -> list[Tile]:
        return list(self)


@dataclass(frozen=True, slots=True)
class BlockGrid:
    """Output blocks of ``block_size`` pixels over the raster, and how many tiles feed each.

    The stitcher accumulates a block until every tile that covers part of it has
    been added, then writes it out and forgets it, so memory holds only the blocks
    of the tiles in flight.
    """

    height: int
    width: int
    block_size: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"raster size must be positive, got height={self.height}, width={self.width}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")

    @property
    def shape(self) -> tuple[int, int]:
        return -(-self.height // self.block_size), -(-self.width // self.block_size)

    def window(self, index: tuple[int, int]) -> Window:
        """The pixels of block ``(block_row, block_col)``, clipped to the raster."""
        r, c = index[0] * self.block_size, index[1] * self.block_size
        return Window(r, c, min(self.block_size, self.height - r), min(self.block_size, self.width - c))

    def blocks_touching(self, window: Window) -> list[tuple[int, int]]:
        """Indices of the blocks that share at least one pixel with ``window``."""
        b = self.block_size
        rows = range(window.row_off // b, (window.row_end - 1) // b + 1)
        cols = range(window.col_off // b, (window.col_end - 1) // b + 1)
        return [(i, j) for i in rows for j in cols]

    def tile_counts(self, tiles: list[Tile]) -> np.ndarray:
        """``(block_rows, block_cols)`` int array: how many tiles touch each block."""
        counts = np.zeros(self.shape, dtype=np.int32)
        for tile in tiles:
            for i, j in self.blocks_touching(tile.window):
                counts[i, j] += 1
        return counts

    def touches_raster_edge(self, index: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
        """Whether block ``index`` lies on the raster's (top, left, bottom, right) edge."""
        rows, cols = self.shape
        return index[0] == 0, index[1] == 0, index[0] == rows - 1, index[1] == cols - 1
