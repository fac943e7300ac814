"""The offline HTML report: real predict / evaluate outputs in, one self-contained page out, checked in Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from conftest import UTM, scene, write_raster
from models_util import bright_object_bundle

from geovision.errors import (
    OutputExistsError,
    OutputOverwritesInputError,
    VectorReadError,
)
from geovision.report import write_report
from geovision.workflows.predict import predict

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LEAFLET_JS = (Path(__file__).parents[1] / "geovision" / "report" / "assets" / "leaflet.js").read_text()


# --- inputs made by the project's own workflows ---------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real segmentation run: 4-band 384² scene -> run.gpkg (+ review layer), run.classes.tif, run.ndvi.tif."""
    import torch

    from geovision.agri.index_raster import index_raster

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("report_run")
    img, truth = scene(384, 384, seed=5, n_objects=16, bands=4)
    raster = write_raster(d / "scene.tif", img)
    bundle = bright_object_bundle(d / "bright.safetensors", bands=4)
    result = predict(raster, bundle, d / "run.gpkg", tile=256, overlap=64, review_band=(0.5, 0.97), progress=False)
    index_raster(raster, d / "run.ndvi.tif", index="ndvi", bands="red=1,nir=4")
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 5_650_000)
    shapes = [shapely.geometry.shape(g)
              for g, v in rasterio.features.shapes(truth.astype(np.uint8), transform=transform) if v == 1]
    truth_path = d / "truth.gpkg"
    gpd.GeoDataFrame({"class_name": ["object"] * len(shapes)}, geometry=shapes, crs=UTM).to_file(truth_path)
    return {"dir": d, "raster": raster, "bundle": bundle, "result": result, "truth": truth_path}


def payload(page: str) -> dict:
    """The JSON the page script draws."""
    m = re.search(r'<script type="application/json" id="geovision-data">(.*?)</script>', page, re.DOTALL)
    assert m, "no data block"
    return json.loads(m.group(1))


def class_table(page: str) -> dict[str, tuple[int, float, float]]:
    """``{class: (count, area_ha, area_m2)}`` from the page's class table (exact ``data-value``s)."""
    table = re.search(r'<table class="gv-table" id="class-table">.*?<tbody>(.*?)</tbody>', page, re.DOTALL)
    assert table, "no class table"
    rows = {}
    for name, cells in re.findall(r'<tr data-class="([^"]*)">(.*?)</tr>', table.group(1), re.DOTALL):
        tds = re.findall(r'<td class="num"(?: data-value="([^"]*)")?>', cells)
        rows[html.unescape(name)] = (int(tds[0]) if tds[0] else None, float(tds[1]), float(tds[2]))
    return rows


