"""``geovision stress``: a crop-stress map and a per-field table from a multispectral raster.

Data flow (see docs/ARCHITECTURE.md)::

    pass 1, Dask readers -> main thread, per 512 px block (agri.fields.IndexPass):
        DN -> reflectance -> index (float32) -> scratch index GeoTIFF
        water / cloud / excluded / nodata status -> scratch status GeoTIFF
        exact field coverage (agri.coverage) x pixel ground area -> FieldStats per field
    per-field cut-offs from the StressRule (absolute, percentile, z-score) or a model's classes
    pass 2, main thread, per block of the scratch rasters (agri.fields.classify_block):
        classes per field -> class areas per field (coverage-weighted, true m²)
        stress-class block (dominant field) -> scratch class GeoTIFF + PolygonCollector
    -> index COG, stress COG, fields + stress layers, CSV (agri.fields.field_table),
       summary and quicklook PNG (agri.summary)
    -> atomic rename of every output

Memory holds a few blocks, the field polygons and a small histogram per field,
never the raster. Water, cloud, excluded and nodata pixels never enter the
statistics; they are reported in hectares per field instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from geovision.agri.fields import Fields, IndexPass, classify_block, field_table, read_fields, with_field_ids
from geovision.agri.indices import resolve_bands
from geovision.agri.stress import (
    CLASS_COLORS,
    CLASS_NAMES,
    HEALTHY,
    MASKED,
    MODERATE,
    NO_CLASS,
    SEVERE,
    WATER,
    StressRule,
)
from geovision.agri.summary import stress_summary, write_quicklook
from geovision.engine.progress import Progress, ProgressOption, callback_for
from geovision.errors import BandMismatchError, ConfigError, NodataOnlyError, VectorContentError
from geovision.io.geo import window_bounds
from geovision.io.outputs import AtomicOutputs, sibling, vector_driver
from geovision.io.raster import BLOCK_SIZE, BlockWriter, hex_to_rgba, to_cog
from geovision.io.vector import LayerSink, export
from geovision.tiling.grid import BlockGrid
from geovision.tiling.reader import RasterInfo, TileData, gdal_env, open_raster, read_tiles
from geovision.tiling.stream import batched, local_cluster, stream
from geovision.types import Tile, Window

if TYPE_CHECKING:
    import geopandas as gpd
    from rasterio.crs import CRS
    from shapely import STRtree

    from geovision.engine.progress import ProgressCallback
    from geovision.stitching.vectorize import PolygonCollector

__all__ = ["StressResult", "stress"]

BLOCK = BLOCK_SIZE  # blocks of the scratch rasters
FIELDS_LAYER, STRESS_LAYER = "fields", "stress"


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


# --- inputs -----------------------------------------------------------------------------


def _optional_bands(sensor: str | None, bands: Mapping[str, int] | str | None, count: int, baseline: str | None,
                    scale: float | None, offset: float | None) -> dict[str, int]:
    """Positions of green, blue, red and nir when the preset or ``bands`` give them (for the masks)."""
    found: dict[str, int] = {}
    for probe in ("gndvi", "evi"):  # nir+green, nir+red+blue
        try:
            mapping, _, _ = resolve_bands(sensor, bands, probe, count, baseline=baseline, scale=scale, offset=offset)
        except (BandMismatchError, ConfigError):
            continue
        found.update(mapping)
    return found


def _band_mapping(raster: str, index: str, sensor: str | None, bands: Mapping[str, int] | str | None,
                  baseline: str | None, scale: float | None,
                  offset: float | None) -> tuple[dict[str, int], float, float]:
    """Band name -> 1-based position (the index's bands and the masks' optional ones), reflectance scale and offset.

    A raster that does not open gives no bands: :func:`~geovision.tiling.reader.open_raster` then raises the
    clear error.
    """
    import rasterio

    try:
        with gdal_env(), rasterio.open(raster) as ds:
            count = ds.count
    except rasterio.errors.RasterioError:
        return {}, 1.0, 0.0  # open_raster raises the clear error
    needed, scale_, offset_ = resolve_bands(sensor, bands, index, count, baseline=baseline, scale=scale, offset=offset)
    extra = _optional_bands(sensor, bands, count, baseline, scale, offset)
    return {**extra, **needed}, scale_, offset_


def _fields_and_exclusions(raster: str, fields: str | os.PathLike[str], exclude: str | os.PathLike[str] | None,
                           info: RasterInfo, id_column: str | None) -> tuple[Fields, STRtree | None]:
    """The fields (at least one over the raster) and the exclusion polygons' tree, both in the raster's CRS."""
    import shapely

    field_set = read_fields(fields, info.crs, id_column)
    raster_box = window_bounds(info.affine, Window(0, 0, info.height, info.width))
    if not field_set.tree.query(shapely.box(*raster_box), predicate="intersects").size:
        raise VectorContentError(f"{fields}: no field overlaps the raster {raster} (after moving the fields to the "
                                 f"raster's CRS {info.crs.to_string()}); check that both cover the same place.")
    if exclude is None:
        return field_set, None
    from geovision.io.zones import read_polygons

    ex, _ = read_polygons(exclude, info.crs, what="exclusion", examples="cloud or building outlines")
    return field_set, shapely.STRtree(ex.geometry.values)


def _output_paths(out: Path, index: str, single: bool) -> dict[str, Path]:
    """Every output by name; ``single``: the vector format holds one layer, so the stress layer gets its own file."""
    return {
        "vector": out,
        "stress_layer": sibling(out, f".stress{out.suffix}") if single else out,
        "index": sibling(out, f".{index}.tif"),
        "stress": sibling(out, ".stress.tif"),
        "summary": sibling(out, ".summary.json"),
        "csv": sibling(out, ".fields.csv"),
        "quicklook": sibling(out, ".quicklook.png"),
    }


# --- the passes -------------------------------------------------------------------------


def _read_block(info: RasterInfo, size: int, tiles: Sequence[Tile]) -> tuple[list[TileData], list[Tile]]:
    return read_tiles(info, tiles, size)


def _index_pass(p1: IndexPass, blocks: list[Tile], index_scratch: Path, status_scratch: Path,
                on_progress: ProgressCallback | None) -> None:
    """Pass 1: read every block through the Dask readers into ``p1``; write the scratch index and status rasters."""
    info = p1.info
    index_writer = BlockWriter(index_scratch, info, count=1, dtype="float32", nodata=float("nan"),
                               descriptions=[p1.index])
    status_writer = BlockWriter(status_scratch, info, count=1, dtype="uint8", nodata=255)
    bar = Progress(on_progress, f"{p1.index} + field stats", len(blocks), "block")
    try:
        with local_cluster() as client:
            for _, (read, skipped) in stream(client, _read_block, batched(blocks, 4), info, BLOCK, prefetch=4):
                for item, data, valid in ([(t.tile, t.data, t.valid) for t in read]
                                          + [(s, None, None) for s in skipped]):
                    values, status = p1.block(item.window, data, valid)
                    index_writer.write(item.window, values)
                    status_writer.write(item.window, status)
                    bar.update(1, item.window.height * item.window.width)
    finally:
        index_writer.close()
        status_writer.close()
        bar.close()


def _stress_polygons(info: RasterInfo, raster: str, min_area: float | None,
                     scratch_gpkg: Path) -> tuple[PolygonCollector, LayerSink]:
    """The collector of moderate and severe polygons and the sink of the scratch ``stress`` layer."""
    from geovision.stitching.vectorize import PolygonCollector

    collector = PolygonCollector(class_names=CLASS_NAMES, skip_classes={NO_CLASS, HEALTHY, WATER, MASKED},
                                 raster_height=info.height, raster_width=info.width, transform=info.affine,
                                 crs=info.crs, nodata=255, min_area_m2=min_area, source=Path(raster).name)
    sink = LayerSink(scratch_gpkg, STRESS_LAYER, info.crs, _stress_empty(collector, info.crs), stream=True)
    return collector, sink


def _class_pass(info: RasterInfo, field_set: Fields, blocks: list[Tile], cut: np.ndarray, model_classes: Path | None,
                scratch: Mapping[str, Path], collector: PolygonCollector, sink: LayerSink,
                class_m2: dict[int, np.ndarray], on_progress: ProgressCallback | None) -> None:
    """Pass 2: classify every block of the scratch rasters; write the scratch class raster and the polygons.

    ``scratch`` holds the ``index``, ``status`` and ``class`` scratch rasters; ``class_m2`` is added to.
    """
    import rasterio

    colormap = {c: hex_to_rgba(col) for c, col in CLASS_COLORS.items()}
    colormap[NO_CLASS] = (0, 0, 0, 0)
    class_writer = BlockWriter(scratch["class"], info, count=1, dtype="uint8", nodata=NO_CLASS,
                               descriptions=["stress class"], colormap=colormap)
    bar = Progress(on_progress, "stress classes", len(blocks), "block")
    # thresholds have no probability: every stress polygon's mean_probability is 1 (one array for all blocks)
    ones = np.ones((len(CLASS_NAMES), BLOCK, BLOCK), np.float32)
    try:
        with gdal_env(), rasterio.open(scratch["index"]) as ids_, rasterio.open(scratch["status"]) as sds, \
                (rasterio.open(model_classes) if model_classes else contextlib.nullcontext()) as mds:
            for block in blocks:
                w = block.window
                values = ids_.read(1, window=w.to_rasterio())
                status = sds.read(1, window=w.to_rasterio())
                model_codes = mds.read(1, window=w.to_rasterio()) if mds is not None else None
                classes = classify_block(info, field_set, w, values, status, cut, model_codes, class_m2)
                class_writer.write(w, classes)
                sink.append(with_field_ids(collector.add_block(w, classes, ones[:, :w.height, :w.width]), field_set))
                bar.update(1, w.height * w.width)
        sink.append(with_field_ids(collector.finish(), field_set))
    finally:
        class_writer.close()
        bar.close()


# --- the run ----------------------------------------------------------------------------


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
    progress: ProgressOption = False,
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
        progress: ``True`` for progress bars, or a callback taking
            :class:`~geovision.engine.progress.ProgressEvent` s; default silent.

    Returns:
        The paths written and the summary.

    Raises:
        GeovisionError: a subclass naming the file and the fix for every bad input; nothing
            is left behind on failure.
    """
    t0 = time.perf_counter()
    on_progress = callback_for(progress)
    raster, out = os.fspath(raster), Path(out)
    index = index.lower()
    # StressRule.make takes any sequence of two numbers; its annotation names tuple and list only
    rule = StressRule.make(method, index, cast("tuple[float, float] | list[float] | str | None", thresholds),
                           reference_percentile=reference_percentile, min_std=min_std)
    if (rule.method == "model") != (model is not None):
        raise ConfigError("method 'model' needs --model BUNDLE (a segmentation bundle with classes healthy, moderate, "
                          "severe), and --model needs --method model." if model is None else
                          f"--model {model} was given with --method {rule.method}; use --method model to classify "
                          "with it, or leave --model out.")
    driver = vector_driver(out)
    mapping, scale_, offset_ = _band_mapping(raster, index, sensor, bands, baseline, scale, offset)
    names = list(mapping)
    info = open_raster(raster, [mapping[n] for n in names], len(names), bands_from=f"the {index} bands")
    field_set, exclude_tree = _fields_and_exclusions(raster, fields, exclude, info, id_column)

    single = driver != "GPKG"
    paths = _output_paths(out, index, single)
    inputs = [raster, os.fspath(fields)] + ([os.fspath(exclude)] if exclude is not None else [])
    with AtomicOutputs(inputs, overwrite) as outputs:
        tmp = {k: outputs.add(p) for k, p in paths.items() if not (k == "stress_layer" and not single)}
        if not single:
            tmp["stress_layer"] = tmp["vector"]
        scratch = {"index": outputs.scratch(tmp["index"], ".scratch.tif"),
                   "status": outputs.scratch(tmp["stress"], ".status.tif"),
                   "class": outputs.scratch(tmp["stress"], ".scratch.tif")}
        scratch_gpkg = outputs.scratch(tmp["vector"], ".scratch.gpkg")

        # pass 1: index, status, field statistics
        grid = BlockGrid(info.height, info.width, BLOCK)
        blocks = [Tile((r, c), grid.window((r, c))) for r in range(grid.shape[0]) for c in range(grid.shape[1])]
        p1 = IndexPass(info, names, index, scale_, offset_, field_set, exclude_tree, water, clouds)
        _index_pass(p1, blocks, scratch["index"], scratch["status"], on_progress)
        if p1.counts[NO_CLASS] == info.height * info.width:
            raise NodataOnlyError(f"{raster}: every pixel is nodata (or the {index} is undefined everywhere), so "
                                  "there is no stress to map. Check the nodata value (gdalinfo) and the bands.")

        n = len(field_set.ids)
        cut = np.array([rule.cutoffs(p1.stats, f) for f in range(n)]).reshape(n, 2)
        model_classes: Path | None = None
        model_info: dict[str, Any] | None = None
        if rule.method == "model":
            model_classes, model_info = _model_classes(raster, model, outputs, tmp["stress"], on_progress)

        # pass 2: classes per field, stress raster and polygons
        class_m2 = {c: np.zeros(n) for c in (HEALTHY, MODERATE, SEVERE)}
        collector, sink = _stress_polygons(info, raster, min_area, scratch_gpkg)
        try:
            _class_pass(info, field_set, blocks, cut, model_classes, scratch, collector, sink, class_m2, on_progress)
            to_cog(scratch["class"], tmp["stress"], resampling="NEAREST")
            to_cog(scratch["index"], tmp["index"], resampling="AVERAGE")
            table = field_table(field_set, p1, class_m2, cut, index)
            sink.close()
        except BaseException:
            sink.abort()  # ends the vector writer thread
            raise
        import pyogrio

        pyogrio.write_dataframe(table, scratch_gpkg, layer=FIELDS_LAYER, driver="GPKG", promote_to_multi=True)
        export(scratch_gpkg, [(FIELDS_LAYER, tmp["vector"], "MultiPolygon"),
                              (STRESS_LAYER, tmp["stress_layer"], "Polygon")])
        table.drop(columns="geometry").to_csv(tmp["csv"], index=False)
        summary = stress_summary(raster, fields, paths, info, index, mapping, scale_, offset_, rule, p1, class_m2,
                                 table, sink, time.perf_counter() - t0, model_info)
        write_quicklook(tmp["stress"], tmp["index"], table, tmp["quicklook"], index, rule, summary)
        tmp["summary"].write_text(json.dumps(summary, indent=2))
        outputs.commit()
    return StressResult(paths["vector"], paths["stress_layer"], paths["index"], paths["stress"], paths["summary"],
                        paths["csv"], paths["quicklook"], summary)


def _stress_empty(collector: PolygonCollector, crs: CRS | str) -> gpd.GeoDataFrame:
    frame = collector.empty()
    frame.insert(0, "field_id", np.array([], dtype=np.int64))
    return frame


def _model_classes(raster: str, model: Any, outputs: AtomicOutputs, stress_tmp: Path,
                   progress: ProgressOption) -> tuple[Path, dict[str, Any]]:
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
