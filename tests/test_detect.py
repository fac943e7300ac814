"""Detection end to end: real torchvision detectors, a detector trained here, real GeoTIFFs and GeoPackages."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import torch
from click.testing import CliRunner
from conftest import UTM, write_raster
from detection_util import DARK, paint_squares
from models_util import bright_object_bundle

import geovision
from geovision.cli import main
from geovision.errors import TaskMismatchError, VectorContentError, VectorReadError
from geovision.models.bundle import load_bundle
from geovision.models.detection import DetectionPredictor
from geovision.models.registry import build_model, init_bundle
from geovision.tiling.grid import TileGrid

TILE, OVERLAP = 128, 32
PIXEL = 0.5
ORIGIN = (500_000.0, 5_650_000.0)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("arch", "encoder"),
    [("fasterrcnn", "resnet50"), ("retinanet", "resnet50"), ("fcos", "resnet50"), ("fasterrcnn", "resnet18"),
     ("fasterrcnn", "mobilenet_v3_large"), ("fcos", "tiny")],
)
def test_detectors_build_for_any_band_count_and_keep_the_tile_size(tmp_path: Path, arch: str, encoder: str) -> None:
    bundle = tmp_path / "det.safetensors"
    config = init_bundle(bundle, task="detection", arch=arch, encoder=encoder, bands=5, classes=["tree", "car"],
                         tile_size=256)
    assert config.class_names == ["background", "tree", "car"]
    config, state = load_bundle(bundle)
    predictor = DetectionPredictor(config, state, device="cpu", precision="fp32")
    # the transform batches only: a 256 px tile reaches the backbone at 256 px, not 800
    images, _ = predictor.model.transform([torch.zeros(5, 256, 256)])
    assert tuple(images.tensors.shape[-2:]) == (256, 256)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, size=(2, 5, 256, 256)).astype(np.uint8)
    out = predictor.predict(tiles, np.ones((2, 256, 256), bool))
    assert len(out) == 2
    for boxes, scores, labels in out:
        assert boxes.shape[1:] == (4,) and len(scores) == len(labels) == len(boxes)
        assert np.all((boxes >= 0) & (boxes <= 256))
        assert np.all((labels >= 1) & (labels <= 2))


def test_detection_arch_errors(tmp_path: Path) -> None:
    with pytest.raises(geovision.errors.ConfigError, match="fcos"):
        init_bundle(tmp_path / "a.safetensors", task="detection", arch="fcoss", encoder="resnet18", bands=3,
                    classes=["x"])
    with pytest.raises(geovision.errors.ConfigError, match="mobilenet_v3_large"):
        init_bundle(tmp_path / "b.safetensors", task="detection", arch="fcos", encoder="mobilenet_v3_large",
                    bands=3, classes=["x"])
    with pytest.raises(geovision.errors.ConfigError, match="valid parameters"):
        init_bundle(tmp_path / "c.safetensors", task="detection", arch="fcos", encoder="resnet18", bands=3,
                    classes=["x"], arch_params={"score_tresh": 0.1})


def test_model_init_cli_makes_a_detection_bundle(tmp_path: Path) -> None:
    out = tmp_path / "d.safetensors"
    result = CliRunner().invoke(main, ["model", "init", "--task", "detection", "--arch", "retinanet",
                                       "--encoder", "resnet18", "--bands", "4", "--classes", "tree",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    config, state = load_bundle(out)
    assert (config.task, config.arch, config.encoder, config.class_names) == (
        "detection", "retinanet", "resnet18", ["background", "tree"])
    build_model(config).load_state_dict(state)  # the saved weights fit the architecture


# --------------------------------------------------------------------------- scene


def seam_scene(rows: int = 576, cols: int = 640, seed: int = 1) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Bright squares on tile edges, seams and four-tile corners of the test grid, plus some elsewhere."""
    rng = np.random.default_rng(seed)
    grid = TileGrid(rows, cols, TILE, OVERLAP)
    edges_r = sorted(({s for s in grid.row_starts} | {s + TILE for s in grid.row_starts}) - {0, rows})
    edges_c = sorted(({s for s in grid.col_starts} | {s + TILE for s in grid.col_starts}) - {0, cols})
    centres = [(r, c) for r in edges_r for c in edges_c]  # corners
    centres += [(int(rng.integers(20, rows - 20)), c) for c in edges_c for _ in range(2)]  # vertical seams
    centres += [(r, int(rng.integers(20, cols - 20))) for r in edges_r for _ in range(2)]  # horizontal seams
    centres += [(int(rng.integers(20, rows - 20)), int(rng.integers(20, cols - 20))) for _ in range(15)]
    boxes: list[tuple[int, int, int, int]] = []
    for r, c in centres:
        s = int(rng.integers(12, 20))
        x0, y0 = int(c - s // 2 + rng.integers(-2, 3)), int(r - s // 2 + rng.integers(-2, 3))
        box = (x0, y0, x0 + s, y0 + s)
        if x0 < 1 or y0 < 1 or box[2] > cols - 1 or box[3] > rows - 1:
            continue
        if any(not (box[2] + 4 <= b[0] or b[2] + 4 <= box[0] or box[3] + 4 <= b[1] or b[3] + 4 <= box[1])
               for b in boxes):
            continue
        boxes.append(box)
    img = rng.normal(DARK, 8, size=(3, rows, cols))
    paint_squares(img, boxes, rng)
    return img.clip(0, 255).astype(np.uint8), boxes


def to_map(box: tuple[float, float, float, float]) -> shapely.Polygon:
    x0, y0, x1, y1 = box
    return shapely.box(ORIGIN[0] + x0 * PIXEL, ORIGIN[1] - y1 * PIXEL, ORIGIN[0] + x1 * PIXEL, ORIGIN[1] - y0 * PIXEL)


def match(found: gpd.GeoDataFrame, truth: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """IoU matrix (truth x found) and, per truth box, its best IoU."""
    t = np.array([to_map(b) for b in truth], dtype=object)
    f = np.asarray(found.geometry.values, dtype=object)
    inter = shapely.area(shapely.intersection(t[:, None], f[None, :]))
    union = shapely.area(t)[:, None] + shapely.area(f)[None, :] - inter
    iou = inter / union
    return iou, iou.max(axis=1)


@pytest.fixture(scope="module")
def detector(square_detector: Path) -> Path:
    return square_detector


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int, int, int]]]:
    from affine import Affine

    img, boxes = seam_scene()
    path = tmp_path_factory.mktemp("scene") / "squares.tif"
    write_raster(path, img, transform=Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]))
    return path, boxes


