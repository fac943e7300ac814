"""Class COGs: overviews written block by block equal the ones GDAL's COG driver makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geovision.io.raster import (
    BLOCK_SIZE,
    BlockWriter,
    NearestOverviews,
    overview_factors,
    to_cog,
)
from geovision.tiling.grid import BlockGrid
from geovision.tiling.reader import RasterInfo


@pytest.mark.parametrize(("size", "factors"), [((512, 300), []), ((513, 10), [2]), ((4096, 4096), [2, 4, 8]),
                                               ((1100, 1700), [2, 4]), ((16384, 9000), [2, 4, 8, 16, 32])])
def test_overview_factors_are_gdals(size: tuple[int, int], factors: list[int]) -> None:
    assert overview_factors(*size) == factors


def _class_cog(tmp: Path, classes: np.ndarray, name: str, *, block_overviews: bool) -> Path:
    height, width = classes.shape
    info = RasterInfo(path="in.tif", height=height, width=width, count=1, dtype="uint8",
                      crs_wkt=rasterio.crs.CRS.from_epsg(32636).to_wkt(),
                      transform=tuple(Affine(0.5, 0, 450_000, 0, -0.5, 40_000))[:6], bands=(1,), nodata=None)
    scratch = tmp / f"{name}.scratch.tif"
    writer = BlockWriter(scratch, info, count=1, dtype="uint8", nodata=255, descriptions=["class"],
                         colormap={0: (0, 0, 0, 255), 1: (200, 30, 40, 255), 2: (10, 160, 60, 255)})
    levels = {f: tmp / f"{name}.ov{f}.tif" for f in NearestOverviews.levels(height, width)} if block_overviews else {}
    overviews = NearestOverviews(levels, info, dtype="uint8", nodata=255) if block_overviews else None
    grid = BlockGrid(height, width, BLOCK_SIZE)
    rows, cols = grid.shape
    for index in reversed([(i, j) for i in range(rows) for j in range(cols)]):  # any order, as they finish
        w = grid.window(index)
        block = classes[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width]
        writer.write(w, block)
        if overviews is not None:
            overviews.write(w, block)
    writer.close()
    if overviews is not None:
        overviews.close()
    out = tmp / f"{name}.tif"
    to_cog(scratch, out, resampling="NEAREST", overviews=levels)
    assert not scratch.exists() and not any(p.exists() for p in levels.values())
    assert not scratch.with_suffix(".vrt").exists()
    return out


def test_block_overviews_equal_gdals_and_keep_the_cog(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    classes = rng.integers(0, 3, size=(1100, 1700), dtype=np.uint8)
    classes[:, :300] = np.repeat(rng.integers(0, 3, size=(1100, 1), dtype=np.uint8), 300, axis=1)
    classes[900:, 1500:] = 255  # nodata corner
    ours = _class_cog(tmp_path, classes, "ours", block_overviews=True)
    gdals = _class_cog(tmp_path, classes, "gdal", block_overviews=False)
    with rasterio.open(ours) as a, rasterio.open(gdals) as b:
        assert a.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert a.overviews(1) == b.overviews(1) == [2, 4]
        assert a.nodata == b.nodata == 255 and a.descriptions == b.descriptions == ("class",)
        assert a.colormap(1) == b.colormap(1) and a.crs == b.crs and a.transform == b.transform
        assert a.block_shapes == b.block_shapes and a.compression == b.compression
        np.testing.assert_array_equal(a.read(1), classes)
        for f in a.overviews(1):
            shape = (-(-a.height // f), -(-a.width // f))
            np.testing.assert_array_equal(a.read(1, out_shape=shape), b.read(1, out_shape=shape))
            np.testing.assert_array_equal(a.read(1, out_shape=shape), classes[::f, ::f])
