"""Vector outputs: features streamed into a GeoPackage as they are found, then the chosen format.

Features are appended batch by batch to a scratch GeoPackage (so they do not
pile up in memory), through GDAL's Arrow interface: one WKB column and plain
attribute columns. The stitchers hand them over as GeoDataFrames or, on the hot
path, as :class:`FeatureBatch` (Arrow columns with WKB geometries, built without a
GEOS geometry or a pandas frame per feature). A layer that has its file to itself is
written as one Arrow stream by a writer thread, so GDAL keeps the file open for the whole run and
bulk-loads the spatial index (separate appends fire its triggers row by row), on a
thread of its own from the first features on (see :data:`_RTREE_OPTION`). At the end the scratch file becomes the
output directly for ``.gpkg``, or is converted for ``.geojson``, ``.fgb`` and
``.parquet``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyogrio
import pyproj
import shapely

from geovision.io.geo import as_pyproj_crs
from geovision.io.outputs import vector_driver

if TYPE_CHECKING:
    from rasterio.crs import CRS

#: GDAL geometry type names of WKB type codes
_WKB_TYPES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString", 6: "MultiPolygon"}

#: features held before a batch is written to the scratch GeoPackage; what is held when the
#: run ends is written after the last forward pass
FLUSH_AT = 5_000


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Features as one Arrow record batch: attribute columns, then ``geometry`` as WKB.

    Args:
        table: the columns; the last is ``geometry`` (binary WKB).
        crs: the CRS of the geometries.
    """

    table: pa.RecordBatch
    crs: pyproj.CRS | None

    def __len__(self) -> int:
        return self.table.num_rows

    @classmethod
    def from_arrays(cls, columns: dict[str, pa.Array], wkb: pa.Array,
                    crs: CRS | pyproj.CRS | str | None) -> FeatureBatch:
        """Arrow attribute columns (text as strings) and a WKB array."""
        return cls(pa.RecordBatch.from_pydict({**columns, "geometry": wkb}),
                   as_pyproj_crs(crs) if crs is not None else None)

    @classmethod
    def from_frame(cls, frame: gpd.GeoDataFrame) -> FeatureBatch:
        geoms = np.asarray(frame.geometry.array, dtype=object)
        columns = {name: _arrow_column(frame[name]) for name in frame.columns if name != frame.geometry.name}
        return cls.from_arrays(columns, pa.array(shapely.to_wkb(geoms), type=pa.binary()), frame.crs)

    def column(self, name: str) -> np.ndarray:
        """A column as numpy (text as an object array)."""
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def filter(self, mask: np.ndarray) -> FeatureBatch:
        """The rows where ``mask`` is true."""
        return FeatureBatch(self.table.filter(pa.array(np.asarray(mask, dtype=bool))), self.crs)

    def with_column(self, name: str, values: np.ndarray) -> FeatureBatch:
        """A column added before ``geometry``."""
        at = self.table.num_columns - 1
        return FeatureBatch(self.table.add_column(at, name, pa.array(values)), self.crs)

    def geometry_types(self) -> set[str]:
        """GDAL names of the geometry types present (``{"Polygon"}``), read from the WKB headers."""
        wkb = self.table.column("geometry")
        offsets = np.frombuffer(wkb.buffers()[1], np.int32)[wkb.offset:wkb.offset + len(wkb)]
        data = np.frombuffer(wkb.buffers()[2], np.uint8)
        little = data[offsets] == 1
        header = data[offsets[:, None] + np.arange(1, 5)].astype(np.int64)
        le = header[:, 0] | header[:, 1] << 8 | header[:, 2] << 16 | header[:, 3] << 24
        be = header[:, 3] | header[:, 2] << 8 | header[:, 1] << 16 | header[:, 0] << 24
        codes = np.unique(np.where(little, le, be) % 1000).tolist()  # ISO Z/M types add 1000s
        return {_WKB_TYPES.get(code, "Unknown") for code in codes}

    def to_frame(self) -> gpd.GeoDataFrame:
        frame = self.table.drop_columns(["geometry"]).to_pandas()
        return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(shapely.from_wkb(self.column("geometry")),
                                                               crs=self.crs))


