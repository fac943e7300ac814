"""Vector outputs: features streamed into a GeoPackage as they are found, then the chosen format.

Features are appended batch by batch to a scratch GeoPackage (so they do not
pile up in memory). At the end the scratch file becomes the output directly
for ``.gpkg``, or is converted for ``.geojson``, ``.fgb`` and ``.parquet``.
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio

from geovision.io.outputs import vector_driver

#: features held before a batch is written to the scratch GeoPackage
FLUSH_AT = 20_000


class LayerSink:
    """Append GeoDataFrames to one layer of a scratch GeoPackage.

    Args:
        path: scratch ``.gpkg`` path.
        layer: layer name.
        crs: CRS of the layer; frames in another CRS are reprojected to it.
        empty: an empty frame with the layer's columns, written when nothing else was.
        geometry_type: the layer's geometry type (``"Polygon"``, ``"Point"``).
    """

    def __init__(self, path: str | os.PathLike[str], layer: str, crs, empty: gpd.GeoDataFrame,
                 geometry_type: str = "Polygon") -> None:
        self.path = Path(path)
        self.layer = layer
        self.geometry_type = geometry_type
        self.crs = crs
        self._empty = empty
        self._started = False
        self._buffer: list[gpd.GeoDataFrame] = []
        self._buffered = 0
        self.count = 0
        #: class_name -> [feature count, summed area_m2], for the run summary
        self.tally: dict[str, list[float]] = {}

    def append(self, frame: gpd.GeoDataFrame) -> None:
        """Queue ``frame`` for writing; written in batches of about ``FLUSH_AT`` features."""
        if frame.empty:
            return
        if frame.crs is not None and self.crs is not None and not frame.crs.equals(self.crs):
            frame = frame.to_crs(self.crs)
        self._buffer.append(frame)
        self._buffered += len(frame)
        self.count += len(frame)
        if "class_name" in frame and "area_m2" in frame:
            stats = frame.groupby("class_name")["area_m2"].agg(["count", "sum"])
            for name, count, area in stats.itertuples():
                t = self.tally.setdefault(str(name), [0, 0.0])
                t[0] += int(count)
                t[1] += float(area)
        if self._buffered >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        frame = pd.concat(self._buffer, ignore_index=True) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer, self._buffered = [], 0
        pyogrio.write_dataframe(
            frame,
            self.path,
            layer=self.layer,
            driver="GPKG",
            append=self._started,
            promote_to_multi=False,
        )
        self._started = True

    def close(self) -> None:
        """Write what is buffered and make sure the layer exists, even with no features."""
        self.flush()
        if not self._started:
            pyogrio.write_dataframe(
                self._empty.set_crs(self.crs, allow_override=True),
                self.path,
                layer=self.layer,
                driver="GPKG",
                geometry_type=self.geometry_type,
            )
            self._started = True

    def read(self) -> gpd.GeoDataFrame:
        return pyogrio.read_dataframe(self.path, layer=self.layer)


def export(scratch_gpkg: str | os.PathLike[str], targets: list[tuple[str, str | os.PathLike[str], str]]) -> None:
    """Write layers of the scratch GeoPackage to their outputs, then remove it.

    Args:
        scratch_gpkg: the scratch GeoPackage.
        targets: ``(layer, destination, geometry type)`` per layer. Layers bound for
            one ``.gpkg`` destination travel together: the scratch file is renamed
            to it. Other formats hold one layer per file, converted here.
    """
    gpkg = [t for t in targets if vector_driver(t[1]) == "GPKG"]
    if gpkg and len(gpkg) == len(targets) and len({str(t[1]) for t in targets}) == 1:
        os.replace(scratch_gpkg, gpkg[0][1])
        return
    for layer, dst, geometry_type in targets:
        frame = pyogrio.read_dataframe(scratch_gpkg, layer=layer)
        driver = vector_driver(dst)
        if driver == "Parquet":
            frame.to_parquet(dst)
        else:
            pyogrio.write_dataframe(frame, dst, driver=driver, layer=layer, geometry_type=geometry_type)
    Path(scratch_gpkg).unlink(missing_ok=True)
