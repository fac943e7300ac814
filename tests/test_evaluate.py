"""geovision evaluate: real vector files in different CRSs, hand-computed expectations."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
import shapely
from click.testing import CliRunner
from conftest import UTM

from geovision.cli import main
from geovision.errors import OutputExistsError, VectorReadError
from geovision.workflows.evaluate import evaluate

X0, Y0 = 500_000.0, 5_650_000.0


def square(col: float, row: float, size: float = 10.0) -> shapely.Polygon:
    return shapely.box(X0 + col, Y0 + row, X0 + col + size, Y0 + row + size)


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    # truth: four 10 m buildings; predictions: an exact hit, a hit shifted 2 m (IoU 80/120 = 2/3),
    # a miss shifted 5 m (IoU 50/150 = 1/3: FP, and its truth FN), a false positive far away,
    # and nothing for the fourth building (FN)
    truth = gpd.GeoDataFrame({"class_name": ["building"] * 4},
                             geometry=[square(0, 0), square(30, 0), square(60, 0), square(90, 0)], crs=UTM)
    pred = gpd.GeoDataFrame({"class_name": ["building"] * 4, "score": [0.9, 0.8, 0.7, 0.6]},
                            geometry=[square(0, 0), square(32, 0), square(65, 0), square(0, 50)], crs=UTM)
    truth_path, pred_path = tmp_path / "truth.geojson", tmp_path / "pred.gpkg"
    truth.to_crs("EPSG:4326").to_file(truth_path)  # another CRS: moved to the predictions' CRS
    pred.to_file(pred_path)
    return pred_path, truth_path


def test_object_and_area_metrics_by_hand(tmp_path: Path, scene) -> None:
    pred, truth = scene
    result = evaluate(pred, truth, tmp_path / "eval")
    o = result.metrics["objects"]["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (2, 2, 2)
    assert o["precision"] == pytest.approx(0.5) and o["recall"] == pytest.approx(0.5) and o["f1"] == pytest.approx(0.5)
    assert o["count_error"] == 0
    # area: truth 400 m², prediction 400 m²; overlap 100 + 80 + 50 = 230 m² (reprojection costs < 0.01 m²)
    b = result.metrics["areas"]["per_class"]["building"]
    assert b["iou"] == pytest.approx(230 / 570, abs=1e-4)
    assert b["true_area_m2"] == pytest.approx(400, abs=0.05) and b["pred_area_m2"] == pytest.approx(400, abs=0.05)
    errors = {name: pyogrio.read_dataframe(tmp_path / "eval" / "errors.gpkg", layer=name)
              for name in ("predictions", "truth")}
    assert errors["predictions"]["status"].tolist() == ["TP", "TP", "FP", "FP"]
    assert errors["truth"]["status"].tolist() == ["TP", "TP", "FN", "FN"]
    assert errors["predictions"]["iou"].round(4).tolist()[:2] == [1.0, round(2 / 3, 4)]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["objects"]["overall"]["tp"] == 2
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0
    assert (tmp_path / "eval" / "pr_curve.png").stat().st_size > 0
    assert "average_precision" in saved and len(saved["confidence_bands"]) == 3


def test_aoi_restricts_scoring(tmp_path: Path, scene) -> None:
    pred, truth = scene
    aoi = gpd.GeoDataFrame(geometry=[shapely.box(X0 - 5, Y0 - 5, X0 + 50, Y0 + 20)], crs=UTM)
    aoi.to_file(tmp_path / "aoi.gpkg")
    result = evaluate(pred, truth, tmp_path / "eval", aoi=tmp_path / "aoi.gpkg")
    o = result.metrics["objects"]["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (2, 0, 0)


def test_bad_inputs_and_cli(tmp_path: Path, scene) -> None:
    pred, truth = scene
    (tmp_path / "broken.gpkg").write_bytes(b"nope")
    with pytest.raises(VectorReadError, match="broken.gpkg"):
        evaluate(tmp_path / "broken.gpkg", truth, tmp_path / "e1")
    evaluate(pred, truth, tmp_path / "e2")
    with pytest.raises(OutputExistsError):
        evaluate(pred, truth, tmp_path / "e2")
    result = CliRunner().invoke(main, ["evaluate", "--pred", str(pred), "--truth", str(truth), "--out",
                                       str(tmp_path / "e3")])
    assert result.exit_code == 0, result.output
    assert "'tp': 2" in result.output


def test_class_rasters_pixel_by_pixel(tmp_path: Path) -> None:
    """A class raster against a truth raster and against truth polygons burned on its grid."""
    import numpy as np
    from affine import Affine
    from conftest import write_raster

    transform = Affine(0.5, 0, X0, 0, -0.5, Y0)
    truth = np.zeros((40, 40), np.uint8)
    truth[10:20, 10:20] = 1  # 100 pixels of building
    pred = np.zeros((40, 40), np.uint8)
    pred[10:20, 15:25] = 1  # shifted 5 px: 50 right, 50 false positive, 50 missed
    pred[0, :] = 255  # a nodata row: not scored
    truth_tif = write_raster(tmp_path / "truth.tif", truth, transform=transform)
    pred_tif = write_raster(tmp_path / "pred.tif", pred, transform=transform, nodata=255)
    result = evaluate(pred_tif, truth_tif, tmp_path / "e1", classes=["background", "building"])
    b = result.metrics["areas"]["per_class"]["building"]
    assert b["iou"] == pytest.approx(50 / 150) and b["precision"] == pytest.approx(0.5)
    assert b["true_area_m2"] == pytest.approx(100 * 0.25) and b["pred_area_m2"] == pytest.approx(100 * 0.25)
    # 1600 pixels less the nodata row = 1560 scored; 50 TP, 50 FP, 50 FN, the rest background
    assert result.metrics["areas"]["confusion"] == [[1560 - 150, 50], [50, 50]]
    # the same truth as a polygon (in another CRS) burned on the class raster's grid
    poly = gpd.GeoDataFrame({"class_name": ["building"]},
                            geometry=[shapely.box(X0 + 5, Y0 - 10, X0 + 10, Y0 - 5)], crs=UTM).to_crs("EPSG:3857")
    poly.to_file(tmp_path / "truth.gpkg")
    result = evaluate(pred_tif, tmp_path / "truth.gpkg", tmp_path / "e2", classes=["background", "building"])
    assert result.metrics["areas"]["per_class"]["building"]["iou"] == pytest.approx(50 / 150, abs=0.02)
