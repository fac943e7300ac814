"""Block-wise vectorisation with seam merging (geovision.stitching.vectorize)."""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import shapely.geometry
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from geovision.errors import ConfigError, GeovisionWarning
from geovision.stitching.vectorize import COLUMNS, PolygonCollector
from geovision.types import Window

PIXEL_M = 0.5
UTM = Affine(PIXEL_M, 0, 448_000, 0, -PIXEL_M, 5_411_000)  # 0.5 m pixels in UTM 31N
PIXEL_AREA = PIXEL_M**2
NAMES = ("background", "building", "tree", "water")


def make_collector(classes: np.ndarray, **options: Any) -> PolygonCollector:
    kwargs: dict[str, Any] = dict(
        class_names=NAMES,
        skip_classes={0},
        raster_height=classes.shape[0],
        raster_width=classes.shape[1],
        transform=UTM,
        crs="EPSG:32631",
        source="test.tif",
    )
    kwargs.update(options)
    return PolygonCollector(**kwargs)


def random_probabilities(classes: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(len(NAMES), h, w)`` float32 probabilities."""
    rng = np.random.default_rng(seed)
    return rng.random((len(NAMES), *classes.shape)).astype(np.float32)


def block_windows(height: int, width: int, block: int) -> list[Window]:
    return [
        Window(r, c, min(block, height - r), min(block, width - c))
        for r in range(0, height, block)
        for c in range(0, width, block)
    ]


def vectorize(
    classes: np.ndarray, probabilities: np.ndarray, block: int, seed: int | None = 0, **options: Any
) -> gpd.GeoDataFrame:
    """Feed the raster block by block (shuffled when ``seed`` is given) and collect every polygon."""
    collector = make_collector(classes, **options)
    windows = block_windows(*classes.shape, block)
    if seed is not None:
        np.random.default_rng(seed).shuffle(windows)
    parts = [collector.add_block(w, classes[w.slices], probabilities[(slice(None), *w.slices)]) for w in windows]
    parts.append(collector.finish())
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs)


def blob_raster(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random blobs of classes 0..3 with a few nodata (255) patches."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((height, width)), 2.5)
    edges = np.quantile(field, [0.4, 0.6, 0.8])
    classes = np.digitize(field, edges).astype(np.uint8)
    holes = ndimage.gaussian_filter(rng.random((height, width)), 2.0)
    classes[holes > np.quantile(holes, 0.95)] = 255
    return classes


def sort_features(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    centroids = gdf.geometry.centroid
    order = np.lexsort((centroids.y.round(6), centroids.x.round(6), gdf.area_m2.round(6), gdf.class_id))
    return gdf.iloc[order].reset_index(drop=True)


# --- seam merging -------------------------------------------------------------------


def test_object_across_four_blocks_is_one_polygon() -> None:
    classes = np.zeros((20, 20), np.uint8)
    classes[3:17, 5:15] = 1  # crosses the seams at row 10 and column 10
    classes[8:12, 8:12] = 2  # a different class inside it, also on the seams: a hole in the building
    probabilities = random_probabilities(classes)

    result = vectorize(classes, probabilities, block=10, seed=3)

    building = result[result.class_id == 1]
    assert len(building) == 1
    row = building.iloc[0]
    assert row.class_name == "building" and row.source == "test.tif"
    n_pixels = int((classes == 1).sum())
    assert row.area_m2 == pytest.approx(n_pixels * PIXEL_AREA)
    assert row.mean_probability == pytest.approx(float(probabilities[1][classes == 1].mean()), rel=1e-6)
    assert row.geometry.geom_type == "Polygon" and len(row.geometry.interiors) == 1
    assert len(result[result.class_id == 2]) == 1


def test_blocks_match_single_block() -> None:
    classes = blob_raster(70, 90, seed=1)
    probabilities = random_probabilities(classes, seed=1)

    whole = sort_features(vectorize(classes, probabilities, block=1000, seed=None))
    blocked = sort_features(vectorize(classes, probabilities, block=16, seed=7))

    assert len(whole) > 20  # the raster really has many objects
    assert len(blocked) == len(whole)
    np.testing.assert_array_equal(blocked.class_id, whole.class_id)
    np.testing.assert_allclose(blocked.area_m2, whole.area_m2)
    np.testing.assert_allclose(blocked.perimeter_m, whole.perimeter_m)
    np.testing.assert_allclose(blocked.mean_probability, whole.mean_probability, rtol=1e-9)
    assert shapely.equals(blocked.geometry.values, whole.geometry.values).all()
    assert shapely.is_valid(blocked.geometry.values).all()
    assert set(blocked.geometry.geom_type) == {"Polygon"}
    for class_id in (1, 2, 3):  # every pixel of every class is accounted for
        total = blocked.area_m2[blocked.class_id == class_id].sum()
        assert total == pytest.approx((classes == class_id).sum() * PIXEL_AREA)


def test_corner_touch_stays_two_polygons() -> None:
    classes = np.zeros((10, 10), np.uint8)
    classes[3:5, 3:5] = 1  # ends at the 4-block corner (5, 5)...
    classes[5:7, 5:7] = 1  # ...where this one starts: corner contact only
    classes[4, 1] = 1  # pending piece in the top-left block (touches the row seam)...
    classes[5, 0] = 1  # ...diagonal neighbour across the row seam
    probabilities = random_probabilities(classes)

    result = vectorize(classes, probabilities, block=5)

    assert len(result) == 4
    np.testing.assert_allclose(sorted(result.area_m2 / PIXEL_AREA), [1, 1, 4, 4])


def test_ring_across_seams_keeps_its_hole() -> None:
    classes = np.zeros((24, 24), np.uint8)
    classes[4:20, 4:20] = 3
    classes[9:15, 9:15] = 0  # hole centred on the corner of four 12 px blocks
    probabilities = random_probabilities(classes)

    result = vectorize(classes, probabilities, block=12, seed=5)

    assert len(result) == 1
    ring = result.geometry.iloc[0]
    assert ring.is_valid and len(ring.interiors) == 1
    assert result.area_m2.iloc[0] == pytest.approx((16 * 16 - 6 * 6) * PIXEL_AREA)
    assert result.perimeter_m.iloc[0] == pytest.approx((4 * 16 + 4 * 6) * PIXEL_M)


def test_u_shape_joined_only_through_another_block() -> None:
    # Two arms in the top blocks are one object only through the bottom-left block.
    classes = np.zeros((16, 16), np.uint8)
    classes[0:12, 2:4] = 1
    classes[0:12, 10:12] = 1
    classes[10:12, 2:12] = 1
    probabilities = random_probabilities(classes)

    result = vectorize(classes, probabilities, block=8, seed=2)

    assert len(result) == 1
    assert result.area_m2.iloc[0] == pytest.approx((classes == 1).sum() * PIXEL_AREA)


def test_object_on_raster_edge_is_final_at_once() -> None:
    classes = np.zeros((10, 10), np.uint8)
    classes[0:3, 0:3] = 1  # touches only the raster's edges, not the seams
    classes[3:7, 3:7] = 2  # crosses the seams
    probabilities = random_probabilities(classes)
    collector = make_collector(classes)

    first = collector.add_block(Window(0, 0, 5, 5), classes[:5, :5], probabilities[:, :5, :5])
    assert list(first.class_id) == [1]
    *middle, last = block_windows(10, 10, 5)[1:]
    for w in middle:
        assert len(collector.add_block(w, classes[w.slices], probabilities[(slice(None), *w.slices)])) == 0
    assert collector.pending_pieces == 3
    merged = collector.add_block(last, classes[last.slices], probabilities[(slice(None), *last.slices)])
    assert list(merged.class_id) == [2]  # complete with its last block, merged
    assert merged.area_m2.iloc[0] == pytest.approx(16 * PIXEL_AREA)
    assert collector.pending_pieces == 0
    assert len(collector.finish()) == 0  # nothing left once every block arrived


def test_object_is_returned_with_its_last_block() -> None:
    # A spiral arm of width 2 leaves blocks and comes back into them many times.
    classes = np.zeros((64, 64), np.uint8)
    top, left, bottom, right = 2, 2, 62, 62
    while bottom - top >= 4 and right - left >= 4:
        classes[top : top + 2, left:right] = 1
        classes[top:bottom, right - 2 : right] = 1
        classes[bottom - 2 : bottom, left + 4 : right] = 1
        classes[top + 4 : bottom, left + 4 : left + 6] = 1
        top, left, bottom, right = top + 4, left + 4, bottom - 4, right - 4
    n_labels = ndimage.label(classes == 1)[1]
    assert n_labels == 1  # one 4-connected snake...
    probabilities = random_probabilities(classes)
    windows = block_windows(64, 64, 8)
    np.random.default_rng(11).shuffle(windows)
    last = max(i for i, w in enumerate(windows) if (classes[w.slices] == 1).any())
    collector = make_collector(classes)

    returned = [
        len(collector.add_block(w, classes[w.slices], probabilities[(slice(None), *w.slices)])) for w in windows
    ]

    assert returned[last] == 1 and sum(returned) == 1  # ...complete only when its last block arrives
    assert collector.pending_pieces == 0 and len(collector.finish()) == 0
    result = vectorize(classes, probabilities, block=8, seed=4)
    assert len(result) == 1 and result.geometry.iloc[0].is_valid
    assert result.area_m2.iloc[0] == pytest.approx((classes == 1).sum() * PIXEL_AREA)


def test_empty_block_closes_the_seam() -> None:
    classes = np.zeros((16, 16), np.uint8)
    classes[4:8, 2:12] = 1  # crosses the column seam, ends on the row seam above an empty block
    probabilities = random_probabilities(classes)
    collector = make_collector(classes)
    order = [Window(0, 0, 8, 8), Window(0, 8, 8, 8), Window(8, 8, 8, 8), Window(8, 0, 8, 8)]

    returned = [collector.add_block(w, classes[w.slices], probabilities[(slice(None), *w.slices)]) for w in order]

    assert [len(r) for r in returned] == [0, 0, 0, 1]  # the last block has no component at all
    assert returned[3].area_m2.iloc[0] == pytest.approx(40 * PIXEL_AREA)
    assert collector.pending_pieces == 0


def test_irregular_blocks_match_single_block() -> None:
    # Block rows of different heights, each cut at its own columns: a side may face several blocks.
    classes = blob_raster(90, 110, seed=4)
    probabilities = random_probabilities(classes, seed=4)
    rng = np.random.default_rng(4)
    windows = []
    row = 0
    while row < 90:
        height, col = min(int(rng.integers(3, 30)), 90 - row), 0
        while col < 110:
            width = min(int(rng.integers(3, 40)), 110 - col)
            windows.append(Window(row, col, height, width))
            col += width
        row += height
    rng.shuffle(windows)
    collector = make_collector(classes)

    parts = [collector.add_block(w, classes[w.slices], probabilities[(slice(None), *w.slices)]) for w in windows]

    assert collector.pending_pieces == 0
    parts.append(collector.finish())
    assert_same_features(pd.concat(parts, ignore_index=True), vectorize(classes, probabilities, 1000, seed=None))


# --- noisy rasters: order independence and bounded memory ----------------------------


def noise_raster(height: int, width: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    """Classes 1..3 as an untrained model gives them, smoothed a little so components span seams."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((3, height, width), dtype=np.float32), (0, sigma, sigma))
    return (field.argmax(axis=0) + 1).astype(np.uint8)


def canonical(gdf: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, np.ndarray]:
    """Rows in a canonical order and their geometries normalised, without redundant (seam) vertices."""
    geoms = shapely.normalize(shapely.simplify(gdf.geometry.values, 0))
    x0, y0, x1, y1 = shapely.bounds(geoms).T
    order = np.lexsort((gdf.area_m2.to_numpy().round(6), y1, x1, y0, x0, gdf.class_id.to_numpy()))
    return gdf.iloc[order].reset_index(drop=True), geoms[order]


def assert_same_features(got: gpd.GeoDataFrame, expected: gpd.GeoDataFrame) -> None:
    got, got_geoms = canonical(got)
    expected, expected_geoms = canonical(expected)
    assert len(got) == len(expected)
    for column in ("class_id", "class_name", "source"):
        np.testing.assert_array_equal(got[column], expected[column])
    for column in ("area_m2", "perimeter_m", "mean_probability"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-12)
    assert shapely.equals_exact(got_geoms, expected_geoms, tolerance=0).all()


def feed(classes: np.ndarray, probabilities: np.ndarray, windows: list[Window]) -> tuple[gpd.GeoDataFrame, list[int]]:
    """Every feature, and ``pending_pieces`` after each block."""
    collector = make_collector(classes)
    parts, pending = [], []
    for w in windows:
        parts.append(collector.add_block(w, classes[w.slices], probabilities[(slice(None), *w.slices)]))
        pending.append(collector.pending_pieces)
    parts.append(collector.finish())
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs), pending


