"""The run's vector layers while it goes on: one scratch GeoPackage, one sink per layer.

:class:`RunLayers` opens the layers a run writes (the predictions; with detection,
the centroids; with a review band, the flagged copy) and lists them for the output
target (:meth:`RunLayers.specs`). :class:`ReviewSink` is a feature sink in front of
two others: every feature to the main layer with a ``review`` flag, the flagged ones
to the ``review`` layer too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import geopandas as gpd
import numpy as np
import pyogrio

from geovision.engine.detection import empty_frame, point_frame
from geovision.engine.protocols import FeatureSink, LayerSpec
from geovision.engine.segmentation import empty_polygons
from geovision.io.vector import FeatureBatch, LayerSink
from geovision.io.zones import Zones
from geovision.models.config import BundleConfig

__all__ = ["LAYER", "ReviewSink", "RunLayers", "flag_for_review"]

#: the main layer's name
LAYER = "predictions"

F = TypeVar("F", gpd.GeoDataFrame, FeatureBatch)


class ReviewSink:
    """The main layer, with a ``review`` flag (1 inside the confidence band) and a copy of the flagged features.

    Confidence is the detection ``score`` or the segmentation ``mean_probability``.
    """

    def __init__(self, main: FeatureSink, review: FeatureSink, band: tuple[float, float]) -> None:
        self.main, self.review, self.band = main, review, band

    @property
    def tally(self) -> Mapping[str, Sequence[float]]:
        return self.main.tally

    @property
    def count(self) -> int:
        return self.main.count

    def append(self, features: gpd.GeoDataFrame | FeatureBatch) -> None:
        batch = features if isinstance(features, FeatureBatch) else FeatureBatch.from_frame(features)
        batch = flag_for_review(batch, self.band)
        self.main.append(batch)
        self.review.append(batch.filter(batch.column("review") == 1))

    def close(self) -> None:
        self.main.close()
        self.review.close()

    def abort(self) -> None:
        self.main.abort()
        self.review.abort()


def flag_for_review(features: F, band: tuple[float, float]) -> F:
    """``features`` (GeoDataFrame or FeatureBatch) with a ``review`` column before the geometry.

    1 where the confidence lies in ``[low, high)``, else 0.
    """
    if isinstance(features, FeatureBatch):
        names = features.table.schema.names
        conf = features.column("score" if "score" in names else "mean_probability").astype(np.float64)
        return features.with_column("review", ((conf >= band[0]) & (conf < band[1])).astype(np.int64))
    frame = features
    conf_col = "score" if "score" in frame.columns else "mean_probability"
    conf = frame[conf_col].to_numpy(dtype=np.float64) if len(frame) else np.zeros(0)
    out = frame.copy()
    out.insert(len(out.columns) - 1, "review", ((conf >= band[0]) & (conf < band[1])).astype(np.int64))
    return out


@dataclass
class RunLayers:
    """The run's vector layers, streamed into one scratch GeoPackage.

    Attributes:
        path: the scratch GeoPackage.
        main: the predictions (a :class:`ReviewSink` with a review band).
        points: detection centroids, or ``None``.
        zones: per-zone counts written at :meth:`close`, or ``None``.
        review: whether a ``review`` layer is written.
    """

    path: Path
    main: FeatureSink
    points: FeatureSink | None
    zones: Zones | None
    review: bool

    @classmethod
    def open(cls, path: Path, config: BundleConfig, crs: Any, *, points: bool = False, zones: Zones | None = None,
             review_band: tuple[float, float] | None = None) -> RunLayers:
        point_sink: FeatureSink | None = None
        if config.task == "detection":
            empty = empty_frame(crs)
            if points:
                point_sink = LayerSink(path, "points", crs, point_frame(empty), geometry_type="Point")
        else:
            empty = empty_polygons(config.class_names, crs)
        main: FeatureSink
        if review_band is None:
            # the predictions stream into the file on their own unless points share it during the run
            main = LayerSink(path, LAYER, crs, empty, stream=point_sink is None)
        else:
            empty = flag_for_review(empty, review_band)
            main = ReviewSink(LayerSink(path, LAYER, crs, empty), LayerSink(path, "review", crs, empty), review_band)
        return cls(path, main, point_sink, zones, review_band is not None)

    def specs(self) -> list[LayerSpec]:
        """The layers and their geometry types, the main one first."""
        return self.planned(points=self.points is not None, zones=self.zones is not None, review=self.review)

    @staticmethod
    def planned(*, points: bool, zones: bool, review: bool) -> list[LayerSpec]:
        """The layers a run with these options writes (what :meth:`specs` gives once they are open)."""
        wanted = ((LayerSpec(LAYER, "Polygon"), True), (LayerSpec("points", "Point"), points),
                  (LayerSpec("zones", "MultiPolygon"), zones), (LayerSpec("review", "Polygon"), review))
        return [spec for spec, on in wanted if on]

    def abort(self) -> None:
        for sink in (self.main, self.points):
            if sink is not None:
                sink.abort()

    def close(self) -> None:
        self.main.close()
        if self.points is not None:
            self.points.close()
        if self.zones is not None:
            pyogrio.write_dataframe(self.zones.frame(), self.path, layer="zones", driver="GPKG",
                                    promote_to_multi=True)
