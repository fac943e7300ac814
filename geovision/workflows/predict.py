"""``geovision predict``: rasters in, clean vector layers + COGs + summary out.

The task comes from the bundle. Data flow (see docs/ARCHITECTURE.md)::

    TileGrid (pure)  ->  Dask readers (threads or cluster)  ->  batched model (main thread,
    or the cluster's workers)  ->  stitcher thread, the task's consumer:
        segmentation: BlockAccumulator -> StreamingCOG (class COG) + PolygonCollector
        detection:    DetectionMerger -> box polygons (+ centroids, zone counts)
    -> LayerSink (scratch GeoPackage)  ->  COG copies, vector export, summary
    ->  atomic rename of every output

The main thread only runs the model; reading happens ahead of it on Dask
threads and stitching/writing behind it on a stitcher thread, so the model
stays busy.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from affine import Affine
from pydantic import BaseModel, ConfigDict, Field, field_validator

from geovision.errors import ConfigError, NodataOnlyError, TaskMismatchError, warn
from geovision.io.cog import StreamingCOG
from geovision.io.outputs import AtomicOutputs, sibling, vector_driver
from geovision.io.raster import (
    BLOCK_SIZE,
    BlockWriter,
    hex_to_rgba,
    probability_to_uint8,
    to_cog,
)
from geovision.io.vector import FeatureBatch, LayerSink, export
from geovision.stitching.accumulate import CLASS_NODATA, BlockAccumulator, FinishedBlock
from geovision.tiling.grid import BlockGrid, TileGrid
from geovision.tiling.reader import (
    RasterInfo,
    TileData,
    open_raster,
    read_tiles,
    release,
)
from geovision.tiling.stream import batched, local_client, stream
from geovision.types import Tile

log = logging.getLogger(__name__)

LAYER = "predictions"


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
    progress: bool = True

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


@dataclass
class RasterRun:
    """Counters and outputs of one input raster."""

    info: RasterInfo
    classes_path: Path | None
    probabilities_path: Path | None
    tiles_total: int = 0
    tiles_processed: int = 0
    tiles_skipped: int = 0
    merge_seconds: float = 0.0
    #: counts the tiles as they are read (local runs with a drift reference)
    drift_monitor: Any = None
    #: the drift check's result for the summary (cluster runs: checked up front)
    drift: dict[str, Any] | None = None


@dataclass
class PredictResult:
    """What ``predict`` wrote. ``summary`` is the content of ``<stem>.summary.json``."""

    vector_path: Path
    summary_path: Path
    class_rasters: list[Path]
    probability_rasters: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)
    #: extra vector outputs by layer name (``points``, ``zones``); the same file as
    #: ``vector_path`` for a GeoPackage, siblings for single-layer formats
    layers: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- workers


_WORKER_PREDICTORS: dict[tuple[str, str, str], Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_predictor(bundle_bytes: bytes, digest: str, device: str, precision: str):
    """The predictor for a bundle sent as raw safetensors bytes, loaded once per worker process."""
    from geovision.models.bundle import load_bundle_bytes
    from geovision.models.predictor import make_predictor

    key = (digest, device, precision)
    with _WORKER_LOCK:
        if key not in _WORKER_PREDICTORS:
            config, state = load_bundle_bytes(bundle_bytes, f"bundle {digest}")
            _WORKER_PREDICTORS[key] = make_predictor(config, state, device=device, precision=precision)
        return _WORKER_PREDICTORS[key]


def _read_and_predict(
    info: RasterInfo, tile_size: int, bundle_bytes: bytes, digest: str, device: str, precision: str,
    tiles: Sequence[Tile],
) -> tuple[list[tuple[Tile, Any, np.ndarray | None]], list[Tile]]:
    """Cluster task: read a batch and run the model on the worker.

    Returns ``(tile, output, valid)`` per tile read (probabilities and validity for
    segmentation; boxes, and no validity, for detection) and the skipped tiles.
    """
    read, skipped = read_tiles(info, tiles, tile_size)
    if not read:
        return [], skipped
    predictor = _worker_predictor(bundle_bytes, digest, device, precision)
    outs = predictor.predict(np.stack([t.data for t in read]), np.stack([t.valid for t in read]))
    keep_valid = predictor.task == "segmentation"
    return [(t.tile, o, t.valid if keep_valid else None) for t, o in zip(read, outs)], skipped


def _read(info: RasterInfo, tile_size: int, keep: str, tiles: Sequence[Tile]) -> tuple[list[TileData], list[Tile]]:
    return read_tiles(info, tiles, tile_size, keep=keep)


# --------------------------------------------------------------------------- stitcher


class _SegmentationConsumer:
    """Blends tile probabilities into blocks, writes them and vectorises them."""

    def __init__(self, accumulator: BlockAccumulator, classes: StreamingCOG, probs: BlockWriter | None,
                 collector, sink: LayerSink) -> None:
        self.accumulator, self.classes, self.probs = accumulator, classes, probs
        self.collector, self.sink = collector, sink
        self._complete = False

    def add(self, tile: Tile, probabilities: np.ndarray, valid: np.ndarray) -> None:
        for block in self.accumulator.add(tile, probabilities, valid):
            self._write(block)

    def skip(self, tile: Tile) -> None:
        for block in self.accumulator.skip(tile):
            self._write(block)

    def finish(self) -> None:
        self.accumulator.check_complete()
        self.sink.append(self.collector.finish_batch())
        self._complete = True

    def close(self) -> None:
        """Write the class COG (its tiles are compressed already) if every block came; else drop them."""
        if self._complete:
            self.classes.close()
        else:
            self.classes.abort()
        if self.probs is not None:
            self.probs.close()

    def _write(self, block: FinishedBlock) -> None:
        self.classes.write(block.window, block.classes)
        if self.probs is not None:
            self.probs.write(block.window, probability_to_uint8(block.probabilities, block.valid))
        self.sink.append(self.collector.add_block_batch(block.window, block.classes, block.probabilities))


class _Stitcher(threading.Thread):
    """Feeds model outputs to the task's consumer behind the model, on its own thread."""

    def __init__(self, consumer) -> None:
        super().__init__(name="geovision-stitcher", daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=8)
        self.consumer = consumer
        self.error: BaseException | None = None
        #: set by the producer when it failed: skip the final merge, just drain
        self.aborted = False

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                break
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                for kind, tile, out, valid in item:
                    if kind == "add":
                        self.consumer.add(tile, out, valid)
                    else:
                        self.consumer.skip(tile)
            except BaseException as exc:  # handed to the main thread
                self.error = exc
        if self.error is None and not self.aborted:
            try:
                self.consumer.finish()
            except BaseException as exc:
                self.error = exc

    def put(self, items: list) -> None:
        if self.error is not None:
            raise self.error
        self.inbox.put(items)


