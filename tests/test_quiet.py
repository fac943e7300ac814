"""Library calls print nothing: only the CLI prints tables and progress.

Each workflow runs on small real inputs with its default options while the process's
standard output and error are captured at the file-descriptor level (so a stray
``print`` or a progress bar drawn by a dependency would show up too).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from click.testing import CliRunner
from conftest import UTM, scene, write_raster
from models_util import bright_object_bundle
from test_stress import BANDS, px_box, synthetic
from test_train import SMALL_UNET, labelled_scene

import geovision
from geovision.cli import main
from geovision.engine.progress import ProgressEvent
from geovision.workflows.evaluate import evaluate
from geovision.workflows.predict import predict
from geovision.workflows.stress import stress


def _quiet(capfd: pytest.CaptureFixture[str]) -> None:
    out, err = capfd.readouterr()
    assert out == ""
    assert "it/s" not in err and "tile/s" not in err and "block/s" not in err, err  # no progress bar


def test_predict_prints_nothing_and_reports_progress_as_events(tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    img, _ = scene(300, 300, seed=2, n_objects=6)
    raster = write_raster(tmp_path / "s.tif", img)
    bundle = bright_object_bundle(tmp_path / "b.safetensors")
    capfd.readouterr()
    result = predict(raster, bundle, tmp_path / "p.gpkg", tile=128, overlap=32)
    _quiet(capfd)
    assert result.counts["object"] == result.summary["classes"]["object"]["count"] > 0

    events: list[ProgressEvent] = []
    predict(raster, bundle, tmp_path / "q.gpkg", tile=128, overlap=32, progress=events.append)
    _quiet(capfd)
    assert events[-1].closed and events[-1].done == events[-1].total == result.summary["tiles_processed"]
    assert [e.done for e in events] == sorted(e.done for e in events)


def test_stress_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    raster, fields = synthetic(tmp_path, 300, 300, fields=[px_box(10, 10, 150, 150), px_box(160, 160, 290, 290)],
                               patches=[(40, 40, 80, 80, "severe")])
    capfd.readouterr()
    result = stress(raster, fields, tmp_path / "f.gpkg", bands=BANDS, scale=1e-4)
    _quiet(capfd)
    assert result.summary["fields"]["count"] == 2


def test_train_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    raster, labels, _ = labelled_scene(tmp_path, 320, 320)
    capfd.readouterr()
    epochs: list[dict] = []
    result = geovision.train(raster, labels, tmp_path / "m.safetensors", class_field="kind", tile=64, epochs=2,
                             batch_size=4, on_epoch=epochs.append, **SMALL_UNET)
    _quiet(capfd)
    assert [e["epoch"] for e in epochs] == [1, 2] and len(result.history) == 2


def test_evaluate_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    boxes = [shapely.box(500_000 + 20 * i, 5_650_000, 500_010 + 20 * i, 5_650_010) for i in range(3)]
    truth = gpd.GeoDataFrame({"class_name": ["building"] * 3}, geometry=boxes, crs=UTM)
    pred = gpd.GeoDataFrame({"class_name": ["building"] * 2, "score": [0.9, 0.8]}, geometry=boxes[:2], crs=UTM)
    truth.to_file(tmp_path / "t.gpkg")
    pred.to_file(tmp_path / "p.gpkg")
    capfd.readouterr()
    result = evaluate(pred=tmp_path / "p.gpkg", truth=tmp_path / "t.gpkg", out=tmp_path / "eval")
    _quiet(capfd)
    assert result.metrics["objects"]["overall"]["tp"] == 2


def test_the_cli_prints_the_table(tmp_path: Path) -> None:
    img, _ = scene(300, 300, seed=2, n_objects=6)
    raster = write_raster(tmp_path / "s.tif", img)
    bundle = bright_object_bundle(tmp_path / "b.safetensors")
    run = CliRunner().invoke(main, ["predict", str(raster), "-m", str(bundle), "-o", str(tmp_path / "p.gpkg"),
                                    "--tile", "128", "--overlap", "32"])
    assert run.exit_code == 0, run.output
    assert "tiles processed" in run.output and "object" in run.output
    quiet = CliRunner().invoke(main, ["predict", str(raster), "-m", str(bundle), "-o", str(tmp_path / "q.gpkg"),
                                      "--tile", "128", "--overlap", "32", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""
