"""Class COGs as predict writes them: blocks into a scratch GeoTIFF, then GDAL's COG driver."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geovision.engine.segmentation import RasterFiles, finish_rasters
from geovision.io.raster import BLOCK_SIZE, BlockWriter
from geovision.tiling.grid import BlockGrid
from geovision.tiling.reader import RasterInfo

COLOURS = {0: (0, 0, 0, 255), 1: (200, 30, 40, 255), 2: (10, 160, 60, 255)}


def _info(height: int, width: int, epsg: int = 32636, transform: Affine | None = None) -> RasterInfo:
    transform = transform or Affine(0.5, 0, 450_000, 0, -0.5, 40_000)
    return RasterInfo(path="in.tif", height=height, width=width, count=1, dtype="uint8",
                      crs_wkt=rasterio.crs.CRS.from_epsg(epsg).to_wkt(), transform=tuple(transform)[:6],
                      bands=(1,), nodata=None)


def _classes(height: int, width: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 3, size=(height, width), dtype=np.uint8)
    classes[-min(height, 200):, -min(width, 200):] = 255  # a nodata corner
    return classes


def _class_cog(tmp: Path, classes: np.ndarray, info: RasterInfo | None = None, seed: int = 1) -> Path:
    """``classes`` written block by block in a shuffled order (as the stitcher finishes them), then the COG."""
    files = RasterFiles(tmp / "classes.tif", tmp / "classes.scratch.tif")
    writer = BlockWriter(files.scratch, info or _info(*classes.shape), count=1, dtype="uint8", nodata=255,
                         descriptions=["class"], colormap=COLOURS)
    grid = BlockGrid(*classes.shape, BLOCK_SIZE)
    order = [(i, j) for i in range(grid.shape[0]) for j in range(grid.shape[1])]
    random.Random(seed).shuffle(order)
    for index in order:
        w = grid.window(index)
        writer.write(w, classes[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width])
    writer.close()
    finish_rasters(files, None)
    assert not files.scratch.exists()
    return files.cog


@pytest.mark.parametrize(("size", "levels"), [((512, 300), 0), ((1100, 1700), 2), ((700, 5000), 4)])
def test_class_cog_is_a_cog_with_nearest_overviews(tmp_path: Path, size: tuple[int, int], levels: int) -> None:
    classes = _classes(*size)
    with rasterio.open(_class_cog(tmp_path, classes)) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.profile["compress"] == "deflate" and ds.block_shapes == [(BLOCK_SIZE, BLOCK_SIZE)]
        assert ds.nodata == 255 and ds.descriptions == ("class",)
        assert {k: v for k, v in ds.colormap(1).items() if k in COLOURS} == COLOURS
        assert len(ds.overviews(1)) == levels
        np.testing.assert_array_equal(ds.read(1), classes)
    for level in range(levels):
        with rasterio.open(tmp_path / "classes.tif", overview_level=level) as ov:
            values = set(np.unique(ov.read(1)).tolist())
            assert values <= {0, 1, 2, 255}  # classes are picked, never averaged into another class


@pytest.mark.parametrize(("epsg", "transform"), [
    (4326, Affine(1e-5, 0, 32.58, 0, -1e-5, 0.35)),  # geographic
    (3857, Affine(0.075, 0, 3_626_000, 0, -0.075, 36_900)),  # Web Mercator
    (32631, Affine(0.3, 0.05, 500_000, 0.05, -0.3, 5_650_000)),  # rotated: a full transformation matrix
])
def test_georeferencing_is_kept(tmp_path: Path, epsg: int, transform: Affine) -> None:
    classes = _classes(600, 700)
    with rasterio.open(_class_cog(tmp_path, classes, _info(600, 700, epsg, transform))) as ds:
        assert ds.crs.to_epsg() == epsg
        assert ds.transform == transform
        np.testing.assert_array_equal(ds.read(1), classes)
