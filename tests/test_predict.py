"""End-to-end segmentation through geovision.predict: real GeoTIFFs, real models, real GeoPackages."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from conftest import scene, write_raster
from models_util import bright_object_bundle
from rasterio.warp import Resampling, calculate_default_transform, reproject

from geovision.workflows.predict import predict


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return bright_object_bundle(tmp_path / "bright.safetensors")


def read_classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_tiled_matches_single_tile(tmp_path: Path, bundle: Path) -> None:
    img, _ = scene(600, 700, seed=3, n_objects=25)
    raster = write_raster(tmp_path / "scene.tif", img)
    tiled = predict(raster, bundle, tmp_path / "tiled.gpkg", tile=256, overlap=64, progress=False)
    whole = predict(raster, bundle, tmp_path / "whole.gpkg", tile=704, overlap=0, progress=False)
    assert tiled.summary["tiles_processed"] == 12 and whole.summary["tiles_processed"] == 1
    a, b = read_classes(tiled.class_rasters[0]), read_classes(whole.class_rasters[0])
    valid = (a != 255) & (b != 255)
    assert valid.all()
    assert (a[valid] == b[valid]).mean() >= 0.999
    pa, pb = gpd.read_file(tiled.vector_path), gpd.read_file(whole.vector_path)
    assert len(pa) == len(pb) > 10
    assert pa.area.sum() == pytest.approx(pb.area.sum(), rel=1e-3)


def test_object_across_four_tiles_is_one_polygon_with_true_area(tmp_path: Path, bundle: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(60, 5, size=(3, 500, 500)).clip(0, 255)
    img[:, 150:330, 170:350] = 200  # straddles the seams at rows/cols 192..256 of a 256/64 grid
    pixel = 0.5
    raster = write_raster(tmp_path / "cross.tif", img.astype(np.uint8),
                          transform=Affine(pixel, 0, 400_000, 0, -pixel, 5_600_000))
    result = predict(raster, bundle, tmp_path / "cross.gpkg", tile=256, overlap=64, progress=False)
    polys = gpd.read_file(result.vector_path)
    assert len(polys) == 1
    classes = read_classes(result.class_rasters[0])
    assert polys.area_m2.iloc[0] == pytest.approx((classes == 1).sum() * pixel * pixel, rel=1e-9)
    assert polys.area_m2.iloc[0] == pytest.approx(180 * 180 * pixel * pixel, rel=0.03)  # model blurs ~1 px
    assert polys.crs.to_epsg() == 32631
    assert polys.is_valid.all()
    assert set(polys.columns) >= {"class_id", "class_name", "area_m2", "perimeter_m", "mean_probability"}
    assert 0.5 < polys.mean_probability.iloc[0] <= 1.0
    assert polys.perimeter_m.iloc[0] == pytest.approx(4 * 180 * pixel, rel=0.02)


def _warp(src: Path, dst: Path, crs: str, scale: float) -> Path:
    with rasterio.open(src) as s:
        transform, width, height = calculate_default_transform(s.crs, crs, s.width, s.height, *s.bounds)
        # finer pixels than the source so resampling moves an edge by well under 0.1%
        transform = transform @ Affine.scale(1 / scale)
        width, height = int(width * scale), int(height * scale)
        data = np.zeros((s.count, height, width), dtype=np.uint8)
        reproject(s.read(), data, src_transform=s.transform, src_crs=s.crs, dst_transform=transform,
                  dst_crs=crs, resampling=Resampling.nearest, src_nodata=None, dst_nodata=0)
        return write_raster(dst, data, crs=crs, transform=transform, nodata=0)


@pytest.mark.slow
def test_areas_agree_across_crs(tmp_path: Path, bundle: Path) -> None:
    rng = np.random.default_rng(2)
    img = rng.normal(60, 5, size=(3, 700, 700)).clip(0, 255)
    img[:, 50:650, 60:640] = 200  # 300 m x 290 m at 0.5 m
    # Kampala-like latitude is near the equator; use mid-latitude UTM 31N (Flanders) to stress Mercator
    utm = write_raster(tmp_path / "utm.tif", img.astype(np.uint8),
                       transform=Affine(0.5, 0, 500_000, 0, -0.5, 5_650_000))
    areas = {}
    for crs, path in (("EPSG:32631", utm), ("EPSG:4326", _warp(utm, tmp_path / "geo.tif", "EPSG:4326", 1.5)),
                      ("EPSG:3857", _warp(utm, tmp_path / "merc.tif", "EPSG:3857", 1.5))):
        result = predict(path, bundle, tmp_path / f"{crs.replace(':', '')}.gpkg", tile=256, overlap=64,
                         progress=False)
        polys = gpd.read_file(result.vector_path)
        assert len(polys) == 1, crs
        assert polys.crs == rasterio.crs.CRS.from_string(crs)
        areas[crs] = polys.area_m2.sum()
    assert areas["EPSG:32631"] == pytest.approx(600 * 580 * 0.25, rel=0.01)
    # Web Mercator's planar area would be ~2.5x too large at 51 N; ours must be true m²
    assert areas["EPSG:4326"] == pytest.approx(areas["EPSG:32631"], rel=0.005)
    assert areas["EPSG:3857"] == pytest.approx(areas["EPSG:32631"], rel=0.005)


def test_nodata_never_classified_and_empty_tiles_skipped(tmp_path: Path, bundle: Path) -> None:
    img, _ = scene(600, 600, seed=4)
    img[:, :, :300] = 0  # left half nodata: whole tiles there are skipped
    img[:, 400:420, 400:420] = 0  # a nodata hole inside a valid tile
    raster = write_raster(tmp_path / "nd.tif", img, nodata=0)
    result = predict(raster, bundle, tmp_path / "nd.gpkg", tile=256, overlap=64, progress=False)
    classes = read_classes(result.class_rasters[0])
    invalid = (img == 0).all(axis=0)
    assert (classes[invalid] == 255).all()
    assert (classes[~invalid] != 255).all()
    s = result.summary
    assert s["tiles_skipped"] == 3 and s["tiles_processed"] == 6
    assert s["inputs"][0]["tiles_skipped"] == 3
    with rasterio.open(result.class_rasters[0]) as ds:
        assert ds.nodata == 255


def test_internal_mask_respected(tmp_path: Path, bundle: Path) -> None:
    img, _ = scene(300, 300, seed=5)
    mask = np.ones((300, 300), dtype=bool)
    mask[:100, :100] = False
    raster = write_raster(tmp_path / "masked.tif", img, mask=mask)
    result = predict(raster, bundle, tmp_path / "m.gpkg", tile=256, overlap=64, progress=False)
    classes = read_classes(result.class_rasters[0])
    assert (classes[~mask] == 255).all() and (classes[mask] != 255).all()


def test_band_selection_and_small_raster(tmp_path: Path, bundle: Path) -> None:
    img, truth = scene(90, 120, seed=6, n_objects=3, size=(10, 20), bands=3)
    five = np.concatenate([np.zeros((2, 90, 120), np.uint8) + 250, img])  # bands 3,4,5 hold the scene
    raster = write_raster(tmp_path / "five.tif", five)
    result = predict(raster, bundle, tmp_path / "small.gpkg", bands=[3, 4, 5], progress=False)
    assert result.summary["tiles_processed"] == 1  # smaller than one 256 tile: padded, one tile
    classes = read_classes(result.class_rasters[0])
    assert classes.shape == (90, 120)
    assert ((classes == 1) == truth).mean() > 0.97
    # without --bands the bundle's band order applies: bands 1-3 here, the bright decoys
    first3 = predict(raster, bundle, tmp_path / "first3.gpkg", progress=False)
    assert (read_classes(first3.class_rasters[0]) == 1).mean() > 0.9


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".fgb", ".parquet"])
def test_output_formats_keep_crs(tmp_path: Path, bundle: Path, ext: str) -> None:
    img, _ = scene(300, 300, seed=7)
    raster = write_raster(tmp_path / "f.tif", img)
    result = predict(raster, bundle, tmp_path / f"out{ext}", tile=256, overlap=32, probabilities=True,
                     progress=False)
    frame = gpd.read_parquet(result.vector_path) if ext == ".parquet" else gpd.read_file(result.vector_path)
    assert len(frame) > 0 and frame.crs.to_epsg() == 32631
    assert frame.is_valid.all()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["bright.safetensors", "f.tif", f"out{ext}", "out.classes.tif",
                            "out.probabilities.tif", "out.summary.json"])
    for path in (result.class_rasters[0], result.probability_rasters[0]):
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.crs.to_epsg() == 32631
            assert ds.profile["tiled"] and ds.compression is not None
    with rasterio.open(result.probability_rasters[0]) as ds:
        p = ds.read().astype(float) * ds.scales[0]
        assert ds.count == 2 and ds.nodata == 255
        assert np.allclose(p.sum(axis=0), 1.0, atol=0.01)


def test_vrt_input(tmp_path: Path, bundle: Path) -> None:
    img, _ = scene(300, 300, seed=8)
    tif = write_raster(tmp_path / "base.tif", img)
    vrt = tmp_path / "base.vrt"
    with rasterio.open(tif) as ds:
        from rasterio.shutil import copy
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(ds) as v:
            copy(v, vrt, driver="VRT")
    a = predict(tif, bundle, tmp_path / "a.gpkg", progress=False)
    b = predict(str(vrt), bundle, tmp_path / "b.gpkg", progress=False)
    assert np.array_equal(read_classes(a.class_rasters[0]), read_classes(b.class_rasters[0]))


def test_several_rasters_one_layer(tmp_path: Path, bundle: Path) -> None:
    r1 = write_raster(tmp_path / "one.tif", scene(300, 300, seed=9)[0])
    r2 = write_raster(tmp_path / "two.tif", scene(300, 300, seed=10)[0],
                      transform=Affine(0.5, 0, 500_200, 0, -0.5, 5_650_000))
    result = predict([r1, r2], bundle, tmp_path / "both.gpkg", progress=False)
    frame = gpd.read_file(result.vector_path)
    assert set(frame.source) == {"one.tif", "two.tif"}
    assert [p.name for p in result.class_rasters] == ["both.one.classes.tif", "both.two.classes.tif"]
    assert len(result.summary["inputs"]) == 2
    assert pyogrio.list_layers(result.vector_path)[0][0] == "predictions"


def test_top_level_api(tmp_path: Path, bundle: Path) -> None:
    import geovision

    raster = write_raster(tmp_path / "api.tif", scene(200, 200, seed=12)[0])
    result = geovision.predict(raster, bundle, tmp_path / "api.fgb", progress=False)
    assert result.vector_path.exists() and result.summary["features"] == len(gpd.read_file(result.vector_path))


def test_review_band_on_segmentation(tmp_path: Path) -> None:
    """Segmentation polygons are flagged by their mean probability."""
    from models_util import bright_object_bundle

    bundle = bright_object_bundle(tmp_path / "m.safetensors")
    img, _ = scene(300, 300, seed=4)
    raster = write_raster(tmp_path / "s.tif", img)
    out = tmp_path / "seg.gpkg"
    predict(raster, bundle, out, tile=256, overlap=64, review_band=(0.0, 0.999), progress=False)
    found = gpd.read_file(out, layer="predictions")
    review = gpd.read_file(out, layer="review")
    assert set(found["review"]) <= {0, 1}
    assert len(review) == int((found["mean_probability"] < 0.999).sum()) == int(found["review"].sum())


def test_heap_is_frozen_during_the_run_and_handed_back(tmp_path: Path, bundle: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The run keeps the objects alive before it out of the collector's sweeps, and restores the collector."""
    import gc

    from geovision.workflows import predict as predict_module

    img, _ = scene(300, 300, seed=5, n_objects=6)
    raster = write_raster(tmp_path / "scene.tif", img)
    seen: list[int] = []
    check_task = predict_module._check_task
    monkeypatch.setattr(predict_module, "_check_task", lambda *a: (seen.append(gc.get_freeze_count()), check_task(*a)))
    assert gc.get_freeze_count() == 0
    predict(raster, bundle, tmp_path / "a.gpkg", tile=256, overlap=64, progress=False)
    assert seen[0] > 0  # frozen while it ran
    assert gc.get_freeze_count() == 0  # and thawed after
    # a caller's own freeze is left as it is
    gc.freeze()
    try:
        predict(raster, bundle, tmp_path / "b.gpkg", tile=256, overlap=64, progress=False)
        assert gc.get_freeze_count() > 0  # not thawed by the run
    finally:
        gc.unfreeze()
