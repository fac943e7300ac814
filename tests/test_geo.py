"""Ground measures in planar and geodesic CRSs (geovision.io.geo)."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import rasterio.crs
import shapely
import shapely.affinity
from affine import Affine

from geovision.errors import NoCRSError
from geovision.io.geo import area_method, ground_pixel_size_m, linear_unit_m, measure

US_FOOT_M = 1200 / 3937  # US survey foot in metres (EPSG:2263 uses it)


def reproject(geom: shapely.Geometry, src: str, dst: str) -> shapely.Geometry:
    transformer = pyproj.Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


@pytest.mark.parametrize(
    ("crs", "expected"),
    [
        ("EPSG:4326", "geodesic"),
        ("EPSG:3857", "geodesic"),
        ("EPSG:3395", "geodesic"),  # World Mercator
        ("EPSG:32631", "planar"),  # UTM
        ("EPSG:27700", "planar"),  # British National Grid (Transverse Mercator)
        ("EPSG:2263", "planar"),  # New York Long Island, US feet (Lambert conic)
        ("EPSG:32631+5773", "planar"),  # compound: UTM + EGM96 height
    ],
)
def test_area_method(crs: str, expected: str) -> None:
    assert area_method(crs) == expected


def test_area_method_accepts_rasterio_pyproj_and_int() -> None:
    assert area_method(rasterio.crs.CRS.from_epsg(3857)) == "geodesic"
    assert area_method(pyproj.CRS.from_epsg(32631)) == "planar"
    assert area_method(4326) == "geodesic"


def test_no_crs_raises() -> None:
    with pytest.raises(NoCRSError):
        area_method(None)


def test_planar_square_utm() -> None:
    square = shapely.box(500_000, 5_500_000, 500_010, 5_500_010)
    area, perimeter = measure([square], "EPSG:32631")
    assert area.dtype == np.float64 and perimeter.dtype == np.float64
    np.testing.assert_allclose(area, [100.0])
    np.testing.assert_allclose(perimeter, [40.0])


def test_planar_square_in_us_feet() -> None:
    assert linear_unit_m("EPSG:2263") == pytest.approx(US_FOOT_M)
    square = shapely.box(1_000_000, 200_000, 1_000_100, 200_100)  # 100 ft x 100 ft
    area, perimeter = measure([square], "EPSG:2263")
    np.testing.assert_allclose(area, [(100 * US_FOOT_M) ** 2])
    np.testing.assert_allclose(perimeter, [400 * US_FOOT_M])


@pytest.mark.parametrize("target", ["EPSG:4326", "EPSG:3857"])
def test_geodesic_matches_utm_within_half_percent(target: str) -> None:
    # A ~100 m square in Paris, off UTM 31N's central meridian.
    square = shapely.box(448_000, 5_411_000, 448_100, 5_411_100)
    holed = square.difference(shapely.box(448_020, 5_411_020, 448_040, 5_411_040))
    utm_area, utm_perimeter = measure([square, holed], "EPSG:32631")

    moved = [reproject(g, "EPSG:32631", target) for g in (square, holed)]
    area, perimeter = measure(moved, target)

    np.testing.assert_allclose(area, utm_area, rtol=5e-3)
    np.testing.assert_allclose(perimeter, utm_perimeter, rtol=5e-3)
    if target == "EPSG:3857":  # the plain Web Mercator area would be ~2.2x too big at 49°N
        assert shapely.area(moved[0]) > 2 * utm_area[0]


def test_geodesic_ignores_ring_orientation_and_sums_multipolygons() -> None:
    square = reproject(shapely.box(448_000, 5_411_000, 448_100, 5_411_100), "EPSG:32631", "EPSG:4326")
    clockwise = shapely.Polygon(list(square.exterior.coords)[::-1])
    other = reproject(shapely.box(449_000, 5_411_000, 449_100, 5_411_100), "EPSG:32631", "EPSG:4326")
    area, perimeter = measure([square, clockwise, shapely.MultiPolygon([square, other])], "EPSG:4326")
    assert area[0] == pytest.approx(area[1])
    assert area[2] == pytest.approx(2 * area[0], rel=1e-3)
    assert perimeter[2] == pytest.approx(2 * perimeter[0], rel=1e-3)


def _geod_polygon(geom: shapely.Geometry) -> tuple[float, float]:
    """pyproj's own geodesic area and perimeter of a lon/lat (Multi)Polygon, one ring at a time."""
    geod = pyproj.Geod(ellps="WGS84")
    area = perimeter = 0.0
    for part in shapely.get_parts(geom):
        for k, ring in enumerate(shapely.get_rings(part)):
            xy = shapely.get_coordinates(ring)
            a, p = geod.polygon_area_perimeter(xy[:, 0], xy[:, 1])
            area += abs(a) if k == 0 else -abs(a)
            perimeter += p
    return area, perimeter


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
@pytest.mark.parametrize("size_m", [0.3, 50.0, 5_000.0, 50_000.0])
def test_geodesic_measure_is_pyprojs_polygon_measure(crs: str, size_m: float) -> None:
    """Measured all at once (equal-area plane for areas, geodesic edges for perimeters), shapes with
    holes, several parts and either orientation, at latitudes from the equator to 70°, come out as
    pyproj measures each ring on the ellipsoid."""
    rng = np.random.default_rng(int(size_m * 10))
    shapes = []
    for lon, lat in [(0.0, 0.0), (32.58, 0.31), (2.35, 48.85), (-84.39, 33.75), (25.0, 70.0), (151.2, -33.9)]:
        deg = size_m / 111_000
        outer = shapely.box(lon, lat, lon + deg * rng.uniform(1, 3), lat + deg * rng.uniform(1, 3))
        hole = shapely.box(lon + deg * 0.2, lat + deg * 0.2, lon + deg * 0.6, lat + deg * 0.5)
        shapes.append(outer.difference(hole))
        shapes.append(shapely.Polygon(list(outer.exterior.coords)[::-1]))  # clockwise
        far = shapely.affinity.translate(outer, deg * 5, 0)
        shapes.append(shapely.MultiPolygon([outer.difference(hole), far]))
    expected = np.array([_geod_polygon(g) for g in shapes])
    if crs == "EPSG:3857":
        shapes = [reproject(g, "EPSG:4326", crs) for g in shapes]
    area, perimeter = measure(shapes, crs)
    rtol = 1e-6 if size_m <= 5_000 else 1e-4  # edges up to 150 km: chords in the plane, not geodesics
    np.testing.assert_allclose(area, expected[:, 0], rtol=rtol)
    np.testing.assert_allclose(perimeter, expected[:, 1], rtol=1e-7)


