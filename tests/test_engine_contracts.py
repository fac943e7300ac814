"""Contract tests for the engine's extension points (geovision.engine.protocols).

Each ``*Contract`` class states what any implementation of one protocol must do; a
new backend, consumer, sink or output target subclasses it, fills in ``make`` (and the
few helpers it names), and inherits every test (as smp tests each architecture through
one shared class). The subclasses below run the contracts on today's implementations.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from models_util import bright_object_bundle

from geovision.engine.detection import detection_consumer, empty_frame
from geovision.engine.protocols import (
    Backend,
    FeatureSink,
    LayerSpec,
    OutputTarget,
    TileConsumer,
    TileResult,
    TileSkipped,
)
from geovision.engine.segmentation import RasterFiles, empty_polygons, segmentation_consumer
from geovision.engine.sinks import ReviewSink
from geovision.engine.stitcher import Stitcher
from geovision.errors import OutputExistsError
from geovision.io.targets import FileTarget
from geovision.io.vector import FeatureBatch, LayerSink
from geovision.models.bundle import load_bundle
from geovision.models.factory import make_predictor
from geovision.tiling.grid import TileGrid
from geovision.tiling.reader import RasterInfo
from geovision.types import Tile

CRS = "EPSG:32631"
RASTER = 200  # raster edge of the consumer contracts, px
TILE, OVERLAP = 96, 16


def _info(tmp: Path) -> RasterInfo:
    import rasterio

    return RasterInfo(path=str(tmp / "in.tif"), height=RASTER, width=RASTER, count=3, dtype="uint8",
                      crs_wkt=rasterio.crs.CRS.from_string(CRS).to_wkt(),
                      transform=(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_650_000.0), bands=(1, 2, 3), nodata=None)


def _features(n: int, start: int = 0) -> gpd.GeoDataFrame:
    x = np.arange(start, start + n, dtype=np.float64)
    return gpd.GeoDataFrame({
        "class_id": np.ones(n, np.int64),
        "class_name": np.where(x % 3 == 0, "tree", "building").astype(object),
        "score": (x % 10) / 10,
        "area_m2": np.full(n, 0.25),
        "source": np.array(["a.tif"] * n, dtype=object),
    }, geometry=gpd.GeoSeries(shapely.box(400_000 + x, 5_600_000, 400_000.5 + x, 5_600_000.5), crs=CRS))


# --------------------------------------------------------------------------- Backend


class BackendContract:
    """Any inference backend. Subclasses: ``make(tmp_path) -> (predictor, bands, tile)``."""

    task: str

    def make(self, tmp_path: Path) -> tuple[Backend, int, int]:
        raise NotImplementedError

    def _tiles(self, bands: int, tile: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        tiles = rng.normal(40, 10, size=(n, bands, tile, tile)).clip(0, 255).astype(np.uint8)
        tiles[:, :, tile // 4: tile // 2, tile // 4: tile // 2] = 210  # one bright square each
        valid = np.ones((n, tile, tile), bool)
        valid[-1, :, : tile // 8] = False  # nodata strip on the last tile
        return tiles, valid

    def test_is_a_backend_of_its_task(self, tmp_path: Path) -> None:
        predictor, _, _ = self.make(tmp_path)
        assert isinstance(predictor, Backend)
        assert predictor.task == self.task

    def test_one_output_per_tile_and_deterministic(self, tmp_path: Path) -> None:
        predictor, bands, tile = self.make(tmp_path)
        tiles, valid = self._tiles(bands, tile, 3)
        first = list(predictor.predict(tiles, valid))
        again = list(predictor.predict(tiles, valid))
        assert len(first) == len(again) == 3
        for a, b in zip(first, again):
            self.check_output(a, tile)
            for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                np.testing.assert_allclose(x, y, atol=1e-5)

    def test_a_tile_alone_gives_its_output_in_a_batch(self, tmp_path: Path) -> None:
        predictor, bands, tile = self.make(tmp_path)
        tiles, valid = self._tiles(bands, tile, 2, seed=1)
        batch = list(predictor.predict(tiles, valid))
        alone = list(predictor.predict(tiles[1:], valid[1:]))
        for x, y in zip(batch[1] if isinstance(batch[1], tuple) else (batch[1],),
                        alone[0] if isinstance(alone[0], tuple) else (alone[0],)):
            np.testing.assert_allclose(x, y, atol=1e-4)

    def check_output(self, output: Any, tile: int) -> None:
        raise NotImplementedError


class SegmentationBackendContract(BackendContract):
    task = "segmentation"

    def check_output(self, output: Any, tile: int) -> None:
        probs = np.asarray(output)
        assert probs.ndim == 3 and probs.shape[1:] == (tile, tile)
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-3)


class DetectionBackendContract(BackendContract):
    task = "detection"

    def check_output(self, output: Any, tile: int) -> None:
        boxes, scores, labels = output
        assert boxes.shape == (len(scores), 4) and len(labels) == len(scores)
        assert (boxes[:, :2] <= boxes[:, 2:]).all() and (boxes >= -1).all() and (boxes <= tile + 1).all()
        assert ((scores >= 0) & (scores <= 1)).all()


class TestTorchSegmentationBackend(SegmentationBackendContract):
    def make(self, tmp_path: Path) -> tuple[Backend, int, int]:
        config, state = load_bundle(bright_object_bundle(tmp_path / "b.safetensors", tile=64))
        return make_predictor(config, state, device="cpu"), 3, 64


class TestTorchDetectionBackend(DetectionBackendContract):
    def make(self, tmp_path: Path) -> tuple[Backend, int, int]:
        from geovision.models.registry import init_bundle

        path = tmp_path / "d.safetensors"
        init_bundle(path, task="detection", arch="fcos", encoder="tiny", bands=3, classes=["square"], tile_size=64)
        config, state = load_bundle(path)
        return make_predictor(config, state, device="cpu"), 3, 64


# --------------------------------------------------------------------------- TileConsumer


class RecordingSink:
    """The smallest FeatureSink: keeps what it is given (for consumer contracts)."""

    def __init__(self) -> None:
        self.frames: list[gpd.GeoDataFrame] = []
        self.closed = self.aborted = False

    @property
    def count(self) -> int:
        return sum(len(f) for f in self.frames)

    @property
    def tally(self) -> dict[str, list[float]]:
        return {}

    def append(self, features: gpd.GeoDataFrame | FeatureBatch) -> None:
        self.frames.append(features.to_frame() if isinstance(features, FeatureBatch) else features)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


#: two objects in raster pixels (row0, col0, row1, col1); the second straddles tile seams
OBJECTS = [(20, 20, 50, 60), (70, 70, 120, 110)]


class TileConsumerContract:
    """Any consumer of tile outputs. Subclasses: ``make`` and ``output``; ``expected`` objects found."""

    def make(self, tmp_path: Path, grid: TileGrid, sink: FeatureSink) -> TileConsumer:
        raise NotImplementedError

    def output(self, tile: Tile) -> tuple[Any, np.ndarray | None]:
        """The output a perfect model gives for ``tile`` over :data:`OBJECTS`."""
        raise NotImplementedError

    def _grid(self) -> TileGrid:
        return TileGrid(RASTER, RASTER, TILE, OVERLAP)

    def _feed(self, consumer: TileConsumer, grid: TileGrid, skip: frozenset[int] = frozenset()) -> None:
        for tile in grid.tiles:
            if tile.index in skip:
                consumer.skip(tile)
            else:
                consumer.add(tile, *self.output(tile))

    def test_is_a_tile_consumer(self, tmp_path: Path) -> None:
        assert isinstance(self.make(tmp_path, self._grid(), RecordingSink()), TileConsumer)

    def test_every_object_once_across_tiles(self, tmp_path: Path) -> None:
        grid, sink = self._grid(), RecordingSink()
        consumer = self.make(tmp_path, grid, sink)
        self._feed(consumer, grid)
        consumer.finish()
        consumer.close()
        assert sink.count == len(OBJECTS)

    def test_skipped_tiles_count_as_seen(self, tmp_path: Path) -> None:
        grid, sink = self._grid(), RecordingSink()
        consumer = self.make(tmp_path, grid, sink)
        corner = grid.tiles[-1]  # holds no object
        self._feed(consumer, grid, skip=frozenset({corner.index}))
        consumer.finish()
        consumer.close()
        assert sink.count == len(OBJECTS)

    def test_close_without_finish_raises_nothing(self, tmp_path: Path) -> None:
        grid = self._grid()
        consumer = self.make(tmp_path, grid, RecordingSink())
        consumer.add(grid.tiles[0], *self.output(grid.tiles[0]))
        consumer.close()  # an aborted run

    def test_through_the_stitcher_thread_equals_direct(self, tmp_path: Path) -> None:
        grid, direct, threaded = self._grid(), RecordingSink(), RecordingSink()
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        consumer = self.make(tmp_path / "a", grid, direct)
        self._feed(consumer, grid)
        consumer.finish()
        consumer.close()
        with Stitcher(self.make(tmp_path / "b", grid, threaded)) as stitcher:
            for tile in grid.tiles:
                stitcher.put([TileResult(tile, *self.output(tile))])
        a = gpd.GeoDataFrame(gpd.pd.concat(direct.frames)).normalize()
        b = gpd.GeoDataFrame(gpd.pd.concat(threaded.frames)).normalize()
        assert sorted(a.geometry.area.round(6)) == sorted(b.geometry.area.round(6))


def _object_mask() -> np.ndarray:
    mask = np.zeros((RASTER, RASTER), bool)
    for r0, c0, r1, c1 in OBJECTS:
        mask[r0:r1, c0:c1] = True
    return mask


class TestSegmentationConsumer(TileConsumerContract):
    def make(self, tmp_path: Path, grid: TileGrid, sink: FeatureSink) -> TileConsumer:
        config, _ = load_bundle(bright_object_bundle(tmp_path / "b.safetensors", tile=TILE))
        return segmentation_consumer(_info(tmp_path), grid, config, sink, overlap=OVERLAP,
                                     classes=RasterFiles(tmp_path / "c.tif", tmp_path / "c.scratch.tif"))

    def output(self, tile: Tile) -> tuple[Any, np.ndarray | None]:
        w = tile.window
        inside = _object_mask()[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width]
        probs = np.stack([~inside, inside]).astype(np.float32) * 0.9 + 0.05
        return probs, np.ones(inside.shape, bool)


class TestDetectionConsumer(TileConsumerContract):
    def make(self, tmp_path: Path, grid: TileGrid, sink: FeatureSink) -> TileConsumer:
        info = _info(tmp_path)
        return detection_consumer(grid, info.affine, info.crs, ["background", "object"], sink)

    def output(self, tile: Tile) -> tuple[Any, np.ndarray | None]:
        w = tile.window
        boxes = []
        for r0, c0, r1, c1 in OBJECTS:  # each object as the tile sees it: cut by the tile's edges
            x0, y0 = max(c0, w.col_off) - w.col_off, max(r0, w.row_off) - w.row_off
            x1, y1 = min(c1, w.col_off + w.width) - w.col_off, min(r1, w.row_off + w.height) - w.row_off
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
        b = np.array(boxes, np.float64).reshape(-1, 4)
        return (b, np.full(len(b), 0.9), np.ones(len(b), np.int64)), None


# --------------------------------------------------------------------------- FeatureSink


class FeatureSinkContract:
    """Any feature sink. Subclasses: ``make(tmp_path)`` and ``read_back(tmp_path)`` (the written layer)."""

    def make(self, tmp_path: Path) -> FeatureSink:
        raise NotImplementedError

    def read_back(self, tmp_path: Path) -> gpd.GeoDataFrame:
        raise NotImplementedError

    def test_is_a_feature_sink(self, tmp_path: Path) -> None:
        sink = self.make(tmp_path)
        assert isinstance(sink, FeatureSink)
        sink.abort()

    def test_frames_and_batches_counted_and_written(self, tmp_path: Path) -> None:
        sink = self.make(tmp_path)
        sink.append(_features(7))
        sink.append(FeatureBatch.from_frame(_features(5, start=7)))
        sink.append(_features(0))
        sink.close()
        assert sink.count == 12
        assert sink.tally["tree"][0] == 4 and sink.tally["building"][0] == 8
        assert sink.tally["building"][1] == pytest.approx(2.0)
        back = self.read_back(tmp_path)
        assert len(back) == 12 and set(back["class_name"]) == {"tree", "building"}

    def test_closing_with_nothing_makes_an_empty_layer(self, tmp_path: Path) -> None:
        sink = self.make(tmp_path)
        sink.close()
        assert sink.count == 0 and len(self.read_back(tmp_path)) == 0

    def test_abort_ends_every_writer(self, tmp_path: Path) -> None:
        sink = self.make(tmp_path)
        sink.append(_features(3))
        sink.abort()
        assert not [t for t in threading.enumerate() if t.name == "geovision-vector-writer"]


class TestLayerSinkStreaming(FeatureSinkContract):
    def make(self, tmp_path: Path) -> FeatureSink:
        return LayerSink(tmp_path / "s.gpkg", "predictions", CRS, _features(0), stream=True)

    def read_back(self, tmp_path: Path) -> gpd.GeoDataFrame:
        return pyogrio.read_dataframe(tmp_path / "s.gpkg", layer="predictions")


class TestLayerSinkAppends(TestLayerSinkStreaming):
    def make(self, tmp_path: Path) -> FeatureSink:
        return LayerSink(tmp_path / "s.gpkg", "predictions", CRS, _features(0))


class TestReviewSink(FeatureSinkContract):
    def make(self, tmp_path: Path) -> FeatureSink:
        path = tmp_path / "s.gpkg"
        from geovision.engine.sinks import flag_for_review

        empty = flag_for_review(_features(0), (0.3, 0.6))
        return ReviewSink(LayerSink(path, "predictions", CRS, empty), LayerSink(path, "review", CRS, empty),
                          (0.3, 0.6))

    def read_back(self, tmp_path: Path) -> gpd.GeoDataFrame:
        return pyogrio.read_dataframe(tmp_path / "s.gpkg", layer="predictions")

    def test_review_layer_holds_the_band(self, tmp_path: Path) -> None:
        sink = self.make(tmp_path)
        sink.append(_features(10))
        sink.close()
        review = pyogrio.read_dataframe(tmp_path / "s.gpkg", layer="review")
        assert sorted(review["score"].round(1)) == [0.3, 0.4, 0.5]


# --------------------------------------------------------------------------- OutputTarget


def _scratch(tmp_path: Path) -> tuple[Path, list[LayerSpec]]:
    """A run's scratch GeoPackage with a polygon layer of 6 features and a point layer of 4."""
    scratch = tmp_path / "work" / "run.scratch.gpkg"
    scratch.parent.mkdir()
    pyogrio.write_dataframe(_features(6), scratch, layer="predictions", driver="GPKG")
    points = _features(4)
    points = points.set_geometry(points.geometry.centroid)
    pyogrio.write_dataframe(points, scratch, layer="points", driver="GPKG")
    return scratch, [LayerSpec("predictions", "Polygon"), LayerSpec("points", "Point")]


