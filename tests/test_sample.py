"""The built-in sample: a deterministic georeferenced scene, the shipped model, the demo end to end."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from geovision.errors import BundleError, ConfigError, OutputExistsError
from geovision.models.bundle import read_config
from geovision.sample import (
    BAND_NAMES,
    BUILDING,
    NODATA,
    TREE,
    TREE_MIN_VISIBLE,
    TREES_LAYER,
    make_sample_scene,
    read_tree_truth,
    render_scene,
    tree_truth_path,
)
from geovision.workflows import demo
from geovision.workflows.demo import run_demo, sample_bundle, score_buildings


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = make_sample_scene(tmp_path / "a.tif", size=256, seed=3)
    b = make_sample_scene(tmp_path / "b.tif", size=256, seed=3)
    c = make_sample_scene(tmp_path / "c.tif", size=256, seed=4)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()
    assert a.truth_path == tmp_path / "a.truth.tif"


def test_scene_is_georeferenced_with_nodata_and_truth(tmp_path: Path) -> None:
    scene = make_sample_scene(tmp_path / "s.tif", size=512, seed=0)
    with rasterio.open(scene.path) as ds:
        assert ds.crs.to_epsg() == 32636
        assert (ds.count, ds.dtypes, ds.nodata) == (4, ("uint8",) * 4, 0)
        assert ds.descriptions == BAND_NAMES
        assert ColorInterp.alpha not in ds.colorinterp  # NIR is data, not transparency
        assert ds.transform.a == pytest.approx(0.3) and ds.transform.e == pytest.approx(-0.3)
        assert (ds.transform.c, ds.transform.f) == (450_000.0, 40_000.0)
        assert ds.block_shapes == [(256, 256)] * 4
        image = ds.read()
        valid = ds.dataset_mask() > 0
    assert 0.005 < (~valid).mean() < 0.2  # an irregular nodata strip along one edge
    assert (image[:, valid] >= 1).all() and (image[:, ~valid] == 0).all()
    truth = scene.truth()
    assert set(np.unique(truth)) == {0, 1, NODATA}
    assert np.array_equal(truth == NODATA, ~valid)
    assert scene.buildings > 0


def test_render_matches_the_file_and_labels_buildings(tmp_path: Path) -> None:
    arrays = render_scene(256, seed=5)
    scene = make_sample_scene(tmp_path / "s.tif", size=256, seed=5)
    with rasterio.open(scene.path) as ds:
        assert np.array_equal(ds.read(), arrays.image)
    assert np.array_equal(scene.truth() == 1, arrays.land_cover == BUILDING)



def test_tree_boxes_lie_on_visible_crowns() -> None:
    arrays = render_scene(512, seed=7)
    boxes, crowns = arrays.tree_bbox_xyxy, arrays.tree_crowns
    assert len(boxes) >= 5 and boxes.shape == (len(crowns), 4) and crowns.shape[1] == 3
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 512).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    tree = arrays.land_cover == TREE
    covered = np.zeros_like(tree)
    for (x0, y0, x1, y1), (cx, cy, r) in zip(boxes.astype(int), crowns):
        inside = tree[y0:y1, x0:x1]
        # every side of the box touches tree pixels (the box is the bounds of visible crown pixels)
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # ... of this crown: the box lies within its disc's bounds (one pixel of slack)
        assert x0 >= cx - r - 1 and x1 <= cx + r + 1 and y0 >= cy - r - 1 and y1 <= cy + r + 1
        # a crown counts when at least half of its pixels in the scene are still tree
        rows, cols = np.mgrid[0:512, 0:512]
        disc = np.hypot(rows + 0.5 - cy, cols + 0.5 - cx) <= r
        assert (tree & disc).sum() >= TREE_MIN_VISIBLE * disc.sum()
        covered[y0:y1, x0:x1] = True
    assert covered[tree].mean() > 0.9  # nearly every tree pixel belongs to a recorded crown


def test_hidden_crowns_are_left_out() -> None:
    """Crowns under buildings or the nodata strip are dropped; the rest are kept."""
    from geovision.sample import _Painter

    painter = _Painter(1024, 0.3, np.random.default_rng(3))
    arrays = painter.paint()
    drawn = len(painter.crowns)
    assert 0 < len(arrays.tree_bbox_xyxy) < drawn  # some crowns are hidden at this seed, not all
    for x0, y0, x1, y1 in arrays.tree_bbox_xyxy.astype(int):
        assert arrays.valid[y0:y1, x0:x1].any()


def test_tree_truth_file(tmp_path: Path) -> None:
    scene = make_sample_scene(tmp_path / "s.tif", size=512, seed=7)
    arrays = render_scene(512, seed=7)
    assert scene.trees_path == tree_truth_path(scene.path) == tmp_path / "s.trees.gpkg"
    assert scene.trees == len(arrays.tree_bbox_xyxy) > 0
    frame = read_tree_truth(scene.path)
    assert frame.crs.to_epsg() == 32636
    assert len(frame) == scene.trees and set(frame["class_name"]) == {"tree"}
    import pyogrio

    assert [name for name, _ in pyogrio.list_layers(scene.trees_path)] == [TREES_LAYER]
    # map boxes are the pixel boxes through the scene's transform
    with rasterio.open(scene.path) as ds:
        transform, bounds = ds.transform, ds.bounds
    boxes = arrays.tree_bbox_xyxy
    x0, y1 = transform.c + boxes[:, 0] * transform.a, transform.f + boxes[:, 1] * transform.e
    x1, y0 = transform.c + boxes[:, 2] * transform.a, transform.f + boxes[:, 3] * transform.e
    np.testing.assert_allclose(frame.geometry.bounds.to_numpy(), np.column_stack([x0, y0, x1, y1]))
    total = frame.total_bounds
    assert total[0] >= bounds.left and total[1] >= bounds.bottom and total[2] <= bounds.right and total[3] <= bounds.top
    assert (frame["radius_m"].between(1.5, 5.0)).all()


def test_tree_truth_is_deterministic(tmp_path: Path) -> None:
    a = make_sample_scene(tmp_path / "a.tif", size=256, seed=11)
    b = make_sample_scene(tmp_path / "b.tif", size=256, seed=11)
    c = make_sample_scene(tmp_path / "c.tif", size=256, seed=12)
    ta, tb, tc = (read_tree_truth(s.path) for s in (a, b, c))
    assert len(ta) > 0
    assert ta.geometry.geom_equals_exact(tb.geometry, tolerance=0).all()
    assert len(ta) != len(tc) or not ta.geometry.geom_equals_exact(tc.geometry, tolerance=0).all()
    make_sample_scene(tmp_path / "a.tif", size=256, seed=12)  # rewriting replaces the boxes
    assert len(read_tree_truth(a.path)) == len(tc)


def test_scene_without_trees_writes_an_empty_layer(tmp_path: Path) -> None:
    scene = make_sample_scene(tmp_path / "s.tif", size=64, seed=1)
    frame = read_tree_truth(scene.path)
    assert scene.trees == len(frame) == 0 and frame.crs.to_epsg() == 32636


@pytest.mark.parametrize("kwargs", [{"crs": "EPSG:4326"}, {"size": 10}, {"pixel_m": 0.0}])
def test_bad_scene_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_sample_scene(tmp_path / "s.tif", **kwargs)


def test_shipped_bundle_reads_rgb_of_the_4_band_scene(tmp_path: Path) -> None:
    with sample_bundle() as path:
        config = read_config(path)
        size = path.stat().st_size
    assert size <= 8_000_000
    assert config.task == "segmentation"
    assert config.class_names == ["background", "building"]
    assert config.bands == [1, 2, 3] and config.band_names == list(BAND_NAMES[:3])
    assert config.in_channels == 3 and config.tile_size == 512
    assert config.ground_resolution_m == pytest.approx(0.3)
    assert config.normalization.method == "meanstd"
    assert 0 not in config.provenance["train_seeds"]  # seed 0 is the demo scene
    assert config.provenance["heldout"]["building_iou"] >= 0.85
    scene = make_sample_scene(tmp_path / "s.tif", size=64, seed=0)
    with rasterio.open(scene.path) as ds:
        assert ds.count == 4 and max(config.bands) <= ds.count


def test_score_buildings() -> None:
    truth = np.zeros((10, 10), np.uint8)
    truth[1:4, 1:4] = 1  # 9 px
    truth[6:8, 6:8] = 1  # 4 px, missed
    truth[:, 9] = NODATA
    classes = np.zeros((10, 10), np.uint8)
    classes[1:4, 1:5] = 1  # 9 hits, 3 false
    score = score_buildings(classes, truth)
    assert score.iou == pytest.approx(9 / 16)
    assert (score.truth_objects, score.matched_objects) == (2, 1)
    assert score_buildings(classes, truth, min_area_px=5).truth_objects == 1


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyogrio

    result = run_demo(tmp_path, size=768, progress=True)  # 768 px: the smallest seed-0 scene with fields
    for path in (result.image, result.truth, result.vector, result.classes, result.probabilities, result.summary,
                 result.gpkg, result.report_html):
        assert path.exists() and path.parent == tmp_path
    assert result.iou >= 0.7
    assert result.buildings_found >= 1 and result.truth_buildings >= 1
    assert len(gpd.read_file(result.vector)) == result.buildings_found
    assert {name for name, _ in pyogrio.list_layers(result.gpkg)} == {"buildings", "trees", "fields", "stress"}
    assert result.trees_found >= 0.7 * result.truth_trees and result.trees_matched >= 0.7 * result.trees_found
    assert result.fields == 3 and result.truth_stressed_ha > 0
    assert 0.5 * result.truth_stressed_ha <= result.stressed_ha <= 2 * result.truth_stressed_ha
    summary = json.loads(result.summary.read_text())
    assert summary["scores"]["trees"]["truth"] == result.truth_trees and "tree" in summary["classes"]
    html = result.report_html.read_text()
    assert "leaflet" in html.lower() and "stress" in html
    assert capsys.readouterr().out == ""  # the library prints nothing; the CLI prints the report paragraph
    paragraph = result.report()
    assert f"{result.iou:.3f}" in paragraph and str(result.report_html) in paragraph
    with pytest.raises(OutputExistsError, match="overwrite"):
        run_demo(tmp_path, size=768, overwrite=False, progress=False)


def test_demo_without_the_shipped_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "SAMPLE_BUNDLE", "missing.safetensors")
    with pytest.raises(BundleError, match="train_sample_model.py"):
        run_demo(tmp_path / "out", size=512, progress=False)
    assert not (tmp_path / "out").exists()
