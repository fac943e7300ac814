"""Quicklooks of output rasters for the HTML report: decimated, warped to Web Mercator, PNG.

A raster is never read at full size: it is read at most :data:`MAX_SIDE` pixels on
its long side (``out_shape``, so GDAL answers from the COG's overviews), warped to
EPSG:3857 (the CRS Leaflet draws in) and encoded as a palette PNG. Leaflet places
the image between its EPSG:4326 corners, which is exact because Web Mercator maps
longitude to x and latitude to y independently.

Two kinds are drawn:

* ``categorical``: one uint8 band with a colour table (``<stem>.classes.tif``,
  ``<stem>.stress.tif``). Nodata and background values are transparent.
* ``continuous``: one band of any other type (``<stem>.ndvi.tif``, float32, nodata
  NaN), stretched between its 2nd and 98th percentiles on a red-yellow-green ramp.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from affine import Affine

from geovision.errors import RasterReadError

if TYPE_CHECKING:
    from rasterio.crs import CRS

__all__ = ["MAX_SIDE", "RDYLGN", "LegendEntry", "Quicklook", "quicklook", "ramp_palette"]

MAX_SIDE = 1600
"""Longest side of a quicklook in pixels (before and after warping)."""

RDYLGN: tuple[str, ...] = (
    "#a50026", "#d73027", "#f46d43", "#fdae61", "#fee08b", "#ffffbf",
    "#d9ef8b", "#a6d96a", "#66bd63", "#1a9850", "#006837",
)
"""ColorBrewer's 11-class red-yellow-green ramp, low to high."""

_WEB_MERCATOR_MAX_LAT = 85.0511

Kind = Literal["categorical", "continuous"]


@dataclass(frozen=True)
class LegendEntry:
    """One swatch of a categorical raster's legend: pixel ``value``, its name and colour ``#rrggbb``."""

    value: int
    name: str
    color: str


@dataclass
class Quicklook:
    """A drawable raster: a PNG and where it goes.

    Attributes:
        path: the raster.
        kind: ``categorical`` or ``continuous``.
        png: the PNG bytes (EPSG:3857 pixels, transparent where there is no data).
        bounds_lonlat: ``(west, south, east, north)`` of the PNG in degrees (EPSG:4326).
        size: ``(rows, cols)`` of the PNG.
        source_size: ``(rows, cols)`` of the raster on disk.
        entries: categorical: the values present, with names and colours.
        value_range: continuous: the values at the two ends of the ramp.
        band_name: the band description, if any (e.g. ``ndvi``).
    """

    path: Path
    kind: Kind
    png: bytes
    bounds_lonlat: tuple[float, float, float, float]
    size: tuple[int, int]
    source_size: tuple[int, int]
    entries: list[LegendEntry] = field(default_factory=list)
    value_range: tuple[float, float] | None = None
    band_name: str | None = None

    def data_uri(self) -> str:
        """The PNG as a ``data:image/png;base64,...`` URI."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _hex(rgb: tuple[int, ...]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def ramp_palette(n: int, stops: tuple[str, ...] = RDYLGN) -> np.ndarray:
    """``(n, 3)`` uint8 colours evenly interpolated along ``stops`` (low to high)."""
    anchors = np.array([_rgb(s) for s in stops], dtype=np.float64)
    x = np.linspace(0.0, 1.0, len(stops))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def _png(index: np.ndarray, palette: np.ndarray, alpha: np.ndarray) -> bytes:
    """A palette PNG from ``(rows, cols)`` uint8 indices into ``(k, 3)`` colours with ``(k,)`` alphas."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(index, dtype=np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    img.putpalette(flat.reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True, transparency=bytes(alpha.astype(np.uint8).tolist()))
    return buf.getvalue()