@pytest.fixture(scope="module")
def noisy() -> tuple[np.ndarray, np.ndarray, gpd.GeoDataFrame, list[int]]:
    """A 2048 x 2048 noisy raster (8 x 8 blocks of 256), fed in row-major order."""
    classes = noise_raster(2048, 2048, seed=0)
    probabilities = random_probabilities(classes, seed=0)
    features, pending = feed(classes, probabilities, block_windows(2048, 2048, 256))
    return classes, probabilities, features, pending


@pytest.mark.slow
def test_noisy_raster_any_order_matches_single_block(noisy) -> None:
    classes, probabilities, row_major, _ = noisy
    windows = block_windows(2048, 2048, 256)
    np.random.default_rng(5).shuffle(windows)

    shuffled, _ = feed(classes, probabilities, windows)
    single, _ = feed(classes, probabilities, [Window(0, 0, 2048, 2048)])

    assert len(single) > 20_000  # really noisy
    assert_same_features(shuffled, row_major)
    assert_same_features(row_major, single)


@pytest.mark.slow
def test_row_major_pending_pieces_stay_bounded(noisy) -> None:
    classes, _, _, pending = noisy
    seam_pieces = 0  # every component of every block touching an inner block side
    for w in block_windows(2048, 2048, 256):
        for class_id in (1, 2, 3):
            labels, _ = ndimage.label(classes[w.slices] == class_id)
            sides = [labels[0] if w.row_off else [], labels[-1] if w.row_end < 2048 else []]
            sides += [labels[:, 0] if w.col_off else [], labels[:, -1] if w.col_end < 2048 else []]
            seam_pieces += len(np.setdiff1d(np.concatenate(sides), [0]))

    assert max(pending) < 0.35 * seam_pieces  # about one row of blocks, not the whole raster
    assert pending[-1] == 0


