"""Every bad input gets a GeovisionError subclass naming the file and the fix, and leaves no output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import scene, write_raster
from models_util import bright_object_bundle

from geovision.errors import (
    BandMismatchError,
    BundleError,
    GeovisionWarning,
    NoCRSError,
    NodataOnlyError,
    OutputExistsError,
    OutputFormatError,
    OutputOverwritesInputError,
    RasterReadError,
)
from geovision.workflows.predict import predict


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return bright_object_bundle(tmp_path / "m.safetensors", resolution=0.5)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "good.tif", scene(300, 300)[0])


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("out", ".out")))


def check(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, msg


def test_no_crs(tmp_path: Path, bundle: Path) -> None:
    raster = write_raster(tmp_path / "nocrs.tif", scene(100, 100)[0], crs=None)
    with pytest.raises(NoCRSError) as exc:
        predict(raster, bundle, tmp_path / "out.gpkg", progress=False)
    check(exc, "nocrs.tif", "gdal_edit")
    assert outputs(tmp_path) == []


def test_band_count_mismatch(tmp_path: Path, bundle: Path) -> None:
    raster = write_raster(tmp_path / "two.tif", scene(100, 100, bands=2)[0])
    with pytest.raises(BandMismatchError) as exc:
        predict(raster, bundle, tmp_path / "out.gpkg", progress=False)
    check(exc, "two.tif", "3 bands", "has 2", "--bands")
    with pytest.raises(BandMismatchError) as exc:
        predict(raster, bundle, tmp_path / "out.gpkg", bands=[1, 2, 7], progress=False)
    check(exc, "[7]", "--bands", "do not exist")
    assert outputs(tmp_path) == []


def test_unreadable_file(tmp_path: Path, bundle: Path) -> None:
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(RasterReadError) as exc:
        predict(junk, bundle, tmp_path / "out.gpkg", progress=False)
    check(exc, "junk.tif")
    with pytest.raises(RasterReadError):
        predict(tmp_path / "missing.tif", bundle, tmp_path / "out.gpkg", progress=False)
    assert outputs(tmp_path) == []


def test_truncated_file_leaves_no_output(tmp_path: Path, bundle: Path) -> None:
    img, _ = scene(600, 600)
    full = write_raster(tmp_path / "full.tif", np.ascontiguousarray(img), tiled=True)
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterReadError) as exc:
        predict(cut, bundle, tmp_path / "out.gpkg", tile=256, progress=False)
    check(exc, "cut.tif", "truncated")
    assert outputs(tmp_path) == []


def test_nodata_only(tmp_path: Path, bundle: Path) -> None:
    raster = write_raster(tmp_path / "empty.tif", np.zeros((3, 300, 300), np.uint8), nodata=0)
    with pytest.raises(NodataOnlyError) as exc:
        predict(raster, bundle, tmp_path / "out.gpkg", progress=False)
    check(exc, "empty.tif", "nodata")
    assert outputs(tmp_path) == []


def test_resolution_far_from_model_warns(tmp_path: Path, bundle: Path) -> None:
    from affine import Affine

    raster = write_raster(tmp_path / "coarse.tif", scene(100, 100)[0], transform=Affine(10, 0, 5e5, 0, -10, 5.6e6))
    with pytest.warns(GeovisionWarning, match="coarse.tif.*resolution"):
        predict(raster, bundle, tmp_path / "out.gpkg", progress=False)


def test_unknown_extension(tmp_path: Path, bundle: Path, good: Path) -> None:
    with pytest.raises(OutputFormatError) as exc:
        predict(good, bundle, tmp_path / "out.shp", progress=False)
    check(exc, "out.shp", ".gpkg")
    assert outputs(tmp_path) == []


def test_existing_output_refused_then_overwritten(tmp_path: Path, bundle: Path, good: Path) -> None:
    (tmp_path / "out.classes.tif").write_bytes(b"precious")
    with pytest.raises(OutputExistsError) as exc:
        predict(good, bundle, tmp_path / "out.gpkg", progress=False)
    check(exc, "out.classes.tif", "--overwrite")
    assert (tmp_path / "out.classes.tif").read_bytes() == b"precious"
    assert outputs(tmp_path) == ["out.classes.tif"]
    predict(good, bundle, tmp_path / "out.gpkg", overwrite=True, progress=False)
    assert outputs(tmp_path) == ["out.classes.tif", "out.gpkg", "out.summary.json"]


def test_input_never_overwritten(tmp_path: Path, bundle: Path) -> None:
    raster = write_raster(tmp_path / "out.classes.tif", scene(100, 100)[0])
    before = raster.read_bytes()
    with pytest.raises(OutputOverwritesInputError):
        predict(raster, bundle, tmp_path / "out.gpkg", overwrite=True, progress=False)
    assert raster.read_bytes() == before


def test_invalid_bundle(tmp_path: Path, good: Path) -> None:
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError) as exc:
        predict(good, fake, tmp_path / "out.gpkg", progress=False)
    check(exc, "fake.safetensors")
    assert outputs(tmp_path) == []


def test_cli_exit_code_and_message(tmp_path: Path, bundle: Path) -> None:
    raster = write_raster(tmp_path / "nocrs.tif", scene(100, 100)[0], crs=None)
    proc = subprocess.run([sys.executable, "-m", "geovision.cli", "predict", str(raster), "--model", str(bundle),
                           "--out", str(tmp_path / "out.gpkg")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "nocrs.tif" in proc.stderr and "Traceback" not in proc.stderr
    assert outputs(tmp_path) == []