class OutputTargetContract:
    """Any output target. Subclasses: ``make(tmp_path, overwrite)`` and ``read_back(location, layer)``."""

    def make(self, tmp_path: Path, overwrite: bool = False) -> OutputTarget:
        raise NotImplementedError

    def read_back(self, location: str, layer: str) -> gpd.GeoDataFrame:
        raise NotImplementedError

    def exists(self, location: str) -> bool:
        raise NotImplementedError

    def test_is_an_output_target(self, tmp_path: Path) -> None:
        assert isinstance(self.make(tmp_path), OutputTarget)

    def test_layers_appear_only_on_commit(self, tmp_path: Path) -> None:
        target = self.make(tmp_path)
        locations = target.locations()
        assert set(locations) == {"predictions", "points"}
        scratch, layers = _scratch(tmp_path)
        target.write(scratch, layers)
        assert not any(self.exists(loc) for loc in locations.values())
        target.commit()
        assert len(self.read_back(locations["predictions"], "predictions")) == 6
        back = self.read_back(locations["points"], "points")
        assert len(back) == 4 and set(back.geom_type) == {"Point"}
        assert str(back.crs.to_epsg()) == CRS.split(":")[1]

    def test_abort_leaves_nothing(self, tmp_path: Path) -> None:
        target = self.make(tmp_path)
        scratch, layers = _scratch(tmp_path)
        target.write(scratch, layers)
        target.abort()
        assert not any(self.exists(loc) for loc in target.locations().values())

    def test_existing_output_refused_before_any_work(self, tmp_path: Path) -> None:
        first = self.make(tmp_path)
        scratch, layers = _scratch(tmp_path)
        first.write(scratch, layers)
        first.commit()
        with pytest.raises(OutputExistsError):
            self.make(tmp_path)
        self.make(tmp_path, overwrite=True).abort()


