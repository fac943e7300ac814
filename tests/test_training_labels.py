"""Training labels (geovision.training.labels): reading, checks, rasterizing and boxes, on real vector files."""

from __future__ import annotations

import pickle
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine

from geovision.errors import ConfigError, GeovisionWarning, VectorContentError, VectorReadError
from geovision.training.labels import IGNORE, LabelSet, boxes_in_window, rasterize_window, read_labels
from geovision.types import Window

UTM = "EPSG:32631"
X0, Y0 = 500_000.0, 5_650_000.0  # top-left corner of the 100 x 100 m test raster
TRANSFORM = Affine(1.0, 0.0, X0, 0.0, -1.0, Y0)  # 1 m pixels, north up
EXTENT = (X0, Y0 - 100, X0 + 100, Y0)
FULL = Window(0, 0, 100, 100)


def px_box(col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    """A polygon covering raster pixels ``[row0, row1) x [col0, col1)`` of :data:`TRANSFORM`."""
    return shapely.box(X0 + col0, Y0 - row1, X0 + col1, Y0 - row0)


def write(path: Path, geoms: list, values: list | None = None, *, crs: str | None = UTM, field: str = "class",
          **columns) -> Path:
    data = dict(columns)
    if values is not None:
        data[field] = values
    frame = gpd.GeoDataFrame(data, geometry=list(geoms), crs=crs)
    frame.to_file(path)
    return path


@pytest.fixture
def two_classes(tmp_path: Path) -> Path:
    return write(tmp_path / "labels.gpkg", [px_box(10, 10, 20, 20), px_box(50, 50, 70, 60), px_box(0, 80, 5, 90)],
                 ["tree", "building", "tree"])


# ---- reading ----------------------------------------------------------------------


def test_read_names_classes_and_ids(two_classes: Path) -> None:
    labels = read_labels(two_classes, class_field="class", crs=UTM, extents=[EXTENT])
    assert labels.class_names == ("background", "building", "tree")
    assert labels.num_classes == 3
    assert labels.frame["class_id"].tolist() == [2, 1, 2]
    assert labels.frame["class_id"].dtype == np.int64
    assert list(labels.frame.columns) == ["class_id", "geometry"]
    assert labels.crs.equals(UTM)
    assert labels.aoi is None
    assert labels.counts == {"building": 1, "tree": 2}
    assert labels.area_m2() == pytest.approx({"building": 200.0, "tree": 150.0})
    assert labels.path == str(two_classes)


@pytest.mark.parametrize("name", ["labels.gpkg", "labels.geojson", "labels.shp"])
def test_read_every_format(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, [px_box(10, 10, 20, 20), px_box(50, 50, 70, 60)], ["b", "a"])
    labels = read_labels(path, class_field="class", crs=UTM)
    assert labels.class_names == ("background", "a", "b")
    assert labels.frame["class_id"].tolist() == [2, 1]
    assert shapely.equals(labels.frame.geometry.iloc[0], px_box(10, 10, 20, 20))


def test_numeric_classes_sort_numerically(tmp_path: Path) -> None:
    path = write(tmp_path / "n.gpkg", [px_box(0, 0, 5, 5), px_box(10, 0, 15, 5), px_box(20, 0, 25, 5)], [10, 2, 1])
    labels = read_labels(path, class_field="class", crs=UTM)
    assert labels.class_names == ("background", "1", "2", "10")
    assert labels.frame["class_id"].tolist() == [3, 2, 1]


def test_given_classes_set_the_ids(two_classes: Path) -> None:
    labels = read_labels(two_classes, class_field="class", crs=UTM, classes=["tree", "building"])
    assert labels.class_names == ("background", "tree", "building")
    assert labels.frame["class_id"].tolist() == [1, 2, 1]


def test_given_classes_unexpected_value(two_classes: Path) -> None:
    with pytest.raises(ConfigError, match=r"labels\.gpkg.*not in --classes.*'building' \(1 label\).*Add them"):
        read_labels(two_classes, class_field="class", crs=UTM, classes=["tree"])


def test_given_classes_without_labels_warn(two_classes: Path) -> None:
    with pytest.warns(GeovisionWarning, match="'car' from --classes have no labels"):
        labels = read_labels(two_classes, class_field="class", crs=UTM, classes=["tree", "building", "car"])
    assert labels.counts == {"tree": 2, "building": 1, "car": 0}


@pytest.mark.parametrize(("classes", "match"), [
    (["background", "tree"], "must not name 'background'"),
    (["tree", "tree", "building"], "'tree' more than once"),
    ([], "non-empty class names"),
])
def test_bad_given_classes(two_classes: Path, classes: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        read_labels(two_classes, class_field="class", crs=UTM, classes=classes)


def test_background_label_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bg.gpkg", [px_box(0, 0, 5, 5), px_box(10, 0, 15, 5)], ["tree", "Background"])
    with pytest.raises(VectorContentError, match=r"bg\.gpkg.*1 label\(s\) have the class 'background'.*--aoi"):
        read_labels(path, class_field="class", crs=UTM)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VectorReadError, match=r"nowhere\.gpkg: cannot read the labels"):
        read_labels(tmp_path / "nowhere.gpkg", class_field="class", crs=UTM)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.gpkg"
    path.write_bytes(b"this is not a GeoPackage" * 10)
    with pytest.raises(VectorReadError, match=r"broken\.gpkg: cannot read the labels.*GeoPackage"):
        read_labels(path, class_field="class", crs=UTM)


def test_no_features(tmp_path: Path) -> None:
    path = tmp_path / "empty.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(VectorContentError, match=r"empty\.geojson: holds no features"):
        read_labels(path, class_field="class", crs=UTM)


def test_missing_class_field_lists_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "f.gpkg", [px_box(0, 0, 5, 5)], ["tree"], field="kind", note=["x"])
    with pytest.raises(ConfigError, match=r"f\.gpkg: has no field 'class'; its fields are: 'note', 'kind'|"
                                          r"f\.gpkg: has no field 'class'; its fields are: 'kind', 'note'"):
        read_labels(path, class_field="class", crs=UTM)