def _decimated_shape(rows: int, cols: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def quicklook(path: str | os.PathLike[str], *, names: Mapping[int, str] | None = None,
              hidden: frozenset[int] = frozenset(), max_side: int = MAX_SIDE) -> Quicklook | None:
    """Read ``path`` decimated and turn it into a :class:`Quicklook`.

    Args:
        path: a single-band raster with a CRS.
        names: class names by pixel value, for the legend of a categorical raster.
        hidden: pixel values drawn transparent (the background class).
        max_side: longest side of the read and of the PNG, in pixels.

    Returns:
        The quicklook, or ``None`` when the raster holds no valid pixel.

    Raises:
        RasterReadError: the raster cannot be read, has no CRS, or has more than one band
            (the message says which).
    """
    import rasterio
    from rasterio.enums import Resampling

    path = Path(path)
    names = dict(names or {})
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise RasterReadError(f"{path}: the raster has no CRS, so it cannot be placed on the map.")
            if ds.count != 1:
                raise RasterReadError(
                    f"{path}: {ds.count} bands; the report draws single-band rasters only "
                    "(class, stress and index rasters)."
                )
            colormap = None
            if ds.dtypes[0] == "uint8":
                try:
                    colormap = ds.colormap(1)
                except ValueError:  # no colour table
                    colormap = None
            kind: Kind = "categorical" if colormap else "continuous"
            shape = _decimated_shape(ds.height, ds.width, max_side)
            scale_x, scale_y = ds.width / shape[1], ds.height / shape[0]
            resampling = Resampling.nearest if kind == "categorical" else Resampling.average
            data = ds.read(1, out_shape=shape, resampling=resampling, masked=True)
            src_transform = ds.transform @ Affine.scale(scale_x, scale_y)
            src_crs, source_size = ds.crs, (ds.height, ds.width)
            band_name = ds.descriptions[0] if ds.descriptions and ds.descriptions[0] else None
    except rasterio.errors.RasterioError as exc:
        raise RasterReadError(f"{path}: cannot read the raster ({exc}); is it complete?") from exc

    if kind == "categorical":
        assert colormap is not None
        values = np.where(np.ma.getmaskarray(data), -1, np.asarray(data, dtype=np.int16)).astype(np.int16)
        return _categorical(path, values, colormap, names, hidden, src_transform, src_crs, source_size,
                            max_side, band_name)
    values = np.ma.filled(data.astype(np.float32), np.nan)
    if band_name is None and path.name.count(".") >= 2:  # <stem>.ndvi.tif -> ndvi
        band_name = path.name.split(".")[-2]
    return _continuous(path, values, src_transform, src_crs, source_size, max_side, band_name)


def _warp(values: np.ndarray, transform: Affine, crs: CRS, nodata: float, categorical: bool,
          max_side: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """``values`` warped to EPSG:3857 (at most ``max_side`` px) and the result's lon/lat bounds."""
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import array_bounds
    from rasterio.warp import calculate_default_transform, reproject, transform_bounds

    rows, cols = values.shape
    west, south, east, north = array_bounds(rows, cols, transform)
    _, lat_s, _, lat_n = transform_bounds(crs, "EPSG:4326", west, south, east, north)
    if lat_s < -_WEB_MERCATOR_MAX_LAT or lat_n > _WEB_MERCATOR_MAX_LAT:
        raise RasterReadError("the raster reaches beyond ±85° latitude, which Web Mercator cannot draw.")
    mercator = CRS.from_epsg(3857)
    dst_transform, width, height = calculate_default_transform(crs, mercator, cols, rows, west, south, east, north)
    if max(width, height) > max_side:
        height, width = _decimated_shape(height, width, max_side)
        dst_transform, width, height = calculate_default_transform(
            crs, mercator, cols, rows, west, south, east, north, dst_width=width, dst_height=height)
    out = np.full((height, width), nodata, dtype=values.dtype)
    reproject(values, out, src_transform=transform, src_crs=crs, dst_transform=dst_transform, dst_crs=mercator,
              src_nodata=nodata, dst_nodata=nodata,
              resampling=Resampling.nearest if categorical else Resampling.bilinear)
    mx_w, mx_s, mx_e, mx_n = array_bounds(height, width, dst_transform)
    bounds = transform_bounds(mercator, "EPSG:4326", mx_w, mx_s, mx_e, mx_n)
    return out, (float(bounds[0]), float(bounds[1]), float(bounds[2]), float(bounds[3]))


def _categorical(path: Path, values: np.ndarray, colormap: Mapping[int, tuple[int, ...]],
                 names: Mapping[int, str], hidden: frozenset[int], transform: Affine, crs: CRS,
                 source_size: tuple[int, int], max_side: int, band_name: str | None) -> Quicklook | None:
    try:
        warped, bounds = _warp(values, transform, crs, -1, True, max_side)
    except RasterReadError as exc:
        raise RasterReadError(f"{path}: {exc}") from None
    present = [int(v) for v in np.unique(warped) if v >= 0]
    if not present:
        return None
    # compact palette: present values -> 0..k-1, index k transparent
    lut = np.full(257, len(present), dtype=np.uint8)  # lut[value + 1]
    palette = np.zeros((len(present) + 1, 3), dtype=np.uint8)
    alpha = np.zeros(len(present) + 1, dtype=np.uint8)
    entries: list[LegendEntry] = []
    for i, v in enumerate(present):
        rgba = tuple(colormap.get(v, (0, 0, 0, 255)))
        lut[v + 1] = i
        palette[i] = rgba[:3]
        alpha[i] = 0 if v in hidden else (rgba[3] if len(rgba) > 3 else 255)
        if v not in hidden:
            entries.append(LegendEntry(v, names.get(v, f"value {v}"), _hex(rgba)))
    index = lut[warped.astype(np.int32) + 1]
    return Quicklook(path, "categorical", _png(index, palette, alpha), bounds, warped.shape, source_size,
                     entries=entries, band_name=band_name)


def _continuous(path: Path, values: np.ndarray, transform: Affine, crs: CRS, source_size: tuple[int, int],
                max_side: int, band_name: str | None) -> Quicklook | None:
    values = values.astype(np.float32)
    values[~np.isfinite(values)] = np.nan
    try:
        warped, bounds = _warp(values, transform, crs, float("nan"), False, max_side)
    except RasterReadError as exc:
        raise RasterReadError(f"{path}: {exc}") from None
    finite = np.isfinite(warped)
    if not finite.any():
        return None
    low, high = (float(v) for v in np.percentile(warped[finite], [2, 98]))
    if not high > low:
        low, high = low - 0.5, high + 0.5
    steps = 254
    scaled = np.zeros(warped.shape, dtype=np.float64)
    np.divide(warped - low, high - low, out=scaled, where=finite)
    index = np.clip(np.floor(scaled * steps), 0, steps - 1).astype(np.uint8)
    index[~finite] = steps
    palette = np.concatenate([ramp_palette(steps), np.zeros((1, 3), dtype=np.uint8)])
    alpha = np.full(steps + 1, 255, dtype=np.uint8)
    alpha[steps] = 0
    value_range = (_round_sig(low), _round_sig(high))
    return Quicklook(path, "continuous", _png(index, palette, alpha), bounds, warped.shape, source_size,
                     value_range=value_range, band_name=band_name)


def _round_sig(value: float, digits: int = 4) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))