class FileTargetContract(OutputTargetContract):
    suffix = ".gpkg"

    def make(self, tmp_path: Path, overwrite: bool = False) -> OutputTarget:
        return FileTarget(tmp_path / "out" / f"run{self.suffix}", ["predictions", "points"], [], overwrite)

    def read_back(self, location: str, layer: str) -> gpd.GeoDataFrame:
        if location.endswith(".parquet"):
            return gpd.read_parquet(location)
        return pyogrio.read_dataframe(location, layer=layer if location.endswith(".gpkg") else None)

    def exists(self, location: str) -> bool:
        return Path(location).exists()

    def test_no_temporary_files_left(self, tmp_path: Path) -> None:
        target = self.make(tmp_path)
        scratch, layers = _scratch(tmp_path)
        target.write(scratch, layers)
        target.commit()
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
            {Path(loc).name for loc in target.locations().values()})


class TestGeoPackageTarget(FileTargetContract):
    suffix = ".gpkg"


class TestGeoJSONTarget(FileTargetContract):
    suffix = ".geojson"


class TestFlatGeobufTarget(FileTargetContract):
    suffix = ".fgb"


class TestGeoParquetTarget(FileTargetContract):
    suffix = ".parquet"


# --------------------------------------------------------------------------- the stitcher


def test_stitcher_hands_the_consumers_error_to_the_producer(tmp_path: Path) -> None:
    class Broken:
        closed = finished = False

        def add(self, tile: Tile, output: Any, valid: np.ndarray | None) -> None:
            raise ValueError("consumer broke")

        def skip(self, tile: Tile) -> None: ...

        def finish(self) -> None:
            self.finished = True

        def close(self) -> None:
            self.closed = True

    grid = TileGrid(RASTER, RASTER, TILE, OVERLAP)
    broken = Broken()
    with pytest.raises(ValueError, match="consumer broke"), Stitcher(broken) as stitcher:
        for tile in grid.tiles:
            stitcher.put([TileResult(tile, None, None)])
    assert broken.closed and not broken.finished


def test_stitcher_skips_finish_when_the_producer_fails() -> None:
    calls: list[str] = []

    class Recording:
        def add(self, tile: Tile, output: Any, valid: np.ndarray | None) -> None:
            calls.append("add")

        def skip(self, tile: Tile) -> None:
            calls.append("skip")

        def finish(self) -> None:
            calls.append("finish")

        def close(self) -> None:
            calls.append("close")

    grid = TileGrid(RASTER, RASTER, TILE, OVERLAP)
    with pytest.raises(KeyboardInterrupt), Stitcher(Recording()) as stitcher:
        stitcher.put([TileResult(grid.tiles[0], None, None), TileSkipped(grid.tiles[1])])
        raise KeyboardInterrupt
    assert calls == ["add", "skip", "close"]


def test_empty_layers_have_the_columns_of_full_ones() -> None:
    assert list(empty_frame(CRS).columns)[-1] == "geometry"
    assert "mean_probability" in empty_polygons(["background", "object"], CRS).columns