@pytest.mark.parametrize("crs", ["EPSG:32631", "EPSG:4326"])
def test_none_and_empty_measure_zero(crs: str) -> None:
    area, perimeter = measure(np.array([None, shapely.Polygon()], dtype=object), crs)
    np.testing.assert_array_equal(area, [0.0, 0.0])
    np.testing.assert_array_equal(perimeter, [0.0, 0.0])
    area, perimeter = measure([], crs)
    assert area.shape == (0,) and perimeter.shape == (0,)


def test_ground_pixel_size_planar() -> None:
    assert ground_pixel_size_m(Affine(0.5, 0, 500_000, 0, -0.5, 5_500_000), "EPSG:32631", 100, 100) == (0.5, 0.5)
    x_m, y_m = ground_pixel_size_m(Affine(2, 0, 1_000_000, 0, -3, 200_000), "EPSG:2263", 10, 10)
    assert x_m == pytest.approx(2 * US_FOOT_M) and y_m == pytest.approx(3 * US_FOOT_M)


def test_ground_pixel_size_web_mercator_shrinks_with_latitude() -> None:
    _, y_centre = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(2.0, 60.0)
    height = width = 100
    transform = Affine(10, 0, 222_000, 0, -10, y_centre + 10 * height / 2)  # centre at 60°N
    x_m, y_m = ground_pixel_size_m(transform, "EPSG:3857", height, width)
    assert x_m == pytest.approx(10 * np.cos(np.radians(60)), rel=5e-3)
    assert y_m == pytest.approx(10 * np.cos(np.radians(60)), rel=5e-3)


def test_ground_pixel_size_geographic() -> None:
    # 1e-5° pixels centred on the equator: ~1.113 m along the equator, ~1.106 m along the meridian.
    x_m, y_m = ground_pixel_size_m(Affine(1e-5, 0, 10.0, 0, -1e-5, 0.0005), "EPSG:4326", 100, 100)
    assert x_m == pytest.approx(1.1132, rel=1e-3)
    assert y_m == pytest.approx(1.1057, rel=1e-3)


@pytest.mark.parametrize("crs, origin, scale", [("EPSG:32631", (500_000.0, 5_600_000.0), 1.0),
                                                ("EPSG:4326", (4.4, 50.8), 1e-5),
                                                ("EPSG:3857", (490_000.0, 6_580_000.0), 1.0)])
def test_measure_rings_is_measure_of_the_same_polygons(crs: str, origin: tuple[float, float], scale: float) -> None:
    """Flat rings (the stitcher's form) measure as the shapely polygons they describe, holes included."""
    from geovision.io.geo import measure_rings
    from geovision.stitching.flat import FlatPolygons

    rng = np.random.default_rng(0)
    points = shapely.points(rng.random((200, 2)) * 1000 * scale + origin)
    rings = shapely.difference(shapely.buffer(points, 20 * scale, quad_segs=2),
                               shapely.buffer(points, 5 * scale, quad_segs=2))
    polygons = rings[shapely.get_type_id(rings) == shapely.GeometryType.POLYGON]
    assert (shapely.get_num_interior_rings(polygons) > 0).any()
    flat = FlatPolygons.from_shapely(polygons)
    area, perimeter = measure_rings(flat.coords, flat.ring_offsets, flat.polygon_offsets, crs)
    expected_area, expected_perimeter = measure(polygons, crs)
    np.testing.assert_allclose(area, expected_area, rtol=1e-9)
    np.testing.assert_allclose(perimeter, expected_perimeter, rtol=1e-9)