# --------------------------------------------------------------------------- workflow


class _Clients:
    """The run's Dask client, made when first asked for.

    A local run's first forward passes do not wait for the in-process cluster to
    start: their tiles are read by the main thread (:func:`_reads`), and the cluster
    (20-30 ms to start) is made while those passes run. A run on an existing cluster
    asks for it at once.
    """

    def __init__(self, options: PredictOptions) -> None:
        self.options = options
        self._client = None

    def get(self):
        """The client: of the cluster at ``--scheduler``, else of a new in-process one."""
        if self._client is not None:
            return self._client
        from distributed import Client

        scheduler = self.options.scheduler
        if scheduler:
            try:
                self._client = Client(scheduler, timeout="20s")
            except OSError as exc:
                raise ConfigError(
                    f"cannot reach the Dask scheduler at {scheduler} ({exc}). Check the address "
                    "(e.g. tcp://10.0.0.5:8786) and that `dask scheduler` is running."
                ) from exc
        else:
            self._client = local_client(self.options.workers)
        return self._client

    def close(self) -> None:
        """Close the client, and the cluster if it is the run's own."""
        client, self._client = self._client, None
        if client is None:
            return
        client.close()
        if getattr(client, "cluster", None) is not None and not self.options.scheduler:
            client.cluster.close()


