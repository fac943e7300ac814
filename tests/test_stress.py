"""Crop stress: exact edge coverage, per-field statistics and classes on synthetic fields, outputs."""

from __future__ import annotations

import json
import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import UTM, write_raster
from hypothesis import given
from hypothesis import strategies as st

from geovision.agri.coverage import coverage_fractions, pixel_areas_m2
from geovision.agri.stress import (
    HEALTHY,
    MODERATE,
    SEVERE,
    FieldStats,
    StressRule,
    classify,
)
from geovision.errors import (
    BandMismatchError,
    ConfigError,
    OutputExistsError,
    VectorContentError,
)
from geovision.workflows.stress import stress

PX = 10.0  # metres
X0, Y0 = 500_000.0, 5_650_000.0
T = Affine(PX, 0, X0, 0, -PX, Y0)

# reflectance (red, nir) per NDVI level; green low, so no pixel reads as water
HEALTHY_RN, MODERATE_RN, SEVERE_RN = (0.05, 0.45), (0.10, 0.40), (0.15, 0.35)  # NDVI 0.8, 0.6, 0.4


def px_box(r0: float, c0: float, r1: float, c1: float) -> shapely.Polygon:
    """A box from pixel coordinates (rows/cols, fractional allowed) to map coordinates."""
    return shapely.box(X0 + c0 * PX, Y0 - r1 * PX, X0 + c1 * PX, Y0 - r0 * PX)


def synthetic(tmp_path, rows=600, cols=600, *, fields, patches, nodata_box=None, pond=None, crs=UTM, transform=T):
    """A 3-band uint16 raster (red, nir, green; reflectance * 10000) of healthy crop with stress patches.

    patches: [(r0, c0, r1, c1, level)] pixel boxes, level "moderate" or "severe".
    """
    red = np.full((rows, cols), HEALTHY_RN[0])
    nir = np.full((rows, cols), HEALTHY_RN[1])
    green = np.full((rows, cols), 0.08)
    for r0, c0, r1, c1, level in patches:
        red[r0:r1, c0:c1], nir[r0:r1, c0:c1] = {"moderate": MODERATE_RN, "severe": SEVERE_RN}[level]
    if pond is not None:
        r0, c0, r1, c1 = pond
        red[r0:r1, c0:c1], nir[r0:r1, c0:c1], green[r0:r1, c0:c1] = 0.03, 0.02, 0.06
    data = (np.stack([red, nir, green]) * 10_000).round().astype(np.uint16)
    if nodata_box is not None:
        r0, c0, r1, c1 = nodata_box
        data[:, r0:r1, c0:c1] = 0
    raster = write_raster(tmp_path / "scene.tif", data, crs=crs, transform=transform, nodata=0)
    frame = gpd.GeoDataFrame({"name": [f"f{i}" for i in range(len(fields))]}, geometry=fields, crs=crs)
    path = tmp_path / "fields.gpkg"
    frame.to_file(path)
    return raster, path


BANDS = "red=1,nir=2,green=3"


# --- coverage ------------------------------------------------------------------------------


def test_edge_pixel_fraction_is_the_covered_share() -> None:
    # a field whose west edge cuts pixel column 2 at 30% and whose north edge cuts row 1 at 60%
    geom = shapely.box(X0 + 2.7 * PX, Y0 - 5 * PX, X0 + 5 * PX, Y0 - 1.4 * PX)
    frac = coverage_fractions(geom, T, (6, 6))
    assert frac[1, 2] == pytest.approx(0.3 * 0.6)
    assert frac[1, 3] == pytest.approx(0.6)
    assert frac[3, 2] == pytest.approx(0.3)
    assert frac[3, 3] == 1.0
    assert frac[0].sum() == 0 and frac[:, :2].sum() == 0 and frac[5].sum() == 0
    assert frac.sum() * PX * PX == pytest.approx(geom.area)


def test_a_pixel_split_between_two_fields_counts_for_both() -> None:
    a = shapely.box(X0, Y0 - 4 * PX, X0 + 1.25 * PX, Y0)
    b = shapely.box(X0 + 1.25 * PX, Y0 - 4 * PX, X0 + 4 * PX, Y0)
    fa, fb = coverage_fractions(a, T, (4, 4)), coverage_fractions(b, T, (4, 4))
    np.testing.assert_allclose(fa + fb, 1.0)
    assert fa[0, 1] == pytest.approx(0.25) and fb[0, 1] == pytest.approx(0.75)


@given(st.lists(st.tuples(st.floats(0.0, 40.0), st.floats(0.0, 40.0)), min_size=3, max_size=12),
       st.floats(0.0, 1.0))
