"""The reader's GDAL environment: a block cache of GDAL_CACHE_MB megabytes, not bytes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio._env import get_gdal_config

from geovision.io.drift import sample_raster
from geovision.tiling.reader import GDAL_CACHE_MB, gdal_env


def test_gdal_cache_is_megabytes() -> None:
    with gdal_env():
        assert int(get_gdal_config("GDAL_CACHEMAX")) == GDAL_CACHE_MB * 1024 * 1024


def test_decimated_read_decompresses_each_block_once(tmp_path: Path) -> None:
    """With a cache of a few bytes every decimated row decompressed its blocks again (about 20 s here)."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, size=(4, 2048, 2048), dtype=np.uint8)
    path = tmp_path / "r.tif"
    with rasterio.open(path, "w", driver="GTiff", width=2048, height=2048, count=4, dtype="uint8",
                       crs="EPSG:32636", transform=rasterio.Affine(0.3, 0, 450_000, 0, -0.3, 40_000), nodata=0,
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate", interleave="pixel",
                       photometric="minisblack") as ds:
        ds.write(data)
    t0 = time.perf_counter()
    samples = sample_raster(str(path), [1, 2, 3], max_side=512)
    assert samples.shape == (3, 512 * 512)
    assert time.perf_counter() - t0 < 5.0