def _drift_check(info: RasterInfo, config) -> dict[str, Any] | None:
    """PSI per band against the bundle's training imagery (a warning when shifted); None without a reference.

    For cluster runs, whose pixels stay on the workers: a decimated read up front. Local
    runs count the tiles as they are read instead (:class:`~geovision.io.drift.DriftMonitor`).
    """
    if not config.drift_reference:
        return None
    from geovision.io.drift import check_drift

    return check_drift(info.path, info.bands, config.band_names, config.drift_reference)


def _resolution_check(info: RasterInfo, bundle_res: float | None) -> float:
    from geovision.io.geo import ground_pixel_size_m

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
            overwrite, progress).

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


def _check_task(opts: PredictOptions, config) -> None:
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


@contextlib.contextmanager
def _heap_frozen():
    """Keep the objects alive at the start (torch, pandas, the model...) out of the collector's sweeps.

    A run creates hundreds of thousands of short-lived Python objects (polygons,
    frames, arrays), which set off full collections; each one walked every object
    in the process while holding the GIL, stalling readers and passes alike (10-13%
    of stitching a noisy 4096 px output). :func:`gc.freeze` moves today's objects
    out of the collector's view; they are handed back at the end. Objects that
    become cyclic garbage during the run are freed then, at the next collection.
    Left alone when the collector is off or the caller froze the heap already.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_predict(opts: PredictOptions) -> PredictResult:
    with _heap_frozen():
        return _run_predict(opts)


def _run_predict(opts: PredictOptions) -> PredictResult:
    from geovision.models.bundle import load_bundle

    t0 = time.perf_counter()
    vector_driver(opts.out)  # unknown extension -> error before any work
    config, state = load_bundle(opts.model)
    _check_task(opts, config)
    detection = config.task == "detection"
    tile_size = opts.tile or config.tile_size
    if opts.overlap is None:
        opts = opts.model_copy(update={"overlap": min(64, tile_size // 4)})
    if opts.overlap >= tile_size // 2:
        raise ConfigError(f"overlap {opts.overlap} must be less than half the tile ({tile_size}); lower --overlap.")

    bands, bands_from = (opts.bands, "--bands") if opts.bands else (config.bands, "the bundle's band order")
    infos = [open_raster(path, bands, config.in_channels, bands_from=bands_from) for path in opts.rasters]
    resolutions = [_resolution_check(info, config.ground_resolution_m) for info in infos]
    remote = bool(opts.scheduler)
    # on a cluster the pixels stay on the workers: drift is checked up front, by a decimated read
    drift = [_drift_check(info, config) if remote else None for info in infos]
    multi = len(infos) > 1
    crs = infos[0].crs
    zones = None
    if opts.zones:
        from geovision.io.zones import Zones

        zones = Zones.read(opts.zones, crs, config.class_names[1:])
        zones.check_overlap(_union_bounds(infos))

    outputs = AtomicOutputs(opts.rasters + ([opts.zones] if opts.zones else []), opts.overwrite)
    with outputs:
        vector_tmp = outputs.add(opts.out)
        summary_path = sibling(opts.out, ".summary.json")
        summary_tmp = outputs.add(summary_path)
        # extra layers: inside the GeoPackage, or siblings for single-layer formats
        layer_paths: dict[str, Path] = {}
        layer_tmps: dict[str, Path] = {}
        for name, on in (("points", opts.points), ("zones", zones is not None), ("review", bool(opts.review_band))):
            if on:
                if vector_driver(opts.out) == "GPKG":
                    layer_paths[name], layer_tmps[name] = Path(opts.out), vector_tmp
                else:
                    layer_paths[name] = sibling(opts.out, f".{name}{Path(opts.out).suffix}")
                    layer_tmps[name] = outputs.add(layer_paths[name])
        runs: list[RasterRun] = []
        for info, checked in zip(infos, drift):
            stem = f".{Path(info.path).stem}" if multi else ""
            cpath = None if detection else sibling(opts.out, f"{stem}.classes.tif")
            ppath = sibling(opts.out, f"{stem}.probabilities.tif") if opts.probabilities else None
            runs.append(RasterRun(info, cpath, ppath, drift=checked))
            if config.drift_reference and not remote:
                from geovision.io.drift import DriftMonitor

                runs[-1].drift_monitor = DriftMonitor(config.drift_reference, config.band_names)
        # final COG path -> (temporary COG, scratch file: a GeoTIFF written block by block, or
        # the class COG's compressed tiles)
        cog_tmps: dict[Path, tuple[Path, Path]] = {}
        for r in runs:
            for final, suffix in ((r.classes_path, ".scratch.tiles"), (r.probabilities_path, ".scratch.tif")):
                if final is not None:
                    tmp = outputs.add(final)
                    cog_tmps[final] = (tmp, outputs.scratch(tmp, suffix))

        scratch_gpkg = outputs.scratch(vector_tmp, ".scratch.gpkg")
        sinks = _Sinks.open(scratch_gpkg, config, crs, opts.points, opts.review_band)

        grids = [TileGrid(i.height, i.width, tile_size, opts.overlap) for i in infos]
        total_tiles = sum(len(g) for g in grids)
        progress = _progress(total_tiles, opts.progress)

        cogs = _CogFinisher()
        clients = _Clients(opts)
        try:
            stack = contextlib.ExitStack()
            try:
                pool = None
                if not remote:
                    from geovision.models.inference import InferencePool, plan_inference
                    from geovision.models.predictor import shared_predictor

                    predictor = shared_predictor(opts.model, config, state, device=opts.device,
                                                 precision=opts.precision, source=opts.model)
                    plan = plan_inference(predictor.device, streams=opts.streams, batch_size=opts.batch_size)
                    pool = stack.enter_context(InferencePool(predictor, plan))
                    inference = {"device": str(predictor.device), "streams": plan.streams,
                                 "threads_per_stream": plan.threads, "batch_size": plan.batch_size}
                else:
                    raw = Path(opts.model).read_bytes()
                    digest = hashlib.sha256(raw).hexdigest()[:16]
                    [bundle_future] = clients.get().scatter([raw], broadcast=True)
                    inference = {"device": f"cluster workers ({opts.device})", "streams": None,
                                 "threads_per_stream": None, "batch_size": opts.batch_size or 4}
                for run, grid in zip(runs, grids):
                    if detection:
                        consumer = _detection_consumer(run, grid, config, opts, sinks, zones)
                    else:
                        consumer = _segmentation_consumer(run, grid, config, opts, cog_tmps, sinks.main)
                    _run_raster(run, grid, consumer, opts, clients, pool,
                                (bundle_future, digest) if remote else None, progress, tile_size)
                    run.merge_seconds = getattr(consumer, "merge_seconds", 0.0)
                    if run.drift_monitor is not None:
                        run.drift = run.drift_monitor.result(run.info.path)
                    cogs.submit(run, cog_tmps)  # beside the next raster's tiles, or the vector writer's end
            finally:
                stack.close()
                clients.close()
                progress.close()

            if sum(r.tiles_processed for r in runs) == 0:
                raise NodataOnlyError(
                    f"{', '.join(opts.rasters)}: every pixel is nodata, so there is nothing to predict. "
                    "Check the nodata value (gdalinfo) and the --bands chosen."
                )
            sinks.close(zones)
            cogs.wait()
        except BaseException:
            cogs.abort()
            sinks.abort()  # ends the vector writer thread; the scratch files go with the outputs
            raise
        targets = [(LAYER, vector_tmp, "Polygon")]
        if opts.points:
            targets.append(("points", layer_tmps["points"], "Point"))
        if zones is not None:
            targets.append(("zones", layer_tmps["zones"], "MultiPolygon"))
        if opts.review_band:
            targets.append(("review", layer_tmps["review"], "Polygon"))
        export(scratch_gpkg, targets)
        elapsed = time.perf_counter() - t0
        summary = _summary(opts, config, runs, resolutions, sinks.main, elapsed)
        summary["inference"] = inference
        for entry, run in zip(summary["inputs"], runs):
            entry["drift"] = run.drift
        if zones is not None:
            summary["zones"] = zones.summary()
            summary["outputs"]["zones"] = str(layer_paths["zones"])
        if opts.points:
            summary["outputs"]["points"] = str(layer_paths["points"])
        if opts.review_band:
            summary["outputs"]["review"] = str(layer_paths["review"])
            summary["review"] = {"band": list(opts.review_band), "count": sinks.main.review.count}
        summary_tmp.write_text(json.dumps(summary, indent=2))
        outputs.commit()
    if opts.progress:
        print(format_table(summary))
    return PredictResult(
        vector_path=Path(opts.out), summary_path=summary_path,
        class_rasters=[r.classes_path for r in runs if r.classes_path],
        probability_rasters=[r.probabilities_path for r in runs if r.probabilities_path],
        summary=summary, layers=layer_paths,
    )


def _union_bounds(infos: Sequence[RasterInfo]) -> tuple[float, float, float, float]:
    """The rasters' extent in the first raster's CRS."""
    from rasterio.warp import transform_bounds

    from geovision.io.geo import window_bounds
    from geovision.types import Window

    boxes = []
    for info in infos:
        bounds = window_bounds(info.affine, Window(0, 0, info.height, info.width))
        if not info.crs == infos[0].crs:
            bounds = transform_bounds(info.crs, infos[0].crs, *bounds)
        boxes.append(bounds)
    b = np.asarray(boxes)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


class _ReviewSink:
    """The main layer, with a ``review`` flag (1 inside the confidence band) and a copy of the flagged features.

    Confidence is the detection ``score`` or the segmentation ``mean_probability``.
    """

    def __init__(self, main: LayerSink, review: LayerSink, band: tuple[float, float]) -> None:
        self.main, self.review, self.band = main, review, band

    @property
    def tally(self):
        return self.main.tally

    @property
    def count(self) -> int:
        return self.main.count

    def append(self, features) -> None:
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


def flag_for_review(features, band: tuple[float, float]):
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
class _Sinks:
    """The run's vector layers, streamed into one scratch GeoPackage."""

    path: Path
    main: Any
    points: LayerSink | None

    @classmethod
    def open(cls, path: Path, config, crs, points: bool, review_band: tuple[float, float] | None = None) -> _Sinks:
        if config.task == "detection":
            from geovision.workflows.detect import empty_frame, point_frame

            empty = empty_frame(crs)
            point_sink = LayerSink(path, "points", crs, point_frame(empty), geometry_type="Point") if points else None
        else:
            from geovision.stitching.vectorize import PolygonCollector

            empty = PolygonCollector(
                class_names=config.class_names, skip_classes=(), raster_height=1, raster_width=1,
                transform=Affine.identity(), crs=crs,
            ).empty()
            point_sink = None
        if review_band is None:
            # the predictions stream into the file on their own unless points share it during the run
            return cls(path, LayerSink(path, LAYER, crs, empty, stream=point_sink is None), point_sink)
        empty = flag_for_review(empty, review_band)
        main = _ReviewSink(LayerSink(path, LAYER, crs, empty), LayerSink(path, "review", crs, empty), review_band)
        return cls(path, main, point_sink)

    def abort(self) -> None:
        for sink in (self.main, self.points):
            if sink is not None:
                sink.abort()

    def close(self, zones) -> None:
        self.main.close()
        if self.points is not None:
            self.points.close()
        if zones is not None:
            import pyogrio

            pyogrio.write_dataframe(zones.frame(), self.path, layer="zones", driver="GPKG",
                                    promote_to_multi=True)


