"""Blend tile probabilities into output blocks, block by block.

An accumulator, not a painter (raster-vision's idea): each tile's class
probabilities are multiplied by taper weights (``tiling.blend``) and summed into
the output blocks it covers, together with the weights. A block is finished the
moment the last tile covering it has been added (the counts come from the pure
grid math in ``tiling.grid``): its weighted sum is divided by its weight sum,
the arg-max gives the class, and the block leaves memory. Memory therefore
holds only the blocks under the tiles in flight, whatever the raster size.

Finishing a block (division, arg-max, nodata) is one compiled loop (numba,
``nogil``) over the block, in place; the weighted sums stay numpy's, which
vectorises them better than a compiled loop here (6 against 7-10 ns a pixel).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np

from geovision.tiling.blend import taper_weights
from geovision.tiling.grid import BlockGrid
from geovision.types import Tile, Window

#: class value written where no class is given (nodata, or outside every valid tile pixel)
CLASS_NODATA = 255


@dataclass(slots=True)
class FinishedBlock:
    """A finished output block.

    Attributes:
        window: the block's pixels in the raster.
        classes: ``(h, w)`` uint8 arg-max class, ``CLASS_NODATA`` where no valid pixel.
        probabilities: ``(C, h, w)`` float32 blended probabilities, 0 where invalid.
        valid: ``(h, w)`` bool, True where a class was given.
    """

    window: Window
    classes: np.ndarray
    probabilities: np.ndarray
    valid: np.ndarray


class _Block:
    __slots__ = ("remaining", "sums", "weights")

    def __init__(self, num_classes: int, height: int, width: int, remaining: int) -> None:
        self.sums = np.zeros((num_classes, height, width), dtype=np.float32)
        self.weights = np.zeros((height, width), dtype=np.float32)
        self.remaining = remaining


class BlockAccumulator:
    """Weighted blending of overlapping tiles into finished blocks.

    Args:
        blocks: the output block grid.
        tiles: every tile that will be added or skipped (each exactly once).
        num_classes: C, the number of class probability planes.
        ramp: taper width in pixels (usually the tile overlap).
    """

    def __init__(self, blocks: BlockGrid, tiles: Iterable[Tile], num_classes: int, ramp: int) -> None:
        if num_classes > CLASS_NODATA:
            raise ValueError(f"at most {CLASS_NODATA} classes fit a uint8 class raster, got {num_classes}")
        self.blocks = blocks
        self.num_classes = num_classes
        self.ramp = ramp
        self._remaining = blocks.tile_counts(list(tiles))
        self._open: dict[tuple[int, int], _Block] = {}

    @property
    def open_blocks(self) -> int:
        """How many blocks are held in memory right now."""
        return len(self._open)

    def add(self, tile: Tile, probabilities: np.ndarray, valid: np.ndarray) -> list[FinishedBlock]:
        """Add one tile's ``(C, th, tw)`` probabilities and ``(th, tw)`` validity.

        Arrays may be larger than the tile's window (padding): only the top-left
        ``window.height x window.width`` part is used. Returns the blocks this
        tile finished.
        """
        win = tile.window
        h, w = win.height, win.width
        weights = taper_weights(probabilities.shape[1], probabilities.shape[2], self.ramp)[:h, :w]
        weights = np.where(valid[:h, :w], weights, np.float32(0.0))
        probs = probabilities[:, :h, :w]
        finished = []
        for index in self.blocks.blocks_touching(win):
            bwin = self.blocks.window(index)
            inter = win.intersection(bwin)
            assert inter is not None
            block = self._open.get(index)
            if block is None:
                block = self._open[index] = _Block(
                    self.num_classes, bwin.height, bwin.width, int(self._remaining[index])
                )
            dst = inter.relative_to(bwin).slices
            src = inter.relative_to(win).slices
            wt = weights[src]
            block.sums[(slice(None), *dst)] += probs[(slice(None), *src)] * wt
            block.weights[dst] += wt
            finished.extend(self._count_down(index, block))
        return finished

    def skip(self, tile: Tile) -> list[FinishedBlock]:
        """Record that ``tile`` was entirely nodata; returns the blocks this finished."""
        finished = []
        for index in self.blocks.blocks_touching(tile.window):
            block = self._open.get(index)
            if block is None:
                bwin = self.blocks.window(index)
                block = self._open[index] = _Block(
                    self.num_classes, bwin.height, bwin.width, int(self._remaining[index])
                )
            finished.extend(self._count_down(index, block))
        return finished

    def _count_down(self, index: tuple[int, int], block: _Block) -> list[FinishedBlock]:
        block.remaining -= 1
        if block.remaining > 0:
            return []
        del self._open[index]
        return [self._finish(index, block)]

    def _finish(self, index: tuple[int, int], block: _Block) -> FinishedBlock:
        classes, valid = _normalise(block.sums, block.weights, CLASS_NODATA)  # sums become probabilities
        return FinishedBlock(self.blocks.window(index), classes, block.sums, valid)

    def check_complete(self) -> None:
        """Raise if a block never received all its tiles (a bug, not a user error)."""
        if self._open:
            raise RuntimeError(f"{len(self._open)} output blocks never finished: {sorted(self._open)[:5]}...")


@numba.njit(cache=True, nogil=True)
def _normalise(sums: np.ndarray, weights: np.ndarray, nodata: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Divide a finished block's sums by its weights, in place; ``(classes, valid)``.

    The class is the arg-max (the first maximum wins); pixels without weight get
    probability 0 and class ``nodata``.
    """
    n_classes, height, width = sums.shape
    classes = np.empty((height, width), np.uint8)
    valid = np.empty((height, width), np.bool_)
    for i in range(height):
        for j in range(width):
            weight = weights[i, j]
            if weight > 0:
                best, top = 0, sums[0, i, j] / weight
                sums[0, i, j] = top
                for c in range(1, n_classes):
                    p = sums[c, i, j] / weight
                    sums[c, i, j] = p
                    if p > top:
                        best, top = c, p
                classes[i, j] = best
                valid[i, j] = True
            else:
                for c in range(n_classes):
                    sums[c, i, j] = 0
                classes[i, j] = nodata
                valid[i, j] = False
    return classes, valid
