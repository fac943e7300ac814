"""Per-field, per-block accounting of the crop-stress workflow.

:func:`read_fields` reads the field polygons into :class:`Fields`; :class:`IndexPass`
turns each block of raw bands into the index and a pixel status and adds every field's
statistics; :func:`classify_block` classifies one block of the scratch index per field
and adds the class areas; :func:`field_table` makes the per-field table of it all.
Areas are true m² (:mod:`geovision.agri.coverage`), edge pixels weighted by the share
inside the field. Nothing here reads or writes whole rasters: the workflow
(:mod:`geovision.workflows.stress`) streams the blocks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geovision.agri.coverage import coverage_fractions, pixel_areas_m2, window_transform
from geovision.agri.indices import INDICES, compute_index, to_reflectance
from geovision.agri.stress import HEALTHY, MASKED, MODERATE, NO_CLASS, SEVERE, WATER, FieldStats, classify
from geovision.errors import VectorContentError, warn
from geovision.io.geo import window_bounds

if TYPE_CHECKING:
    import geopandas as gpd
    from affine import Affine
    from rasterio.crs import CRS
    from shapely import STRtree

    from geovision.tiling.reader import RasterInfo
    from geovision.types import Window

__all__ = ["CLOUD_BLUE", "CLOUD_BRIGHTNESS", "WATER_NDWI", "Fields", "IndexPass", "classify_block", "field_table",
           "read_fields", "with_field_ids"]

WATER_NDWI = 0.0  # McFeeters NDWI above this is open water
CLOUD_BRIGHTNESS, CLOUD_BLUE = 0.30, 0.20  # mean visible and blue reflectance above these is cloud


@dataclass(slots=True)
class Fields:
    """The field polygons in the raster's CRS, indexed for window queries.

    Attributes:
        frame: GeoDataFrame of the fields, ``field_id`` first, in the raster's CRS.
        area_m2: ``(n,)`` float, each field's true area in m².
        tree: shapely ``STRtree`` of ``frame``'s geometries (row i is field i).
        ids: ``(n,)`` the field ids (the id column, ``field_id``, or 1..n).
    """

    frame: Any  # GeoDataFrame in the raster's CRS
    area_m2: np.ndarray
    tree: Any  # shapely STRtree
    ids: np.ndarray

    def in_window(self, transform: Affine, window: Window) -> np.ndarray:
        """Row numbers (``(k,)`` int) of the fields that intersect ``window`` of the raster at ``transform``."""
        import shapely

        return self.tree.query(shapely.box(*window_bounds(transform, window)), predicate="intersects")


def read_fields(path: str | os.PathLike[str], crs: CRS | str, id_column: str | None) -> Fields:
    """Read field polygons from any vector format into ``crs``.

    Args:
        path: the field polygons.
        crs: the raster's CRS; the fields are moved into it.
        id_column: the column holding the field ids; default ``field_id`` if present, else 1..n.

    Raises:
        VectorContentError: ``id_column`` is not a column of the file (the message lists them).
    """
    import shapely

    from geovision.io.zones import read_polygons

    frame, area = read_polygons(path, crs, what="field", examples="field or paddock boundaries")
    if id_column is not None:
        if id_column not in frame.columns:
            raise VectorContentError(f"{path}: has no column {id_column!r} for the field ids; its columns are "
                                     f"{', '.join(c for c in frame.columns if c != 'geometry')}.")
        ids = frame[id_column].to_numpy()
    elif "field_id" in frame.columns:
        ids = frame["field_id"].to_numpy()
    else:
        ids = np.arange(1, len(frame) + 1)
    frame = frame.drop(columns=[c for c in ("field_id",) if c in frame.columns])
    frame.insert(0, "field_id", ids)
    return Fields(frame, area, shapely.STRtree(frame.geometry.values), ids)


class IndexPass:
    """Pass 1: index, pixel status and field statistics, block by block.

    Call :meth:`block` once per block of the raster; the totals grow as it goes.

    Attributes:
        stats: :class:`~geovision.agri.stress.FieldStats` of the valid pixels' index per field.
        observed: ``(n,)`` m² of each field covered by the raster.
        status_m2: ``{NO_CLASS, WATER, MASKED: (n,)}`` m² of each field with that status.
        valid_pixels, sum, lo, hi: count, sum, minimum and maximum of the index over valid pixels.
        counts: pixels of the raster by status (``HEALTHY`` is "valid").
    """

    def __init__(self, info: RasterInfo, names: list[str], index: str, scale: float, offset: float,
                 fields: Fields, exclude: STRtree | None, water: bool, clouds: bool) -> None:
        """Start the pass.

        Args:
            info: the raster.
            names: band names in the order of the blocks' bands (``nir``, ``red``, ...).
            index: an :data:`~geovision.agri.indices.INDICES` key.
            scale, offset: DN to reflectance, ``dn * scale + offset``.
            fields: the field polygons.
            exclude: polygons whose pixels are masked, or None.
            water: mask open water (NDVI < 0 and, with a green band, NDWI > :data:`WATER_NDWI`).
            clouds: mask bright pixels as cloud (only when red, green and blue are in ``names``).
        """
        self.info, self.names, self.index = info, names, index
        self.scale, self.offset = scale, offset
        self.fields, self.exclude = fields, exclude
        self.water = water
        self.clouds = clouds and {"red", "green", "blue"} <= set(names)
        n = len(fields.ids)
        self.stats = FieldStats.for_index(index, n)
        # per field: m² observed by the raster, and m² by status (nodata, water, masked)
        self.observed = np.zeros(n)
        self.status_m2 = {NO_CLASS: np.zeros(n), WATER: np.zeros(n), MASKED: np.zeros(n)}
        self.valid_pixels = 0
        self.sum = 0.0
        self.lo, self.hi = math.inf, -math.inf
        self.counts = {NO_CLASS: 0, WATER: 0, MASKED: 0, HEALTHY: 0}

    def block(self, window: Window, data: np.ndarray | None, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Index and status of one block, adding its pixels to the statistics.

        Args:
            window: the block in the raster (``(h, w)`` pixels).
            data: ``(bands, >= h, >= w)`` DN in the order of ``names``, or None for a block read as all nodata.
            valid: ``(>= h, >= w)`` bool, False for nodata; None with ``data``.

        Returns:
            ``(h, w)`` float32 index (NaN where undefined) and ``(h, w)`` uint8 status:
            ``HEALTHY`` (valid), ``WATER``, ``MASKED`` (cloud or excluded) or ``NO_CLASS`` (nodata).
        """
        h, w = window.height, window.width
        if data is None:
            values = np.full((h, w), np.nan, np.float32)
            status = np.zeros((h, w), np.uint8)
        else:
            assert valid is not None  # a block read has its data and its validity mask
            refl = to_reflectance(data[:, :h, :w], self.scale, self.offset, ~valid[:h, :w])
            bands = dict(zip(self.names, refl))
            spec = INDICES[self.index]
            values = compute_index(self.index, {b: bands[b] for b in spec.bands})
            status = np.full((h, w), HEALTHY, np.uint8)  # "valid" until proven otherwise
            with np.errstate(divide="ignore", invalid="ignore"):
                if self.water:
                    # open water reflects less NIR than red (NDVI < 0) and than green (NDWI > 0)
                    wet = (bands["nir"] - bands["red"]) / (bands["nir"] + bands["red"]) < 0.0 if "red" in bands \
                        else np.ones(values.shape, bool)
                    if "green" in bands:
                        wet &= (bands["green"] - bands["nir"]) / (bands["green"] + bands["nir"]) > WATER_NDWI
                    status[wet] = WATER
                if self.clouds:
                    bright = (bands["red"] + bands["green"] + bands["blue"]) / 3.0
                    status[(bright > CLOUD_BRIGHTNESS) & (bands["blue"] > CLOUD_BLUE)] = MASKED
            if self.exclude is not None:
                status[self._excluded(window)] = MASKED
            status[~np.isfinite(values)] = NO_CLASS
        for code in self.counts:
            self.counts[code] += int((status == code).sum())
        ok = status == HEALTHY
        if ok.any():
            v = values[ok]
            self.valid_pixels += v.size
            self.sum += float(v.sum(dtype=np.float64))
            self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        transform = window_transform(self.info.affine, window)
        areas = pixel_areas_m2(transform, self.info.crs, (h, w))
        for f in self.fields.in_window(self.info.affine, window):
            cov = coverage_fractions(self.fields.frame.geometry.values[f], transform, (h, w))
            weights = cov * areas
            self.observed[f] += weights.sum()
            for code, acc in self.status_m2.items():
                acc[f] += weights[status == code].sum()
            self.stats.add(int(f), values[ok], weights[ok])
        return values, status

    def _excluded(self, window: Window) -> np.ndarray:
        import shapely
        from rasterio.features import rasterize

        assert self.exclude is not None  # block() calls this only with an exclusion layer
        hits = self.exclude.query(shapely.box(*window_bounds(self.info.affine, window)), predicate="intersects")
        if hits.size == 0:
            return np.zeros((window.height, window.width), bool)
        geoms = self.exclude.geometries[hits]
        return rasterize([(g, 1) for g in geoms], out_shape=(window.height, window.width),
                         transform=window_transform(self.info.affine, window), dtype="uint8").astype(bool)


