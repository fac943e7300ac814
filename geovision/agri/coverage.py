"""How much of each pixel a polygon covers, and how many square metres a pixel is.

Per-field statistics must count a pixel on a field's edge by the share of it that
lies inside the field: at 10 m Sentinel-2 pixels a 1 ha field has about 40 edge
pixels out of 100, so a centre-in-polygon rule moves its area by tens of percent.

:func:`coverage_fractions` is exactextract's exact coverage on the block in memory
(``NumPyRasterSource``), one call per field and block as ``stress.py`` makes them.
exactextract only knows north-up grids, so the polygon is first mapped into pixel
space, where pixel ``(row, col)`` is the unit square ``[col, col+1] x [-row-1, -row]``:
an affine map keeps ratios of areas, so the fractions are those of the original grid,
rotated or not. It is exactextract rather than our own code because it gives the same
fractions about 15x faster (docs/performance.md).

:func:`pixel_areas_m2` gives the true ground area of each pixel row: constant in
projected CRSs (planar; UTM is within 0.1%), varying with latitude in geographic
and Web Mercator rasters, where it is the geodesic area of the pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
import shapely.affinity
from affine import Affine

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
        geom: a (Multi)Polygon in the grid's CRS (the polygons of a GeometryCollection;
            lines and points cover nothing).
        transform: the grid's affine transform (pixel ``(col, row)`` to CRS ``(x, y)``),
            rotation included.
        shape: ``(rows, cols)``.

    Returns:
        ``(rows, cols)`` float32: 1 inside, 0 outside, the exact covered share on the edge.
    """
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    rows, cols = shape
    frac = np.zeros(shape, np.float32)
    geom = _polygonal(geom)
    if geom is None or frac.size == 0:
        return frac
    inv = ~transform
    # (x, y) -> (col, -row): exactextract's grids are north-up, so the grid becomes the unit one
    pixel_space = shapely.affinity.affine_transform(geom, [inv.a, inv.b, -inv.d, -inv.e, inv.c, -inv.f])
    # coverage never reads the values; a broadcast zero stands in for them without allocating
    values = np.broadcast_to(np.zeros((1, 1), np.uint8), shape)
    raster = NumPyRasterSource(values, 0.0, -float(rows), float(cols), 0.0)
    feature = {"type": "Feature", "properties": {}, "geometry": pixel_space.__geo_interface__}
    found = exact_extract(raster, [feature], ["cell_id", "coverage"])[0]["properties"]
    frac.ravel()[found["cell_id"]] = np.clip(found["coverage"], 0.0, 1.0)
    return frac


def _polygonal(geom: shapely.Geometry | None) -> shapely.Geometry | None:
    """``geom`` if it is a non-empty (Multi)Polygon, its polygons if a collection, else None."""
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    return shapely.union_all(parts) if parts else None


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
        planar = abs(transform.a * transform.e - transform.b * transform.d) * unit**2
        return np.full((rows, 1), planar, dtype=np.float64)
    pixels = _pixel_polygons(transform, np.arange(rows), np.zeros(rows, dtype=np.int64))
    area, _ = measure(pixels, crs)
    return area.reshape(rows, 1)
