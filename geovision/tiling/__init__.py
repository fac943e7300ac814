"""Tiling: pure tile-grid math (``grid``), tile reading through Dask (``reader``) and blend weights (``blend``)."""

from geovision.tiling.grid import BlockGrid, TileGrid, axis_starts

__all__ = ["BlockGrid", "TileGrid", "axis_starts"]