def classify_block(info: RasterInfo, fields: Fields, window: Window, values: np.ndarray, status: np.ndarray,
                   cut: np.ndarray, model_codes: np.ndarray | None, class_m2: dict[int, np.ndarray]) -> np.ndarray:
    """Pass 2: stress codes of one block (the dominant field's classes), adding each field's class areas.

    Args:
        info: the raster.
        fields: the field polygons.
        window: the block (``(h, w)`` pixels).
        values: ``(h, w)`` float32 index of the block.
        status: ``(h, w)`` uint8 status from :meth:`IndexPass.block`.
        cut: ``(n, 2)`` per field ``(severe_below, moderate_below)``; unused with ``model_codes``.
        model_codes: ``(h, w)`` uint8 stress codes from a model, or None to classify by ``cut``.
        class_m2: ``{code: (n,)}`` m² per field, added to in place for each code it holds.

    Returns:
        ``(h, w)`` uint8 stress codes; where fields overlap, the one covering most of the pixel wins,
        and ``NO_CLASS`` outside every field.
    """
    h, w = window.height, window.width
    transform = window_transform(info.affine, window)
    areas = pixel_areas_m2(transform, info.crs, (h, w))
    classes = np.zeros((h, w), np.uint8)
    best = np.zeros((h, w), np.float32)
    ok = status == HEALTHY
    for f in fields.in_window(info.affine, window):
        cov = coverage_fractions(fields.frame.geometry.values[f], transform, (h, w))
        if model_codes is not None:
            mine = np.where(ok, model_codes, status)
        else:
            mine = np.where(ok, classify(values, cut[f, 0], cut[f, 1]), status)
        weights = cov * areas
        for code, acc in class_m2.items():
            acc[f] += weights[mine == code].sum()
        take = cov > best
        classes[take] = mine[take]
        best[take] = cov[take]
    return classes