def _segmentation_consumer(run: RasterRun, grid: TileGrid, config, opts: PredictOptions, cog_tmps: dict,
                           sink: LayerSink) -> _SegmentationConsumer:
    from geovision.stitching.vectorize import PolygonCollector

    info = run.info
    blocks = BlockGrid(info.height, info.width, BLOCK_SIZE)
    accumulator = BlockAccumulator(blocks, grid.tiles, len(config.classes), ramp=opts.overlap)
    class_names = config.class_names
    assert run.classes_path is not None
    classes_writer = StreamingCOG(
        *cog_tmps[run.classes_path], info, nodata=CLASS_NODATA, description="class",
        colormap={i: hex_to_rgba(c.color) for i, c in enumerate(config.classes)},
    )
    probs_writer = None
    if run.probabilities_path:
        probs_writer = BlockWriter(
            cog_tmps[run.probabilities_path][1], info, count=len(class_names), dtype="uint8", nodata=255,
            descriptions=[f"p({n})" for n in class_names], scale=1 / 254,
        )
    skip = () if config.background_class is None else (config.background_class,)
    collector = PolygonCollector(
        class_names=class_names, skip_classes=skip, raster_height=info.height, raster_width=info.width,
        transform=info.affine, crs=info.crs, nodata=CLASS_NODATA, simplify_m=opts.simplify,
        min_area_m2=opts.min_area, source=Path(info.path).name,
    )
    return _SegmentationConsumer(accumulator, classes_writer, probs_writer, collector, sink)


