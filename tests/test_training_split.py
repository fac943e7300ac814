"""The spatial train/val/test split (geovision.training.split): blocks, buffers, reproducibility, CRS units."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geovision.errors import ConfigError
from geovision.io.geo import distances_m
from geovision.training.split import SPLITS, SpatialSplit, as_extents, spatial_split

UTM = "EPSG:32631"
X0, Y0 = 500_000.0, 5_650_000.0
EXTENT = (X0, Y0 - 600, X0 + 1000, Y0)  # 1000 m x 600 m
US_FOOT_M = 1200 / 3937


def labels_at(points: list[tuple[float, float]], crs: str = UTM) -> gpd.GeoDataFrame:
    """Small label squares (4 m) centred on the given points."""
    geoms = [shapely.box(x - 2, y - 2, x + 2, y + 2) for x, y in points]
    return gpd.GeoDataFrame({"class_id": np.ones(len(geoms), dtype=np.int64)}, geometry=geoms, crs=crs)


def block_centre(split: SpatialSplit, row: int, col: int) -> tuple[float, float]:
    geom = split.blocks.loc[(split.blocks["row"] == row) & (split.blocks["col"] == col)].geometry.iloc[0]
    return geom.centroid.x, geom.centroid.y


# ---- grid -------------------------------------------------------------------------


def test_blocks_cover_the_extent_on_an_aligned_grid() -> None:
    split = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20)
    blocks = split.blocks
    assert len(blocks) == 15 and split.counts["val"] == 3 and split.counts["train"] == 12
    assert blocks["block_id"].tolist() == list(range(15))
    assert blocks.crs.equals(UTM)
    np.testing.assert_allclose(blocks.total_bounds, EXTENT)
    first = blocks.geometry.iloc[0].bounds
    assert first == pytest.approx((X0, Y0 - 200, X0 + 200, Y0))  # the grid starts at the top-left corner
    np.testing.assert_allclose(blocks.geometry.area, 200 * 200)
    assert shapely.union_all(blocks.geometry.values).equals(shapely.box(*EXTENT))
    assert split.buffer == pytest.approx(20) and split.buffer_y == pytest.approx(20)
    assert split.block_m == 200 and split.buffer_m == 20


def test_partial_blocks_at_the_edge_and_only_blocks_touching_an_extent() -> None:
    a = (X0, Y0 - 250, X0 + 250, Y0)  # 250 m: 2 x 2 blocks of 200 m
    b = (X0 + 810, Y0 - 100, X0 + 900, Y0)  # far right, top row only
    split = spatial_split([a, b], UTM, block_m=200, buffer_m=10)
    cells = sorted(zip(split.blocks["row"], split.blocks["col"]))
    assert cells == [(0, 0), (0, 1), (0, 4), (1, 0), (1, 1)]


def test_block_touching_an_extent_only_along_an_edge_is_dropped() -> None:
    split = spatial_split([(X0, Y0 - 200, X0 + 400, Y0)], UTM, block_m=200, buffer_m=10)
    assert len(split.blocks) == 2  # not a third, empty column starting at maxx


def test_feet_crs_block_size() -> None:
    ext = (1_000_000.0, 200_000.0, 1_003_000.0, 202_000.0)  # US survey feet
    split = spatial_split([ext], "EPSG:2263", block_m=300, buffer_m=30)
    minx, miny, maxx, maxy = split.blocks.geometry.iloc[0].bounds
    assert maxx - minx == pytest.approx(300 / US_FOOT_M)
    assert split.buffer == pytest.approx(30 / US_FOOT_M)


def _ground_size(split: SpatialSplit, crs: str) -> tuple[float, float]:
    """Ground width and height (m) of the block nearest the middle of the grid, through its centre."""
    blocks = split.blocks
    middle = shapely.Point(*np.asarray(blocks.total_bounds).reshape(2, 2).mean(axis=0))
    geom = blocks.geometry.iloc[int(np.argmin(shapely.distance(np.asarray(blocks.geometry.values), middle)))]
    x0, y0, x1, y1 = geom.bounds
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    d = distances_m(np.array([[x0, cy], [cx, y0]]), np.array([[x1, cy], [cx, y1]]), crs)
    return float(d[0]), float(d[1])


def test_geographic_blocks_are_block_m_on_the_ground() -> None:
    ext = (10.0, 60.0, 10.2, 60.1)  # degrees, far north: a degree of longitude is about half one of latitude
    split = spatial_split([ext], "EPSG:4326", block_m=1000, buffer_m=50)
    width, height = _ground_size(split, "EPSG:4326")
    assert width == pytest.approx(1000, rel=0.02) and height == pytest.approx(1000, rel=0.02)
    assert split.buffer == pytest.approx(2 * split.buffer_y, rel=0.02)  # cos(60°) = 0.5
    assert len(split.blocks) == math.ceil(0.2 * 55_800 / 1000) * math.ceil(0.1 * 111_400 / 1000)


def test_web_mercator_blocks_are_block_m_on_the_ground() -> None:
    to_merc = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (x0, x1), (y0, y1) = to_merc.transform([5.0, 5.2], [50.0, 50.1])
    split = spatial_split([(x0, y0, x1, y1)], "EPSG:3857", block_m=1000, buffer_m=50)
    width, height = _ground_size(split, "EPSG:3857")
    assert width == pytest.approx(1000, rel=0.02) and height == pytest.approx(1000, rel=0.02)
    bx0, _, bx1, _ = split.blocks.geometry.iloc[0].bounds
    lat = math.radians(50.05)
    assert bx1 - bx0 == pytest.approx(1000 / math.cos(lat), rel=0.01)  # pseudo-metres are not metres


# ---- assignment ---------------------------------------------------------------------


def test_same_seed_same_split_other_seeds_differ() -> None:
    a = spatial_split([EXTENT], UTM, block_m=100, buffer_m=10, seed=7)
    b = spatial_split([EXTENT], UTM, block_m=100, buffer_m=10, seed=7)
    assert a.blocks["split"].tolist() == b.blocks["split"].tolist()
    others = {tuple(spatial_split([EXTENT], UTM, block_m=100, buffer_m=10, seed=s).blocks["split"]) for s in range(5)}
    assert len(others) > 1
    assert a.counts == {"train": 48, "val": 12, "test": 0}


def test_test_fraction() -> None:
    split = spatial_split([EXTENT], UTM, block_m=100, buffer_m=10, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert split.counts == {"train": 42, "val": 12, "test": 6}


def test_val_blocks_hold_labels_and_unlabelled_blocks_train() -> None:
    probe = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20)
    cells = [(0, 0), (0, 3), (1, 1), (2, 2), (2, 4)]
    labels = labels_at([block_centre(probe, r, c) for r, c in cells])
    for seed in range(10):
        split = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, val_fraction=0.2, seed=seed, labels=labels)
        blocks = split.blocks
        assert blocks["n_labels"].sum() == 5
        val = blocks[blocks["split"] == "val"]
        assert len(val) == 1 and (val["n_labels"] > 0).all()
        assert (blocks.loc[blocks["n_labels"] == 0, "split"] == "train").all()
        assert ((blocks["split"] == "train") & (blocks["n_labels"] > 0)).sum() == 4


def test_at_least_one_val_block_and_one_train_block_with_labels() -> None:
    probe = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20)
    labels = labels_at([block_centre(probe, 0, 0), block_centre(probe, 2, 4)])
    split = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, val_fraction=0.05, labels=labels)
    labelled = split.blocks[split.blocks["n_labels"] > 0]
    assert sorted(labelled["split"]) == ["train", "val"]
    split = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, val_fraction=0.9, labels=labels)
    assert sorted(split.blocks.loc[split.blocks["n_labels"] > 0, "split"]) == ["train", "val"]


def test_a_label_on_a_block_border_counts_for_both_blocks() -> None:
    labels = labels_at([(X0 + 200, Y0 - 100)])  # straddles the border of blocks (0, 0) and (0, 1)
    split = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, labels=labels)
    assert split.blocks["n_labels"].tolist()[:3] == [1, 1, 0]


def test_labels_in_one_block_only() -> None:
    probe = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20)
    labels = labels_at([block_centre(probe, 1, 1)])
    with pytest.raises(ConfigError, match=r"only 1 of the 15 blocks of 200 m.*Lower --val-block.*label more places"):
        spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, labels=labels)


def test_labels_in_another_crs() -> None:
    with pytest.raises(ConfigError, match="labels are in WGS 84 but the rasters in WGS 84 / UTM zone 31N"):
        spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, labels=labels_at([(2.9, 51.0)], crs="EPSG:4326"))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(block_m=0, buffer_m=0), "block size must be > 0"),
    (dict(block_m=-5, buffer_m=0), "block size must be > 0"),
    (dict(block_m=100, buffer_m=-1), "buffer between blocks must be >= 0"),
    (dict(block_m=100, buffer_m=100), r"buffer \(100 m\) must be smaller than the block \(100 m\)"),
    (dict(block_m=100, buffer_m=10, val_fraction=1.0), r"val_fraction must lie in \[0, 1\)"),
    (dict(block_m=100, buffer_m=10, val_fraction=-0.1), r"val_fraction must lie in \[0, 1\)"),
    (dict(block_m=100, buffer_m=10, test_fraction=1.2), r"test_fraction must lie in \[0, 1\)"),
    (dict(block_m=100, buffer_m=10, val_fraction=0.5, test_fraction=0.5), "must be below 1"),
    (dict(block_m=float("nan"), buffer_m=10), "block_m must be a finite number"),
    (dict(block_m=5000, buffer_m=10), r"hold only 1 block of 5000 m.*Lower --val-block \(e\.g\. --val-block 250\)"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        spatial_split([EXTENT], UTM, **kwargs)


@pytest.mark.parametrize("extents", [[], [(0, 0, 0, 10)], [(0, 0, 10)], [(0, 0, float("inf"), 1)]])
def test_bad_extents(extents: list) -> None:
    with pytest.raises(ConfigError, match="xtent"):
        as_extents(extents)


# ---- split_of -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid() -> SpatialSplit:
    return spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, val_fraction=0.4, seed=2)


def test_split_of_interior_border_and_buffer(grid: SpatialSplit) -> None:
    split_00 = grid.blocks["split"].iloc[0]  # block (0, 0): x in [X0, X0+200], y in [Y0-200, Y0]
    assert grid.split_of((X0 + 20, Y0 - 150, X0 + 150, Y0 - 20)) == split_00
    assert grid.split_of((X0 + 150, Y0 - 100, X0 + 250, Y0 - 50)) is None  # crosses into block (0, 1)
    assert grid.split_of((X0 + 150, Y0 - 100, X0 + 195, Y0 - 50)) is None  # reaches the buffer strip
    assert grid.split_of((X0 + 150, Y0 - 100, X0 + 190, Y0 - 50)) == split_00  # just inside the interior
    assert grid.split_of((X0, Y0 - 64, X0 + 64, Y0)) == split_00  # flush with the raster's corner: no neighbour


def test_split_of_boxes_flush_with_adjacent_interiors_are_exactly_a_buffer_apart(grid: SpatialSplit) -> None:
    blocks = grid.blocks
    found = 0
    for (row, col), block in blocks.set_index(["row", "col"]).iterrows():
        right = blocks[(blocks["row"] == row) & (blocks["col"] == col + 1)]
        if right.empty or right["split"].iloc[0] == block["split"]:
            continue
        x_border = block["geometry"].bounds[2]
        y_mid = block["geometry"].centroid.y
        left_box = (x_border - 60, y_mid - 10, x_border - 10, y_mid + 10)
        right_box = (x_border + 10, y_mid - 10, x_border + 60, y_mid + 10)
        assert grid.split_of(left_box) == block["split"]
        assert grid.split_of(right_box) == right["split"].iloc[0]
        assert grid.split_of((x_border - 9.9, y_mid - 10, x_border - 5, y_mid + 10)) is None
        found += 1
    assert found > 0


GEO_SPLIT = spatial_split([(10.0, 60.0, 10.05, 60.03)], "EPSG:4326", block_m=500, buffer_m=60, val_fraction=0.4,
                          test_fraction=0.2, seed=5)
UTM_SPLIT = spatial_split([EXTENT], UTM, block_m=100, buffer_m=20, val_fraction=0.4, test_fraction=0.2, seed=3)


def _gaps(a: tuple, b: tuple) -> tuple[float, float]:
    return max(b[0] - a[2], a[0] - b[2], 0.0), max(b[1] - a[3], a[1] - b[3], 0.0)


def _check_apart(split: SpatialSplit, a: tuple, b: tuple) -> None:
    sa, sb = split.split_of(a), split.split_of(b)
    if sa is not None and sb is not None and sa != sb:
        gx, gy = _gaps(a, b)
        assert gx >= split.buffer * (1 - 1e-9) or gy >= split.buffer_y * (1 - 1e-9), (a, b, sa, sb)


def _box(split: SpatialSplit, fx: float, fy: float, fw: float, fh: float) -> tuple[float, float, float, float]:
    minx, miny, maxx, maxy = split.blocks.total_bounds
    x, y = minx + fx * (maxx - minx), miny + fy * (maxy - miny)
    return x, y, x + fw * (maxx - minx), y + fh * (maxy - miny)


unit = st.floats(0.0, 1.0)
small = st.floats(0.001, 0.08)


@pytest.mark.parametrize("split", [UTM_SPLIT, GEO_SPLIT], ids=["utm", "geographic"])
@settings(max_examples=150, deadline=None)
@given(a=st.tuples(unit, unit, small, small), b=st.tuples(unit, unit, small, small))
def test_boxes_of_different_splits_are_a_buffer_apart(split: SpatialSplit, a: tuple, b: tuple) -> None:
    _check_apart(split, _box(split, *a), _box(split, *b))


@pytest.mark.parametrize("split", [UTM_SPLIT, GEO_SPLIT], ids=["utm", "geographic"])
@settings(max_examples=150, deadline=None)
@given(a=st.tuples(unit, unit, small, small), shift=st.tuples(st.floats(-1, 1), st.floats(-1, 1)))
def test_boxes_closer_than_the_buffer_never_get_two_splits(split: SpatialSplit, a: tuple, shift: tuple) -> None:
    box_a = _box(split, *a)
    dx = shift[0] * (box_a[2] - box_a[0] + split.buffer * 0.999)
    dy = shift[1] * (box_a[3] - box_a[1] + split.buffer_y * 0.999)
    box_b = (box_a[0] + dx, box_a[1] + dy, box_a[2] + dx, box_a[3] + dy)
    sa, sb = split.split_of(box_a), split.split_of(box_b)
    assert sa is None or sb is None or sa == sb


def test_property_splits_are_not_vacuous() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        fx, fy = rng.random(2)
        seen.add(UTM_SPLIT.split_of(_box(UTM_SPLIT, fx, fy, 0.02, 0.02)))
        seen.add(GEO_SPLIT.split_of(_box(GEO_SPLIT, fx, fy, 0.02, 0.02)))
    assert seen == {None, *SPLITS}


# ---- layer ------------------------------------------------------------------------


def test_layer_has_interiors_and_buffer_strips(grid: SpatialSplit, tmp_path: Path) -> None:
    layer = grid.layer()
    assert set(layer.columns) >= {"block_id", "split", "geometry"}
    assert layer.crs.equals(UTM)
    assert set(layer["split"]) == {"train", "val", "buffer"}
    n = len(grid.blocks)
    assert (layer["split"] != "buffer").sum() == n and (layer["split"] == "buffer").sum() == n
    for block_id, rows in layer.groupby("block_id"):
        block = grid.blocks.geometry.iloc[int(block_id)]
        interior = rows[rows["split"] != "buffer"].geometry.iloc[0]
        strip = rows[rows["split"] == "buffer"].geometry.iloc[0]
        assert interior.area + strip.area == pytest.approx(block.area)
        assert rows["split"].iloc[0] in SPLITS or rows["split"].iloc[1] in SPLITS
        assert not interior.overlaps(strip)
    # block (0, 0) is only shrunk towards its neighbours (right and below)
    corner = layer[(layer["block_id"] == 0) & (layer["split"] != "buffer")].geometry.iloc[0]
    assert corner.bounds == pytest.approx((X0, Y0 - 190, X0 + 190, Y0))
    inner = grid.blocks[(grid.blocks["row"] == 1) & (grid.blocks["col"] == 1)]
    inner_interior = layer[(layer["block_id"] == inner["block_id"].iloc[0]) & (layer["split"] != "buffer")]
    assert inner_interior.geometry.iloc[0].area == pytest.approx(180 * 180)
    path = tmp_path / "split.gpkg"
    pyogrio.write_dataframe(layer, path, promote_to_multi=True)
    assert len(pyogrio.read_dataframe(path)) == len(layer)


def test_layer_carries_label_counts() -> None:
    probe = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20)
    labels = labels_at([block_centre(probe, 0, 0), block_centre(probe, 2, 4)])
    layer = spatial_split([EXTENT], UTM, block_m=200, buffer_m=20, labels=labels).layer()
    assert layer.loc[layer["split"] != "buffer", "n_labels"].sum() == 2


def test_split_drawn_by_the_user(tmp_path) -> None:
    """--split-layer: polygons marked train / validation; a chip belongs where it lies wholly inside."""
    from geovision.training.split import split_from_layer

    squares = gpd.GeoDataFrame(
        {"traindata_type": ["train", "Validation", "train"]},
        geometry=[shapely.box(0, 0, 100, 100), shapely.box(200, 0, 300, 100), shapely.box(0, 200, 100, 300)],
        crs="EPSG:32631",
    )
    path = tmp_path / "locations.gpkg"
    squares.to_crs("EPSG:4326").to_file(path)  # another CRS: reprojected on reading
    split = split_from_layer(path, "traindata_type", "EPSG:32631")
    assert split.counts == {"train": 2, "val": 1, "test": 0}
    assert split.split_of((10, 10, 50, 50)) == "train"
    assert split.split_of((210, 10, 250, 50)) == "val"
    assert split.split_of((90, 10, 150, 50)) is None  # across a polygon edge
    assert split.split_of((120, 10, 150, 50)) is None  # outside every polygon
    assert set(split.layer()["split"]) == {"train", "val"}
    squares.assign(traindata_type=["train", "holdout", "train"]).to_file(tmp_path / "bad.gpkg")
    with pytest.raises(ConfigError, match="holdout"):
        split_from_layer(tmp_path / "bad.gpkg", "traindata_type", "EPSG:32631")
    with pytest.raises(ConfigError, match="traindata_typ"):
        split_from_layer(path, "kind", "EPSG:32631")
