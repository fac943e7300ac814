"""``geovision predict``: rasters in, clean vector layers + COGs + summary out.

The task comes from the bundle. This module checks the options against the bundle and
the inputs, lays out the outputs, and runs each raster through the engine
(:mod:`geovision.engine`; the data flow is in docs/ARCHITECTURE.md)::

    TileGrid -> Dask readers -> model passes -> stitcher thread -> task consumer
        segmentation: blended blocks -> class (+ probability) COG, polygons
        detection:    merged boxes -> box polygons (+ centres, zone counts)
    -> scratch GeoPackage -> output target; COGs and summary renamed into place on success
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rasterio.warp import transform_bounds

from geovision.engine.cluster import Clients
from geovision.engine.detection import detection_consumer
from geovision.engine.pipeline import ClusterModel, RasterFinisher, heap_frozen, run_local, run_on_cluster
from geovision.engine.progress import Progress, callback_for
from geovision.engine.protocols import TileConsumer
from geovision.engine.segmentation import RasterFiles, finish_rasters, segmentation_consumer
from geovision.engine.sinks import LAYER, ReviewSink, RunLayers
from geovision.engine.summary import PredictResult, RasterRun, predict_summary
from geovision.errors import ConfigError, NodataOnlyError, TaskMismatchError, warn
from geovision.io.drift import DriftMonitor, check_drift
from geovision.io.geo import ground_pixel_size_m, window_bounds
from geovision.io.outputs import AtomicOutputs, sibling, vector_driver
from geovision.io.targets import FileTarget
from geovision.io.zones import Zones
from geovision.models.bundle import load_bundle
from geovision.models.config import BundleConfig
from geovision.models.factory import shared_predictor
from geovision.models.inference import InferencePool, plan_inference
from geovision.tiling.grid import TileGrid
from geovision.tiling.reader import RasterInfo, open_raster
from geovision.types import Window

__all__ = ["PredictOptions", "PredictResult", "predict", "run_predict"]


class PredictOptions(BaseModel):
    """Everything ``predict`` needs; the CLI only fills this in. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    rasters: list[str] = Field(min_length=1)
    model: str
    out: str
    tile: int | None = Field(default=None, description="tile edge in pixels; default: the bundle's")
    overlap: int | None = Field(default=None, ge=0, description="pixels; default 64, or a quarter of a smaller tile")
    batch_size: int | None = Field(
        default=None, ge=1, description="tiles per forward pass; default 1 on the CPU, 8 on a GPU, 4 on a cluster")
    streams: int | None = Field(
        default=None, ge=1, description="forward passes at once; default: one per CPU core (up to 4), 1 on a GPU")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    bands: list[int] | None = None
    min_area: float | None = Field(default=None, ge=0, description="m²")
    simplify: float | None = Field(default=None, ge=0, description="metres")
    probabilities: bool = False
    task: Literal["segmentation", "detection"] | None = Field(
        default=None, description="refuse a bundle of another task; default: the bundle's task")
    score_threshold: float | None = Field(default=None, ge=0, le=1, description="detection; default 0.5")
    points: bool = False
    zones: str | None = None
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    match_iou: float = Field(default=0.5, gt=0, le=1)
    box_fusion: Literal["best", "wbf"] = "best"
    review_band: tuple[float, float] | None = Field(
        default=None, description="confidence band [low, high) whose features go to the review layer")
    scheduler: str | None = None
    workers: int | None = Field(default=None, ge=1)
    overwrite: bool = False
    progress: Any = Field(default=False, description="True for progress bars, or a callback taking ProgressEvents")

    @field_validator("zones", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("review_band")
    @classmethod
    def _band_in_order(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1] <= 1:
            raise ValueError(f"review band must be two confidences 0 <= low < high <= 1, e.g. 0.3,0.6; got {v}")
        return v

    @field_validator("tile")
    @classmethod
    def _tile_multiple_of_32(cls, v: int | None) -> int | None:
        if v is not None and (v <= 0 or v % 32):
            raise ValueError(f"tile must be a positive multiple of 32 (the models downsample by 32), got {v}")
        return v



def _drift_check(info: RasterInfo, config: BundleConfig) -> dict[str, Any] | None:
    """PSI per band against the bundle's training imagery (a warning when shifted); None without a reference.

    For cluster runs, whose pixels stay on the workers: a decimated read up front. Local
    runs count the tiles as they are read instead (:class:`~geovision.io.drift.DriftMonitor`).
    """
    if not config.drift_reference:
        return None
    return check_drift(info.path, info.bands, config.band_names, config.drift_reference)


def _resolution_check(info: RasterInfo, bundle_res: float | None) -> float:
    xs, ys = ground_pixel_size_m(info.affine, info.crs, info.height, info.width)
    res = float((xs + ys) / 2)
    if bundle_res and not 0.5 <= res / bundle_res <= 2.0:
        warn(
            f"{info.path}: ground resolution {res:.3g} m is far from the model's {bundle_res:.3g} m; "
            "predictions may be poor. Resample the raster (gdalwarp -tr) or use a model trained at "
            "this resolution."
        )
    return res


def predict(
    rasters: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    **options: Any,
) -> PredictResult:
    """Segment, or detect objects in, one or more rasters with a model bundle.

    The bundle's task decides. Segmentation writes polygons per class,
    ``<stem>.classes.tif`` and (with ``probabilities=True``) ``<stem>.probabilities.tif``.
    Detection writes one box polygon per object, merged across tiles, and with
    ``points=True`` a ``points`` layer of centres, with ``zones=PATH`` a ``zones``
    layer of counts and densities per zone (in the GeoPackage, or as
    ``<stem>.points.<ext>`` / ``<stem>.zones.<ext>`` for single-layer formats).

    Args:
        rasters: raster path(s): GeoTIFF, COG, VRT or any GDAL path (``/vsis3/...``).
        model: ``.safetensors`` bundle (see ``geovision model init``).
        out: vector output; the extension picks the format (``.gpkg``, ``.geojson``,
            ``.fgb``, ``.parquet``). ``<stem>.summary.json`` is written beside it.
        **options: any field of :class:`PredictOptions` (tile, overlap, batch_size, device,
            precision, bands, min_area, simplify, probabilities, task, score_threshold,
            points, zones, nms_iou, match_iou, box_fusion, scheduler, workers,
            overwrite, progress: True for progress bars, or a callback taking
            :class:`~geovision.engine.progress.ProgressEvent` s; default silent).

    Returns:
        The paths written and the summary.

    Raises:
        GeovisionError: a subclass naming the file and the fix, for every bad input. No
            output is left behind on failure.
    """
    if isinstance(rasters, (str, os.PathLike)):
        rasters = [rasters]
    opts = PredictOptions(rasters=[str(r) for r in rasters], model=str(model), out=str(out), **options)
    return run_predict(opts)


_DETECTION_ONLY = ("points", "zones", "score_threshold")


def _check_task(opts: PredictOptions, config: BundleConfig) -> None:
    """The bundle's task fits the command and its options."""
    if opts.task and opts.task != config.task:
        raise TaskMismatchError(
            f"{opts.model}: this bundle is a {config.task} model but {opts.task} was asked for "
            f"(--task {opts.task}). Use a {opts.task} bundle, or drop --task."
        )
    if config.task == "segmentation":
        used = [n for n in _DETECTION_ONLY if getattr(opts, n) not in (None, False)]
        if used:
            flags = ", ".join("--" + n.replace("_", "-") for n in used)
            raise TaskMismatchError(
                f"{opts.model}: {flags} work with detection bundles, but this bundle is a segmentation "
                "model. Use a detection bundle, or drop those options."
            )
    elif opts.probabilities or opts.simplify:
        flags = ", ".join(f for f, on in (("--probabilities", opts.probabilities), ("--simplify", opts.simplify)) if on)
        raise TaskMismatchError(
            f"{opts.model}: {flags} work with segmentation bundles, but this bundle is a detection model "
            "(its outputs are boxes). Use a segmentation bundle, or drop those options."
        )


def run_predict(opts: PredictOptions) -> PredictResult:
    """Run ``predict`` with checked options (see :func:`predict`)."""
    with heap_frozen():
        return _run_predict(opts)


def _run_predict(opts: PredictOptions) -> PredictResult:
    t0 = time.perf_counter()
    vector_driver(opts.out)  # unknown extension -> error before any work
    config, state = load_bundle(opts.model)
    _check_task(opts, config)
    detection = config.task == "detection"
    tile_size = opts.tile or config.tile_size
    if opts.overlap is None:
        opts = opts.model_copy(update={"overlap": min(64, tile_size // 4)})
    assert opts.overlap is not None
    if opts.overlap >= tile_size // 2:
        raise ConfigError(f"overlap {opts.overlap} must be less than half the tile ({tile_size}); lower --overlap.")

    bands, bands_from = (opts.bands, "--bands") if opts.bands else (config.bands, "the bundle's band order")
    infos = [open_raster(path, bands, config.in_channels, bands_from=bands_from) for path in opts.rasters]
    resolutions = [_resolution_check(info, config.ground_resolution_m) for info in infos]
    remote = bool(opts.scheduler)
    zones = None
    if opts.zones:
        zones = Zones.read(opts.zones, infos[0].crs, config.class_names[1:])
        zones.check_overlap(_union_bounds(infos))

    inputs = opts.rasters + ([opts.zones] if opts.zones else [])
    planned = RunLayers.planned(points=opts.points, zones=zones is not None, review=bool(opts.review_band))
    target = FileTarget(opts.out, [spec.name for spec in planned], inputs, opts.overwrite)
    try:
        with AtomicOutputs(inputs, opts.overwrite) as outputs:
            summary_path = sibling(opts.out, ".summary.json")
            summary_tmp = outputs.add(summary_path)
            runs = _plan_rasters(opts, config, infos, outputs, remote, detection)
            scratch = outputs.scratch(summary_tmp, ".layers.gpkg")
            layers = RunLayers.open(scratch, config, infos[0].crs, points=opts.points, zones=zones,
                                    review_band=opts.review_band)
            inference = _run_rasters(opts, config, state, runs, layers, tile_size)
            target.write(scratch, layers.specs())
            summary = _summary(opts, config, runs, resolutions, layers, target, inference, t0)
            summary_tmp.write_text(json.dumps(summary, indent=2))
            outputs.commit()
            target.commit()
    except BaseException:
        target.abort()
        raise
    locations = target.locations()
    return PredictResult(
        vector_path=Path(opts.out), summary_path=summary_path,
        class_rasters=[r.classes_path for r in runs if r.classes_path],
        probability_rasters=[r.probabilities_path for r in runs if r.probabilities_path],
        summary=summary, layers={name: Path(p) for name, p in locations.items() if name != LAYER},
    )


def _plan_rasters(opts: PredictOptions, config: BundleConfig, infos: Sequence[RasterInfo], outputs: AtomicOutputs,
                  remote: bool, detection: bool) -> list[RasterRun]:
    """One :class:`RasterRun` per input, with its raster outputs registered (nothing written yet)."""
    multi = len(infos) > 1
    runs = []
    for info in infos:
        stem = f".{Path(info.path).stem}" if multi else ""
        run = RasterRun(info, None, None)
        if not detection:
            run.classes_path = sibling(opts.out, f"{stem}.classes.tif")
            run.classes_files = _raster_files(outputs, run.classes_path)
        if opts.probabilities:
            run.probabilities_path = sibling(opts.out, f"{stem}.probabilities.tif")
            run.probabilities_files = _raster_files(outputs, run.probabilities_path)
        if config.drift_reference:
            # on a cluster the pixels stay on the workers: drift is checked up front, by a decimated read;
            # a local run counts its tiles as they are read
            if remote:
                run.drift = _drift_check(info, config)
            else:
                run.drift_monitor = DriftMonitor(config.drift_reference, config.band_names)
        runs.append(run)
    return runs


def _raster_files(outputs: AtomicOutputs, final: Path) -> RasterFiles:
    tmp = outputs.add(final)
    return RasterFiles(tmp, outputs.scratch(tmp, ".scratch.tif"))


def _run_rasters(opts: PredictOptions, config: BundleConfig, state: Any, runs: list[RasterRun], layers: RunLayers,
                 tile_size: int) -> dict[str, Any]:
    """Every raster through the engine, then the layers closed and the COGs copied; returns the inference plan."""
    assert opts.overlap is not None
    grids = [TileGrid(r.info.height, r.info.width, tile_size, opts.overlap) for r in runs]
    progress = Progress(callback_for(opts.progress), "predict", sum(len(g) for g in grids), "tile")
    finisher = RasterFinisher()
    clients = Clients(opts.scheduler, opts.workers)
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(progress.close)
            stack.callback(clients.close)
            if clients.remote:
                raw = Path(opts.model).read_bytes()
                model = ClusterModel(clients, raw, hashlib.sha256(raw).hexdigest()[:16], opts.device,
                                     opts.precision, opts.batch_size or 4)
                inference: dict[str, Any] = {"device": f"cluster workers ({opts.device})", "streams": None,
                                             "threads_per_stream": None, "batch_size": model.batch_size}
            else:
                predictor = shared_predictor(opts.model, config, state, device=opts.device,
                                             precision=opts.precision, source=opts.model)
                plan = plan_inference(predictor.device, streams=opts.streams, batch_size=opts.batch_size)
                pool = stack.enter_context(InferencePool(predictor, plan))
                inference = {"device": str(predictor.device), "streams": plan.streams,
                             "threads_per_stream": plan.threads, "batch_size": plan.batch_size}
            for run, grid in zip(runs, grids):
                consumer = _consumer(opts, config, run, grid, layers)
                if clients.remote:
                    run_on_cluster(run, grid, consumer, model, clients, progress, tile_size, opts.workers)
                else:
                    run_local(run, grid, consumer, pool, clients, progress, tile_size, opts.workers)
                run.merge_seconds = getattr(consumer, "merge_seconds", 0.0)
                if run.drift_monitor is not None:
                    run.drift = run.drift_monitor.result(run.info.path)
                if run.classes_files is not None or run.probabilities_files is not None:
                    # beside the next raster's tiles, or the vector writer's end
                    finisher.submit(partial(finish_rasters, run.classes_files, run.probabilities_files))
        if sum(r.tiles_processed for r in runs) == 0:
            raise NodataOnlyError(
                f"{', '.join(opts.rasters)}: every pixel is nodata, so there is nothing to predict. "
                "Check the nodata value (gdalinfo) and the --bands chosen."
            )
        layers.close()
        finisher.wait()
    except BaseException:
        finisher.abort()
        layers.abort()  # ends the vector writer thread; the scratch files go with the outputs
        raise
    return inference


def _consumer(opts: PredictOptions, config: BundleConfig, run: RasterRun, grid: TileGrid,
              layers: RunLayers) -> TileConsumer:
    info = run.info
    if config.task == "detection":
        return detection_consumer(
            grid, info.affine, info.crs, config.class_names, layers.main, layers.points, layers.zones,
            score_threshold=0.5 if opts.score_threshold is None else opts.score_threshold,
            min_area_m2=opts.min_area, match_iou=opts.match_iou, nms_iou=opts.nms_iou, fusion=opts.box_fusion,
            source=Path(info.path).name,
        )
    assert run.classes_files is not None and opts.overlap is not None
    return segmentation_consumer(info, grid, config, layers.main, overlap=opts.overlap, classes=run.classes_files,
                                 probabilities=run.probabilities_files, simplify_m=opts.simplify,
                                 min_area_m2=opts.min_area)


def _summary(opts: PredictOptions, config: BundleConfig, runs: list[RasterRun], resolutions: list[float],
             layers: RunLayers, target: FileTarget, inference: dict[str, Any], t0: float) -> dict[str, Any]:
    locations = target.locations()
    outputs = {"vector": opts.out, "layer": LAYER, **{k: v for k, v in locations.items() if k != LAYER}}
    options = {"tile": opts.tile, "overlap": opts.overlap, "batch_size": opts.batch_size, "streams": opts.streams,
               "device": opts.device, "precision": opts.precision, "min_area_m2": opts.min_area,
               "simplify_m": opts.simplify, "scheduler": opts.scheduler}
    summary = predict_summary(opts.model, options, config, runs, resolutions, layers.main, outputs,
                              time.perf_counter() - t0)
    summary["inference"] = inference
    for entry, run in zip(summary["inputs"], runs):
        entry["drift"] = run.drift
    if layers.zones is not None:
        summary["zones"] = layers.zones.summary()
    if opts.review_band:
        assert isinstance(layers.main, ReviewSink)
        summary["review"] = {"band": list(opts.review_band), "count": layers.main.review.count}
    return summary


def _union_bounds(infos: Sequence[RasterInfo]) -> tuple[float, float, float, float]:
    """The rasters' extent in the first raster's CRS."""
    boxes = []
    for info in infos:
        bounds = window_bounds(info.affine, Window(0, 0, info.height, info.width))
        if not info.crs == infos[0].crs:
            bounds = transform_bounds(info.crs, infos[0].crs, *bounds)
        boxes.append(bounds)
    b = np.asarray(boxes)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