def test_null_classes_dropped_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "nulls.gpkg", [px_box(0, 0, 5, 5), px_box(10, 0, 15, 5), px_box(20, 0, 25, 5)],
                 ["tree", None, "  "])
    with pytest.warns(GeovisionWarning, match=r"nulls\.gpkg: 2 label\(s\) have no value in 'class'"):
        labels = read_labels(path, class_field="class", crs=UTM)
    assert labels.counts == {"tree": 1}


def test_all_null_classes(tmp_path: Path) -> None:
    path = write(tmp_path / "nulls.gpkg", [px_box(0, 0, 5, 5)], [None], type=["x"])
    with pytest.raises(VectorContentError, match=r"nulls\.gpkg: every label has an empty 'class'"):
        read_labels(path, class_field="class", crs=UTM)


@pytest.mark.parametrize(("task", "hint"), [("segmentation", "no area to burn"), ("detection", "Add Rectangle")])
def test_points_only(tmp_path: Path, task: str, hint: str) -> None:
    path = write(tmp_path / "points.gpkg", [shapely.Point(X0 + 1, Y0 - 1)] * 2 + [shapely.LineString(
        [(X0, Y0 - 1), (X0 + 5, Y0 - 5)])], ["tree"] * 3)
    match = rf"points\.gpkg: has no polygons \(found 2 Point, 1 LineString\).*{hint}"
    with pytest.raises(VectorContentError, match=match):
        read_labels(path, class_field="class", crs=UTM, task=task)