# --- classes, filters, output -------------------------------------------------------


def test_nodata_gives_no_polygon() -> None:
    classes = np.full((10, 10), 255, np.uint8)
    classes[2:4, 2:4] = 1
    result = vectorize(classes, random_probabilities(classes), block=5, skip_classes=set())
    assert list(result.class_id) == [1]


def test_skip_classes() -> None:
    classes = np.zeros((10, 10), np.uint8)
    classes[2:8, 2:8] = 1
    probabilities = random_probabilities(classes)

    skipped = vectorize(classes, probabilities, block=5)
    kept = vectorize(classes, probabilities, block=5, skip_classes=set())
    skip_both = vectorize(classes, probabilities, block=5, skip_classes={0, 1})

    assert list(skipped.class_id) == [1]
    assert sorted(kept.class_id) == [0, 1]
    assert len(kept[kept.class_id == 0].iloc[0].geometry.interiors) == 1
    assert len(skip_both) == 0


def test_min_area() -> None:
    classes = np.zeros((20, 20), np.uint8)
    classes[1:3, 1:3] = 1  # 1 m²
    classes[8:14, 8:14] = 1  # 9 m², across seams
    result = vectorize(classes, random_probabilities(classes), block=10, min_area_m2=2.0)
    assert list(result.area_m2) == [pytest.approx(9.0)]


