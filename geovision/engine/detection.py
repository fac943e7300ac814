"""The detection consumer: tile boxes to one clean layer of objects.

:class:`DetectionConsumer` runs on the engine's stitcher thread
(:mod:`geovision.engine.stitcher`). Per tile it drops boxes under the score
threshold, moves the rest from tile to raster pixels and hands them to the
streaming :class:`~geovision.stitching.boxes.DetectionMerger`; whatever the
merger finalises becomes map-coordinate polygons with ground measures
(:func:`box_frame`), which go to the output layer, the optional centroid layer
and the zone counts at once. Nothing is kept per object once it is written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine

from geovision.engine.protocols import FeatureSink
from geovision.io.geo import distances_m, measure
from geovision.io.zones import Zones
from geovision.stitching.boxes import DetectionMerger, Detections, Fusion
from geovision.tiling.grid import TileGrid
from geovision.types import Tile

__all__ = [
    "DETECTION_COLUMNS", "POINT_COLUMNS", "DetectionConsumer", "box_frame", "detection_consumer", "empty_frame",
    "point_frame",
]

DETECTION_COLUMNS: tuple[str, ...] = (
    "class_id", "class_name", "score", "area_m2", "width_m", "height_m", "tiles", "source", "geometry",
)
"""Columns of the detection layer: ``tiles`` is how many tile views were merged into the box."""

POINT_COLUMNS: tuple[str, ...] = ("class_id", "class_name", "score", "source", "geometry")
"""Columns of the centroid layer."""


def _pixel_to_map(transform: Affine, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    t = transform
    return np.column_stack([t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f])


def box_frame(dets: Detections, transform: Affine, crs: Any, class_names: Sequence[str],
              source: str = "") -> gpd.GeoDataFrame:
    """Detections in raster pixels to polygons in map coordinates with ground measures.

    Each box becomes the polygon of its four corners moved through ``transform``
    (a rectangle, or a parallelogram for a rotated raster). ``area_m2`` is the
    polygon's true ground area (:func:`geovision.io.geo.measure`); ``width_m`` and
    ``height_m`` are the ground distances between the midpoints of its left and
    right, and top and bottom, sides.

    Args:
        dets: boxes ``xyxy`` in whole-raster pixels (column, row).
        transform: the raster's affine transform.
        crs: the raster's CRS.
        class_names: name of each class id.
        source: written to the ``source`` column.

    Returns:
        A GeoDataFrame with :data:`DETECTION_COLUMNS`.
    """
    n = len(dets)
    if n == 0:
        return empty_frame(crs)
    x0, y0, x1, y1 = dets.boxes.T
    corners = np.stack([
        _pixel_to_map(transform, x0, y0), _pixel_to_map(transform, x1, y0),
        _pixel_to_map(transform, x1, y1), _pixel_to_map(transform, x0, y1),
    ], axis=1)  # (n, 4, 2)
    geoms = shapely.polygons(corners)
    area, _ = measure(geoms, crs)
    ym = (y0 + y1) / 2
    xm = (x0 + x1) / 2
    width = distances_m(_pixel_to_map(transform, x0, ym), _pixel_to_map(transform, x1, ym), crs)
    height = distances_m(_pixel_to_map(transform, xm, y0), _pixel_to_map(transform, xm, y1), crs)
    names = np.asarray(class_names, dtype=object)[dets.labels]
    data = {
        "class_id": dets.labels.astype(np.int64),
        "class_name": pd.Series(names, dtype=object),
        "score": dets.scores.astype(np.float64),
        "area_m2": area,
        "width_m": width,
        "height_m": height,
        "tiles": dets.sources.astype(np.int64),
        "source": pd.Series([source] * n, dtype=object),
    }
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=crs))


def empty_frame(crs: Any) -> gpd.GeoDataFrame:
    """An empty detection layer with the columns :data:`DETECTION_COLUMNS` and their dtypes."""
    data = {
        "class_id": np.zeros(0, np.int64), "class_name": pd.Series([], dtype=object),
        "score": np.zeros(0), "area_m2": np.zeros(0), "width_m": np.zeros(0), "height_m": np.zeros(0),
        "tiles": np.zeros(0, np.int64), "source": pd.Series([], dtype=object),
    }
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([], crs=crs))


def point_frame(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The centroid layer of a detection frame (columns :data:`POINT_COLUMNS`)."""
    out = frame[[c for c in POINT_COLUMNS if c != "geometry"]].copy()
    return gpd.GeoDataFrame(out, geometry=frame.geometry.centroid, crs=frame.crs)


