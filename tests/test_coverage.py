"""Exact pixel coverage (exactextract in pixel space) against shapely, pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st

from geovision.agri.coverage import coverage_fractions

PX = 10.0
X0, Y0 = 500_000.0, 5_650_000.0


def _reference(geom, transform: Affine, shape) -> np.ndarray:
    """``area(pixel ∩ geom) / area(pixel)`` for every pixel, by shapely."""
    rows, cols = np.indices(shape).reshape(2, -1)
    c = np.stack([cols, cols + 1, cols + 1, cols, cols], axis=1).astype(np.float64)
    r = np.stack([rows, rows, rows + 1, rows + 1, rows], axis=1).astype(np.float64)
    x = transform.a * c + transform.b * r + transform.c
    y = transform.d * c + transform.e * r + transform.f
    pixels = shapely.polygons(np.stack([x, y], axis=-1))
    share = shapely.area(shapely.intersection(pixels, geom)) / abs(transform.determinant)
    return share.reshape(shape)


def _field_with_hole() -> shapely.Polygon:
    outer = shapely.Point(X0 + 123.4, Y0 - 141.7).buffer(97.3, quad_segs=7)
    return outer.difference(shapely.Point(X0 + 110.0, Y0 - 150.0).buffer(31.1, quad_segs=5))


GRIDS = {
    "north-up": Affine(PX, 0, X0, 0, -PX, Y0),
    "rotated": Affine.translation(X0, Y0) @ Affine.rotation(23.0) @ Affine.scale(PX, -PX) @ Affine.translation(-5, -5),
    "south-up": Affine(PX, 0, X0, 0, PX, Y0 - 300.0),
    # Web Mercator zoom 14: a pixel size that is not a round number
    "web-mercator": Affine(9.554628535647032, 0, X0, 0, -9.554628535647032, Y0),
}


@pytest.mark.parametrize("grid", GRIDS)
def test_fractions_match_shapely_pixel_by_pixel(grid) -> None:
    transform, shape = GRIDS[grid], (30, 28)
    geom = _field_with_hole()
    frac = coverage_fractions(geom, transform, shape)
    assert frac.dtype == np.float32 and frac.shape == shape
    np.testing.assert_allclose(frac, _reference(geom, transform, shape), atol=1e-6)


def test_a_field_across_the_block_edge_counts_only_its_part_in_the_block() -> None:
    transform, shape = GRIDS["north-up"], (20, 20)
    geom = shapely.Point(X0 + 3.0, Y0 - 57.0).buffer(64.0)  # centre in pixel column 0
    frac = coverage_fractions(geom, transform, shape)
    block = shapely.box(X0, Y0 - 200.0, X0 + 200.0, Y0)
    assert frac.sum(dtype=np.float64) * PX * PX == pytest.approx(geom.intersection(block).area, rel=1e-6)


def test_multipolygons_collections_and_empty_geometries() -> None:
    transform, shape = GRIDS["north-up"], (10, 10)
    a, b = shapely.box(X0 + 3, Y0 - 33, X0 + 57, Y0 - 7), shapely.box(X0 + 63, Y0 - 87, X0 + 81.5, Y0 - 41)
    multi = coverage_fractions(shapely.MultiPolygon([a, b]), transform, shape)
    np.testing.assert_allclose(multi, _reference(shapely.MultiPolygon([a, b]), transform, shape), atol=1e-6)
    # a collection counts its polygons only: a line covers nothing
    mixed = shapely.GeometryCollection([a, b, shapely.LineString([(X0, Y0), (X0 + 100, Y0 - 100)])])
    np.testing.assert_array_equal(coverage_fractions(mixed, transform, shape), multi)
    for nothing in (None, shapely.Polygon(), shapely.LineString([(X0, Y0), (X0 + 50, Y0 - 50)])):
        frac = coverage_fractions(nothing, transform, shape)
        assert frac.shape == shape and frac.dtype == np.float32 and not frac.any()
    outside = shapely.box(X0 - 500, Y0 - 500, X0 - 400, Y0 - 400)
    assert not coverage_fractions(outside, transform, shape).any()
    everywhere = shapely.box(X0 - 1e4, Y0 - 1e4, X0 + 1e4, Y0 + 1e4)
    assert (coverage_fractions(everywhere, transform, shape) == 1).all()


@given(st.floats(0.0, 360.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(3.0, 60.0))
def test_any_affine_grid_gives_the_area(angle, dx, dy, radius) -> None:
    transform = Affine.translation(X0, Y0) @ Affine.rotation(angle) @ Affine.scale(PX, -PX) \
        @ Affine.translation(-10 + dx, -10 + dy)
    geom = shapely.Point(X0 + 3.3, Y0 - 2.1).buffer(radius, quad_segs=6)  # inside the grid's 20x20 px
    frac = coverage_fractions(geom, transform, (20, 20))
    assert frac.min() >= 0 and frac.max() <= 1
    assert frac.sum(dtype=np.float64) * PX * PX == pytest.approx(geom.area, rel=1e-6)