def test_coverage_sums_to_the_polygon_area(points, angle) -> None:
    poly = shapely.make_valid(shapely.Polygon([(X0 + x * PX, Y0 - y * PX) for x, y in points]))
    poly = shapely.union_all([g for g in shapely.get_parts(poly) if g.geom_type == "Polygon"]) \
        if not poly.is_empty else poly
    if poly.is_empty or poly.area < 1e-6:
        return
    # a grid rotated by up to 10 degrees as well: exactness must not depend on north-up pixels; the
    # grid (-20..60 px) holds the polygon (0..40 px) whatever the rotation
    transform = Affine.translation(X0, Y0) @ Affine.rotation(angle * 10) @ Affine.scale(PX, -PX) \
        @ Affine.translation(-20, -20)
    frac = coverage_fractions(poly, transform, (80, 80))
    assert frac.min() >= 0 and frac.max() <= 1
    assert frac.sum() * PX * PX == pytest.approx(poly.area, rel=1e-6, abs=1e-6)


def test_pixel_areas_are_true_ground_areas() -> None:
    assert pixel_areas_m2(T, UTM, (3, 4)).ravel().tolist() == [100.0] * 3
    # 1e-4 degree pixels at 51 N: geodesic area, smaller at higher latitude
    geo = Affine(1e-4, 0, 4.0, 0, -1e-4, 51.0)
    areas = pixel_areas_m2(geo, "EPSG:4326", (3, 1)).ravel()
    from pyproj import Geod

    for row in range(3):
        lats = [51.0 - row * 1e-4, 51.0 - row * 1e-4, 51.0 - (row + 1) * 1e-4, 51.0 - (row + 1) * 1e-4]
        area, _ = Geod(ellps="WGS84").polygon_area_perimeter([4.0, 4.0001, 4.0001, 4.0], lats)
        assert areas[row] == pytest.approx(abs(area), rel=1e-9)
    assert areas[0] < areas[2]  # smaller towards the pole


# --- statistics and rules --------------------------------------------------------------


def test_field_stats_match_exact_weighted_statistics() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(0.6, 0.12, 50_000).clip(-1, 1).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, values.size)
    stats = FieldStats.for_index("ndvi", 2)
    for part in np.array_split(np.arange(values.size), 7):  # block by block
        stats.add(1, values[part], weights[part])
    assert stats.weight[0] == 0 and math.isnan(stats.mean(0)) and math.isnan(stats.quantile(0, 0.5))
    v = values.astype(np.float64)
    mean = np.average(v, weights=weights)
    assert stats.mean(1) == pytest.approx(mean)
    assert stats.std(1) == pytest.approx(math.sqrt(np.average((v - mean) ** 2, weights=weights)))
    order = np.argsort(v)
    cum = np.cumsum(weights[order]) / weights.sum()
    for q in (0.1, 0.5, 0.9):
        exact = v[order][np.searchsorted(cum, q)]
        assert abs(stats.quantile(1, q) - exact) < 1e-3  # one histogram bin


def test_nan_values_never_reach_the_statistics() -> None:
    stats = FieldStats.for_index("ndvi", 1)
    stats.add(0, np.array([0.5, np.nan, np.inf, 0.7], np.float32), np.ones(4))
    assert stats.weight[0] == 2 and stats.mean(0) == pytest.approx(0.6)


def test_rules_and_their_errors() -> None:
    assert StressRule.make("absolute", "ndvi").cutoffs(FieldStats.for_index("ndvi", 1), 0) == (0.4, 0.6)
    with pytest.raises(ConfigError, match="wrong order"):
        StressRule.make("zscore", "ndvi", "-1,-2")
    with pytest.raises(ConfigError, match="two numbers"):
        StressRule.make("percentile", "ndvi", "0.3")
    with pytest.raises(ConfigError, match="unknown stress method"):
        StressRule.make("quantile")
    codes = classify(np.array([0.2, 0.5, 0.9, np.nan]), 0.4, 0.6)
    assert codes.tolist() == [SEVERE, MODERATE, HEALTHY, 0]


# --- the workflow --------------------------------------------------------------------------


FIELDS = [
    px_box(10.3, 20.6, 250.2, 280.9),     # field 1, unaligned edges
    px_box(300.5, 40.25, 560.75, 300.5),  # field 2, crossed by the block seam at row 512
    shapely.Polygon([(X0 + 350 * PX, Y0 - 40 * PX), (X0 + 590 * PX, Y0 - 60 * PX),
                     (X0 + 560 * PX, Y0 - 580 * PX), (X0 + 330 * PX, Y0 - 400 * PX)]),  # field 3, oblique
]
PATCHES = [
    (50, 50, 90, 120, "severe"), (150, 200, 200, 240, "moderate"),    # field 1
    (480, 100, 540, 180, "severe"), (320, 60, 340, 280, "moderate"),  # field 2 (first patch across the seam)
    (200, 400, 260, 470, "moderate"),                                  # field 3
]