class DetectionConsumer:
    """Stitcher-thread consumer of per-tile detections for one raster.

    Args:
        merger: the streaming merger over this raster's tile grid.
        transform: the raster's affine transform.
        crs: the raster's CRS.
        class_names: every class name (index = class id; 0 is the background).
        sink: the detection layer.
        points: the centroid layer, or ``None``.
        zones: zone counts, or ``None``.
        score_threshold: boxes scoring lower are dropped before merging.
        min_area_m2: merged boxes with a smaller ground area are dropped.
        source: the input file name, for the ``source`` column.
    """

    def __init__(self, merger: DetectionMerger, transform: Affine, crs: Any, class_names: Sequence[str],
                 sink: FeatureSink, points: FeatureSink | None, zones: Zones | None, score_threshold: float,
                 min_area_m2: float | None, source: str) -> None:
        self.merger, self.transform, self.crs = merger, transform, crs
        self.class_names = list(class_names)
        self.sink, self.points, self.zones = sink, points, zones
        self.score_threshold, self.min_area_m2, self.source = score_threshold, min_area_m2, source
        self._zone_class = {c: i for i, c in enumerate(range(1, len(self.class_names)))}
        #: seconds spent in the merger (for the summary and the benchmark)
        self.merge_seconds = 0.0

    def add(self, tile: Tile, output: Any, valid: np.ndarray | None) -> None:
        boxes, scores, labels = output
        keep = (scores >= self.score_threshold) & (labels > 0)
        boxes = boxes[keep] + np.array([tile.window.col_off, tile.window.row_off] * 2, dtype=np.float64)
        t0 = time.perf_counter()
        merged = self.merger.add(tile, boxes, scores[keep], labels[keep])
        self.merge_seconds += time.perf_counter() - t0
        self._emit(merged)

    def skip(self, tile: Tile) -> None:
        t0 = time.perf_counter()
        merged = self.merger.skip(tile)
        self.merge_seconds += time.perf_counter() - t0
        self._emit(merged)

    def finish(self) -> None:
        t0 = time.perf_counter()
        merged = self.merger.finish()
        self.merge_seconds += time.perf_counter() - t0
        self._emit(merged)

    def close(self) -> None:
        """Nothing to close: the sinks belong to the run."""

    def _emit(self, dets: Detections) -> None:
        if len(dets) == 0:
            return
        frame = box_frame(dets, self.transform, self.crs, self.class_names, self.source)
        if self.min_area_m2 is not None:
            frame = frame[frame["area_m2"].to_numpy() >= self.min_area_m2].reset_index(drop=True)
        if frame.empty:
            return
        self.sink.append(frame)
        if self.points is not None or self.zones is not None:
            points = point_frame(frame)
            if self.points is not None:
                self.points.append(points)
            if self.zones is not None:
                if points.crs is not None and not points.crs.equals(self.zones.frame_in.crs):
                    points = points.to_crs(self.zones.frame_in.crs)
                cls = np.array([self._zone_class[c] for c in points["class_id"].tolist()], dtype=np.int64)
                self.zones.add(points.geometry.values, cls)


def detection_consumer(grid: TileGrid, transform: Affine, crs: Any, class_names: Sequence[str], sink: FeatureSink,
                       points: FeatureSink | None = None, zones: Zones | None = None, *,
                       score_threshold: float = 0.5, min_area_m2: float | None = None, match_iou: float = 0.5,
                       nms_iou: float = 0.5, fusion: Fusion = "best", source: str = "") -> DetectionConsumer:
    """The consumer of one raster's detections, with a streaming merger over its tile grid."""
    merger = DetectionMerger(grid, match_iou=match_iou, nms_iou=nms_iou, fusion=fusion)
    return DetectionConsumer(merger, transform, crs, class_names, sink, points, zones, score_threshold,
                             min_area_m2, source)
