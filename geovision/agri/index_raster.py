"""A vegetation index over a whole raster, tile by tile, into a float32 COG.

Indices are per-pixel, so the tiles need no overlap and no blending: the raster
is read in non-overlapping 512 px blocks through the same Dask reader as ``predict`` (bounded
read-ahead, capped GDAL cache), each window becomes reflectance and then the
index, and the block is written at once. Nodata (and NaN from zero division or
out-of-range values) is written as NaN, the COG's nodata. Nothing ever holds the
whole raster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from geovision.agri.indices import INDICES, compute_index, resolve_bands, to_reflectance
from geovision.io.outputs import AtomicOutputs
from geovision.io.raster import BlockWriter, to_cog
from geovision.tiling.grid import BlockGrid
from geovision.tiling.reader import RasterInfo, TileData, open_raster, read_tiles
from geovision.tiling.stream import batched, local_cluster, stream
from geovision.types import Tile

__all__ = ["index_raster"]

BLOCK = 512


def _read(info: RasterInfo, size: int, tiles: Sequence[Tile]) -> tuple[list[TileData], list[Tile]]:
    return read_tiles(info, tiles, size)


def index_raster(raster: str | os.PathLike[str], out: str | os.PathLike[str], *, index: str = "ndvi",
                 sensor: str | None = None, bands: Mapping[str, int] | str | None = None,
                 baseline: str | None = None, scale: float | None = None, offset: float | None = None,
                 overwrite: bool = False) -> dict:
    """Write ``index`` of ``raster`` as a float32 Cloud-Optimised GeoTIFF (nodata NaN).

    Args:
        raster: the multispectral raster.
        out: the COG to write (atomically: nothing is left behind on failure).
        index: an :data:`~geovision.agri.indices.INDICES` name.
        sensor: a sensor preset (band mapping and reflectance scaling), or ``None``.
        bands: explicit band positions (``{"red": 3, "nir": 4}`` or ``"red=3,nir=4"``), overriding the preset.
        baseline: Sentinel-2 processing baseline (the -1000 offset from 04.00 on).
        scale, offset: reflectance scaling overriding the preset's.
        overwrite: replace an existing ``out``.

    Returns:
        ``{"index", "bands", "scale", "offset", "valid_pixels", "mean", "min", "max"}``.

    Raises:
        BandMismatchError: the raster lacks a band the index needs.
        ConfigError: unknown index, sensor or band names.
        RasterError: the raster cannot be read or has no CRS.
    """
    raster = os.fspath(raster)
    import rasterio

    with rasterio.open(raster) as ds:
        count = ds.count
    needed, scale_, offset_ = resolve_bands(sensor, bands, index, count, baseline=baseline, scale=scale, offset=offset)
    names = list(INDICES[index.lower()].bands)
    info = open_raster(raster, [needed[n] for n in names], len(names), bands_from=f"the {index} bands")
    # non-overlapping blocks (edge blocks smaller, padded by the reader): each pixel is read and counted once
    blocks = BlockGrid(info.height, info.width, BLOCK)
    tiles = [Tile((r, c), blocks.window((r, c))) for r in range(blocks.shape[0]) for c in range(blocks.shape[1])]
    total, total_n, lo, hi = 0.0, 0, np.inf, -np.inf
    with AtomicOutputs([raster], overwrite) as outputs:
        tmp = outputs.add(out)
        scratch = outputs.scratch(tmp, ".scratch.tif")
        writer = BlockWriter(scratch, info, count=1, dtype="float32", nodata=float("nan"), descriptions=[index.lower()])
        try:
            with local_cluster() as client:
                for _, (read, skipped) in stream(client, _read, batched(tiles, 4), info, BLOCK, prefetch=4):
                    for t in read:
                        w = t.tile.window
                        refl = to_reflectance(t.data, scale_, offset_, ~t.valid)
                        values = compute_index(index, dict(zip(names, refl)))[: w.height, : w.width]
                        writer.write(w, values)
                        finite = values[np.isfinite(values)]
                        if finite.size:
                            total += float(finite.sum(dtype=np.float64))
                            total_n += finite.size
                            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
                    for tile in skipped:
                        w = tile.window
                        writer.write(w, np.full((w.height, w.width), np.nan, dtype=np.float32))
        finally:
            writer.close()
        to_cog(scratch, tmp, resampling="AVERAGE")
        outputs.commit()
    return {"index": index.lower(), "bands": {n: needed[n] for n in names}, "scale": scale_, "offset": offset_,
            "valid_pixels": total_n, "mean": total / total_n if total_n else None,
            "min": lo if total_n else None, "max": hi if total_n else None, "path": str(Path(out))}