def test_simplify_reduces_vertices() -> None:
    rows, cols = np.mgrid[0:64, 0:64]
    classes = (((rows - 31.5) ** 2 + (cols - 31.5) ** 2) < 25**2).astype(np.uint8)  # a pixelated disc
    probabilities = random_probabilities(classes)

    raw = vectorize(classes, probabilities, block=20)
    simple = vectorize(classes, probabilities, block=20, simplify_m=1.0)

    assert len(raw) == len(simple) == 1
    raw_vertices = shapely.get_num_coordinates(raw.geometry.values)[0]
    simple_vertices = shapely.get_num_coordinates(simple.geometry.values)[0]
    assert simple_vertices < raw_vertices / 3
    assert simple.geometry.iloc[0].is_valid
    assert simple.area_m2.iloc[0] == pytest.approx(np.pi * (25 * PIXEL_M) ** 2, rel=0.03)
    assert simple.mean_probability.iloc[0] == pytest.approx(raw.mean_probability.iloc[0])


def test_output_schema_and_empty_result() -> None:
    classes = np.zeros((10, 10), np.uint8)
    collector = make_collector(classes)
    empty = collector.add_block(Window(0, 0, 10, 10), classes, random_probabilities(classes))
    assert tuple(empty.columns) == COLUMNS
    assert len(empty) == 0 and empty.crs == "EPSG:32631"
    assert empty.class_id.dtype == np.int64 and empty.area_m2.dtype == np.float64
    finished = collector.finish()
    assert tuple(finished.columns) == COLUMNS and len(finished) == 0

    classes[2:5, 2:5] = 2
    full = vectorize(classes, random_probabilities(classes), block=5)
    assert tuple(full.columns) == COLUMNS
    assert full.crs == "EPSG:32631"
    assert full.class_id.dtype == np.int64 and full.mean_probability.dtype == np.float64
    # Map coordinates: pixel (col 2, row 2) is 1 m east and 1 m south of the raster's corner.
    assert full.geometry.iloc[0].bounds == pytest.approx((448_001.0, 5_410_997.5, 448_002.5, 5_410_999.0))