def assert_offline(page: str) -> None:
    """No resource of the page can come from the network.

    Leaflet's own source is inlined verbatim; its licence header and an (unused:
    the attribution control is off) attribution link are its only URLs, and
    ``http://www.w3.org/2000/svg`` is a namespace name, not a fetch.
    """
    assert LEAFLET_JS in page
    rest = page.replace(LEAFLET_JS, "")
    assert not re.search(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//""", rest, re.IGNORECASE)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", rest, re.IGNORECASE)
    assert not re.search(r"@import", rest)
    assert not re.search(r"https?://", rest), re.findall(r".{40}https?://.{40}", rest)[:3]
    assert "url(images/" not in page  # Leaflet's marker and layer-icon images are replaced or dropped


# --- the page -----------------------------------------------------------------------------------


def test_page_is_self_contained_and_matches_the_outputs(run: dict) -> None:
    result = run["result"]
    out = write_report(result.vector_path)
    assert out == run["dir"] / "run.report.html"
    page = out.read_text(encoding="utf-8")
    assert_offline(page)
    assert page.count("<script") == 3  # data, Leaflet, the page script
    assert not list(run["dir"].glob(".*partial*"))

    data = payload(page)
    layers = {spec["name"]: spec for spec in data["layers"]}
    assert set(layers) == {"predictions", "review"}
    for name, spec in layers.items():
        total = pyogrio.read_info(result.vector_path, layer=name)["features"]
        assert spec["total"] == spec["shown"] == len(spec["data"]["features"]) == total
    assert layers["predictions"]["total"] == result.summary["features"] > 3
    feature = layers["predictions"]["data"]["features"][0]
    assert {"class_id", "class_name", "area_m2", "perimeter_m", "mean_probability"} <= set(feature["properties"])
    coords = shapely.get_coordinates(shapely.geometry.shape(feature["geometry"]))
    assert np.allclose(coords, coords.round(7), atol=1e-12, rtol=0)
    assert 2.9 < coords[:, 0].min() and coords[:, 0].max() < 3.1  # lon of UTM 31N near 500 km easting
    assert 50 < coords[:, 1].min() and coords[:, 1].max() < 51.1

    rasters = {r["name"]: r for r in data["rasters"]}
    assert list(rasters) == ["run.classes.tif", "run.ndvi.tif"]  # class raster first, and visible
    assert rasters["run.classes.tif"]["kind"] == "categorical" and rasters["run.classes.tif"]["visible"]
    assert rasters["run.ndvi.tif"]["kind"] == "continuous" and not rasters["run.ndvi.tif"]["visible"]
    for r in rasters.values():
        assert r["uri"].startswith("data:image/png;base64,")
        (s, w), (n, e) = r["bounds"]
        (bs, bw), (bn, be) = data["bounds"]
        assert bs <= s < n <= bn and bw <= w < e <= be

    # class colour from the bundle via the class raster's colour table
    with rasterio.open(result.class_rasters[0]) as ds:
        r_, g_, b_, _ = ds.colormap(1)[1]
    assert data["colors"]["object"] == f"#{r_:02x}{g_:02x}{b_:02x}"

    table = class_table(page)
    expected = result.summary["classes"]
    assert set(table) == set(expected)
    for name, (count, area_ha, area_m2) in table.items():
        assert count == expected[name]["count"]
        assert area_ha == expected[name]["area_ha"]
        assert area_m2 == expected[name]["area_m2"]
    assert 'id="legend"' in page and 'class="gv-histogram"' in page and "mean_probability" in page
    assert len(out.read_bytes()) < 1_500_000


def test_overwrite_and_bad_paths(run: dict, tmp_path: Path) -> None:
    vector = run["result"].vector_path
    out = tmp_path / "report.html"
    write_report(vector, out)
    out.write_text("keep me")
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_report(vector, out)
    assert out.read_text() == "keep me"
    assert write_report(vector, out, overwrite=True, title="Buildings <north>") == out
    page = out.read_text()
    assert "<title>Buildings &lt;north&gt;</title>" in page
    with pytest.raises(OutputOverwritesInputError):
        write_report(vector, vector, overwrite=True)
    with pytest.raises(VectorReadError, match="no such file"):
        write_report(tmp_path / "missing.gpkg")
    broken = tmp_path / "broken.gpkg"
    broken.write_bytes(b"not a geopackage")
    with pytest.raises(VectorReadError, match="broken.gpkg"):
        write_report(broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gpkg", "report.html"]


def test_single_layer_format_with_sibling_layer(run: dict, tmp_path: Path) -> None:
    result = predict(run["raster"], run["bundle"], tmp_path / "b.geojson", tile=256, overlap=64,
                     review_band=(0.5, 0.97), progress=False)
    assert (tmp_path / "b.review.geojson").exists()
    page = write_report(result.vector_path).read_text()
    data = payload(page)
    assert sorted(spec["name"] for spec in data["layers"]) == ["predictions", "review"]
    assert [r["name"] for r in data["rasters"]] == ["b.classes.tif"]
    assert {k: v[0] for k, v in class_table(page).items()} == {
        k: v["count"] for k, v in result.summary["classes"].items()}


def test_table_from_the_layer_without_summary_and_feature_cap(run: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from geovision.report import layers

    vector = shutil.copy(run["result"].vector_path, tmp_path / "copy.gpkg")
    frame = gpd.read_file(vector, layer="predictions")
    monkeypatch.setattr(layers, "MAX_FEATURES", 3)
    page = write_report(vector).read_text()
    table = class_table(page)
    assert table["object"][0] == len(frame)
    assert table["object"][2] == pytest.approx(frame.area_m2.sum(), abs=1e-3)
    assert "from layer predictions" in page
    spec = next(s for s in payload(page)["layers"] if s["name"] == "predictions")
    assert spec["shown"] == len(spec["data"]["features"]) == 3 and spec["total"] == len(frame)
    assert f"the map shows the first 3 of {len(frame)} features" in page
    assert payload(page)["rasters"] == []


def test_evaluation_outputs_are_embedded(run: dict, tmp_path: Path) -> None:
    from geovision.workflows.evaluate import evaluate

    evaluate(run["result"].vector_path, run["truth"], tmp_path / "eval")
    page = write_report(tmp_path / "eval" / "errors.gpkg").read_text()
    assert_offline(page)
    assert 'alt="confusion.png"' in page and 'alt="pr_curve.png"' in page
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{200,}" alt="confusion.png">', page)
    assert "objects.overall.f1" in page and "metrics.json" in page
    assert sorted(s["name"] for s in payload(page)["layers"]) == ["predictions", "truth"]


# --- a crop-stress-like output: any layers, any columns -------------------------------------------


# the raster's colour table; the summary names slightly different colours, which win
STRESS_COLORS = {0: (0, 0, 0, 0), 1: (26, 150, 65, 255), 2: (253, 174, 97, 255), 3: (215, 25, 28, 255),
                 4: (69, 117, 180, 255)}
SUMMARY_COLORS = {1: "#1a9850", 2: "#fdae61", 3: "#d73027"}
STRESS_NAMES = {1: "healthy", 2: "moderate", 3: "severe"}


@pytest.fixture(scope="module")
def stress_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``farm.gpkg`` with ``fields`` (no class_name) and ``stress`` layers, stress and NDVI rasters, a summary."""
    d = tmp_path_factory.mktemp("stress")
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 5_650_000)
    rows = cols = 300
    r, c = np.mgrid[0:rows, 0:cols]
    ndvi = (0.15 + 0.7 * c / cols + 0.05 * np.sin(r / 9)).astype(np.float32)
    fields_px = [(20, 20, 140, 280), (160, 20, 280, 130), (160, 150, 280, 280)]  # r0, c0, r1, c1
    inside = np.zeros((rows, cols), bool)
    for r0, c0, r1, c1 in fields_px:
        inside[r0:r1, c0:c1] = True
    ndvi[~inside] = np.nan
    stress = np.where(ndvi < 0.4, 3, np.where(ndvi < 0.65, 2, 1)).astype(np.uint8)
    stress[~inside] = 0
    stress[250:280, 250:280] = 4  # water: a raster class with no polygons, named by the summary's class_names
    write_raster(d / "farm.ndvi.tif", ndvi[None], transform=transform, nodata=float("nan"))
    write_raster(d / "farm.stress.tif", stress[None], transform=transform, nodata=0)
    with rasterio.open(d / "farm.stress.tif", "r+") as ds:
        ds.write_colormap(1, STRESS_COLORS)

    fields = []
    for i, (r0, c0, r1, c1) in enumerate(fields_px):
        x0, y0 = transform @ (c0, r0)
        x1, y1 = transform @ (c1, r1)
        block = stress[r0:r1, c0:c1]
        fields.append({"field_id": f"F{i + 1}" if i else "F1 <b>&amp;</script>",
                       "index_mean": float(np.nanmean(ndvi[r0:r1, c0:c1])),
                       "severe_pct": float((block == 3).mean() * 100), "moderate_pct": float((block == 2).mean() * 100),
                       "healthy_pct": float((block == 1).mean() * 100), "geometry": shapely.box(x0, y1, x1, y0)})
    gpd.GeoDataFrame(fields, crs=UTM).to_file(d / "farm.gpkg", layer="fields")
    shapes = [(shapely.geometry.shape(g), int(v)) for g, v in
              rasterio.features.shapes(stress, mask=(stress > 0) & (stress < 4), transform=transform)]
    frame = gpd.GeoDataFrame({"class_id": [v for _, v in shapes], "class_name": [STRESS_NAMES[v] for _, v in shapes]},
                             geometry=[g for g, _ in shapes], crs=UTM)
    frame["area_m2"] = frame.area
    rng = np.random.default_rng(0)  # a point layer with scores: circle markers and the histogram
    xy = np.column_stack([rng.uniform(500_010, 500_140, 25), rng.uniform(5_649_860, 5_649_990, 25)])
    gpd.GeoDataFrame({"class_name": rng.choice(["healthy", "severe"], 25), "score": rng.uniform(0.3, 1, 25)},
                     geometry=shapely.points(xy), crs=UTM).to_file(d / "farm.gpkg", layer="samples")
    frame = frame[frame.class_id > 1]  # like the stress workflow: polygons of the stressed classes only
    frame.to_file(d / "farm.gpkg", layer="stress")
    pixel_m2 = 0.25
    valid = int((stress > 0).sum())
    classes = {STRESS_NAMES[v]: {"class_id": v, "area_m2": round(float((stress == v).sum() * pixel_m2), 3),
                                 "area_ha": round(float((stress == v).sum() * pixel_m2) / 1e4, 6),
                                 "percent_of_valid": round(100 * float((stress == v).sum()) / valid, 3),
                                 "color": SUMMARY_COLORS[v]}
               for v in (1, 2, 3)}
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(d / "farm.quicklook.png")
    (d / "farm.summary.json").write_text(json.dumps({
        "workflow": "stress", "index": {"name": "ndvi", "mean": 0.49}, "classes": classes,
        "class_names": ["none", "healthy", "moderate", "severe", "water", "masked"],
        "fields": {"count": 3, "valid_ha": 0.9}, "inputs": {"raster": str(d / "farm.tif")},
        "outputs": {"vector": str(d / "farm.gpkg"), "stress": str(d / "farm.stress.tif"),
                    "quicklook": str(d / "farm.quicklook.png")}}))
    return d / "farm.gpkg"


def test_stress_output_is_shown_without_special_code(stress_run: Path) -> None:
    page = write_report(stress_run).read_text()
    assert_offline(page)
    assert "<title>geovision stress report: farm.gpkg</title>" in page
    data = payload(page)
    specs = {s["name"]: s for s in data["layers"]}
    # outlined fields at the bottom, then class polygons, points on top
    assert [s["name"] for s in data["layers"]] == ["fields", "stress", "samples"]
    assert specs["samples"]["geometry"] == "Point" and "Confidence (score)" in page
    assert not specs["fields"]["classed"] and specs["stress"]["classed"]
    assert specs["fields"]["data"]["features"][0]["properties"]["severe_pct"] >= 0
    assert [r["name"] for r in data["rasters"]] == ["farm.stress.tif", "farm.ndvi.tif"]
    for value, name in STRESS_NAMES.items():  # colours from the summary
        assert data["colors"][name] == SUMMARY_COLORS[value]
    legend = page[page.index('id="legend"'):page.index('id="classes"')]
    assert "</span>water</li>" in legend  # named by the summary's class_names
    summary = json.loads(stress_run.with_name("farm.summary.json").read_text())
    table = class_table(page)  # areas from the summary, counts of the stress polygons (none for healthy)
    stress_layer = gpd.read_file(stress_run, layer="stress")
    assert {k: v[1:3] for k, v in table.items()} == {k: (v["area_ha"], v["area_m2"]) for k, v in
                                                    summary["classes"].items()}
    assert table["severe"][0] == (stress_layer.class_name == "severe").sum() and table["healthy"][0] is None
    assert "percent_of_valid" in page and "counts of features in layer stress" in page
    assert 'alt="farm.quicklook.png"' in page and "fields.valid_ha" in page
    assert "index_mean" in page and "healthy_pct" in page and 'class="gv-ramp"' in page and ">ndvi<" in page
    assert "F1 <b>&amp;</script>" in {f["properties"]["field_id"] for f in specs["fields"]["data"]["features"]}
    assert "<b>" not in page.replace(LEAFLET_JS, "")  # text is escaped everywhere, JSON included


def test_quicklooks_are_decimated_and_warped(run: dict) -> None:
    from geovision.report.quicklook import quicklook

    classes = quicklook(run["result"].class_rasters[0], names={1: "object"}, hidden=frozenset({0}), max_side=64)
    assert classes is not None and classes.kind == "categorical" and max(classes.size) <= 64
    assert classes.source_size == (384, 384)
    assert [(e.value, e.name) for e in classes.entries] == [(1, "object")]  # background hidden
    assert classes.png.startswith(b"\x89PNG")
    ndvi = quicklook(run["dir"] / "run.ndvi.tif", max_side=100)
    assert ndvi is not None and ndvi.kind == "continuous" and max(ndvi.size) <= 100 and ndvi.band_name == "ndvi"
    low, high = ndvi.value_range
    assert -1 <= low < high <= 1
    west, south, east, north = ndvi.bounds_lonlat
    assert 2.9 < west < east < 3.1 and 50 < south < north < 51.1


# --- in a real browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium driven by selenium with the system's chromedriver (nothing downloaded)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("GEOVISION_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GEOVISION_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1400,1500",
                "--force-device-scale-factor=1", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return !!(window.geovisionReport && window.geovisionReport.ready) && "
        "Array.from(document.images).every(function (i) { return i.complete; })"))


@pytest.mark.parametrize("which", ["segmentation", "stress"])
def test_report_renders_in_chromium(which: str, browser, run: dict, stress_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    vector = run["result"].vector_path if which == "segmentation" else stress_run
    page = write_report(vector, tmp_path / "report.html")
    data = payload(page.read_text())
    browser.get_log("browser")  # drop anything from before
    _open(browser, page)

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })")
    assert all(u.startswith(("data:", "file:", "blob:")) for u in fetched), fetched

    counts = browser.execute_script(
        "var r = window.geovisionReport, out = {};"
        "Object.keys(r.layers).forEach(function (k) { out[k] = r.featureCount(k); }); return out;")
    assert counts == {s["name"]: s["shown"] for s in data["layers"]}
    assert browser.execute_script("return Object.keys(window.geovisionReport.rasters).length") == len(data["rasters"])
    overlays = browser.execute_script(
        "return document.querySelectorAll('.leaflet-control-layers-overlays input').length")
    assert overlays == len(data["layers"]) + len(data["rasters"])
    drawn = browser.execute_script("return document.querySelectorAll('.leaflet-overlay-pane path').length")
    assert drawn >= sum(s["shown"] for s in data["layers"])
    visible_images = browser.execute_script(
        "return Array.from(document.querySelectorAll('.leaflet-image-layer'))"
        ".filter(function (i) { return i.naturalWidth > 0; }).length")
    assert visible_images == sum(r["visible"] for r in data["rasters"]) >= 1
    inside = browser.execute_script(  # the map shows the data: its view holds the data bounds' centre
        "var m = window.geovisionReport.map, b = m.getBounds(), d = arguments[0];"
        "return b.contains(L.latLng((d[0][0] + d[1][0]) / 2, (d[0][1] + d[1][1]) / 2));", data["bounds"])
    assert inside
    if which == "stress":  # popups list the attributes as text
        text, bold = browser.execute_script(
            "var l = window.geovisionReport.layers.fields.getLayers().filter(function (f) {"
            "  return f.feature.properties.field_id.indexOf('F1') === 0; })[0];"
            "l.fire('click', {latlng: l.getCenter()}, true); var c = document.querySelector('.leaflet-popup-content');"
            "return [c.textContent, c.querySelectorAll('b').length];")
        assert "F1 <b>&amp;</script>" in text and "severe_pct" in text and bold == 0
    for element in ("legend", "class-table"):
        assert browser.find_element("id", element).is_displayed()

    shot = tmp_path / f"{which}.png"
    assert browser.save_screenshot(str(shot))
    box = browser.find_element("id", "map").rect
    img = np.asarray(Image.open(shot).convert("RGB"))
    area = img[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    assert area.size
    colours, counts_ = np.unique((area // 16).reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) >= 4
    assert counts_.max() / counts_.sum() < 0.95  # not one flat colour: data is drawn
    if os.environ.get("GEOVISION_REPORT_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["GEOVISION_REPORT_SCREENSHOTS"]) / shot.name)
