"""Tiling: pure tile-grid math (``grid``), blend weights (``blend``), tile reading (``reader``)
and ordered, bounded submission of read tasks to Dask (``stream``)."""

from geovision.tiling.grid import BlockGrid, TileGrid, axis_starts

__all__ = ["BlockGrid", "TileGrid", "axis_starts"]