def test_geographic_crs_measures_geodesically() -> None:
    classes = np.zeros((20, 20), np.uint8)
    classes[5:15, 5:15] = 1
    degrees = Affine(1e-5, 0, 2.35, 0, -1e-5, 48.85)  # ~0.73 m x 1.11 m pixels in Paris
    result = vectorize(classes, random_probabilities(classes), block=10, transform=degrees, crs="EPSG:4326")
    assert len(result) == 1
    expected = 100 * (1e-5 * 111_320 * np.cos(np.radians(48.85))) * (1e-5 * 111_200)
    assert result.area_m2.iloc[0] == pytest.approx(expected, rel=5e-3)


# --- errors -------------------------------------------------------------------------


def test_bad_blocks_raise() -> None:
    classes = np.zeros((10, 10), np.uint8)
    probabilities = random_probabilities(classes)
    collector = make_collector(classes)
    with pytest.raises(ValueError, match="leaves"):
        collector.add_block(Window(5, 5, 10, 10), classes, probabilities)
    with pytest.raises(ValueError, match="classes has shape"):
        collector.add_block(Window(0, 0, 5, 5), classes, probabilities)
    with pytest.raises(ValueError, match="probabilities has shape"):
        collector.add_block(Window(0, 0, 10, 10), classes, probabilities[:2])
    classes[0, 0] = 7
    with pytest.raises(ValueError, match="Class id 7 has no name"):
        collector.add_block(Window(0, 0, 10, 10), classes, probabilities)