class LayerSink:
    """Append GeoDataFrames or :class:`FeatureBatch` es to one layer of a scratch GeoPackage.

    Args:
        path: scratch ``.gpkg`` path.
        layer: layer name.
        crs: CRS of the layer; features in another CRS are reprojected to it.
        empty: an empty frame with the layer's columns, written when nothing else was.
        geometry_type: the layer's geometry type (``"Polygon"``, ``"Point"``).
        stream: write every batch into one open Arrow stream on a writer thread (see
            the module notes). Only for a layer that has the file to itself until
            :meth:`close`: a second writer on the same GeoPackage would find it locked.
            Call :meth:`close` or :meth:`abort` to end the writer.
    """

    def __init__(self, path: str | os.PathLike[str], layer: str, crs: CRS | pyproj.CRS | str | None,
                 empty: gpd.GeoDataFrame, geometry_type: str = "Polygon", *, stream: bool = False) -> None:
        self.path = Path(path)
        self.stream = stream
        self._writer: _StreamWriter | None = None
        self.layer = layer
        self.geometry_type = geometry_type
        # pyproj, once: comparing a frame's CRS with a rasterio CRS would rebuild it for every append
        self.crs = as_pyproj_crs(crs) if crs is not None else None
        self._empty = empty
        self._started = False
        self._buffer: list[FeatureBatch] = []
        self._buffered = 0
        self.count = 0
        #: class_name -> [feature count, summed area_m2], for the run summary
        self.tally: dict[str, list[float]] = {}

    def append(self, features: gpd.GeoDataFrame | FeatureBatch) -> None:
        """Queue ``features`` for writing; written in batches of about ``FLUSH_AT`` features."""
        if len(features) == 0:
            return
        if features.crs is not None and self.crs is not None and not features.crs.equals(self.crs):
            frame = features.to_frame() if isinstance(features, FeatureBatch) else features
            features = frame.to_crs(self.crs)
        batch = features if isinstance(features, FeatureBatch) else FeatureBatch.from_frame(features)
        self._buffer.append(batch)
        self._buffered += len(batch)
        self.count += len(batch)
        names = batch.table.schema.names
        if "class_name" in names and "area_m2" in names:
            codes, classes = pd.factorize(batch.column("class_name"))
            counts = np.bincount(codes, minlength=len(classes))
            areas = np.bincount(codes, weights=batch.column("area_m2").astype(np.float64), minlength=len(classes))
            for name, count, area in zip(classes, counts.tolist(), areas.tolist()):
                t = self.tally.setdefault(str(name), [0, 0.0])
                t[0] += count
                t[1] += area
        if self._buffered >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        tables = [b.table for b in self._buffer]
        kinds = set().union(*(b.geometry_types() for b in self._buffer)) if not self._started else set()
        self._buffer, self._buffered = [], 0
        batch = tables[0] if len(tables) == 1 else pa.concat_tables(
            [pa.Table.from_batches([t]) for t in tables], promote_options="permissive"
        ).combine_chunks().to_batches()[0]
        if self._writer is not None:
            self._writer.put(batch)
            return
        options = {
            "path": self.path, "layer": self.layer, "driver": "GPKG", "geometry_name": "geometry",
            "geometry_type": kinds.pop() if len(kinds) == 1 else "Unknown",
            "crs": as_pyproj_crs(self.crs).to_wkt() if self.crs is not None else None,
        }
        if self.stream:
            self._writer = _StreamWriter(batch, options)
        else:
            pyogrio.write_arrow(batch, append=self._started, **options)
        self._started = True

    def close(self) -> None:
        """Write what is buffered and make sure the layer exists, even with no features."""
        self.flush()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
        if not self._started:
            pyogrio.write_dataframe(
                self._empty.set_crs(self.crs, allow_override=True),
                self.path,
                layer=self.layer,
                driver="GPKG",
                geometry_type=self.geometry_type,
            )
            self._started = True

    def abort(self) -> None:
        """End the writer thread, if any, without writing what is buffered (the run failed)."""
        self._buffer, self._buffered = [], 0
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close(raise_error=False)

    def read(self) -> gpd.GeoDataFrame:
        return pyogrio.read_dataframe(self.path, layer=self.layer)


#: GDAL builds a new GeoPackage layer's spatial index in memory on a thread of its own while
#: features are inserted, but only from the 100 000th feature on; before that, the whole index
#: is built when the layer is closed, after the model's last pass, with a core idle. Set while
#: the stream writer creates its layer, the thread starts at the first features: the same index
#: and CPU, spent while the model runs.
_RTREE_OPTION = "OGR_GPKG_THREADED_RTREE_AT_FIRST_FEATURE"


class _StreamWriter:
    """One ``pyogrio.write_arrow`` call on a thread, fed record batches through a small queue."""

    def __init__(self, first: pa.RecordBatch, options: dict) -> None:
        self.schema = first.schema
        self._queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=2)
        self._queue.put(first)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(options,), name="geovision-vector-writer",
                                        daemon=True)
        self._thread.start()

    def _batches(self, restore: dict[str, str | None]) -> Iterator[pa.RecordBatch]:
        first = True
        while (batch := self._queue.get()) is not None:
            yield batch
            if first:  # GDAL has created the layer and read the option by now (_run restores it too)
                pyogrio.set_gdal_config_options(restore)
                first = False

    def _run(self, options: dict) -> None:
        restore = {_RTREE_OPTION: pyogrio.get_gdal_config_option(_RTREE_OPTION)}
        pyogrio.set_gdal_config_options({_RTREE_OPTION: "YES"})
        try:
            pyogrio.write_arrow(pa.RecordBatchReader.from_batches(self.schema, self._batches(restore)), **options)
        except BaseException as exc:  # noqa: BLE001  (handed to the caller by put() or close())
            self.error = exc
        finally:
            pyogrio.set_gdal_config_options(restore)

    def _put(self, item: pa.RecordBatch | None) -> bool:
        """Queue ``item`` unless the writer has stopped; False if it has."""
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def put(self, batch: pa.RecordBatch) -> None:
        if batch.schema != self.schema:
            batch = batch.cast(self.schema)
        if not self._put(batch):
            raise self.error or RuntimeError(f"the vector writer ended early; {batch.num_rows} features not written")

    def close(self, raise_error: bool = True) -> None:
        self._put(None)
        self._thread.join()
        if self.error is not None and raise_error:
            raise self.error


def _arrow_column(series: pd.Series) -> pa.Array:
    """One attribute column for :func:`pyogrio.write_arrow`: text as Arrow strings, numbers as they are."""
    if pd.api.types.is_object_dtype(series.dtype) or pd.api.types.is_string_dtype(series.dtype):
        return pa.array(series.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    return pa.array(series.to_numpy())


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
