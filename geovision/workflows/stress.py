"""``geovision stress``: a crop-stress map and a per-field table from a multispectral raster.

Data flow (see docs/ARCHITECTURE.md)::

    pass 1, Dask readers -> main thread, per 512 px block:
        DN -> reflectance -> index (float32) -> scratch index GeoTIFF
        water / cloud / excluded / nodata status -> scratch status GeoTIFF
        exact field coverage (agri.coverage) x pixel ground area -> FieldStats per field
    per-field cut-offs from the StressRule (absolute, percentile, z-score) or a model's classes
    pass 2, main thread, per block of the scratch rasters:
        classes per field -> class areas per field (coverage-weighted, true m²)
        stress-class block (dominant field) -> scratch class GeoTIFF + PolygonCollector
    -> index COG, stress COG, fields + stress layers, CSV, summary, quicklook PNG
    -> atomic rename of every output

Memory holds a few blocks, the field polygons and a small histogram per field,
never the raster. Water, cloud, excluded and nodata pixels never enter the
statistics; they are reported in hectares per field instead.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geovision.agri.coverage import coverage_fractions, pixel_areas_m2, window_transform
from geovision.agri.indices import INDICES, compute_index, resolve_bands, to_reflectance
from geovision.agri.stress import (
    CLASS_COLORS,
    CLASS_NAMES,
    HEALTHY,
    MASKED,
    MODERATE,
    NO_CLASS,
    SEVERE,
    WATER,
    FieldStats,
    StressRule,
    classify,
)
from geovision.errors import (
    BandMismatchError,
    ConfigError,
    NodataOnlyError,
    VectorContentError,
    warn,
)
from geovision.io.cog import StreamingCOG
from geovision.io.geo import window_bounds
from geovision.io.outputs import AtomicOutputs, sibling, vector_driver
from geovision.io.raster import BLOCK_SIZE, BlockWriter, hex_to_rgba, to_cog
from geovision.io.vector import LayerSink, export
from geovision.tiling.grid import BlockGrid
from geovision.tiling.reader import RasterInfo, gdal_env, open_raster, read_tiles
from geovision.tiling.stream import batched, local_client, stream
from geovision.types import Tile, Window

__all__ = ["StressResult", "stress"]

BLOCK = BLOCK_SIZE  # the class COG (io.cog.StreamingCOG) takes blocks of this grid
FIELDS_LAYER, STRESS_LAYER = "fields", "stress"
WATER_NDWI = 0.0  # McFeeters NDWI above this is open water
CLOUD_BRIGHTNESS, CLOUD_BLUE = 0.30, 0.20  # mean visible and blue reflectance above these is cloud


@dataclass(frozen=True, slots=True)
class StressResult:
    """What ``stress`` wrote.

    Attributes:
        vector_path: the fields layer (and, in a GeoPackage, the ``stress`` layer).
        stress_layer_path: where the stress polygons are (the GeoPackage, or a sibling file).
        index_raster: ``<stem>.<index>.tif``, float32 COG, nodata NaN.
        stress_raster: ``<stem>.stress.tif``, uint8 COG of stress codes (0 nodata).
        summary_path: ``<stem>.summary.json``.
        csv_path: ``<stem>.fields.csv``, the field table.
        quicklook_path: ``<stem>.quicklook.png``.
        summary: the summary as a dict.
    """

    vector_path: Path
    stress_layer_path: Path
    index_raster: Path
    stress_raster: Path
    summary_path: Path
    csv_path: Path
    quicklook_path: Path
    summary: dict[str, Any]


# --- bands ------------------------------------------------------------------------------


def _optional_bands(sensor, bands, count, baseline, scale, offset) -> dict[str, int]:
    """Positions of green, blue, red and nir when the preset or ``bands`` give them (for the masks)."""
    found: dict[str, int] = {}
    for probe in ("gndvi", "evi"):  # nir+green, nir+red+blue
        try:
            mapping, _, _ = resolve_bands(sensor, bands, probe, count, baseline=baseline, scale=scale, offset=offset)
        except (BandMismatchError, ConfigError):
            continue
        found.update(mapping)
    return found


# --- the run ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Fields:
    frame: Any  # GeoDataFrame in the raster's CRS
    area_m2: np.ndarray
    tree: Any  # shapely STRtree
    ids: np.ndarray

    def in_window(self, transform, window: Window) -> np.ndarray:
        import shapely

        return self.tree.query(shapely.box(*window_bounds(transform, window)), predicate="intersects")


def _read_fields(path, crs, id_column: str | None) -> _Fields:
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
    return _Fields(frame, area, shapely.STRtree(frame.geometry.values), ids)


def _read_block(info: RasterInfo, size: int, tiles):
    return read_tiles(info, tiles, size)


class _Pass1:
    """Index, pixel status and field statistics, block by block."""

    def __init__(self, info: RasterInfo, names: list[str], index: str, scale: float, offset: float,
                 fields: _Fields, exclude, water: bool, clouds: bool) -> None:
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
        h, w = window.height, window.width
        if data is None:
            values = np.full((h, w), np.nan, np.float32)
            status = np.zeros((h, w), np.uint8)
        else:
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

        hits = self.exclude.query(shapely.box(*window_bounds(self.info.affine, window)), predicate="intersects")
        if hits.size == 0:
            return np.zeros((window.height, window.width), bool)
        geoms = self.exclude.geometries[hits]
        return rasterize([(g, 1) for g in geoms], out_shape=(window.height, window.width),
                         transform=window_transform(self.info.affine, window), dtype="uint8").astype(bool)


def stress(
    raster: str | os.PathLike[str],
    fields: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    index: str = "ndvi",
    sensor: str | None = None,
    bands: Mapping[str, int] | str | None = None,
    baseline: str | None = None,
    scale: float | None = None,
    offset: float | None = None,
    method: str = "percentile",
    thresholds: Sequence[float] | str | None = None,
    reference_percentile: float = 90.0,
    min_std: float = 0.05,
    model: str | os.PathLike[str] | None = None,
    exclude: str | os.PathLike[str] | None = None,
    water: bool = True,
    clouds: bool = True,
    id_column: str | None = None,
    min_area: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> StressResult:
    """Map crop stress over ``raster`` and summarise it per field.

    Writes ``out`` (the fields with their statistics; in a GeoPackage also the
    ``stress`` layer of moderate and severe stress polygons, merged across block
    seams, else ``<stem>.stress.<ext>``), ``<stem>.<index>.tif`` (float32 COG,
    nodata NaN), ``<stem>.stress.tif`` (uint8 COG: 1 healthy, 2 moderate, 3 severe,
    4 water, 5 cloud or excluded, 0 outside fields / no data), ``<stem>.fields.csv``,
    ``<stem>.summary.json`` and ``<stem>.quicklook.png``, all at once or not at all.

    Per field: the index's weighted mean, median, p10, p90 and standard deviation over
    valid pixels; hectares and percent of valid area in each stress class; hectares of
    water, cloud/excluded and no data. Edge pixels count by the share of the pixel
    inside the field (:mod:`geovision.agri.coverage`), areas are true m².

    Args:
        raster: the multispectral raster (any size; read block by block).
        fields: field polygons in any vector format and CRS.
        out: the fields layer; the extension picks the format (.gpkg, .geojson, .fgb, .parquet).
        index: an index of :data:`geovision.agri.indices.INDICES`.
        sensor: a sensor preset (band order and reflectance scaling).
        bands: explicit band positions, ``"nir=1,red=2"`` or a dict; override the preset.
        baseline, scale, offset: reflectance scaling (see :func:`~geovision.agri.indices.resolve_bands`).
        method: ``percentile``, ``zscore``, ``absolute`` or ``model`` (see :mod:`geovision.agri.stress`).
        thresholds: ``(severe, moderate)`` for the method; default per method.
        reference_percentile: the field reference for ``percentile``.
        min_std: the floor of a field's standard deviation for ``zscore``.
        model: a segmentation bundle with classes healthy/moderate/severe, for ``method="model"``.
        exclude: polygons (clouds, buildings, anything) whose pixels are left out of the statistics.
        water: mask open water: NDVI < 0 and, with a green band, NDWI > 0. This needs surface
            reflectance; on byte-stretched composites bare soil can pass it: turn it off there.
        clouds: mask bright cloud pixels (needs red, green and blue bands).
        id_column: the fields' id column; default ``field_id`` if present, else 1..N.
        min_area: drop stress polygons smaller than this (m²).
        overwrite: replace existing outputs.
        progress: show progress bars and print the table.

    Returns:
        The paths written and the summary.

    Raises:
        GeovisionError: a subclass naming the file and the fix for every bad input; nothing
            is left behind on failure.
    """
    import rasterio

    t0 = time.perf_counter()
    raster, out = os.fspath(raster), Path(out)
    index = index.lower()
    rule = StressRule.make(method, index, thresholds, reference_percentile=reference_percentile, min_std=min_std)
    if (rule.method == "model") != (model is not None):
        raise ConfigError("method 'model' needs --model BUNDLE (a segmentation bundle with classes healthy, moderate, "
                          "severe), and --model needs --method model." if model is None else
                          f"--model {model} was given with --method {rule.method}; use --method model to classify "
                          "with it, or leave --model out.")
    driver = vector_driver(out)
    try:
        with gdal_env(), rasterio.open(raster) as ds:
            count = ds.count
    except rasterio.errors.RasterioError:
        count = None  # open_raster below raises the clear error
    if count is not None:
        needed, scale_, offset_ = resolve_bands(sensor, bands, index, count, baseline=baseline, scale=scale,
                                                offset=offset)
        extra = _optional_bands(sensor, bands, count, baseline, scale, offset)
    else:
        needed, scale_, offset_, extra = {}, 1.0, 0.0, {}
    mapping = {**extra, **needed}
    names = list(mapping)
    info = open_raster(raster, [mapping[n] for n in names], len(names), bands_from=f"the {index} bands")
    field_set = _read_fields(fields, info.crs, id_column)
    raster_box = window_bounds(info.affine, Window(0, 0, info.height, info.width))
    import shapely

    if not field_set.tree.query(shapely.box(*raster_box), predicate="intersects").size:
        raise VectorContentError(f"{fields}: no field overlaps the raster {raster} (after moving the fields to the "
                                 f"raster's CRS {info.crs.to_string()}); check that both cover the same place.")
    exclude_tree = None
    if exclude is not None:
        from geovision.io.zones import read_polygons

        ex, _ = read_polygons(exclude, info.crs, what="exclusion", examples="cloud or building outlines")
        exclude_tree = shapely.STRtree(ex.geometry.values)

    single = driver != "GPKG"
    paths = {
        "vector": out,
        "stress_layer": sibling(out, f".stress{out.suffix}") if single else out,
        "index": sibling(out, f".{index}.tif"),
        "stress": sibling(out, ".stress.tif"),
        "summary": sibling(out, ".summary.json"),
        "csv": sibling(out, ".fields.csv"),
        "quicklook": sibling(out, ".quicklook.png"),
    }
    inputs = [raster, os.fspath(fields)] + ([os.fspath(exclude)] if exclude is not None else [])
    with AtomicOutputs(inputs, overwrite) as outputs:
        tmp = {k: outputs.add(p) for k, p in paths.items() if not (k == "stress_layer" and not single)}
        if not single:
            tmp["stress_layer"] = tmp["vector"]
        index_scratch = outputs.scratch(tmp["index"], ".scratch.tif")
        status_scratch = outputs.scratch(tmp["stress"], ".status.tif")
        class_scratch = outputs.scratch(tmp["stress"], ".scratch.tiles")
        scratch_gpkg = outputs.scratch(tmp["vector"], ".scratch.gpkg")

        # pass 1: index, status, field statistics
        grid = BlockGrid(info.height, info.width, BLOCK)
        blocks = [Tile((r, c), grid.window((r, c))) for r in range(grid.shape[0]) for c in range(grid.shape[1])]
        p1 = _Pass1(info, names, index, scale_, offset_, field_set, exclude_tree, water, clouds)
        index_writer = BlockWriter(index_scratch, info, count=1, dtype="float32", nodata=float("nan"),
                                   descriptions=[index])
        status_writer = BlockWriter(status_scratch, info, count=1, dtype="uint8", nodata=255)
        bar = _bar(len(blocks), f"{index} + field stats", progress)
        client = local_client()
        try:
            for _, (read, skipped) in stream(client, _read_block, batched(blocks, 4), info, BLOCK, prefetch=4):
                for item, data, valid in [(t.tile, t.data, t.valid) for t in read] + [(s, None, None) for s in skipped]:
                    values, status = p1.block(item.window, data, valid)
                    index_writer.write(item.window, values)
                    status_writer.write(item.window, status)
                    bar.update(1)
        finally:
            client.close()
            client.cluster.close()
            index_writer.close()
            status_writer.close()
            bar.close()
        if p1.counts[NO_CLASS] == info.height * info.width:
            raise NodataOnlyError(f"{raster}: every pixel is nodata (or the {index} is undefined everywhere), so "
                                  "there is no stress to map. Check the nodata value (gdalinfo) and the bands.")

        n = len(field_set.ids)
        cut = np.array([rule.cutoffs(p1.stats, f) for f in range(n)]).reshape(n, 2)
        model_classes = None
        if rule.method == "model":
            model_classes, model_info = _model_classes(raster, model, outputs, tmp["stress"], progress)

        # pass 2: classes per field, stress raster and polygons
        class_m2 = {c: np.zeros(n) for c in (HEALTHY, MODERATE, SEVERE)}
        colormap = {c: hex_to_rgba(col) for c, col in CLASS_COLORS.items()}
        colormap[NO_CLASS] = (0, 0, 0, 0)
        class_writer = StreamingCOG(tmp["stress"], class_scratch, info, nodata=NO_CLASS,
                                    description="stress class", colormap=colormap)
        from geovision.stitching.vectorize import PolygonCollector

        collector = PolygonCollector(class_names=CLASS_NAMES, skip_classes={NO_CLASS, HEALTHY, WATER, MASKED},
                                     raster_height=info.height, raster_width=info.width, transform=info.affine,
                                     crs=info.crs, nodata=255, min_area_m2=min_area, source=Path(raster).name)
        sink = LayerSink(scratch_gpkg, STRESS_LAYER, info.crs, _stress_empty(collector, info.crs), stream=True)
        bar = _bar(len(blocks), "stress classes", progress)
        # thresholds have no probability: every stress polygon's mean_probability is 1 (one array for all blocks)
        ones = np.ones((len(CLASS_NAMES), BLOCK, BLOCK), np.float32)
        try:
            written = False
            try:
                with gdal_env(), rasterio.open(index_scratch) as ids_, rasterio.open(status_scratch) as sds, \
                        (rasterio.open(model_classes) if model_classes else _null()) as mds:
                    for block in blocks:
                        w = block.window
                        values = ids_.read(1, window=w.to_rasterio())
                        status = sds.read(1, window=w.to_rasterio())
                        model_codes = mds.read(1, window=w.to_rasterio()) if mds is not None else None
                        classes = _pass2_block(info, field_set, w, values, status, cut, model_codes, class_m2)
                        class_writer.write(w, classes)
                        sink.append(_with_field_ids(collector.add_block(w, classes, ones[:, :w.height, :w.width]),
                                                    field_set))
                        bar.update(1)
                sink.append(_with_field_ids(collector.finish(), field_set))
                written = True
            finally:
                if written:
                    class_writer.close()  # the stress COG: its tiles are compressed already
                else:
                    class_writer.abort()
                bar.close()
            to_cog(index_scratch, tmp["index"], resampling="AVERAGE")
            table = _field_table(field_set, p1, class_m2, cut, index)
            sink.close()
        except BaseException:
            sink.abort()  # ends the vector writer thread
            raise
        import pyogrio

        pyogrio.write_dataframe(table, scratch_gpkg, layer=FIELDS_LAYER, driver="GPKG", promote_to_multi=True)
        export(scratch_gpkg, [(FIELDS_LAYER, tmp["vector"], "MultiPolygon"),
                              (STRESS_LAYER, tmp["stress_layer"], "Polygon")])
        table.drop(columns="geometry").to_csv(tmp["csv"], index=False)
        summary = _summary(raster, fields, paths, info, index, mapping, scale_, offset_, rule, p1, class_m2,
                           table, sink, time.perf_counter() - t0,
                           model_info if rule.method == "model" else None)
        _quicklook(tmp["stress"], tmp["index"], table, tmp["quicklook"], index, rule, summary)
        tmp["summary"].write_text(json.dumps(summary, indent=2))
        outputs.commit()
    if progress:
        print(format_table(summary))
    return StressResult(paths["vector"], paths["stress_layer"], paths["index"], paths["stress"], paths["summary"],
                        paths["csv"], paths["quicklook"], summary)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _bar(total: int, desc: str, enabled: bool):
    from geovision.progress import progress_bar

    return progress_bar(total=total, unit="block", desc=desc, disable=not enabled, dynamic_ncols=True)


def _pass2_block(info: RasterInfo, fields: _Fields, window: Window, values: np.ndarray, status: np.ndarray,
                 cut: np.ndarray, model_codes: np.ndarray | None, class_m2: dict[int, np.ndarray]) -> np.ndarray:
    """Stress codes of one block (the dominant field's classes), adding each field's class areas."""
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


def _with_field_ids(frame, fields: _Fields):
    """Stress polygons with the id of the field holding their representative point (None outside every field)."""
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


def _stress_empty(collector, crs):
    frame = collector.empty()
    frame.insert(0, "field_id", np.array([], dtype=np.int64))
    return frame


def _model_classes(raster: str, model, outputs: AtomicOutputs, stress_tmp: Path, progress: bool):
    """Run the stress segmentation bundle; returns (scratch raster of stress codes, model info)."""
    import rasterio

    from geovision.models.bundle import read_config
    from geovision.workflows.predict import predict

    config = read_config(model)
    names = [c.name.lower() for c in config.classes]
    known = {"healthy": HEALTHY, "moderate": MODERATE, "severe": SEVERE, "water": WATER, "cloud": MASKED}
    if not {"healthy", "moderate", "severe"} <= set(names):
        raise ConfigError(f"{model}: its classes are {', '.join(names)}, but --method model needs a stress model "
                          "with classes named healthy, moderate and severe (others, e.g. water or cloud, optional).")
    lut = np.zeros(256, np.uint8)
    for i, name in enumerate(names):
        lut[i] = known.get(name, NO_CLASS)
    codes = outputs.scratch(stress_tmp, ".model.tif")
    with tempfile.TemporaryDirectory(dir=stress_tmp.parent, prefix=".stress-model-") as work:
        result = predict(raster, model, Path(work) / "model.gpkg", progress=progress, task="segmentation")
        with rasterio.open(result.class_rasters[0]) as src:
            profile = src.profile
            profile.update(driver="GTiff", nodata=NO_CLASS)
            with rasterio.open(codes, "w", **profile) as dst:
                for _, w in src.block_windows(1):
                    dst.write(lut[src.read(1, window=w)], 1, window=w)
    return codes, {"path": os.fspath(model), "classes": names, "arch": config.arch, "encoder": config.encoder}


def _field_table(fields: _Fields, p1: _Pass1, class_m2: dict[int, np.ndarray], cut: np.ndarray, index: str):
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


def _round(x: float, digits: int = 4):
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _summary(raster, fields, paths, info, index, mapping, scale, offset, rule, p1: _Pass1, class_m2, table, sink,
             elapsed, model_info) -> dict[str, Any]:
    from geovision.workflows.predict import _version

    valid_m2 = float(p1.stats.weight.sum())
    classes = {}
    for code, name in ((HEALTHY, "healthy"), (MODERATE, "moderate"), (SEVERE, "severe")):
        m2 = float(class_m2[code].sum())
        classes[name] = {"class_id": code, "area_m2": round(m2, 3), "area_ha": round(m2 / 1e4, 6),
                         "percent_of_valid": _round(100 * m2 / valid_m2 if valid_m2 else math.nan, 3),
                         "color": CLASS_COLORS[code]}
    polygons = {name: {"count": int(c), "area_m2": round(a, 3)} for name, (c, a) in sink.tally.items()}
    stressed = table["stressed_pct"].to_numpy(dtype=float)
    return {
        "geovision_version": _version(),
        "workflow": "stress",
        "inputs": {"raster": raster, "fields": os.fspath(fields), "width": info.width, "height": info.height,
                   "crs": info.crs.to_string(), "bands": {n: int(b) for n, b in mapping.items()},
                   "reflectance_scale": scale, "reflectance_offset": offset},
        "index": {"name": index, "formula": INDICES[index].formula, "valid_pixels": p1.valid_pixels,
                  "mean": _round(p1.sum / p1.valid_pixels if p1.valid_pixels else math.nan),
                  "min": _round(p1.lo if p1.valid_pixels else math.nan),
                  "max": _round(p1.hi if p1.valid_pixels else math.nan)},
        "method": {"name": rule.method, "rule": rule.describe(),
                   **({} if rule.method == "model" else {"severe": rule.severe, "moderate": rule.moderate}),
                   **({"reference_percentile": rule.reference_percentile} if rule.method == "percentile" else {}),
                   **({"min_std": rule.min_std} if rule.method == "zscore" else {}),
                   **({"model": model_info} if model_info else {})},
        "pixels": {"valid": p1.counts[HEALTHY], "water": p1.counts[WATER], "masked": p1.counts[MASKED],
                   "nodata": p1.counts[NO_CLASS]},
        "fields": {"count": len(table), "with_data": int((p1.stats.weight > 0).sum()),
                   "area_ha": round(float(table["area_ha"].sum()), 4),
                   "valid_ha": round(valid_m2 / 1e4, 4),
                   "water_ha": round(float(table["water_ha"].sum()), 4),
                   "masked_ha": round(float(table["masked_ha"].sum()), 4),
                   "nodata_ha": round(float(table["nodata_ha"].sum()), 4),
                   "most_stressed": _most_stressed(table)},
        "classes": classes,
        "class_names": list(CLASS_NAMES),
        "class_colors": {CLASS_NAMES[c]: col for c, col in CLASS_COLORS.items()},
        "stress_polygons": polygons,
        "outputs": {k: str(p) for k, p in paths.items()},
        "elapsed_s": round(elapsed, 3),
        "megapixels": round(info.megapixels, 3),
        "megapixels_per_second": round(info.megapixels / elapsed, 3) if elapsed > 0 else None,
        **({"stressed_pct_median": _round(float(np.nanmedian(stressed)), 3)} if np.isfinite(stressed).any() else {}),
    }


def _most_stressed(table, k: int = 5) -> list[dict[str, Any]]:
    top = table.sort_values("stressed_ha", ascending=False).head(k)
    return [{"field_id": v.item() if hasattr(v, "item") else v, "stressed_ha": round(float(s), 4),
             "stressed_pct": _round(float(p), 2)}
            for v, s, p in zip(top["field_id"], top["stressed_ha"], top["stressed_pct"]) if s > 0]


def format_table(summary: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    f = summary["fields"]
    rows = [("class", "area ha", "% of valid")]
    for name, c in summary["classes"].items():
        pct = c["percent_of_valid"]
        rows.append((name, f"{c['area_ha']:.3f}", "-" if pct is None else f"{pct:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(v.ljust(wd) if i == 0 else v.rjust(wd) for i, (v, wd) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    lines.append(f"{f['count']} fields ({f['with_data']} with data), {f['valid_ha']:.2f} ha valid, "
                 f"{f['water_ha']:.2f} ha water, {f['masked_ha']:.2f} ha masked, {f['nodata_ha']:.2f} ha no data; "
                 f"{summary['method']['rule']}")
    lines.append(f"{summary['elapsed_s']:.1f} s; wrote {summary['outputs']['vector']} and "
                 f"{summary['outputs']['quicklook']}")
    return "\n".join(lines)


def _quicklook(stress_cog: Path, index_cog: Path, table, out: Path, index: str, rule: StressRule,
               summary: dict[str, Any], max_px: int = 1200) -> None:
    """A two-panel PNG: the index and the stress classes with field outlines and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with gdal_env(), rasterio.open(stress_cog) as cds, rasterio.open(index_cog) as ids_:
        factor = max(1.0, max(cds.height, cds.width) / max_px)
        shape = (max(1, round(cds.height / factor)), max(1, round(cds.width / factor)))
        classes = cds.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        values = ids_.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.average)
        b = cds.bounds
    extent = (b.left, b.right, b.bottom, b.top)
    aspect = shape[1] / shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(min(16, 2 * 6 * aspect + 2), 7), constrained_layout=True)
    low, high = INDICES[index].valid_range
    finite = values[np.isfinite(values)]
    vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (low, high))
    im = axes[0].imshow(values, extent=extent, cmap="RdYlGn", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], shrink=0.7, label=index.upper())
    axes[0].set_title(f"{index.upper()} (mean {summary['index']['mean']})")
    colors = ["#00000000"] + [CLASS_COLORS[c] for c in range(1, len(CLASS_NAMES))]
    axes[1].imshow(np.ma.masked_equal(classes, NO_CLASS), extent=extent, cmap=ListedColormap(colors),
                   vmin=-0.5, vmax=len(CLASS_NAMES) - 0.5, interpolation="nearest")
    axes[1].set_title("Crop stress: " + rule.describe(), fontsize=9, wrap=True)
    for ax in axes:
        table.boundary.plot(ax=ax, color="black", linewidth=0.5)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(labelsize=7)
    legend = [Patch(color=CLASS_COLORS[c], label=f"{CLASS_NAMES[c]}"
                    + (f" {summary['classes'][CLASS_NAMES[c]]['area_ha']:.2f} ha" if CLASS_NAMES[c] in
                       summary["classes"] else "")) for c in range(1, len(CLASS_NAMES))]
    legend.append(Patch(facecolor="none", edgecolor="black", label="field boundary"))
    fig.legend(handles=legend, loc="outside lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(f"{Path(summary['inputs']['raster']).name}: {summary['fields']['count']} fields, "
                 f"{summary['fields']['valid_ha']:.1f} ha valid", fontsize=11)
    fig.savefig(out, dpi=110)
    plt.close(fig)