def _detection_consumer(run: RasterRun, grid: TileGrid, config, opts: PredictOptions, sinks: _Sinks, zones):
    from geovision.stitching.boxes import DetectionMerger
    from geovision.workflows.detect import DetectionConsumer

    merger = DetectionMerger(grid, match_iou=opts.match_iou, nms_iou=opts.nms_iou, fusion=opts.box_fusion)
    threshold = 0.5 if opts.score_threshold is None else opts.score_threshold
    return DetectionConsumer(merger, run.info.affine, run.info.crs, config.class_names, sinks.main, sinks.points,
                             zones, threshold, opts.min_area, Path(run.info.path).name)


def _run_raster(run: RasterRun, grid: TileGrid, consumer, opts: PredictOptions, clients: _Clients, pool,
                remote, progress, tile_size: int) -> None:
    """Stream one raster's tiles through reading, the model and the consumer."""
    info = run.info
    tiles = grid.tiles
    run.tiles_total = len(tiles)
    stitcher = _Stitcher(consumer)
    stitcher.start()
    keep = None  # local runs: the token under which the reading threads keep the raster open
    try:
        if remote:
            bundle_future, digest = remote
            prefetch = max(2, 2 * (opts.workers or 2))
            batches = batched(tiles, opts.batch_size or 4)
            results = stream(clients.get(), _read_and_predict, batches, info, tile_size, bundle_future, digest,
                             opts.device, opts.precision, prefetch=prefetch)
            for batch, (done, skipped) in results:
                items = [("add", t, o, v) for t, o, v in done] + [("skip", t, None, None) for t in skipped]
                _account(run, progress, len(done), len(skipped), batch)
                stitcher.put(_in_grid_order(items, batch))
        else:
            # one Dask task reads several passes' tiles (each task costs the in-process scheduler
            # about 3 ms of CPU); readers stay a few tasks ahead of the passes in flight
            plan = pool.plan
            prefetch = max(2, opts.workers or 2, plan.streams)
            keep = f"predict-{uuid.uuid4().hex}"
            reads = _reads(clients, _read_batches(tiles, plan.streams, plan.batch_size, READ_BATCH), plan.streams,
                           info, tile_size, keep, prefetch)
            jobs = (
                ((batch, read, skipped),
                 np.stack([t.data for t in read]) if read else None,
                 np.stack([t.valid for t in read]) if read else None)
                for whole, (all_read, all_skipped) in _watched(reads, run.drift_monitor)
                for batch, read, skipped in _passes(whole, all_read, all_skipped, pool.plan.batch_size)
            )
            for (batch, read, skipped), outs in pool.map(jobs):
                items: list = [("skip", t, None, None) for t in skipped]
                if read:
                    items += [("add", t.tile, o, t.valid) for t, o in zip(read, outs)]
                _account(run, progress, len(read), len(skipped), batch)
                stitcher.put(_in_grid_order(items, batch))
    except BaseException:
        stitcher.aborted = True
        raise
    finally:
        if keep is not None:
            release(keep)
        stitcher.inbox.put(None)
        stitcher.join()
        consumer.close()
    if stitcher.error is not None:
        raise stitcher.error