def test_bad_options_raise() -> None:
    classes = np.zeros((10, 10), np.uint8)
    with pytest.raises(ConfigError, match="min_area_m2"):
        make_collector(classes, min_area_m2=-1.0)
    with pytest.raises(ConfigError, match="simplify_m"):
        make_collector(classes, simplify_m=-1.0)


def test_missing_blocks_warn() -> None:
    classes = np.zeros((10, 10), np.uint8)
    collector = make_collector(classes)
    collector.add_block(Window(0, 0, 5, 5), classes[:5, :5], random_probabilities(classes)[:, :5, :5])
    with pytest.warns(GeovisionWarning, match="Feed every block exactly once"):
        collector.finish()


# --- fast paths: rectangles without GDAL, seam noding, plane-wise arg-max ------------------


def gdal_polygons(classes: np.ndarray) -> gpd.GeoSeries:
    """Every 4-connected component of classes 1..3 traced by GDAL alone, in map coordinates."""
    import rasterio.features

    geoms = [
        shapely.geometry.shape(g)
        for g, v in rasterio.features.shapes(classes, mask=(classes > 0) & (classes < 255), connectivity=4,
                                             transform=UTM)
    ]
    return gpd.GeoSeries(geoms, crs="EPSG:32631")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.2, 0.8), block=st.sampled_from([7, 16, 64]))
def test_polygons_equal_gdal_tracing(seed: int, density: float, block: int) -> None:
    """Rectangles built directly, the rest traced, seams noded and unioned: the same polygons GDAL traces
    from the whole raster, vertex for vertex once normalised."""
    rng = np.random.default_rng(seed)
    classes = np.where(rng.random((40, 50)) < density, rng.integers(1, 4, (40, 50)), 0).astype(np.uint8)
    classes[rng.random((40, 50)) < 0.05] = 255
    got = vectorize(classes, random_probabilities(classes, seed), block=block, seed=seed)
    expected = gdal_polygons(classes)
    assert len(got) == len(expected)
    assert shapely.is_valid(got.geometry.values).all()
    a = shapely.normalize(sort_features(got).geometry.values)
    areas = expected.area.to_numpy()
    order = np.lexsort((expected.centroid.y.round(6), expected.centroid.x.round(6), areas.round(6)))
    b = shapely.normalize(expected.values[order])
    a = a[np.lexsort((shapely.get_y(shapely.centroid(a)).round(6), shapely.get_x(shapely.centroid(a)).round(6),
                      shapely.area(a).round(6)))]
    assert shapely.equals_exact(a, b, tolerance=1e-6).all()


def test_merged_outlines_drop_the_seams() -> None:
    """Pieces cut by seams at row 4 and column 3 join exactly, holes and diagonal touches included."""
    from geovision.stitching.trace import merge_outlines, outline_polygons

    classes = np.zeros((8, 7), int)
    classes[1:7, 1:6] = 1
    classes[3:5, 2:4] = 0  # a hole across both seams
    classes[7, 0] = 1  # touches the rest only diagonally: an object of its own
    pieces, group = [], []
    for r0, r1 in ((0, 4), (4, 8)):
        for c0, c1 in ((0, 3), (3, 7)):
            labels, n = ndimage.label(classes[r0:r1, c0:c1])
            for geom in outline_polygons(labels, n, row_off=r0, col_off=c0):
                pieces.append(geom)
                group.append(0 if shapely.intersection(geom, shapely.box(1, 1, 6, 7)).area > 0 else 1)
    merged = merge_outlines(np.array(pieces, dtype=object), np.array(group), rows={4}, cols={3})
    whole, n = ndimage.label(classes)
    expected = outline_polygons(whole, n)
    order = np.argsort(shapely.area(expected))[::-1]
    assert shapely.equals_exact(shapely.normalize(merged), shapely.normalize(expected[order]), tolerance=0).all()
    assert len(merged[0].interiors) == 1 and merged[0].area == 30 - 4


