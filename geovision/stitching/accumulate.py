"""Blend tile probabilities into output blocks, block by block.

An accumulator, not a painter (raster-vision's idea): each tile's class
probabilities are multiplied by taper weights (``tiling.blend``) and summed into
the output blocks it covers, together with the weights. A block is finished the
moment the last tile covering it has been added (the counts come from the pure
grid math in ``tiling.grid``): its weighted sum is divided by its weight sum,
the arg-max gives the class, and the block leaves memory. Memory therefore
holds only the blocks under the tiles in flight, whatever the raster size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
        valid = block.weights > 0
        probs = np.divide(block.sums, block.weights, out=np.zeros_like(block.sums), where=valid)
        classes = _argmax_planes(probs)
        classes[~valid] = CLASS_NODATA
        return FinishedBlock(self.blocks.window(index), classes, probs, valid)

    def check_complete(self) -> None:
        """Raise if a block never received all its tiles (a bug, not a user error)."""
        if self._open:
            raise RuntimeError(f"{len(self._open)} output blocks never finished: {sorted(self._open)[:5]}...")


def _argmax_planes(planes: np.ndarray) -> np.ndarray:
    """``np.argmax(planes, axis=0)`` as uint8 (first maximum wins), plane by plane.

    For the few planes of a class block this is several times faster than numpy's
    argmax along the first axis, which walks the planes with a large stride.
    """
    classes = np.zeros(planes.shape[1:], dtype=np.uint8)
    best = planes[0].copy()
    for c in range(1, len(planes)):
        better = planes[c] > best
        classes[better] = c
        np.maximum(best, planes[c], out=best)
    return classes
