"""Read planning: which tiles each read task and each forward pass takes, and in what order.

A local run reads tiles on Dask threads ahead of the model. One read task takes
several passes' tiles (each task costs the in-process scheduler a few ms of CPU);
:func:`passes` splits a read task's tiles back into forward passes. The first pass of
each stream is read by the calling thread (:func:`reads`), so the model starts while
the Dask cluster is still starting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from geovision.engine.protocols import StitchMessage
from geovision.tiling.reader import RasterInfo, TileData, read_tiles
from geovision.tiling.stream import batched, stream
from geovision.types import Tile

__all__ = ["READ_BATCH", "ReadBatch", "in_grid_order", "passes", "read", "read_batches", "reads", "watched"]

#: tiles one Dask read task reads (at least; a bigger batch per forward pass reads that many)
READ_BATCH = 4

ReadBatch = tuple[list[TileData], list[Tile]]
"""Tiles read (with pixels) and tiles skipped (nodata only) of one read task."""


def read(info: RasterInfo, tile_size: int, keep: str | None, tiles: Sequence[Tile]) -> ReadBatch:
    """Read ``tiles`` (the Dask task). ``keep``: the run's token under which threads keep the raster open."""
    return read_tiles(info, tiles, tile_size, keep=keep)


def read_batches(tiles: Sequence[Tile], streams: int, batch_size: int, per_read: int) -> list[list[Tile]]:
    """The tiles in read tasks: one pass's worth for each stream first, then ``per_read`` (or a pass) each.

    The first passes start as soon as their own tiles are read, not a whole read task's.
    """
    head = min(len(tiles), streams * batch_size)
    return batched(tiles[:head], batch_size) + batched(tiles[head:], max(batch_size, per_read))


def reads(client: Callable[[], Any], batches: list[list[Tile]], head: int, info: RasterInfo, tile_size: int,
          keep: str, prefetch: int) -> Iterator[tuple[Sequence[Tile], ReadBatch]]:
    """``(batch, (read, skipped))`` in order: the first ``head`` batches read here, the rest by Dask's readers.

    The calling thread has the raster's georeferencing loaded already, while a reader
    thread's first open of a georeferenced file and the in-process cluster's start take
    tens of milliseconds: the first passes start at once, and ``client()`` (which starts
    the cluster) is called only when the first Dask read is due.
    """
    for batch in batches[:head]:
        yield batch, read(info, tile_size, None, batch)
    if len(batches) > head:
        yield from stream(client(), read, batches[head:], info, tile_size, keep, prefetch=prefetch)


def watched(batches: Iterable[tuple[Sequence[Tile], ReadBatch]],
            monitor: Any) -> Iterator[tuple[Sequence[Tile], ReadBatch]]:
    """Pass read batches through, handing each tile to ``monitor.add(data, valid)`` (the drift check)."""
    for whole, (done, skipped) in batches:
        if monitor is not None:
            for t in done:
                monitor.add(t.data, t.valid)
        yield whole, (done, skipped)


def passes(batch: Sequence[Tile], done: list[TileData], skipped: list[Tile],
           size: int) -> Iterator[tuple[list[Tile], list[TileData], list[Tile]]]:
    """Split one read batch into forward passes of ``size`` tiles: ``(tiles, read, skipped)`` each.

    Each part is a run of consecutive tiles of ``batch`` (grid order), holding at most
    ``size`` read tiles and the skipped tiles among them.
    """
    by_index = {t.tile.index: t for t in done}
    skip = {t.index for t in skipped}
    part: list[Tile] = []
    part_read: list[TileData] = []
    for tile in batch:
        if tile.index not in skip and len(part_read) == size:
            yield part, part_read, [t for t in part if t.index in skip]
            part, part_read = [], []
        part.append(tile)
        if tile.index not in skip:
            part_read.append(by_index[tile.index])
    if part:
        yield part, part_read, [t for t in part if t.index in skip]


def in_grid_order(messages: list[StitchMessage], batch: Sequence[Tile]) -> list[StitchMessage]:
    """Messages in the batch's (grid) order: consumers take tiles row-major."""
    rank = {tile.index: k for k, tile in enumerate(batch)}
    return sorted(messages, key=lambda m: rank[m.tile.index])
