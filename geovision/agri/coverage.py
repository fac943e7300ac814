"""How much of each pixel a polygon covers, and how many square metres a pixel is.

Per-field statistics must count a pixel on a field's edge by the share of it that
lies inside the field: at 10 m Sentinel-2 pixels a 1 ha field has about 40 edge
pixels out of 100, so a centre-in-polygon rule moves its area by tens of percent.

:func:`coverage_fractions` is exact (to float64 rounding). It is our own because it
has to run per block inside the streaming engine, on windows the Dask reader has
already read, for fields in any CRS: exactextract (the reference library for this)
reads the raster itself, feature by feature, so it cannot consume our blocks.
The method:

* a pixel the polygon's boundary does not touch is either wholly inside or wholly
  outside, so GDAL's centre rule (``rasterize``, ``all_touched=False``) is exact for it;
* pixels the boundary touches are found by rasterising the boundary with
  ``all_touched=True`` and growing that mask by one pixel (so a boundary that only
  grazes a corner is not missed), and for each of them the covered share is the
  area of ``pixel ∩ polygon`` over the pixel's area, computed by shapely.

:func:`pixel_areas_m2` gives the true ground area of each pixel row: constant in
projected CRSs (planar; UTM is within 0.1%), varying with latitude in geographic
and Web Mercator rasters, where it is the geodesic area of the pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage

from geovision.io.geo import area_method, linear_unit_m, measure
from geovision.types import Window

__all__ = ["coverage_fractions", "pixel_areas_m2", "window_transform"]


def window_transform(transform: Affine, window: Window) -> Affine:
    """The affine transform of ``window``'s pixel ``(0, 0)``."""
    return transform @ Affine.translation(window.col_off, window.row_off)


def _pixel_polygons(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixel ``(row, col)`` footprints as shapely polygons (any affine, rotation included)."""
    corners_c = np.stack([cols, cols + 1, cols + 1, cols, cols], axis=1).astype(np.float64)
    corners_r = np.stack([rows, rows, rows + 1, rows + 1, rows], axis=1).astype(np.float64)
    x = transform.a * corners_c + transform.b * corners_r + transform.c
    y = transform.d * corners_c + transform.e * corners_r + transform.f
    return shapely.polygons(np.stack([x, y], axis=-1))


def coverage_fractions(geom: shapely.Geometry, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Share of each pixel of a ``shape`` grid covered by ``geom``, in [0, 1].

    Args:
        geom: a (Multi)Polygon in the grid's CRS.
        transform: the grid's affine transform (pixel ``(col, row)`` to CRS ``(x, y)``).
        shape: ``(rows, cols)``.

    Returns:
        ``(rows, cols)`` float32: 1 inside, 0 outside, the exact covered share on the edge.
    """
    from rasterio.features import rasterize

    if geom is None or geom.is_empty:
        return np.zeros(shape, np.float32)
    inside = rasterize([(geom, 1)], out_shape=shape, transform=transform, all_touched=False, dtype="uint8")
    edge = rasterize([(geom.boundary, 1)], out_shape=shape, transform=transform, all_touched=True, dtype="uint8")
    edge = ndimage.binary_dilation(edge.astype(bool), structure=np.ones((3, 3), bool))
    frac = inside.astype(np.float32)
    r, c = np.nonzero(edge)
    if r.size:
        pixels = _pixel_polygons(transform, r, c)
        shapely.prepare(geom)
        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        share = shapely.area(shapely.intersection(pixels, geom)) / pixel_area
        frac[r, c] = np.clip(share, 0.0, 1.0).astype(np.float32)
    return frac


def pixel_areas_m2(transform: Affine, crs: Any, shape: tuple[int, int]) -> np.ndarray:
    """Ground area in m² of each pixel row of a ``shape`` grid, as a ``(rows, 1)`` float64 column.

    Planar CRSs: the pixel's area in the projection times the unit factor squared
    (the same for every row). Geodesic CRSs (geographic, Web Mercator; see
    :func:`geovision.io.geo.area_method`): the geodesic area of the row's first
    pixel, which for a north-up grid is the area of every pixel in the row.
    """
    rows = shape[0]
    if area_method(crs) == "planar":
        unit = linear_unit_m(crs)
        area = abs(transform.a * transform.e - transform.b * transform.d) * unit**2
        return np.full((rows, 1), area, dtype=np.float64)
    pixels = _pixel_polygons(transform, np.arange(rows), np.zeros(rows, dtype=np.int64))
    area, _ = measure(pixels, crs)
    return area.reshape(rows, 1)