def _reads(clients: _Clients, batches: list[list[Tile]], head: int, info: RasterInfo, tile_size: int, keep: str,
           prefetch: int):
    """``(batch, (read, skipped))`` in order: the first ``head`` batches read here, the rest by Dask's readers.

    The first passes' tiles (one pass per stream) are read by the calling thread, which
    has the raster's georeferencing loaded already (:func:`open_raster`): a reader
    thread's first open of a georeferenced file takes 18-23 ms more than later ones, and
    the in-process cluster 20-30 ms to start. The first passes start 0.06-0.1 s
    earlier, and the cluster is started and read from while they run.
    """
    for batch in batches[:head]:
        yield batch, _read(info, tile_size, None, batch)
    if len(batches) > head:
        yield from stream(clients.get(), _read, batches[head:], info, tile_size, keep, prefetch=prefetch)


def _watched(reads, monitor):
    """Pass read batches through, counting their tiles for the drift check on the way."""
    for whole, (read, skipped) in reads:
        if monitor is not None:
            for t in read:
                monitor.add(t.data, t.valid)
        yield whole, (read, skipped)


#: tiles one Dask read task reads (at least; a bigger batch per forward pass reads that many)
READ_BATCH = 4


def _read_batches(tiles: Sequence[Tile], streams: int, batch_size: int, per_read: int) -> list[list[Tile]]:
    """The tiles in read tasks: one pass's worth for each stream first, then ``per_read`` (or a pass) each.

    The first passes start as soon as their own tiles are read, not a whole read task's.
    """
    head = min(len(tiles), streams * batch_size)
    return batched(tiles[:head], batch_size) + batched(tiles[head:], max(batch_size, per_read))


