"""LayerSink: features appended in batches to a GeoPackage layer, one open Arrow stream or separate appends."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from geovision.io import vector
from geovision.io.vector import LayerSink

CRS = "EPSG:32631"


def frame(n: int, start: int = 0) -> gpd.GeoDataFrame:
    x = np.arange(start, start + n, dtype=np.float64)
    geoms = shapely.box(400_000 + x, 5_600_000, 400_000.5 + x, 5_600_000.5)
    return gpd.GeoDataFrame({
        "class_id": np.ones(n, np.int64),
        "class_name": np.where(x % 3 == 0, "tree", "building").astype(object),
        "area_m2": np.full(n, 0.25),
        "source": np.array(["a.tif"] * n, dtype=object),
    }, geometry=gpd.GeoSeries(geoms, crs=CRS))


def empty() -> gpd.GeoDataFrame:
    return frame(0)


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "geovision-vector-writer"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "appends"])
def test_batches_make_one_indexed_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    monkeypatch.setattr(vector, "FLUSH_AT", 250)
    path = tmp_path / "out.gpkg"
    sink = LayerSink(path, "predictions", CRS, empty(), stream=stream)
    for k in range(7):  # several flushes, through one stream or several appends
        sink.append(frame(100, start=100 * k))
    assert (len(writer_threads()) == 1) is stream
    sink.close()
    assert not writer_threads()
    got = pyogrio.read_dataframe(path, layer="predictions")
    assert len(got) == sink.count == 700
    assert got.crs.to_epsg() == 32631
    assert list(got.columns) == ["class_id", "class_name", "area_m2", "source", "geometry"]
    assert sorted(shapely.get_x(shapely.centroid(got.geometry.values)).round(2)) == list(
        np.arange(700) + 400_000.25)
    assert sink.tally == {"tree": [234, 234 * 0.25], "building": [466, 466 * 0.25]}
    with sqlite3.connect(path) as db:  # a spatial index over every feature
        assert db.execute("select count(*) from rtree_predictions_geom").fetchone()[0] == 700
    box = (400_100, 5_600_000, 400_199, 5_600_001)  # the index answers a window query right
    assert len(pyogrio.read_dataframe(path, layer="predictions", bbox=box)) == 100
    # the stream writer's GDAL option does not outlive it
    assert pyogrio.get_gdal_config_option(vector._RTREE_OPTION) is None
    assert not list(tmp_path.glob("*rtree*"))  # GDAL's scratch database for the index is gone


def test_empty_layer_still_written(tmp_path: Path) -> None:
    sink = LayerSink(tmp_path / "e.gpkg", "predictions", CRS, empty(), stream=True)
    sink.close()
    info = pyogrio.read_info(tmp_path / "e.gpkg", layer="predictions")
    assert info["features"] == 0 and info["geometry_type"] == "Polygon"


def test_abort_ends_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector, "FLUSH_AT", 10)
    sink = LayerSink(tmp_path / "a.gpkg", "predictions", CRS, empty(), stream=True)
    sink.append(frame(20))
    assert len(writer_threads()) == 1
    sink.abort()
    assert not writer_threads()
    sink.abort()  # twice is harmless


def test_writer_failure_reaches_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector, "FLUSH_AT", 10)
    sink = LayerSink(tmp_path / "missing-folder" / "f.gpkg", "predictions", CRS, empty(), stream=True)
    with pytest.raises(Exception, match="missing-folder"):
        for k in range(20):  # the writer fails at once; a later append or the close says so
            sink.append(frame(10, start=10 * k))
        sink.close()
    assert not writer_threads()