def truth_m2(field: int, level: str) -> float:
    geom = FIELDS[field]
    return sum(geom.intersection(px_box(r0, c0, r1, c1)).area
               for r0, c0, r1, c1, lv in PATCHES if lv == level)


@pytest.mark.parametrize("method", ["percentile", "zscore", "absolute"])
def test_stressed_area_per_field_within_one_percent(tmp_path, method) -> None:
    raster, fields = synthetic(tmp_path, fields=FIELDS, patches=PATCHES)
    # absolute: cut-offs between the drawn levels (the defaults 0.4/0.6 sit exactly on them)
    thresholds = (0.5, 0.7) if method == "absolute" else None
    result = stress(raster, fields, tmp_path / "out.gpkg", bands=BANDS, method=method, thresholds=thresholds,
                    progress=False)
    table = pyogrio.read_dataframe(result.vector_path, layer="fields").set_index("field_id")
    for i in range(3):
        row = table.loc[i + 1]
        assert row["valid_ha"] * 1e4 == pytest.approx(FIELDS[i].area, rel=1e-6)  # edge pixels by fraction
        assert row["area_ha"] * 1e4 == pytest.approx(FIELDS[i].area, rel=1e-9)
        # z-scores depend on how much of the field is stressed, so a z-score class need not be the
        # drawn level (field 3's NDVI 0.6 patch is 3.8 sd below its mean: severe); the total must hold
        for level in ("moderate", "severe") if method != "zscore" else ():
            truth = truth_m2(i, level)
            assert row[f"{level}_ha"] * 1e4 == pytest.approx(truth, rel=0.01, abs=1.0), (i, level)
        stressed = truth_m2(i, "moderate") + truth_m2(i, "severe")
        assert row["stressed_ha"] * 1e4 == pytest.approx(stressed, rel=0.01)
        assert row["stressed_pct"] == pytest.approx(100 * stressed / FIELDS[i].area, rel=0.01)
        assert row["ndvi_p90"] == pytest.approx(0.8, abs=2e-3) and row["ndvi_median"] == pytest.approx(0.8, abs=2e-3)
    # field 1 is 4.5% severe (NDVI 0.4) and 3.2% moderate (0.6): its p10 is healthy, its mean lower
    assert table.loc[1, "ndvi_p10"] == pytest.approx(0.8, abs=2e-3)
    assert table.loc[1, "ndvi_mean"] == pytest.approx(0.8 - 0.4 * truth_m2(0, "severe") / FIELDS[0].area
                                                      - 0.2 * truth_m2(0, "moderate") / FIELDS[0].area, abs=1e-3)


def test_outputs_layers_seams_and_summary(tmp_path) -> None:
    raster, fields = synthetic(tmp_path, fields=FIELDS, patches=PATCHES)
    result = stress(raster, fields, tmp_path / "out.gpkg", bands=BANDS, progress=False)
    assert set(pyogrio.list_layers(result.vector_path)[:, 0]) == {"fields", "stress"}
    polys = pyogrio.read_dataframe(result.vector_path, layer="stress")
    assert polys.crs.to_epsg() == 32631 and polys.is_valid.all()
    # one polygon per patch: the severe patch across the block seam at row 512 comes back whole
    assert sorted(polys["class_name"]) == sorted(lv for *_, lv in PATCHES)
    seam = polys[(polys.class_name == "severe") & (polys.field_id == 2)]
    assert len(seam) == 1 and seam.area_m2.iloc[0] == pytest.approx(60 * 80 * PX * PX)
    with rasterio.open(result.stress_raster) as ds:
        assert ds.crs.to_epsg() == 32631 and ds.nodata == 0 and ds.overviews(1)
        classes = ds.read(1)
    assert (classes[480:540, 100:180] == SEVERE).all() and classes[0, 0] == 0
    with rasterio.open(result.index_raster) as ds:
        assert ds.dtypes[0] == "float32" and math.isnan(ds.nodata)
        assert ds.read(1)[100, 100] == pytest.approx(0.8, abs=1e-3)
    summary = json.loads(result.summary_path.read_text())
    assert summary["workflow"] == "stress" and summary["fields"]["count"] == 3
    assert summary["classes"]["severe"]["area_m2"] == pytest.approx(
        sum(truth_m2(i, "severe") for i in range(3)), rel=0.01)
    csv = pd.read_csv(result.csv_path)
    assert list(csv["field_id"]) == [1, 2, 3] and "ndvi_p10" in csv and "severe_pct" in csv
    assert result.quicklook_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputExistsError):
        stress(raster, fields, tmp_path / "out.gpkg", bands=BANDS, progress=False)