def test_trained_detector_counts_every_object_once_across_seams(tmp_path: Path, detector: Path, squares) -> None:
    raster, truth = squares
    out = tmp_path / "objects.gpkg"
    result = geovision.predict(raster, detector, out, tile=TILE, overlap=OVERLAP, progress=False)
    found = pyogrio.read_dataframe(out, layer="predictions")
    assert found.crs.to_epsg() == 32631
    iou, best = match(found, truth)
    assert len(truth) >= 40
    # every object found, as one box, whole
    assert len(found) == len(truth), (len(found), len(truth))
    assert (best >= 0.5).all() and np.median(best) >= 0.8, np.sort(best)[:5]
    assert ((iou >= 0.5).sum(axis=0) == 1).all()  # no found box without its object
    assert set(found.columns) >= {"class_id", "class_name", "score", "area_m2", "width_m", "height_m"}
    assert (found["class_name"] == "square").all() and (found["score"] >= 0.5).all()
    # ground measures: a box of w x h pixels is w*0.5 m by h*0.5 m
    bounds = found.geometry.bounds
    np.testing.assert_allclose(found["width_m"], bounds["maxx"] - bounds["minx"], rtol=1e-9)
    np.testing.assert_allclose(found["height_m"], bounds["maxy"] - bounds["miny"], rtol=1e-9)
    np.testing.assert_allclose(found["area_m2"], found.geometry.area, rtol=1e-9)
    summary = json.loads(out.with_name("objects.summary.json").read_text())
    assert summary["classes"]["square"]["count"] == len(truth)
    assert result.class_rasters == [] and not out.with_name("objects.classes.tif").exists()
    # without merging, the tiles' own boxes count objects on seams twice
    assert (found["tiles"] > 1).sum() >= 20


def test_points_and_zones_in_another_crs(tmp_path: Path, detector: Path, squares) -> None:
    raster, truth = squares
    # two zones in EPSG:4326: the left and the right half of the raster
    cols, rows = 640, 576
    # the zone border runs where no object is, so which zone holds each object is beyond doubt
    half = next(x for x in range(cols // 2, cols) if all(b[2] + 3 < x or x < b[0] - 3 for b in truth))
    left = to_map((0, 0, half, rows))
    right = to_map((half, 0, cols, rows))
    zones = gpd.GeoDataFrame({"name": ["west", "east"]}, geometry=[left, right], crs=UTM).to_crs("EPSG:4326")
    zones_path = tmp_path / "zones.geojson"
    zones.to_file(zones_path)
    out = tmp_path / "objects.gpkg"
    result = geovision.predict(raster, detector, out, tile=TILE, overlap=OVERLAP, points=True, zones=zones_path,
                               progress=False)
    layers = {name for name, _ in pyogrio.list_layers(out)}
    assert layers == {"predictions", "points", "zones"}
    points = pyogrio.read_dataframe(out, layer="points")
    assert len(points) == len(truth) and (points.geom_type == "Point").all()
    zl = pyogrio.read_dataframe(out, layer="zones")
    centres_x = np.array([(b[0] + b[2]) / 2 for b in truth])
    expected = {"west": int((centres_x < half).sum()), "east": int((centres_x >= half).sum())}
    got = dict(zip(zl["name"], zl["count_square"]))
    assert got == expected
    areas = {"west": half * rows * PIXEL**2 / 10_000, "east": (cols - half) * rows * PIXEL**2 / 10_000}
    np.testing.assert_allclose(zl["area_ha"], [areas[n] for n in zl["name"]], rtol=5e-3)
    np.testing.assert_allclose(zl["density_square_per_ha"], zl["count_square"] / zl["area_ha"], rtol=1e-9)
    summary = result.summary
    assert {z["name"]: z["counts"]["square"] for z in summary["zones"]} == expected
    assert result.layers == {"points": out, "zones": out}


def test_single_layer_formats_write_points_and_zones_beside(tmp_path: Path, detector: Path, squares) -> None:
    raster, truth = squares
    zones = gpd.GeoDataFrame({"id": [7]}, geometry=[to_map((0, 0, 640, 576))], crs=UTM)
    zones.to_file(tmp_path / "zones.gpkg")
    out = tmp_path / "objects.geojson"
    geovision.predict(raster, detector, out, tile=TILE, overlap=OVERLAP, points=True,
                      zones=tmp_path / "zones.gpkg", progress=False)
    assert len(gpd.read_file(out)) == len(truth)
    assert len(gpd.read_file(tmp_path / "objects.points.geojson")) == len(truth)
    assert gpd.read_file(tmp_path / "objects.zones.geojson")["count_total"].tolist() == [len(truth)]


def test_nodata_never_receives_an_object(tmp_path: Path, detector: Path) -> None:
    from affine import Affine

    img, truth = seam_scene(256, 256, seed=3)
    mask = np.ones((256, 256), bool)
    mask[:, :128] = False  # the left half is nodata (an internal mask)
    path = write_raster(tmp_path / "masked.tif", img, mask=mask,
                        transform=Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]))
    out = tmp_path / "masked.gpkg"
    geovision.predict(path, detector, out, tile=TILE, overlap=OVERLAP, progress=False)
    found = pyogrio.read_dataframe(out)
    centres = found.geometry.centroid.x.to_numpy()
    assert len(found) > 0 and (centres >= ORIGIN[0] + 128 * PIXEL).all()


