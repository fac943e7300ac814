"""The geovision command: model init / info and predict, through click's runner and a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
from click.testing import CliRunner
from conftest import scene, write_raster
from models_util import bright_object_bundle

from geovision.cli import main


def test_model_init_and_info(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    runner = CliRunner()
    result = runner.invoke(main, ["model", "init", "--task", "segmentation", "--arch", "unet", "--encoder",
                                  "resnet18", "--bands", "3", "--classes", "background,building", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = runner.invoke(main, ["model", "info", str(out), "--json"])
    config = json.loads(info.output)
    assert config["arch"] == "unet" and config["encoder"] == "resnet18" and config["in_channels"] == 3
    assert [c["name"] for c in config["classes"]] == ["background", "building"]
    again = runner.invoke(main, ["model", "init", "--bands", "3", "--classes", "a,b", "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    typo = runner.invoke(main, ["model", "init", "--arch", "unett", "--bands", "3", "--classes", "a,b",
                                "--out", str(tmp_path / "x.safetensors")])
    assert typo.exit_code == 1 and "unet" in typo.output


def test_predict_command(tmp_path: Path) -> None:
    bundle = bright_object_bundle(tmp_path / "m.safetensors")
    raster = write_raster(tmp_path / "s.tif", scene(400, 400)[0])
    proc = subprocess.run([sys.executable, "-m", "geovision.cli", "predict", str(raster), "-m", str(bundle),
                           "-o", str(tmp_path / "run.geojson"), "--tile", "256", "--overlap", "32",
                           "--min-area", "50", "--simplify", "0.5", "--probabilities"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "object" in proc.stdout and "tiles processed" in proc.stdout
    frame = gpd.read_file(tmp_path / "run.geojson")
    assert (frame.area_m2 >= 50).all() and frame.is_valid.all()
    summary = json.loads((tmp_path / "run.summary.json").read_text())
    assert summary["classes"]["object"]["count"] == len(frame)
    assert summary["tiles_processed"] == 4 and summary["megapixels_per_second"] > 0
    assert (tmp_path / "run.probabilities.tif").exists()
