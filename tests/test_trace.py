"""Pixel outlines traced in numpy (geovision.stitching.trace) against GDAL's polygonize."""

from __future__ import annotations

import numpy as np
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from geovision.stitching.trace import merge_outlines, outline_polygons


def components(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of every non-zero class, numbered across classes."""
    labels = np.zeros(classes.shape, np.int32)
    n = 0
    for c in np.unique(classes[classes > 0]):
        lab, k = ndimage.label(classes == c)
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    return labels, n


def gdal(labels: np.ndarray, n: int, row_off: int, col_off: int) -> np.ndarray:
    out = np.full(n, None, dtype=object)
    for geom, value in rasterio.features.shapes(labels, mask=labels > 0, connectivity=4,
                                                transform=Affine.translation(col_off, row_off)):
        out[int(value) - 1] = shapely.geometry.shape(geom)
    return out


@st.composite
def labelled_grids(draw: st.DrawFn, max_side: int) -> tuple[np.ndarray, int]:
    """Random class grids (1 to 3 classes, any density) as their numbered 4-connected components."""
    rng = np.random.default_rng(draw(st.integers(0, 100_000)))
    rows, cols = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    density, n_classes = draw(st.floats(0.1, 0.9)), draw(st.integers(1, 3))
    classes = np.where(rng.random((rows, cols)) < density, rng.integers(1, n_classes + 1, (rows, cols)), 0)
    return components(classes)


@settings(max_examples=200, deadline=None)
@given(grid=labelled_grids(max_side=25))
def test_same_polygons_as_gdal(grid: tuple[np.ndarray, int]) -> None:
    labels, n = grid
    got = outline_polygons(labels, n, row_off=7, col_off=3)
    expected = gdal(labels, n, 7, 3)
    assert shapely.is_valid(got).all()
    assert shapely.equals_exact(shapely.normalize(got), shapely.normalize(expected), tolerance=0).all()


def test_diagonal_touch_makes_a_hole_not_a_self_touching_ring() -> None:
    """A ring of pixels closed only through a diagonal: the pixel inside is a hole touching the shell."""
    classes = np.array([[1, 1, 1, 0],
                        [1, 0, 1, 0],
                        [1, 1, 0, 0],
                        [0, 0, 0, 0]])
    labels, n = components(classes)
    [polygon] = outline_polygons(labels, n)
    assert polygon.is_valid and len(polygon.interiors) == 1
    assert polygon.area == 7 and shapely.Polygon(polygon.interiors[0]).area == 1


def test_holes_nested_components_and_empty_labels() -> None:
    classes = np.zeros((9, 9), int)
    classes[1:8, 1:8] = 1
    classes[3:6, 3:6] = 0  # a hole ...
    classes[4, 4] = 2  # ... with an island of another class in it
    labels, n = components(classes)
    geoms = outline_polygons(labels, n + 1)  # one label more than there are: it gets None
    assert geoms[-1] is None
    ring, island = geoms[0], geoms[1]
    assert ring.area == 49 - 9 and len(ring.interiors) == 1 and island.area == 1
    assert outline_polygons(np.zeros((4, 4), int), 0).shape == (0,)


@settings(max_examples=150, deadline=None)
@given(grid=labelled_grids(max_side=40), cuts=st.tuples(st.lists(st.floats(0.05, 0.95), max_size=3),
                                                      st.lists(st.floats(0.05, 0.95), max_size=3)))
def test_pieces_cut_by_seams_merge_into_the_whole_outlines(grid: tuple[np.ndarray, int],
                                                          cuts: tuple[list[float], list[float]]) -> None:
    """Components cut into blocks by seam rows and columns, traced per block and merged, are the whole outlines."""
    labels, n = grid
    rows, cols = labels.shape
    seam_rows = sorted({int(f * rows) for f in cuts[0]} - {0})
    seam_cols = sorted({int(f * cols) for f in cuts[1]} - {0})
    pieces, group = [], []
    for r0, r1 in zip([0, *seam_rows], [*seam_rows, rows], strict=True):
        for c0, c1 in zip([0, *seam_cols], [*seam_cols, cols], strict=True):
            block = labels[r0:r1, c0:c1]
            parts, k = components(block)  # a component may fall apart within a block
            pieces += list(outline_polygons(parts, k, row_off=r0 + 5, col_off=c0 + 2))
            group += [block[parts == j + 1][0] - 1 for j in range(k)]
    whole = outline_polygons(labels, n, row_off=5, col_off=2)
    if not pieces:
        assert (whole == None).all()  # noqa: E711
        return
    present = np.unique(np.asarray(group, dtype=np.int64))
    merged = merge_outlines(np.array(pieces, dtype=object), np.searchsorted(present, group),
                            {r + 5 for r in seam_rows}, {c + 2 for c in seam_cols})
    assert shapely.is_valid(merged).all()
    assert shapely.equals_exact(shapely.normalize(merged), shapely.normalize(whole[present]), tolerance=0).all()
