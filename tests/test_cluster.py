"""A real distributed.LocalCluster of worker processes gives the same result as the local run."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import scene, write_raster
from models_util import bright_object_bundle

from geovision.workflows.predict import predict


@pytest.mark.slow
def test_local_cluster_equals_local_run(tmp_path: Path) -> None:
    from distributed import LocalCluster

    bundle = bright_object_bundle(tmp_path / "m.safetensors")
    img, _ = scene(700, 650, seed=11, n_objects=20)
    img[:, :300, :300] = 0  # covers whole tiles, which are skipped
    raster = write_raster(tmp_path / "scene.tif", img, nodata=0)
    local = predict(raster, bundle, tmp_path / "local.gpkg", tile=256, overlap=64, probabilities=True,
                    progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = predict(raster, bundle, tmp_path / "cluster.gpkg", tile=256, overlap=64, probabilities=True,
                         scheduler=cluster.scheduler_address, progress=False)
    for a, b in ((local.class_rasters[0], remote.class_rasters[0]),
                 (local.probability_rasters[0], remote.probability_rasters[0])):
        with rasterio.open(a) as da, rasterio.open(b) as db:
            assert np.array_equal(da.read(), db.read())
    fa, fb = gpd.read_file(local.vector_path), gpd.read_file(remote.vector_path)
    assert len(fa) == len(fb) > 5
    assert fa.geometry.normalize().equals(fb.geometry.normalize())
    assert local.summary["tiles_skipped"] == remote.summary["tiles_skipped"] > 0
    assert local.summary["classes"] == remote.summary["classes"]


@pytest.mark.slow
def test_local_cluster_detection_equals_local_run(tmp_path: Path, square_detector: Path) -> None:
    """Workers read and detect; the client merges: the same boxes, scores and counts as locally."""
    from distributed import LocalCluster
    from test_detect import OVERLAP, TILE, seam_scene

    img, truth = seam_scene(400, 450, seed=5)
    img[:, :140, :140] = 0  # a nodata corner: the first tile is skipped on both sides
    raster = write_raster(tmp_path / "squares.tif", img, nodata=0)
    # the same tiles per forward pass on both sides: a batch of 1 and a batch of 4 may differ in
    # the last bits of a box, and this test wants the results equal
    local = predict(raster, square_detector, tmp_path / "local.gpkg", tile=TILE, overlap=OVERLAP, points=True,
                    batch_size=4, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = predict(raster, square_detector, tmp_path / "cluster.gpkg", tile=TILE, overlap=OVERLAP,
                         points=True, batch_size=4, scheduler=cluster.scheduler_address, progress=False)
    fa, fb = gpd.read_file(local.vector_path), gpd.read_file(remote.vector_path)
    assert len(fa) == len(fb) > 20

    def ordered(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        bounds = frame.geometry.bounds.round(3)
        return frame.loc[bounds.sort_values(["minx", "miny", "maxx", "maxy"]).index].reset_index(drop=True)

    fa, fb = ordered(fa), ordered(fb)
    assert fa.geometry.normalize().equals(fb.geometry.normalize())
    np.testing.assert_allclose(fa["score"], fb["score"], rtol=1e-6)
    assert local.summary["classes"] == remote.summary["classes"]
    assert local.summary["tiles_skipped"] == remote.summary["tiles_skipped"] > 0