def test_water_nodata_and_zero_division_stay_out_of_the_statistics(tmp_path) -> None:
    field = [px_box(10, 10, 110, 110)]
    raster, fields = synthetic(tmp_path, rows=128, cols=128, fields=field, patches=[],
                               nodata_box=(10, 10, 30, 110), pond=(60, 60, 80, 90))
    # a few pixels of zero red and zero nir: NDVI is 0/0
    with rasterio.open(raster, "r+") as ds:
        data = ds.read()
        data[0:2, 100:110, 10:15] = 0
        data[2, 100:110, 10:15] = 5
        ds.write(data)
    result = stress(raster, fields, tmp_path / "out.geojson", bands=BANDS, progress=False)
    row = pyogrio.read_dataframe(result.vector_path).iloc[0]
    assert row["water_ha"] * 1e4 == pytest.approx(20 * 30 * 100)
    assert row["nodata_ha"] * 1e4 == pytest.approx((20 * 100 + 10 * 5) * 100)
    assert row["valid_ha"] * 1e4 == pytest.approx((100 * 100 - 20 * 100 - 20 * 30 - 50) * 100)
    assert row["ndvi_mean"] == pytest.approx(0.8, abs=1e-4) and row["stressed_ha"] == 0
    # single-layer format: the stress polygons go beside it
    assert result.stress_layer_path.name == "out.stress.geojson" and result.stress_layer_path.exists()


def test_geographic_raster_gives_the_same_hectares(tmp_path) -> None:
    utm = tmp_path / "utm"
    utm.mkdir()
    field = [px_box(5.5, 5.5, 60.5, 60.5)]
    raster, fields = synthetic(utm, rows=64, cols=64, fields=field, patches=[(20, 20, 40, 40, "severe")])
    a = stress(raster, fields, utm / "a.gpkg", bands=BANDS, method="absolute", progress=False)
    geo = tmp_path / "geo"
    geo.mkdir()
    with rasterio.open(raster) as src:
        from rasterio.warp import Resampling, calculate_default_transform, reproject

        transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds,
                                                      resolution=(1.2e-4, 0.8e-4))
        dst = np.zeros((3, h, w), np.uint16)
        reproject(rasterio.band(src, [1, 2, 3]), dst, dst_transform=transform, dst_crs="EPSG:4326",
                  resampling=Resampling.nearest, dst_nodata=0)
    write_raster(geo / "scene.tif", dst, crs="EPSG:4326", transform=transform, nodata=0)
    b = stress(geo / "scene.tif", fields, geo / "b.gpkg", bands=BANDS, method="absolute", progress=False)
    ta = pyogrio.read_dataframe(a.vector_path, layer="fields").iloc[0]
    tb = pyogrio.read_dataframe(b.vector_path, layer="fields").iloc[0]
    assert tb["valid_ha"] == pytest.approx(ta["valid_ha"], rel=0.01)
    assert tb["severe_ha"] == pytest.approx(ta["severe_ha"], rel=0.03)


