"""Raster outputs: block-by-block GeoTIFF writing, then a Cloud-Optimised GeoTIFF.

GDAL's COG driver can only copy a finished dataset, so blocks are written as
they finish into a tiled scratch GeoTIFF, which is then copied (streaming,
block by block) into a compressed COG with overviews. Neither step holds the
raster in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy

from geovision.tiling.reader import RasterInfo, gdal_env
from geovision.types import Window

BLOCK_SIZE = 512


class BlockWriter:
    """Write finished blocks into a tiled scratch GeoTIFF georeferenced like ``info``.

    Args:
        path: scratch file path.
        info: the input raster (size, CRS, transform).
        count: bands to write.
        dtype: numpy dtype name.
        nodata: nodata value.
        descriptions: band descriptions (e.g. class names).
        colormap: optional ``{value: (r, g, b, a)}`` for band 1.
        scale: optional band scale (value * scale = physical value).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        info: RasterInfo,
        *,
        count: int,
        dtype: str,
        nodata: float,
        descriptions: Sequence[str] | None = None,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        scale: float | None = None,
    ) -> None:
        self.path = Path(path)
        profile = dict(
            driver="GTiff",
            height=info.height,
            width=info.width,
            count=count,
            dtype=dtype,
            crs=info.crs,
            transform=info.affine,
            nodata=nodata,
            tiled=True,
            blockxsize=BLOCK_SIZE,
            blockysize=BLOCK_SIZE,
            compress="zstd",
            zstd_level=1,
            bigtiff="if_safer",
        )
        with gdal_env():
            self._ds = rasterio.open(self.path, "w", **profile)
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                self._ds.set_band_description(i, d)
        if colormap:
            self._ds.write_colormap(1, colormap)
        if scale is not None:
            self._ds.scales = (scale,) * count

    def write(self, window: Window, array: np.ndarray) -> None:
        """Write ``(count, h, w)`` (or ``(h, w)`` for one band) at ``window``."""
        if array.ndim == 2:
            array = array[None]
        self._ds.write(array, window=window.to_rasterio())

    def close(self) -> None:
        if not self._ds.closed:
            self._ds.close()


def to_cog(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, resampling: str) -> None:
    """Copy ``src`` into a deflate-compressed COG at ``dst`` with overviews, then delete ``src``."""
    try:
        with gdal_env(), rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            rio_copy(
                str(src),
                str(dst),
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=BLOCK_SIZE,
                OVERVIEWS="AUTO",
                RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
            )
    finally:
        Path(src).unlink(missing_ok=True)


def hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


def probability_to_uint8(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` probabilities in [0, 1] to uint8 0..254 (scale 1/254), 255 where invalid."""
    out = np.rint(probs * 254.0).astype(np.uint8)
    out[:, ~valid] = 255
    return out
