"""A vegetation index over a real multi-tile GeoTIFF, into a float32 COG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_raster

from geovision.agri.index_raster import index_raster
from geovision.errors import BandMismatchError


def test_ndvi_cog_from_planetscope_bands(tmp_path: Path) -> None:
    rows, cols = 700, 600  # several 512 px tiles, the last ones partial
    dn = np.zeros((4, rows, cols), np.uint16)  # PlanetScope 4-band: blue, green, red, nir; DN / 10000
    dn[0], dn[1] = 500, 800
    dn[2] = 1000  # red 0.1
    dn[3, :, : cols // 2] = 5000  # nir 0.5 -> NDVI (0.5 - 0.1) / 0.6 = 2/3
    dn[3, :, cols // 2:] = 1000  # nir 0.1 -> NDVI 0
    dn[:, :50, :50] = 0  # nodata corner (nodata = 0)
    raster = write_raster(tmp_path / "planet.tif", dn, nodata=0)
    out = tmp_path / "ndvi.tif"
    stats = index_raster(raster, out, index="ndvi", sensor="planetscope-4band")
    assert stats["bands"] == {"nir": 4, "red": 3}
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata) and ds.crs.to_epsg() == 32631
        assert ds.overviews(1)  # a COG with overviews
        ndvi = ds.read(1)
    np.testing.assert_allclose(ndvi[100:, : cols // 2], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(ndvi[100:, cols // 2:], 0, atol=1e-6)
    assert np.isnan(ndvi[:50, :50]).all() and not np.isnan(ndvi[50:, :]).any()
    assert stats["valid_pixels"] == rows * cols - 50 * 50
    with pytest.raises(BandMismatchError, match="rededge"):
        index_raster(raster, tmp_path / "ndre.tif", index="ndre", sensor="planetscope-4band")
    assert not (tmp_path / "ndre.tif").exists()