def test_bad_inputs(tmp_path) -> None:
    raster, fields = synthetic(tmp_path, rows=64, cols=64, fields=[px_box(5, 5, 60, 60)], patches=[])
    with pytest.raises(BandMismatchError, match="rededge"):
        stress(raster, fields, tmp_path / "o.gpkg", index="ndre", bands=BANDS, progress=False)
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10)], crs=UTM).to_file(far)
    with pytest.raises(VectorContentError, match="no field overlaps"):
        stress(raster, far, tmp_path / "o.gpkg", bands=BANDS, progress=False)
    with pytest.raises(ConfigError, match="needs --model"):
        stress(raster, fields, tmp_path / "o.gpkg", bands=BANDS, method="model", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far.gpkg", "fields.gpkg", "scene.tif"]


def test_model_method_counts_the_models_classes_per_field(tmp_path) -> None:
    from models_util import bright_object_bundle

    # a hand-set model calling locally bright pixels class 1, here named "severe"
    bundle = bright_object_bundle(tmp_path / "stress.safetensors", classes=("healthy", "severe", "moderate"))
    data = np.empty((3, 128, 128), np.uint8)
    data[:] = np.array([20, 90, 30], np.uint8)[:, None, None]  # red, nir, green: dark, healthy
    data[:, 40:60, 30:70] = np.array([150, 250, 160], np.uint8)[:, None, None]  # bright patch
    raster = write_raster(tmp_path / "s.tif", data, transform=T)
    fields = tmp_path / "f.gpkg"
    gpd.GeoDataFrame(geometry=[px_box(10.5, 10.5, 100.5, 100.5)], crs=UTM).to_file(fields)
    result = stress(raster, fields, tmp_path / "o.gpkg", bands=BANDS, method="model", model=bundle, progress=False)
    row = pyogrio.read_dataframe(result.vector_path, layer="fields").iloc[0]
    assert row["severe_ha"] * 1e4 == pytest.approx(20 * 40 * PX * PX)
    assert row["healthy_ha"] * 1e4 == pytest.approx(90 * 90 * PX * PX - 20 * 40 * PX * PX)
    assert row["moderate_ha"] == 0
    assert result.summary["method"]["model"]["classes"] == ["healthy", "severe", "moderate"]
    wrong = bright_object_bundle(tmp_path / "b.safetensors")
    with pytest.raises(ConfigError, match="healthy, moderate and severe"):
        stress(raster, fields, tmp_path / "o2.gpkg", bands=BANDS, method="model", model=wrong, progress=False)


def test_cli_stress(tmp_path) -> None:
    from click.testing import CliRunner

    from geovision.cli import main

    raster, fields = synthetic(tmp_path, rows=128, cols=128, fields=[px_box(5.5, 5.5, 120.5, 120.5)],
                               patches=[(30, 30, 60, 60, "severe")])
    runner = CliRunner()
    ok = runner.invoke(main, ["stress", str(raster), "--fields", str(fields), "--bands", "nir=2,red=1,green=3",
                              "--method", "absolute", "--thresholds", "0.5,0.7", "--out", str(tmp_path / "o.gpkg")])
    assert ok.exit_code == 0, ok.output
    assert "severe" in ok.output and "9.000" in ok.output  # 30 x 30 px of 100 m² = 9 ha
    bad = runner.invoke(main, ["stress", str(raster), "--fields", str(fields), "--sensor", "sentinel2-l2a",
                               "--index", "ndre", "--out", str(tmp_path / "o2.gpkg")])
    assert bad.exit_code == 1 and "band" in bad.output
    order = runner.invoke(main, ["stress", str(raster), "--fields", str(fields), "--bands", BANDS,
                                 "--method", "zscore", "--thresholds", "-1,-2", "--out", str(tmp_path / "o3.gpkg")])
    assert order.exit_code == 1 and "wrong order" in order.output
    assert not (tmp_path / "o2.gpkg").exists() and not (tmp_path / "o3.gpkg").exists()


def test_clouds_and_exclusions_are_masked_with_a_sensor_preset(tmp_path) -> None:
    # PlanetScope 4-band order: blue, green, red, nir; reflectance * 10 000
    data = np.empty((4, 96, 96), np.uint16)
    data[:] = np.array([300, 800, 500, 4500], np.uint16)[:, None, None]  # healthy crop, NDVI 0.8
    data[:, 20:40, 20:50] = np.array([4500, 4600, 4700, 5200], np.uint16)[:, None, None]  # bright cloud
    raster = write_raster(tmp_path / "ps.tif", data, transform=T, nodata=0)
    fields = tmp_path / "f.gpkg"
    gpd.GeoDataFrame(geometry=[px_box(10, 10, 90, 90)], crs=UTM).to_file(fields)
    exclude = tmp_path / "x.gpkg"  # e.g. a farmyard, in another CRS
    gpd.GeoDataFrame(geometry=[px_box(60, 60, 70, 80)], crs=UTM).to_crs("EPSG:4326").to_file(exclude)
    result = stress(raster, fields, tmp_path / "o.gpkg", sensor="planetscope-4band", exclude=exclude,
                    progress=False)
    row = pyogrio.read_dataframe(result.vector_path, layer="fields").iloc[0]
    assert row["masked_ha"] * 1e4 == pytest.approx((20 * 30 + 10 * 20) * PX * PX, rel=1e-3)
    assert row["ndvi_mean"] == pytest.approx(0.8, abs=1e-4) and row["stressed_ha"] == 0
    assert result.summary["inputs"]["reflectance_scale"] == pytest.approx(1e-4)
    with rasterio.open(result.stress_raster) as ds:
        assert (ds.read(1)[25:35, 25:45] == 5).all()  # masked