def _passes(batch: Sequence[Tile], read: list[TileData], skipped: list[Tile], size: int):
    """Split one read batch into forward passes of ``size`` tiles: ``(tiles, read, skipped)`` each.

    Each part is a run of consecutive tiles of ``batch`` (grid order), holding at most
    ``size`` read tiles and the skipped tiles among them.
    """
    by_index = {t.tile.index: t for t in read}
    skip = {t.index for t in skipped}
    part: list[Tile] = []
    part_read: list[TileData] = []
    for tile in batch:
        if tile.index not in skip and len(part_read) == size:
            yield part, part_read, [t for t in part if t.index in skip]
            part, part_read = [], []
        part.append(tile)
        if tile.index not in skip:
            part_read.append(by_index[tile.index])
    if part:
        yield part, part_read, [t for t in part if t.index in skip]


def _in_grid_order(items: list, batch: Sequence[Tile]) -> list:
    """Stitcher items in the batch's (grid) order: the detection merger wants tiles row-major."""
    rank = {tile.index: k for k, tile in enumerate(batch)}
    return sorted(items, key=lambda item: rank[item[1].index])


class _CogFinisher:
    """Runs :func:`_finish_cogs` for each raster on one thread of its own.

    GDAL's COG copy of a probability raster (overviews, deflate) then overlaps the next
    raster's inference, or, after the last, the vector writer's end (its spatial index).
    (The class COG needs no copy: ``io.cog.StreamingCOG`` compressed its tiles during the run.)
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geovision-cog")
        self._jobs: list = []

    def submit(self, run: RasterRun, cog_tmps: dict) -> None:
        self._jobs.append(self._pool.submit(_finish_cogs, run, cog_tmps))

    def wait(self) -> None:
        """Wait for every COG; raise the first error."""
        try:
            for job in self._jobs:
                job.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Drop the COGs not begun and wait for the one being written (its files go with the outputs)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _finish_cogs(run: RasterRun, cog_tmps: dict) -> None:
    """Copy the block-written probability GeoTIFF of a raster into a COG with overviews."""
    if run.probabilities_path is not None:
        cog, scratch = cog_tmps[run.probabilities_path]
        to_cog(scratch, cog, resampling="AVERAGE")


def _account(run: RasterRun, progress, processed: int, skipped: int, batch: Sequence[Tile]) -> None:
    run.tiles_processed += processed
    run.tiles_skipped += skipped
    progress.update(len(batch), sum(t.window.height * t.window.width for t in batch))


class _progress:
    """tqdm bar over tiles with megapixels per second (silent when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from geovision.progress import progress_bar

        self.bar = progress_bar(total=total, unit="tile", desc="predict", disable=not enabled, dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.pixels = 0

    def update(self, tiles: int, pixels: int) -> None:
        self.pixels += pixels
        self.bar.update(tiles)
        dt = time.perf_counter() - self.t0
        if dt > 0:
            self.bar.set_postfix_str(f"{self.pixels / 1e6 / dt:.2f} MP/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _summary(opts: PredictOptions, config, runs: list[RasterRun], resolutions: list[float],
             sink: LayerSink, elapsed: float) -> dict[str, Any]:
    names = [c.name for c in config.classes]
    skip = config.background_class
    per_class = {}
    for i, name in enumerate(names):
        if i == skip:
            continue
        count, area = sink.tally.get(name, (0, 0.0))
        per_class[name] = {"class_id": i, "count": int(count), "area_m2": round(area, 3),
                           "area_ha": round(area / 10_000, 6)}
    megapixels = sum(r.info.megapixels for r in runs)
    return {
        "geovision_version": _version(),
        "model": {"path": opts.model, "arch": config.arch, "encoder": config.encoder,
                  "classes": names},
        "inputs": [
            {"path": r.info.path, "width": r.info.width, "height": r.info.height,
             "bands": list(r.info.bands), "crs": r.info.crs.to_string(),
             "pixel_size_m": round(res, 6), "tiles": r.tiles_total,
             "tiles_processed": r.tiles_processed, "tiles_skipped": r.tiles_skipped,
             "classes_raster": str(r.classes_path) if r.classes_path else None,
             "probabilities_raster": str(r.probabilities_path) if r.probabilities_path else None}
            for r, res in zip(runs, resolutions)
        ],
        "outputs": {"vector": opts.out, "layer": LAYER},
        "options": {"tile": opts.tile, "overlap": opts.overlap, "batch_size": opts.batch_size,
                    "streams": opts.streams, "device": opts.device, "precision": opts.precision, "min_area_m2": opts.min_area,
                    "simplify_m": opts.simplify, "scheduler": opts.scheduler},
        "classes": per_class,
        "features": sink.count,
        "tiles_processed": sum(r.tiles_processed for r in runs),
        "tiles_skipped": sum(r.tiles_skipped for r in runs),
        "elapsed_s": round(elapsed, 3),
        **({"merge_seconds": round(sum(r.merge_seconds for r in runs), 3)} if config.task == "detection" else {}),
        "megapixels": round(megapixels, 3),
        "megapixels_per_second": round(megapixels / elapsed, 3) if elapsed > 0 else None,
    }


def _version() -> str:
    from geovision import __version__

    return __version__


def format_table(summary: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    rows = [("class", "count", "area m²", "area ha")]
    for name, c in summary["classes"].items():
        rows.append((name, str(c["count"]), f"{c['area_m2']:.1f}", f"{c['area_ha']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"{summary['tiles_processed']} tiles processed, {summary['tiles_skipped']} skipped (nodata), "
        f"{summary['elapsed_s']:.1f} s, {summary['megapixels_per_second']} MP/s"
    )
    lines.append(f"wrote {summary['outputs']['vector']}")
    return "\n".join(lines)