def test_block_accumulator_blends_like_numpy() -> None:
    """Blocks from the compiled blend equal a whole-raster numpy blend: weights, invalid pixels, ties (first wins)."""
    from geovision.stitching.accumulate import CLASS_NODATA, BlockAccumulator
    from geovision.tiling.blend import taper_weights
    from geovision.tiling.grid import BlockGrid, TileGrid

    rng = np.random.default_rng(0)
    height, width, tile, overlap, n_classes = 150, 170, 64, 16, 3
    grid = TileGrid(height, width, tile, overlap)
    outputs = [rng.integers(0, 4, (n_classes, tile, tile)).astype(np.float32) / 4 for _ in grid.tiles]  # ties
    valid = [rng.random((tile, tile)) > 0.1 for _ in grid.tiles]
    valid[0][:] = False  # a tile with no valid pixel at all
    # float32 as the accumulator: blended near-ties then fall the same way
    sums, weights = np.zeros((n_classes, height, width), np.float32), np.zeros((height, width), np.float32)
    for t, out, ok in zip(grid.tiles, outputs, valid, strict=True):
        w = np.where(ok, taper_weights(tile, tile, overlap), np.float32(0))[:t.window.height, :t.window.width]
        sums[(slice(None), *t.window.slices)] += out[:, :t.window.height, :t.window.width] * w
        weights[t.window.slices] += w
    expected_valid = weights > 0
    expected_probs = np.divide(sums, weights, out=np.zeros_like(sums), where=expected_valid)
    expected = np.where(expected_valid, np.argmax(expected_probs, axis=0), CLASS_NODATA)

    accumulator = BlockAccumulator(BlockGrid(height, width, 48), grid.tiles, n_classes, ramp=overlap)
    classes, probs = np.full((height, width), 7, np.uint8), np.full((n_classes, height, width), -1.0)
    for t, out, ok in zip(grid.tiles, outputs, valid, strict=True):
        for block in accumulator.add(t, out, ok):
            classes[block.window.slices] = block.classes
            probs[(slice(None), *block.window.slices)] = block.probabilities
            assert (block.valid == expected_valid[block.window.slices]).all()
    accumulator.check_complete()
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes, expected)
    assert (classes == CLASS_NODATA).any() and (classes == 0).any() and (classes == 2).any()


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 100_000), rows=st.integers(1, 40), cols=st.integers(1, 40), density=st.floats(0.1, 0.9))
def test_components_are_scipys_for_every_class_at_once(seed: int, rows: int, cols: int, density: float) -> None:
    """One compiled labelling of all classes: ndimage's components per class, pixel counts, probability sums."""
    from geovision.stitching.vectorize import _components

    rng = np.random.default_rng(seed)
    classes = np.where(rng.random((rows, cols)) < density, rng.integers(1, 4, (rows, cols)), 0).astype(np.uint8)
    classes[rng.random((rows, cols)) < 0.05] = 255
    probs = rng.random((4, rows, cols), dtype=np.float32)
    wanted = np.zeros(256, bool)
    wanted[[1, 2, 3]] = True
    labels, label_class, counts, prob_sums, present = _components(classes, wanted, probs)
    assert set(np.flatnonzero(present)) == set(np.unique(classes).tolist())
    assert ((labels > 0) == np.isin(classes, [1, 2, 3])).all()
    n = len(label_class)
    first = [np.flatnonzero(labels.ravel() == k + 1)[0] for k in range(n)]
    assert first == sorted(first)  # numbered by first pixel, in raster order
    for c in (1, 2, 3):
        theirs, k = ndimage.label(classes == c)
        mine = np.where(classes == c, labels, 0)
        # the same partition: each of theirs is one of mine and the other way round
        pairs = np.unique(np.stack([theirs[theirs > 0], mine[theirs > 0]]), axis=1)
        assert pairs.shape[1] == k == len(np.unique(pairs[1])) == int((label_class == c).sum())
    for k in range(n):
        at = labels == k + 1
        assert counts[k] == at.sum() and (classes[at] == label_class[k]).all()
        assert prob_sums[k] == pytest.approx(probs[label_class[k]][at].astype(np.float64).sum(), rel=1e-6)
