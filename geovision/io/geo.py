"""True ground measures (m², m) of geometries and pixels in any CRS.

Two methods, chosen from the CRS by :func:`area_method`:

* ``"planar"`` — projected CRSs that keep distances nearly true (UTM, national
  grids, conic/azimuthal projections...). Areas and lengths are measured in the
  projection's plane and converted to metres with the CRS's linear unit, so
  feet-based CRSs work. In UTM the scale error is below 0.1 % (at most 0.04 %
  in area at the central meridian, about 0.1 % at the zone edges), well below
  what a segmentation can resolve.
* ``"geodesic"`` — geographic CRSs (degrees) and Mercator-family projections
  (Web Mercator, EPSG:3857, and friends), whose scale grows with latitude
  (+36 % in length at 45°). Coordinates are taken to WGS84 lon/lat and measured
  on the WGS84 ellipsoid: areas in a Lambert azimuthal equal-area projection of
  the ellipsoid, perimeters as geodesic edge lengths (:class:`pyproj.Geod`,
  Karney's algorithm).

In the geodesic method the transformed vertices are joined by geodesics (for
perimeters) or by straight lines in the equal-area plane (for areas), so a
polygon with very long straight edges in the projection is measured slightly
differently from its planar shape; for pixel-sized edges the difference is
negligible. Geometries crossing the antimeridian are not handled.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyproj
import shapely
from affine import Affine

from geovision.errors import NoCRSError

__all__ = ["area_method", "as_pyproj_crs", "distances_m", "ground_pixel_size_m", "linear_unit_m", "measure",
           "measure_rings", "window_bounds"]

AreaMethod = Literal["planar", "geodesic"]

_GEOD = pyproj.Geod(ellps="WGS84")


def as_pyproj_crs(crs: Any) -> pyproj.CRS:
    """Normalise a CRS given as rasterio ``CRS``, pyproj ``CRS``, ``"EPSG:32631"``, WKT or EPSG int.

    Raises:
        NoCRSError: ``crs`` is ``None`` or empty.
    """
    if crs is None or (isinstance(crs, str) and not crs.strip()):
        raise NoCRSError("No CRS was given; geovision needs a CRS to measure in metres (e.g. 'EPSG:32631').")
    if isinstance(crs, pyproj.CRS):
        return crs
    if hasattr(crs, "to_wkt"):  # rasterio.crs.CRS and similar
        wkt = crs.to_wkt()
        if not wkt:
            raise NoCRSError(f"The CRS {crs!r} is empty; give the raster a CRS (e.g. 'EPSG:32631').")
        return pyproj.CRS.from_wkt(wkt)
    return pyproj.CRS.from_user_input(crs)


def _horizontal(crs: pyproj.CRS) -> pyproj.CRS:
    """The horizontal part of a compound or bound CRS (the CRS itself otherwise)."""
    if crs.is_bound and crs.source_crs is not None:
        crs = crs.source_crs
    if crs.is_compound and crs.sub_crs_list:
        crs = _horizontal(crs.sub_crs_list[0])
    return crs


@lru_cache(maxsize=64)
def _method_and_unit(crs: pyproj.CRS) -> tuple[AreaMethod, float]:
    """``(area method, metres per CRS linear unit)``; the unit is 1.0 for geodesic CRSs."""
    horizontal = _horizontal(crs)
    if horizontal.is_geographic:
        return "geodesic", 1.0
    operation = horizontal.coordinate_operation
    method_name = operation.method_name if operation is not None else ""
    if "Mercator" in method_name and "Transverse" not in method_name:
        return "geodesic", 1.0
    axes = horizontal.axis_info
    unit = axes[0].unit_conversion_factor if axes else 1.0  # no axes: assume metres
    return "planar", float(unit)


@lru_cache(maxsize=64)
def _to_lonlat(crs: pyproj.CRS) -> pyproj.Transformer:
    """Transformer from ``crs`` to WGS84 ``(lon, lat)`` in degrees (x/y order on both sides)."""
    return pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def area_method(crs: Any) -> AreaMethod:
    """How areas are measured in ``crs``: ``"geodesic"`` or ``"planar"``.

    ``"geodesic"`` for geographic CRSs and Mercator-family projections (the
    projection method's name contains "Mercator" but not "Transverse", for
    example EPSG:3857 and EPSG:3395; note that this includes Hotine Oblique
    Mercator grids such as the Swiss EPSG:2056, for which geodesic measures are
    exact too, just slower). ``"planar"`` for every other projected CRS (UTM,
    national grids...).

    Args:
        crs: rasterio ``CRS``, pyproj ``CRS`` or anything :meth:`pyproj.CRS.from_user_input` takes.
    """
    return _method_and_unit(as_pyproj_crs(crs))[0]


def linear_unit_m(crs: Any) -> float:
    """Metres per linear unit of a projected ``crs`` (0.3048006... for US survey feet).

    Geodesic CRSs (see :func:`area_method`) return 1.0: their measures never use the unit.
    """
    return _method_and_unit(as_pyproj_crs(crs))[1]


def measure(geoms: np.ndarray | Sequence[shapely.Geometry | None], crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ground area and perimeter of (Multi)Polygons given in ``crs``.

    Planar CRSs: shapely's area and length in the projection times the linear
    unit factor (squared for areas). Geodesic CRSs: vertices are transformed to
    WGS84 lon/lat and each ring is measured on the WGS84 ellipsoid; hole areas
    are subtracted and hole boundaries count in the perimeter, as in the planar
    case. ``None`` and empty geometries measure 0.

    Args:
        geoms: ``(N,)`` geometries in ``crs`` coordinates.
        crs: the CRS of ``geoms``.

    Returns:
        ``(area_m2, perimeter_m)``, two ``(N,)`` float64 arrays in m² and m.
    """
    pcrs = as_pyproj_crs(crs)
    method, unit = _method_and_unit(pcrs)
    geoms = np.asarray(geoms, dtype=object).reshape(-1)
    if geoms.size == 0:
        return np.zeros(0), np.zeros(0)
    match method:
        case "planar":
            area = np.nan_to_num(shapely.area(geoms), nan=0.0) * unit**2
            perimeter = np.nan_to_num(shapely.length(geoms), nan=0.0) * unit
        case "geodesic":
            area, perimeter = _measure_geodesic(geoms, pcrs)
    return area.astype(np.float64), perimeter.astype(np.float64)