# --------------------------------------------------------------------------- bad input


def test_bad_zones_and_task_mismatch(tmp_path: Path, detector: Path, squares) -> None:
    raster, _ = squares
    out = tmp_path / "x.gpkg"

    def run(**kw):
        return geovision.predict(raster, kw.pop("model", detector), out, tile=TILE, overlap=OVERLAP,
                                 progress=False, **kw)

    (tmp_path / "broken.gpkg").write_bytes(b"not a geopackage")
    with pytest.raises(VectorReadError, match="broken.gpkg"):
        run(zones=tmp_path / "broken.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.Point(ORIGIN)], crs=UTM).to_file(tmp_path / "points.gpkg")
    with pytest.raises(VectorContentError, match="no polygons"):
        run(zones=tmp_path / "points.gpkg")
    pyogrio.write_dataframe(gpd.GeoDataFrame(geometry=[to_map((0, 0, 50, 50))]), tmp_path / "nocrs.gpkg")
    with pytest.raises(VectorContentError, match="no CRS"):
        run(zones=tmp_path / "nocrs.gpkg")
    with pytest.raises(TaskMismatchError, match="detection model"):
        run(task="segmentation")
    with pytest.raises(TaskMismatchError, match="--probabilities"):
        run(probabilities=True)
    seg = bright_object_bundle(tmp_path / "seg.safetensors", tile=TILE)
    with pytest.raises(TaskMismatchError, match="--points"):
        run(model=seg, points=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gpkg", "nocrs.gpkg", "points.gpkg",
                                                          "seg.safetensors"]


def test_cli_detection_run(tmp_path: Path, detector: Path, squares) -> None:
    raster, truth = squares
    out = tmp_path / "cli.gpkg"
    result = CliRunner().invoke(main, ["predict", str(raster), "--model", str(detector), "--out", str(out),
                                       "--tile", str(TILE), "--overlap", str(OVERLAP), "--points",
                                       "--score-threshold", "0.5"])
    assert result.exit_code == 0, result.output
    assert "square" in result.output
    assert len(pyogrio.read_dataframe(out, layer="predictions")) == len(truth)
    result = CliRunner().invoke(main, ["predict", str(raster), "--model", str(detector), "--out",
                                       str(tmp_path / "y.gpkg"), "--zones", str(tmp_path / "missing.gpkg")])
    assert result.exit_code == 1 and "missing.gpkg" in result.output


def test_review_band_flags_doubtful_detections(tmp_path: Path, detector: Path, squares) -> None:
    raster, truth = squares
    out = tmp_path / "review.gpkg"
    result = geovision.predict(raster, detector, out, tile=TILE, overlap=OVERLAP, score_threshold=0.3,
                               review_band=(0.3, 0.75), progress=False)
    found = pyogrio.read_dataframe(out, layer="predictions")
    review = pyogrio.read_dataframe(out, layer="review")
    doubtful = (found["score"] >= 0.3) & (found["score"] < 0.75)
    assert (found["review"] == doubtful.astype(int)).all()
    assert len(review) == int(doubtful.sum()) == result.summary["review"]["count"] > 0
    assert ((review["score"] >= 0.3) & (review["score"] < 0.75)).all()
    with pytest.raises(Exception, match="review band"):
        geovision.predict(raster, detector, tmp_path / "x.gpkg", review_band=(0.6, 0.3), progress=False)