def with_field_ids(frame: gpd.GeoDataFrame, fields: Fields) -> gpd.GeoDataFrame:
    """Stress polygons with the id of the field holding their representative point (None outside every field).

    ``frame`` gets a ``field_id`` column first, of the fields' id type (nullable), in place; returns it.
    """
    import shapely

    if frame.empty:
        frame.insert(0, "field_id", np.array([], dtype=fields.ids.dtype))
        return frame
    points = shapely.point_on_surface(frame.geometry.values)
    poly_i, field_i = fields.tree.query(points, predicate="within")
    ids = np.full(len(frame), None, dtype=object)
    ids[poly_i] = fields.ids[field_i]
    import pandas as pd

    # the fields' id type (nullable: a polygon may lie outside every field), not strings
    frame.insert(0, "field_id", pd.Series(ids, index=frame.index).infer_objects().convert_dtypes())
    return frame


def field_table(fields: Fields, p1: IndexPass, class_m2: dict[int, np.ndarray], cut: np.ndarray,
                index: str) -> gpd.GeoDataFrame:
    """The fields with their statistics: one row per field, geometry last.

    Columns: ``area_ha``, ``observed_ha``, ``valid_ha``, ``water_ha``, ``masked_ha``, ``nodata_ha``
    (hectares); ``<index>_mean``/``_median``/``_p10``/``_p90``/``_std`` over valid pixels;
    ``severe_below``, ``moderate_below`` (the cut-offs); ``healthy``/``moderate``/``severe``/``stressed``
    ``_ha`` and ``_pct`` (percent of the valid area). Warns when fields have no valid pixels.

    Args:
        fields: the field polygons.
        p1: the finished :class:`IndexPass`.
        class_m2: ``{HEALTHY, MODERATE, SEVERE: (n,)}`` m² per field from :func:`classify_block`.
        cut: ``(n, 2)`` per field ``(severe_below, moderate_below)``.
        index: the index name, for the column names.
    """
    frame = fields.frame.copy()
    stats = p1.stats
    n = len(frame)
    ha = 1e-4
    valid_m2 = stats.weight
    frame["area_ha"] = fields.area_m2 * ha
    frame["observed_ha"] = p1.observed * ha
    frame["valid_ha"] = valid_m2 * ha
    frame["water_ha"] = p1.status_m2[WATER] * ha
    frame["masked_ha"] = p1.status_m2[MASKED] * ha
    frame["nodata_ha"] = p1.status_m2[NO_CLASS] * ha
    frame[f"{index}_mean"] = [stats.mean(f) for f in range(n)]
    frame[f"{index}_median"] = [stats.quantile(f, 0.5) for f in range(n)]
    frame[f"{index}_p10"] = [stats.quantile(f, 0.1) for f in range(n)]
    frame[f"{index}_p90"] = [stats.quantile(f, 0.9) for f in range(n)]
    frame[f"{index}_std"] = [stats.std(f) for f in range(n)]
    frame["severe_below"] = cut[:, 0]
    frame["moderate_below"] = cut[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        for code, name in ((HEALTHY, "healthy"), (MODERATE, "moderate"), (SEVERE, "severe")):
            frame[f"{name}_ha"] = class_m2[code] * ha
            frame[f"{name}_pct"] = np.where(valid_m2 > 0, 100.0 * class_m2[code] / valid_m2, np.nan)
        stressed = class_m2[MODERATE] + class_m2[SEVERE]
        frame["stressed_ha"] = stressed * ha
        frame["stressed_pct"] = np.where(valid_m2 > 0, 100.0 * stressed / valid_m2, np.nan)
    no_data = valid_m2 <= 0
    if no_data.any():
        warn(f"{int(no_data.sum())} field(s) have no valid pixels (outside the raster, nodata, water or masked); "
             "their statistics are empty (NaN).")
    geometry = frame.pop("geometry")
    frame["geometry"] = geometry
    return frame.set_geometry("geometry")