def measure_rings(coords: np.ndarray, ring_offsets: np.ndarray, polygon_offsets: np.ndarray,
                  crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`measure` of Polygons given as flat arrays (shapely's ragged layout).

    Args:
        coords: ``(M, 2)`` vertices in ``crs``; every ring closed.
        ring_offsets: ``(R + 1,)`` ring ``i`` is ``coords[ring_offsets[i]:ring_offsets[i + 1]]``.
        polygon_offsets: ``(P + 1,)`` polygon ``j`` is rings ``polygon_offsets[j]:polygon_offsets[j + 1]``,
            its exterior first.
        crs: the CRS of ``coords``.

    Returns:
        ``(area_m2, perimeter_m)``, two ``(P,)`` float64 arrays in m² and m.
    """
    pcrs = as_pyproj_crs(crs)
    method, unit = _method_and_unit(pcrs)
    n = len(polygon_offsets) - 1
    if n == 0:
        return np.zeros(0), np.zeros(0)
    coord_ring = np.repeat(np.arange(len(ring_offsets) - 1), np.diff(ring_offsets))
    exterior = np.zeros(len(ring_offsets) - 1, dtype=bool)
    exterior[polygon_offsets[:-1]] = True
    ring_owner = np.repeat(np.arange(n), np.diff(polygon_offsets))
    x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    if method == "geodesic":
        return _measure_rings_geodesic(x, y, coord_ring, exterior, ring_owner, n, pcrs)
    a = np.flatnonzero(coord_ring[:-1] == coord_ring[1:])  # consecutive vertices of one ring: an edge
    length = np.hypot(x[a + 1] - x[a], y[a + 1] - y[a])
    area = _shoelace_areas(x, y, coord_ring, exterior, ring_owner, n)
    perimeter = np.bincount(ring_owner[coord_ring[a]], weights=length, minlength=n)
    return area * unit**2, perimeter * unit


def _shoelace_areas(x: np.ndarray, y: np.ndarray, coord_ring: np.ndarray, exterior: np.ndarray,
                    ring_owner: np.ndarray, n: int) -> np.ndarray:
    """Plane area of each of ``n`` shapes: its exterior rings' shoelace areas less its holes'.

    Args:
        x: ``(M,)`` vertex x of closed rings, ring after ring.
        y: ``(M,)`` vertex y.
        coord_ring: ``(M,)`` each vertex's ring.
        exterior: ``(R,)`` whether each ring is an exterior (else a hole).
        ring_owner: ``(R,)`` the shape each ring belongs to.
        n: the number of shapes.
    """
    a = np.flatnonzero(coord_ring[:-1] == coord_ring[1:])  # consecutive vertices of one ring: an edge
    b = a + 1
    # from each ring's first vertex: small numbers, no cancellation with UTM's millions of metres
    first = np.flatnonzero(np.r_[True, coord_ring[1:] != coord_ring[:-1]])
    x, y = x - x[first][coord_ring], y - y[first][coord_ring]
    doubled = np.bincount(coord_ring[a], weights=x[a] * y[b] - x[b] * y[a], minlength=len(exterior))
    ring_area = np.where(exterior, 0.5, -0.5) * np.abs(doubled)
    return np.maximum(np.bincount(ring_owner, weights=ring_area, minlength=n), 0.0)


def _measure_geodesic(geoms: np.ndarray, crs: pyproj.CRS) -> tuple[np.ndarray, np.ndarray]:
    """Ground ``(area_m2, perimeter_m)`` of ``(N,)`` geometries in ``crs``, on the WGS84 ellipsoid.

    Their rings' vertices, measured by :func:`_measure_rings_geodesic`.
    """
    n = len(geoms)
    if (shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON).all():
        parts, part_owner = geoms, np.arange(n)  # the usual case, without get_parts' copies
    else:
        parts, part_owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    if len(rings) == 0:
        return np.zeros(n), np.zeros(n)
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    exterior = np.r_[True, ring_part[1:] != ring_part[:-1]]  # each part's rings: the exterior, then its holes
    return _measure_rings_geodesic(coords[:, 0], coords[:, 1], coord_ring, exterior, part_owner[ring_part], n, crs)


def _measure_rings_geodesic(x: np.ndarray, y: np.ndarray, coord_ring: np.ndarray, exterior: np.ndarray,
                            ring_owner: np.ndarray, n: int, crs: pyproj.CRS) -> tuple[np.ndarray, np.ndarray]:
    """Ground ``(area_m2, perimeter_m)`` of ``n`` shapes from their closed rings' vertices ``(x, y)`` in ``crs``.

    ``coord_ring`` gives each vertex's ring (rings contiguous), ``exterior`` whether a
    ring is an exterior (else a hole), ``ring_owner`` the shape each ring belongs to.
    All at once, with no Python call per ring (the per-ring ``Geod.polygon_area_perimeter``
    loop cost about 15 µs a ring, which made it the largest per-polygon cost of
    vectorising a Web Mercator raster):

    * area: each ring goes to a Lambert azimuthal equal-area projection of the WGS84
      ellipsoid centred within a degree of it (:func:`_equal_area`), where plane areas
      are ground areas; each part is its exterior ring's shoelace area less its holes';
    * perimeter: the geodesic length of every edge (:func:`_edge_lengths`).

    Both join the vertices as :class:`pyproj.Geod` does, up to the curvature of an edge
    between its ends (1e-9 of the area for pixel-sized edges, 5e-5 for a 150 km square).
    """
    n_rings = len(exterior)
    lon, lat = _to_lonlat(crs).transform(x, y)
    edge = coord_ring[:-1] == coord_ring[1:]  # consecutive vertices of one ring
    ring_of_edge = coord_ring[:-1][edge]
    a = np.flatnonzero(edge)
    b = a + 1
    length = _edge_lengths(lon[a], lat[a], lon[b], lat[b])
    # each ring in the equal-area plane centred on the whole degree nearest its first vertex
    first = np.flatnonzero(np.r_[True, coord_ring[1:] != coord_ring[:-1]])
    key = (np.round(lon[first]).astype(np.int64) + 180) * 181 + np.round(lat[first]).astype(np.int64) + 90
    keys, group = (key[:1], None) if (key == key[0]).all() else np.unique(key, return_inverse=True)
    ex, ey = np.empty_like(lon), np.empty_like(lat)
    for g, k in enumerate(keys.tolist()):
        at = slice(None) if group is None else (group == g)[coord_ring]
        ex[at], ey[at] = _equal_area(k // 181 - 180, k % 181 - 90).transform(lon[at], lat[at])
    area = _shoelace_areas(ex, ey, coord_ring, exterior, ring_owner, n)
    perimeter = np.bincount(ring_owner, weights=np.bincount(ring_of_edge, weights=length, minlength=n_rings),
                            minlength=n)
    return area, perimeter


#: edges up to this long (m) are measured with the ellipsoid's metric at their middle
_SHORT_EDGE_M = 1_000.0


def _edge_lengths(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray) -> np.ndarray:
    """Geodesic lengths (m) on the WGS84 ellipsoid between lon/lat points, pairwise.

    Edges of up to :data:`_SHORT_EDGE_M` use the ellipsoid's metric at their middle
    latitude (``ds² = (M dφ)² + (N cos φ dλ)²``; within 4e-8 of Karney's geodesic, against
    pyproj's 0.75 µs an edge), longer ones :meth:`pyproj.Geod.inv`.
    """
    phi = np.radians((lat1 + lat2) / 2)
    a, e2 = _GEOD.a, _GEOD.es  # WGS84 semi-major axis (m) and squared eccentricity
    w = np.sqrt(1 - e2 * np.sin(phi) ** 2)
    north = a * (1 - e2) / w**3 * np.radians(lat2 - lat1)
    east = a / w * np.cos(phi) * np.radians((lon2 - lon1 + 180) % 360 - 180)
    length = np.hypot(north, east)
    far = np.flatnonzero(length > _SHORT_EDGE_M)
    if len(far):
        length[far] = _GEOD.inv(lon1[far], lat1[far], lon2[far], lat2[far])[2]
    return length


@lru_cache(maxsize=64)
def _equal_area(lon0: int, lat0: int) -> pyproj.Transformer:
    """WGS84 lon/lat to a Lambert azimuthal equal-area plane of the WGS84 ellipsoid centred on ``(lon0, lat0)``.

    Areas there are ground areas wherever the centre is; the centre only decides where
    shapes are least bent, so whole degrees near the rings do, and few transformers serve a
    raster.
    """
    return pyproj.Transformer.from_crs(
        "EPSG:4326", pyproj.CRS.from_proj4(f"+proj=laea +lat_0={lat0} +lon_0={lon0} +ellps=WGS84 +units=m"),
        always_xy=True,
    )


def distances_m(start: np.ndarray, end: np.ndarray, crs: Any) -> np.ndarray:
    """Ground distance in metres between pairs of points given in ``crs``.

    Geodesic distances on the WGS84 ellipsoid for geodesic CRSs (see
    :func:`area_method`), planar lengths times the unit factor otherwise.

    Args:
        start: ``(N, 2)`` ``(x, y)`` in ``crs``.
        end: ``(N, 2)`` ``(x, y)`` in ``crs``.

    Returns:
        ``(N,)`` float64 metres.
    """
    start, end = np.asarray(start, dtype=np.float64).reshape(-1, 2), np.asarray(end, dtype=np.float64).reshape(-1, 2)
    if len(start) == 0:
        return np.zeros(0)
    pcrs = as_pyproj_crs(crs)
    method, unit = _method_and_unit(pcrs)
    if method == "planar":
        return np.hypot(*(end - start).T) * unit
    to_lonlat = _to_lonlat(pcrs)
    lon0, lat0 = to_lonlat.transform(start[:, 0], start[:, 1])
    lon1, lat1 = to_lonlat.transform(end[:, 0], end[:, 1])
    _, _, dist = _GEOD.inv(lon0, lat0, lon1, lat1)
    return np.asarray(dist, dtype=np.float64)


def window_bounds(transform: Affine, window: Any) -> tuple[float, float, float, float]:
    """``(minx, miny, maxx, maxy)`` of a pixel window in the raster's CRS."""
    cols = np.array([window.col_off, window.col_end, window.col_off, window.col_end], dtype=np.float64)
    rows = np.array([window.row_off, window.row_off, window.row_end, window.row_end], dtype=np.float64)
    xs = transform.a * cols + transform.b * rows + transform.c
    ys = transform.d * cols + transform.e * rows + transform.f
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def ground_pixel_size_m(transform: Affine, crs: Any, height: int, width: int) -> tuple[float, float]:
    """Ground size of one pixel at the centre of a ``height × width`` raster.

    Args:
        transform: the raster's affine transform (pixel ``(col, row)`` to CRS ``(x, y)``).
        crs: the raster's CRS.
        height: raster rows (pixels).
        width: raster columns (pixels).

    Returns:
        ``(x_size_m, y_size_m)``: the ground length in metres of one pixel step
        along a row and along a column. Geodesic distances for geodesic CRSs
        (see :func:`area_method`), planar lengths times the unit factor otherwise.
    """
    pcrs = as_pyproj_crs(crs)
    method, unit = _method_and_unit(pcrs)
    match method:
        case "planar":
            x_size = float(np.hypot(transform.a, transform.d)) * unit
            y_size = float(np.hypot(transform.b, transform.e)) * unit
            return x_size, y_size
        case "geodesic":
            col, row = width / 2.0, height / 2.0
            # One pixel step along the row and along the column, centred on the raster's centre.
            px = np.array([col - 0.5, col + 0.5, col, col])
            py = np.array([row, row, row - 0.5, row + 0.5])
            x = transform.a * px + transform.b * py + transform.c
            y = transform.d * px + transform.e * py + transform.f
            lon, lat = _to_lonlat(pcrs).transform(x, y)
            _, _, dist = _GEOD.inv(lon[[0, 2]], lat[[0, 2]], lon[[1, 3]], lat[[1, 3]])
            return float(dist[0]), float(dist[1])
