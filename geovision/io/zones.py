"""Zones: user polygons (fields, districts, paddocks) that detections are counted in.

Zones come in any vector format GDAL reads and any CRS. They are read once
(zones are few and small next to a raster), checked, repaired, moved to the
raster's CRS and measured on the ground; then :meth:`Zones.add` counts the
detections of each finished batch by the zone their centre falls in, so
counting streams along with the detections.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from geovision.errors import VectorContentError, VectorReadError, warn
from geovision.io.geo import as_pyproj_crs, measure

__all__ = ["Zones", "column_name", "read_polygons"]

_POLYGONAL = ("Polygon", "MultiPolygon")


def column_name(class_name: str) -> str:
    """A column-safe form of a class name: ``"Palm tree"`` -> ``"palm_tree"``."""
    return re.sub(r"[^0-9a-zA-Z_]+", "_", class_name).strip("_").lower() or "class"


def read_polygons(path: str | os.PathLike[str], crs: Any, *, what: str = "zone",
                  examples: str = "fields, districts, ...") -> tuple[gpd.GeoDataFrame, np.ndarray]:
    """Read a polygon layer, repair it, measure it on the ground and move it to ``crs``.

    Features without geometry or with non-polygon geometry are dropped with a
    warning; invalid polygons are repaired (``shapely.make_valid``).

    Args:
        path: a vector file (GeoPackage, GeoJSON, Shapefile, ...); its first layer is used.
        crs: the CRS to move the polygons to (the raster's).
        what: what the polygons are, for messages (``"zone"``, ``"field"``).
        examples: examples of such polygons, for messages.

    Returns:
        ``(frame, area_m2)``: the kept features (original attributes, index reset, geometry
        column ``geometry`` in ``crs``) and their true ground areas in m².

    Raises:
        VectorReadError: the file cannot be read.
        VectorContentError: no features, no polygons, or no CRS.
    """
    path = str(path)
    try:
        frame = pyogrio.read_dataframe(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio's DataSourceError, OSError, ...
        raise VectorReadError(
            f"{path}: cannot read the {what}s ({exc}). Give a vector file GDAL can read "
            f"(GeoPackage, GeoJSON, Shapefile, FlatGeobuf) holding {what} polygons."
        ) from None
    if not isinstance(frame, gpd.GeoDataFrame) or len(frame) == 0 or frame.geometry.isna().all():
        raise VectorContentError(
            f"{path}: holds no features with geometry; {what}s must be polygons ({examples})."
        )
    types = frame.geom_type.fillna("None")
    polygonal = types.isin(_POLYGONAL) & ~frame.geometry.is_empty
    if not polygonal.any():
        found = ", ".join(f"{n} {t}" for t, n in types.value_counts().items())
        raise VectorContentError(
            f"{path}: has no polygons (found {found}); {what}s must be polygons ({examples})."
        )
    if not polygonal.all():
        warn(f"{path}: {int((~polygonal).sum())} {what} feature(s) are empty or not polygons and were ignored.")
        frame = frame[polygonal]
    if frame.crs is None:
        raise VectorContentError(
            f"{path}: the {what}s have no CRS, so they cannot be placed on the raster. Set it, e.g. "
            f"`ogr2ogr -a_srs EPSG:4326 fixed.gpkg {Path(path).name}`."
        )
    geoms = frame.geometry.values
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        warn(f"{path}: {int(invalid.sum())} invalid {what} polygon(s) were repaired (shapely.make_valid).")
        fixed = shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False)
        frame = frame.copy()
        frame.loc[invalid, frame.geometry.name] = fixed
    area, _ = measure(frame.geometry.values, frame.crs)
    frame = frame.to_crs(as_pyproj_crs(crs))
    if frame.geometry.name != "geometry":
        frame = frame.rename_geometry("geometry")
    return frame.reset_index(drop=True), area


class Zones:
    """Zone polygons in the raster's CRS, with per-class counts of what falls in them.

    Use :meth:`read`; then :meth:`add` detections (their centres) batch by batch;
    :meth:`frame` and :meth:`summary` give the result.

    Attributes:
        path: where the zones came from.
        frame_in: the zones (original attributes, geometry in the raster's CRS).
        area_m2: ``(Z,)`` true ground area of each zone (m²).
        class_names: the classes counted, in column order.
        counts: ``(Z, len(class_names))`` int64 counts so far.
    """

    def __init__(self, path: str, frame: gpd.GeoDataFrame, area_m2: np.ndarray, class_names: list[str]) -> None:
        self.path = path
        self.frame_in = frame.reset_index(drop=True)
        self.area_m2 = area_m2
        self.class_names = list(class_names)
        self.counts = np.zeros((len(frame), len(class_names)), dtype=np.int64)
        self._tree = shapely.STRtree(self.frame_in.geometry.values)

    @classmethod
    def read(cls, path: str | os.PathLike[str], crs: Any, class_names: list[str]) -> Zones:
        """Read, check and reproject the zones.

        Args:
            path: a vector file (GeoPackage, GeoJSON, Shapefile, ...); its first layer is used.
            crs: the raster's CRS; zones are moved to it.
            class_names: the classes to count (the detector's object classes).

        Raises:
            VectorReadError: the file cannot be read.
            VectorContentError: no features, no polygons, or no CRS.
        """
        frame, area = read_polygons(path, crs, what="zone", examples="fields, districts, ...")
        return cls(str(path), frame, area, class_names)

    def check_overlap(self, bounds: tuple[float, float, float, float]) -> None:
        """Warn when no zone touches ``bounds`` (the rasters' extent in their CRS)."""
        if not shapely.intersects(self.frame_in.geometry.values, shapely.box(*bounds)).any():
            warn(f"{self.path}: no zone overlaps the raster(s); every zone count will be 0. Check the zones' CRS.")

    def add(self, points: np.ndarray, class_index: np.ndarray) -> None:
        """Count points (object centres, raster CRS) of classes ``class_index`` (positions in ``class_names``)."""
        if len(points) == 0:
            return
        point_i, zone_i = self._tree.query(points, predicate="within")
        np.add.at(self.counts, (zone_i, np.asarray(class_index)[point_i]), 1)

    def frame(self) -> gpd.GeoDataFrame:
        """The zones with ``zone_id``, ``area_ha``, ``count_<class>``, ``density_<class>_per_ha`` and totals."""
        out = self.frame_in.copy()
        area_ha = self.area_m2 / 10_000
        columns: dict[str, Any] = {"zone_id": np.arange(len(out), dtype=np.int64), "area_ha": area_ha}
        with np.errstate(divide="ignore", invalid="ignore"):
            for j, name in enumerate(self.class_names):
                key = column_name(name)
                columns[f"count_{key}"] = self.counts[:, j]
                columns[f"density_{key}_per_ha"] = np.where(area_ha > 0, self.counts[:, j] / area_ha, 0.0)
            total = self.counts.sum(axis=1)
            columns["count_total"] = total
            columns["density_total_per_ha"] = np.where(area_ha > 0, total / area_ha, 0.0)
        added = pd.DataFrame(columns)
        keep = [c for c in out.columns if c not in added.columns]
        return gpd.GeoDataFrame(pd.concat([added, out[keep]], axis=1), geometry="geometry", crs=out.crs)

    def summary(self) -> list[dict[str, Any]]:
        """Per zone: id, a name where the zones have one, area (ha), counts and densities per class."""
        name_col = next((c for c in ("name", "NAME", "Name", "id", "ID", "field_id") if c in self.frame_in), None)
        rows = []
        for z in range(len(self.frame_in)):
            area_ha = float(self.area_m2[z] / 10_000)
            counts = {n: int(self.counts[z, j]) for j, n in enumerate(self.class_names)}
            row: dict[str, Any] = {"zone_id": z}
            if name_col is not None:
                value = self.frame_in[name_col].iloc[z]
                row["name"] = value.item() if hasattr(value, "item") else value
            row.update({
                "area_ha": round(area_ha, 6),
                "counts": counts,
                "density_per_ha": {n: (round(c / area_ha, 6) if area_ha > 0 else 0.0) for n, c in counts.items()},
            })
            rows.append(row)
        return rows