def test_mixed_geometries_keep_polygons(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.geojson", [px_box(0, 0, 5, 5), shapely.Point(X0 + 1, Y0 - 1)], ["tree", "tree"])
    with pytest.warns(GeovisionWarning, match=r"mixed\.geojson: 1 label feature\(s\) are not polygons \(1 Point\)"):
        labels = read_labels(path, class_field="class", crs=UTM)
    assert len(labels.frame) == 1


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_no_crs(tmp_path: Path) -> None:
    path = write(tmp_path / "nocrs.shp", [px_box(0, 0, 5, 5)], ["tree"], crs=None)
    with pytest.raises(VectorContentError, match=r"nocrs\.shp: no CRS is set.*ogr2ogr -a_srs EPSG:32631"):
        read_labels(path, class_field="class", crs=UTM)


def test_unknown_task(two_classes: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown task 'classification'"):
        read_labels(two_classes, class_field="class", crs=UTM, task="classification")  # type: ignore[arg-type]


def test_reprojected_label_burns_the_right_pixels(tmp_path: Path) -> None:
    square = gpd.GeoSeries([px_box(10, 20, 30, 35)], crs=UTM).to_crs("EPSG:4326")
    path = write(tmp_path / "wgs84.geojson", list(square), ["tree"], crs="EPSG:4326")
    labels = read_labels(path, class_field="class", crs=UTM, extents=[EXTENT])
    assert labels.crs.equals(UTM)
    mask = rasterize_window(labels, TRANSFORM, FULL)
    expected = np.zeros((100, 100), dtype=np.uint8)
    expected[20:35, 10:30] = 1
    np.testing.assert_array_equal(mask, expected)


def test_invalid_polygons_repaired(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(X0, Y0), (X0 + 10, Y0 - 10), (X0 + 10, Y0), (X0, Y0 - 10)])
    assert not bowtie.is_valid
    path = write(tmp_path / "bad.gpkg", [bowtie, px_box(50, 50, 60, 60)], ["tree", "tree"])
    with pytest.warns(GeovisionWarning, match=r"bad\.gpkg: 1 invalid label polygon\(s\) were repaired"):
        labels = read_labels(path, class_field="class", crs=UTM)
    geoms = labels.frame.geometry
    assert geoms.is_valid.all()
    assert set(geoms.geom_type) <= {"Polygon", "MultiPolygon"}
    assert geoms.iloc[0].area == pytest.approx(50.0)


def test_labels_outside_the_rasters_warn_and_are_dropped(two_classes: Path) -> None:
    small = (X0, Y0 - 50, X0 + 50, Y0)  # holds only the first label
    with pytest.warns(GeovisionWarning, match=r"labels\.gpkg: 2 of 3 label\(s\) lie outside every raster.*CRS"):
        labels = read_labels(two_classes, class_field="class", crs=UTM, extents=[small])
    assert len(labels.frame) == 1


def test_no_overlap_with_the_rasters(two_classes: Path) -> None:
    far = (X0 + 10_000, Y0 - 100, X0 + 10_100, Y0)
    with pytest.raises(VectorContentError, match=r"no overlap between labels and rasters.*labels\.gpkg.*510000.*CRS"):
        read_labels(two_classes, class_field="class", crs=UTM, extents=[far])


def test_several_layers_warn(tmp_path: Path) -> None:
    path = tmp_path / "multi.gpkg"
    gpd.GeoDataFrame({"class": ["tree"]}, geometry=[px_box(0, 0, 5, 5)], crs=UTM).to_file(path, layer="first")
    gpd.GeoDataFrame({"class": ["car"]}, geometry=[px_box(0, 0, 5, 5)], crs=UTM).to_file(path, layer="second")
    with pytest.warns(GeovisionWarning, match="2 layers.*'first'"):
        labels = read_labels(path, class_field="class", crs=UTM)
    assert labels.class_names == ("background", "tree")


# ---- AOI --------------------------------------------------------------------------


def test_aoi_ignore_outside_background_inside(tmp_path: Path) -> None:
    labels_path = write(tmp_path / "labels.gpkg", [px_box(10, 10, 20, 20), px_box(80, 10, 90, 20)], ["tree", "tree"])
    aoi_path = write(tmp_path / "aoi.geojson", [px_box(0, 0, 50, 100)], crs=UTM, name=["left half"])
    labels = read_labels(labels_path, class_field="class", crs=UTM, aoi=aoi_path, extents=[EXTENT])
    assert labels.aoi is not None and labels.aoi.area == pytest.approx(5000)
    mask = rasterize_window(labels, TRANSFORM, FULL)
    expected = np.full((100, 100), IGNORE, dtype=np.uint8)
    expected[:, :50] = 0
    expected[10:20, 10:20] = 1
    expected[10:20, 80:90] = 1  # a label outside the AOI still counts; only unlabelled pixels there are ignored
    np.testing.assert_array_equal(mask, expected)
    # windows wholly inside / outside the AOI
    assert (rasterize_window(labels, TRANSFORM, Window(40, 0, 10, 10)) == 0).all()
    assert (rasterize_window(labels, TRANSFORM, Window(40, 60, 10, 10)) == IGNORE).all()


def test_aoi_in_another_crs_is_reprojected_and_unioned(tmp_path: Path) -> None:
    labels_path = write(tmp_path / "labels.gpkg", [px_box(10, 10, 20, 20)], ["tree"])
    parts = gpd.GeoSeries([px_box(0, 0, 50, 50), px_box(50, 0, 100, 50)], crs=UTM).to_crs("EPSG:4326")
    aoi_path = write(tmp_path / "aoi.gpkg", list(parts), crs="EPSG:4326")
    labels = read_labels(labels_path, class_field="class", crs=UTM, aoi=aoi_path)
    assert labels.aoi.area == pytest.approx(5000, rel=1e-6)
    mask = rasterize_window(labels, TRANSFORM, FULL)
    assert (mask[:50] != IGNORE).all() and (mask[50:] == IGNORE).all()


def test_aoi_outside_the_rasters(tmp_path: Path) -> None:
    labels_path = write(tmp_path / "labels.gpkg", [px_box(10, 10, 20, 20)], ["tree"])
    aoi_path = write(tmp_path / "far_aoi.gpkg", [px_box(5000, 0, 5100, 100)])
    with pytest.raises(VectorContentError, match=r"far_aoi\.gpkg: the area of interest .* overlaps none of the"):
        read_labels(labels_path, class_field="class", crs=UTM, aoi=aoi_path, extents=[EXTENT])


def test_aoi_of_points(tmp_path: Path) -> None:
    labels_path = write(tmp_path / "labels.gpkg", [px_box(10, 10, 20, 20)], ["tree"])
    aoi_path = write(tmp_path / "aoi_points.gpkg", [shapely.Point(X0, Y0)])
    with pytest.raises(VectorContentError, match=r"aoi_points\.gpkg: has no polygons \(found 1 Point\)"):
        read_labels(labels_path, class_field="class", crs=UTM, aoi=aoi_path)


# ---- rasterize_window ---------------------------------------------------------------


def test_smaller_label_wins_where_labels_overlap(tmp_path: Path) -> None:
    # the small one first in the file: burn order must come from the areas, not the file
    path = write(tmp_path / "overlap.gpkg", [px_box(20, 20, 30, 30), px_box(0, 0, 60, 60), px_box(40, 40, 80, 80)],
                 ["car", "field", "road"])
    labels = read_labels(path, class_field="class", crs=UTM)
    mask = rasterize_window(labels, TRANSFORM, FULL)
    car, field, road = 1, 2, 3
    assert (mask[20:30, 20:30] == car).all()
    assert mask[10, 10] == field and mask[50, 50] == road and mask[70, 70] == road and mask[90, 90] == 0


def test_window_matches_the_full_raster(two_classes: Path) -> None:
    labels = read_labels(two_classes, class_field="class", crs=UTM)
    full = rasterize_window(labels, TRANSFORM, FULL)
    window = Window(row_off=5, col_off=45, height=30, width=50)
    part = rasterize_window(labels, TRANSFORM, window)
    assert part.shape == (30, 50) and part.dtype == np.uint8
    np.testing.assert_array_equal(part, full[window.slices])
    assert (rasterize_window(labels, TRANSFORM, Window(30, 30, 10, 10)) == 0).all()  # no label there


def test_pixel_centre_rule_matches_rasterio(tmp_path: Path) -> None:
    tri = shapely.Polygon([(X0 + 3.3, Y0 - 2.2), (X0 + 40.7, Y0 - 9.6), (X0 + 12.1, Y0 - 37.9)])
    path = write(tmp_path / "tri.gpkg", [tri], ["x"])
    labels = read_labels(path, class_field="class", crs=UTM)
    expected = rasterio.features.rasterize([(tri, 1)], out_shape=(100, 100), transform=TRANSFORM, dtype=np.uint8)
    np.testing.assert_array_equal(rasterize_window(labels, TRANSFORM, FULL), expected)


def test_labelset_pickles_without_its_tree(two_classes: Path) -> None:
    labels = read_labels(two_classes, class_field="class", crs=UTM)
    before = rasterize_window(labels, TRANSFORM, FULL)  # builds the cached tree
    again = pickle.loads(pickle.dumps(labels))
    assert isinstance(again, LabelSet) and again.class_names == labels.class_names
    np.testing.assert_array_equal(rasterize_window(again, TRANSFORM, FULL), before)


# ---- boxes_in_window ----------------------------------------------------------------


@pytest.fixture
def boxes_labels(tmp_path: Path) -> LabelSet:
    path = write(tmp_path / "boxes.gpkg", [
        px_box(10, 10, 20, 30),  # inside the window
        px_box(35, 5, 45, 15),  # 5 of 10 columns inside (visible 0.5)
        px_box(37, 20, 47, 30),  # 3 of 10 columns inside (visible 0.3)
        px_box(15, 35, 16, 36),  # 1 x 1 px: too small
        px_box(70, 70, 80, 80),  # outside
    ], ["car", "car", "truck", "car", "truck"])
    return read_labels(path, class_field="class", crs=UTM, task="detection")


def test_boxes_clipped_and_filtered(boxes_labels: LabelSet) -> None:
    window = Window(row_off=0, col_off=0, height=40, width=40)
    boxes, ids = boxes_in_window(boxes_labels, TRANSFORM, window)
    assert boxes.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_allclose(boxes, [[10, 10, 20, 30], [35, 5, 40, 15]])
    np.testing.assert_array_equal(ids, [1, 1])
    boxes, ids = boxes_in_window(boxes_labels, TRANSFORM, window, min_visible=0.25, min_size_px=1.0)
    np.testing.assert_allclose(boxes, [[10, 10, 20, 30], [35, 5, 40, 15], [37, 20, 40, 30], [15, 35, 16, 36]])
    np.testing.assert_array_equal(ids, [1, 1, 2, 1])


def test_boxes_in_window_pixels(boxes_labels: LabelSet) -> None:
    boxes, ids = boxes_in_window(boxes_labels, TRANSFORM, Window(row_off=60, col_off=65, height=30, width=30))
    np.testing.assert_allclose(boxes, [[5, 10, 15, 20]])
    np.testing.assert_array_equal(ids, [2])
    boxes, ids = boxes_in_window(boxes_labels, TRANSFORM, Window(row_off=50, col_off=0, height=10, width=10))
    assert boxes.shape == (0, 4) and ids.shape == (0,)


def test_boxes_with_a_rotated_transform(tmp_path: Path) -> None:
    rotated = TRANSFORM @ Affine.rotation(30)
    corners = [(10, 10), (20, 10), (20, 16), (10, 16)]  # a 10 x 6 px box in pixel space
    polygon = shapely.Polygon([(rotated.a * c + rotated.b * r + rotated.c, rotated.d * c + rotated.e * r + rotated.f)
                               for c, r in corners])
    path = write(tmp_path / "rot.gpkg", [polygon], ["car"])
    labels = read_labels(path, class_field="class", crs=UTM, task="detection")
    boxes, ids = boxes_in_window(labels, rotated, Window(row_off=5, col_off=5, height=40, width=40))
    np.testing.assert_allclose(boxes, [[5, 5, 15, 11]], atol=1e-4)
    np.testing.assert_array_equal(ids, [1])


def test_boxes_option_checks(boxes_labels: LabelSet) -> None:
    with pytest.raises(ConfigError, match="min_visible"):
        boxes_in_window(boxes_labels, TRANSFORM, FULL, min_visible=1.5)
