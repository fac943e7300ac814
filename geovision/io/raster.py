"""Raster outputs: block-by-block GeoTIFF writing, then a Cloud-Optimised GeoTIFF.

GDAL's COG driver can only copy a finished dataset, so blocks are written as
they finish into a tiled scratch GeoTIFF, which is then copied (streaming,
block by block) into a compressed COG with overviews. Neither step holds the
raster in memory. The class raster's nearest-neighbour overviews are written block by
block beside it (:class:`NearestOverviews`), so the copy after the last pass does not
read the whole raster back to make them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
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


def overview_factors(height: int, width: int) -> list[int]:
    """The overview factors of GDAL's COG driver (``OVERVIEWS=AUTO``, :data:`BLOCK_SIZE` tiles).

    It halves the raster while the level above is larger than one tile: 4096 px gives
    2, 4 and 8; 512 px and less, none.
    """
    factors, f = [], 2
    while -(-max(height, width) // (f // 2)) > BLOCK_SIZE:
        factors.append(f)
        f *= 2
    return factors


class NearestOverviews:
    """The nearest-neighbour overviews of a one-band raster, written block by block beside it.

    GDAL's nearest-neighbour overview of factor ``f`` takes every ``f``-th pixel from
    the first (``a[::f, ::f]``, checked against GDAL in the tests), which a block whose
    offsets are multiples of ``f`` gives alone. One scratch GeoTIFF per factor of
    :meth:`levels`.

    Args:
        paths: ``factor -> scratch path``, one for each of :meth:`levels`.
        info: the full-resolution raster.
        dtype, nodata: as the full-resolution scratch.
    """

    @staticmethod
    def levels(height: int, width: int) -> list[int]:
        """The factors written block by block: :func:`overview_factors`, or none where one
        exceeds the block size (rasters over 262 144 px a side; :func:`to_cog` then has
        GDAL make them)."""
        factors = overview_factors(height, width)
        return factors if max(factors, default=0) <= BLOCK_SIZE else []

    def __init__(self, paths: dict[int, Path], info: RasterInfo, *, dtype: str, nodata: float) -> None:
        expected = self.levels(info.height, info.width)
        if sorted(paths) != expected:
            raise ValueError(f"overview paths for factors {sorted(paths)}; this raster's are {expected}")
        self.paths = dict(paths)
        self._writers = {}
        for f, path in self.paths.items():
            h, w = -(-info.height // f), -(-info.width // f)
            scaled = info.affine @ Affine.scale(info.width / w, info.height / h)
            level = dataclasses.replace(info, height=h, width=w, transform=tuple(scaled)[:6])
            self._writers[f] = BlockWriter(path, level, count=1, dtype=dtype, nodata=nodata)

    def write(self, window: Window, array: np.ndarray) -> None:
        """Add the block ``array`` (``(h, w)``) at ``window`` (offsets multiples of the block size)."""
        for f, writer in self._writers.items():
            writer.write(Window(window.row_off // f, window.col_off // f, -(-window.height // f),
                                -(-window.width // f)), array[::f, ::f])

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def to_cog(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, resampling: str,
           overviews: dict[int, Path] | None = None) -> None:
    """Copy ``src`` into a deflate-compressed COG at ``dst`` with overviews, then delete ``src``.

    ``overviews`` (factor -> one-band GeoTIFF, as :class:`NearestOverviews` writes)
    are used as they are, through a VRT beside ``src``, instead of GDAL making them.
    """
    source, made = str(src), "AUTO"
    if overviews:
        source, made = str(Path(src).with_suffix(".vrt")), "FORCE_USE_EXISTING"
        Path(source).write_text(_vrt_with_overviews(src, overviews))
    try:
        with gdal_env(), rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            rio_copy(
                source,
                str(dst),
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=BLOCK_SIZE,
                OVERVIEWS=made,
                RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
            )
    finally:
        for path in (src, *(overviews or {}).values(), *([source] if overviews else [])):
            Path(path).unlink(missing_ok=True)


def _vrt_with_overviews(src: str | os.PathLike[str], overviews: dict[int, Path]) -> str:
    """A VRT of one-band uint8 ``src`` (nodata, colours, description kept) with ``overviews`` as its own."""
    with gdal_env(), rasterio.open(src) as ds:
        if ds.count != 1 or ds.dtypes[0] != "uint8":
            raise ValueError(f"{src}: overviews are made here for one-band uint8 rasters only")
        try:
            colours = ds.colormap(1)
        except ValueError:
            colours = {}
        desc = ds.descriptions[0] or ""
        gt = ", ".join(repr(v) for v in ds.transform.to_gdal())
        nodata = "" if ds.nodata is None else f"<NoDataValue>{ds.nodata:g}</NoDataValue>"
        table = "".join(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>' for _, (r, g, b, a) in sorted(colours.items()))
        interp = f"<ColorInterp>Palette</ColorInterp><ColorTable>{table}</ColorTable>" if colours else ""
        levels = "".join(
            f"<Overview><SourceFilename relativeToVRT=\"0\">{escape(str(p))}</SourceFilename>"
            "<SourceBand>1</SourceBand></Overview>" for _, p in sorted(overviews.items())
        )
        return (
            f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">'
            f"<SRS>{escape(ds.crs.to_wkt())}</SRS><GeoTransform>{gt}</GeoTransform>"
            f'<VRTRasterBand dataType="Byte" band="1"><Description>{escape(desc)}</Description>{nodata}{interp}'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(src))}</SourceFilename>'
            f"<SourceBand>1</SourceBand></SimpleSource>{levels}</VRTRasterBand></VRTDataset>"
        )


def hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


def probability_to_uint8(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` probabilities in [0, 1] to uint8 0..254 (scale 1/254), 255 where invalid."""
    out = np.rint(probs * 254.0).astype(np.uint8)
    out[:, ~valid] = 255
    return out
