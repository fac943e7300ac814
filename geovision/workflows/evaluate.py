"""``geovision evaluate``: predictions against ground truth, in map space.

Predictions and truth are vector layers (any format and CRS; the truth is moved
to the predictions' CRS) or class rasters (``.tif``/``.vrt``). An AOI restricts
scoring to where the truth is complete: objects count when their centre lies
inside it, areas and pixels only inside it.

* **Objects** (vector inputs): one-to-one matching at ``--iou`` (class-aware,
  greedy by score, the SpaceNet rule), TP/FP/FN, precision, recall, F1, count
  error, AP@0.5 and COCO mAP@[.5:.95] per class, precision/recall per confidence
  band.
* **Areas / pixels**: per-class IoU, F1, precision, recall and the confusion
  matrix, with area error in m². Vectors are compared exactly as geometry (the
  confusion matrix is in m²), rasters pixel by pixel (a vector side is burned on
  the raster's grid).

Outputs in ``--out``: ``metrics.json``, ``confusion.png``, ``pr_curve.png`` (with
scores), and ``errors.gpkg`` with layers ``predictions`` and ``truth`` whose
features carry ``status`` (TP, FP or FN) and ``iou``, to open in QGIS.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator

from geovision.errors import OutputExistsError, VectorContentError, VectorReadError

if TYPE_CHECKING:
    import pyproj
    from affine import Affine

    from geovision.evaluation.metrics import Matching
    from geovision.tiling.grid import BlockGrid

__all__ = ["EvaluateOptions", "EvaluateResult", "evaluate", "run_evaluate"]

_RASTER_EXT = (".tif", ".tiff", ".vrt", ".img", ".jp2")


class EvaluateOptions(BaseModel):
    """Everything ``evaluate`` needs; the CLI only fills this in."""

    model_config = ConfigDict(extra="forbid")

    pred: str
    truth: str
    out: str
    aoi: str | None = None
    iou: float = Field(default=0.5, gt=0, le=1)
    raster: str | None = Field(default=None, description="grid on which vectors are compared pixel by pixel")
    pred_class_field: str = "class_name"
    truth_class_field: str | None = None
    score_field: str | None = None
    classes: list[str] | None = Field(default=None, description="class names by raster class id (0 = background)")
    overwrite: bool = False

    @field_validator("pred", "truth", "out", "aoi", "raster", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v


@dataclass
class EvaluateResult:
    metrics: dict[str, Any]
    out: Path


def evaluate(pred: str | os.PathLike[str], truth: str | os.PathLike[str], out: str | os.PathLike[str],
             **options: Any) -> EvaluateResult:
    """Score predictions against ground truth; write metrics, plots and an error layer to ``out``.

    Args:
        pred: predictions: a vector layer (e.g. ``geovision predict``'s) or a class raster.
        truth: ground truth: a vector layer or a class raster.
        out: output folder.
        **options: any field of :class:`EvaluateOptions` (aoi, iou, raster,
            pred_class_field, truth_class_field, score_field, overwrite).

    Returns:
        The metrics (also in ``out/metrics.json``) and the folder.
    """
    # validated as the constructor would (the path fields take os.PathLike too, see _path_to_str)
    return run_evaluate(EvaluateOptions.model_validate({"pred": pred, "truth": truth, "out": out, **options}))


def _is_raster(path: str) -> bool:
    return Path(path).suffix.lower() in _RASTER_EXT


def _read_vector(path: str, what: str) -> gpd.GeoDataFrame:
    try:
        frame = pyogrio.read_dataframe(path)
    except Exception as exc:  # pyogrio's DataSourceError, OSError, ...
        raise VectorReadError(f"{path}: cannot read the {what} ({exc}); "
                              "give a vector file or a class raster.") from None
    if not isinstance(frame, gpd.GeoDataFrame):
        raise VectorContentError(f"{path}: the {what} have no geometry.")
    frame = frame[~frame.geometry.isna() & ~frame.geometry.is_empty]
    if frame.crs is None and len(frame):
        raise VectorContentError(f"{path}: the {what} have no CRS; set one (ogr2ogr -a_srs EPSG:...).")
    polygonal = frame.geom_type.isin(["Polygon", "MultiPolygon"])
    if len(frame) and not polygonal.all():
        raise VectorContentError(
            f"{path}: the {what} must be polygons (or boxes); found {sorted(set(frame.geom_type[~polygonal]))}."
        )
    geoms = np.asarray(frame.geometry.values, dtype=object)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        frame = frame.copy()
        frame.loc[bad, frame.geometry.name] = shapely.make_valid(geoms[bad])
    return frame.reset_index(drop=True)


def _classes(frame: gpd.GeoDataFrame, field: str | None, default: str) -> np.ndarray:
    if field and field in frame.columns:
        return frame[field].astype(str).to_numpy(dtype=object)
    return np.full(len(frame), default, dtype=object)


def run_evaluate(opts: EvaluateOptions) -> EvaluateResult:
    from geovision.evaluation import metrics as m

    out = Path(opts.out)
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise OutputExistsError(f"{out}: exists and is not empty. Pass --overwrite, or choose another --out.")
    if _is_raster(opts.pred) or _is_raster(opts.truth) or opts.raster:
        return _evaluate_pixels(opts, out)
    pred = _read_vector(opts.pred, "predictions")
    truth = _read_vector(opts.truth, "truth")
    crs = pred.crs or truth.crs
    if crs is None:
        raise VectorContentError(f"{opts.pred} and {opts.truth} are both empty; nothing to score.")
    if truth.crs is not None and not truth.crs.equals(crs):
        truth = truth.to_crs(crs)
    if pred.crs is None:
        pred = pred.set_crs(crs)

    aoi = None
    if opts.aoi:
        zones = _read_vector(opts.aoi, "area of interest")
        aoi = shapely.union_all(np.asarray(zones.to_crs(crs).geometry.values, dtype=object))

        def inside(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
            if frame.empty:
                return frame
            centres = shapely.point_on_surface(np.asarray(frame.geometry.values, dtype=object))
            return frame[shapely.within(centres, aoi)].reset_index(drop=True)

        pred, truth = inside(pred), inside(truth)

    pred_classes = _classes(pred, opts.pred_class_field, "object")
    present = sorted(set(pred_classes.tolist()))
    truth_default = present[0] if len(present) == 1 else "object"
    truth_classes = _classes(truth, opts.truth_class_field or opts.pred_class_field, truth_default)
    names = sorted(set(pred_classes.tolist()) | set(truth_classes.tolist()))
    score_field = opts.score_field or next((f for f in ("score", "mean_probability") if f in pred.columns), None)
    scores = pred[score_field].to_numpy(dtype=np.float64) if score_field and score_field in pred.columns else None

    pred_geoms = np.asarray(pred.geometry.values, dtype=object)
    truth_geoms = np.asarray(truth.geometry.values, dtype=object)
    index = {name: i for i, name in enumerate(names)}
    pred_ids = np.array([index[c] for c in pred_classes], dtype=np.int64)
    truth_ids = np.array([index[c] for c in truth_classes], dtype=np.int64)
    # the metrics take the geometries as any sequence; numpy object arrays serve as one
    pred_seq = cast("Sequence[shapely.Geometry]", pred_geoms)
    truth_seq = cast("Sequence[shapely.Geometry]", truth_geoms)
    matching = m.match_objects(pred_seq, truth_seq, iou_threshold=opts.iou, pred_scores=scores,
                               pred_classes=pred_ids, truth_classes=truth_ids)
    objects = m.object_metrics(matching, pred_classes=pred_ids, truth_classes=truth_ids, class_names=names)
    objects = {"overall": {k: v for k, v in objects.items() if k != "per_class"}, "per_class": objects["per_class"]}
    result: dict[str, Any] = {
        "inputs": {"pred": opts.pred, "truth": opts.truth, "aoi": opts.aoi, "crs": crs.to_string(),
                   "iou_threshold": opts.iou, "score_field": score_field, "classes": names},
        "objects": objects,
    }
    if scores is not None:
        result["average_precision"] = m.average_precision(pred_seq, truth_seq, scores, pred_classes=pred_ids,
                                                          truth_classes=truth_ids, class_names=names)
        result["confidence_bands"] = m.confidence_bands(matching, scores, n_truth=len(truth_geoms))
    result["areas"] = _area_metrics(pred_geoms, pred_classes, truth_geoms, truth_classes, names, aoi, crs)

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    _plot_confusion(result["areas"], out / "confusion.png")
    if scores is not None:
        _plot_pr(result["average_precision"], out / "pr_curve.png")
    _write_errors(out / "errors.gpkg", pred, truth, matching, crs)
    return EvaluateResult(result, out)


def _evaluate_pixels(opts: EvaluateOptions, out: Path) -> EvaluateResult:
    """Class rasters (or vectors burned on a raster's grid) compared pixel by pixel, block by block."""
    import rasterio

    from geovision.evaluation import metrics as m
    from geovision.io.geo import ground_pixel_size_m
    from geovision.tiling.grid import BlockGrid

    grid_path = opts.pred if _is_raster(opts.pred) else opts.truth if _is_raster(opts.truth) else opts.raster
    try:
        with rasterio.open(grid_path) as ds:
            height, width, transform, crs = ds.height, ds.width, ds.transform, ds.crs
    except rasterio.errors.RasterioError as exc:
        from geovision.errors import RasterReadError

        raise RasterReadError(f"{grid_path}: cannot open as a class raster ({exc}).") from exc
    vectors = {}
    for side in ("pred", "truth"):
        path = getattr(opts, side)
        if not _is_raster(path):
            frame = _read_vector(path, "predictions" if side == "pred" else "truth")
            vectors[side] = frame.to_crs(crs) if frame.crs is not None and len(frame) else frame
    names = list(opts.classes) if opts.classes else None
    if names is None:
        found = set()
        for side, frame in vectors.items():
            field = opts.pred_class_field if side == "pred" else (opts.truth_class_field or opts.pred_class_field)
            found |= set(_classes(frame, field, "object").tolist())
        names = ["background", *sorted(found)] if found else None
    aoi = None
    if opts.aoi:
        zones = _read_vector(opts.aoi, "area of interest")
        aoi = shapely.union_all(np.asarray(zones.to_crs(crs).geometry.values, dtype=object))
    blocks = BlockGrid(height, width, 1024)
    with contextlib.ExitStack() as stack:
        opened = {side: stack.enter_context(rasterio.open(getattr(opts, side)))
                  for side in ("pred", "truth") if _is_raster(getattr(opts, side))}
        confusion = _pixel_confusion(opts, opened, vectors, names, aoi, blocks, transform)
    names = names or [f"class_{i}" for i in range(confusion.shape[0])]
    if len(names) < confusion.shape[0]:
        names = names + [f"class_{i}" for i in range(len(names), confusion.shape[0])]
    x_m, y_m = ground_pixel_size_m(transform, crs, height, width)
    result: dict[str, Any] = {
        "inputs": {"pred": opts.pred, "truth": opts.truth, "aoi": opts.aoi, "grid": grid_path,
                   "crs": crs.to_string(), "classes": names[: confusion.shape[0]]},
        "objects": None,
        "areas": m.pixel_metrics(confusion, names[: confusion.shape[0]], pixel_area_m2=x_m * y_m, background=0),
    }
    result["areas"]["units"] = "pixels of the grid raster; areas in m² (pixel count x ground pixel area)"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    _plot_confusion(result["areas"], out / "confusion.png")
    return EvaluateResult(result, out)


def _pixel_confusion(opts: EvaluateOptions, opened: dict, vectors: dict, names: list[str] | None,
                     aoi: shapely.Geometry | None, blocks: BlockGrid, transform: Affine) -> np.ndarray:
    """Confusion counts block by block: raster sides read from ``opened``, vector sides burned on the grid."""
    import rasterio.features
    from rasterio.windows import Window as RioWindow
    from rasterio.windows import transform as window_transform

    from geovision.evaluation import metrics as m

    index = {n: i for i, n in enumerate(names or [])}
    burn = {}
    for side, frame in vectors.items():  # (geometry, class id) pairs, built once for every block
        field = opts.pred_class_field if side == "pred" else (opts.truth_class_field or opts.pred_class_field)
        classes = _classes(frame, field, names[1] if names and len(names) == 2 else "object")
        burn[side] = [(g, index[k]) for g, k in zip(frame.geometry.values, classes) if k in index]
    confusion = None
    for r in range(blocks.shape[0]):
        for c in range(blocks.shape[1]):
            w = blocks.window((r, c))
            rw = RioWindow(w.col_off, w.row_off, w.width, w.height)
            wt = window_transform(rw, transform)
            layers = {}
            for side in ("pred", "truth"):
                path = getattr(opts, side)
                if _is_raster(path):
                    ds = opened[side]
                    band = ds.read(1, window=rw).astype(np.int64)
                    band[ds.read_masks(1, window=rw) == 0] = 255
                    layers[side] = band
                else:
                    shapes = burn[side]
                    layers[side] = (rasterio.features.rasterize(shapes, out_shape=(w.height, w.width), transform=wt,
                                                                fill=0, dtype="int32").astype(np.int64)
                                    if shapes else np.zeros((w.height, w.width), np.int64))
            n = len(names) if names else int(max(layers["pred"][layers["pred"] != 255].max(initial=0),
                                                 layers["truth"][layers["truth"] != 255].max(initial=0))) + 1
            valid = None
            if aoi is not None:
                valid = rasterio.features.geometry_mask([aoi], out_shape=(w.height, w.width), transform=wt,
                                                        invert=True)
            block = m.confusion_matrix(layers["truth"], layers["pred"], n, ignore=255, valid=valid)
            if confusion is None:
                confusion = block
            elif block.shape != confusion.shape:
                size = max(block.shape[0], confusion.shape[0])
                grown = np.zeros((size, size), np.int64)
                grown[: confusion.shape[0], : confusion.shape[0]] += confusion
                grown[: block.shape[0], : block.shape[0]] += block
                confusion = grown
            else:
                confusion += block
    assert confusion is not None  # the grid has at least one block
    return confusion


def _area_metrics(pred_geoms: np.ndarray, pred_classes: np.ndarray, truth_geoms: np.ndarray,
                  truth_classes: np.ndarray, names: Sequence[str], aoi: shapely.Geometry | None,
                  crs: pyproj.CRS) -> dict[str, Any]:
    """Exact area confusion (m²) between the classes' unions, with background = the scored extent."""
    from geovision.evaluation import metrics as m
    from geovision.io.geo import measure

    def union(geoms: np.ndarray, classes: np.ndarray, name: str) -> shapely.Geometry:
        chosen = geoms[classes == name] if len(geoms) else geoms
        return shapely.union_all(chosen) if len(chosen) else shapely.Polygon()

    extent = aoi
    if extent is None:
        everything = np.concatenate([pred_geoms, truth_geoms])
        extent = shapely.box(*shapely.total_bounds(everything)) if len(everything) else shapely.Polygon()
    labels = ["background", *names]
    pred_u = [union(pred_geoms, pred_classes, n) for n in names]
    truth_u = [union(truth_geoms, truth_classes, n) for n in names]
    pred_bg = shapely.difference(extent, shapely.union_all(pred_u)) if pred_u else extent
    truth_bg = shapely.difference(extent, shapely.union_all(truth_u)) if truth_u else extent
    pred_all, truth_all = [pred_bg, *pred_u], [truth_bg, *truth_u]
    n = len(labels)
    confusion = np.zeros((n, n))
    for i in range(n):
        inter = shapely.intersection(truth_all[i], np.asarray(pred_all, dtype=object))
        confusion[i] = measure(inter, crs)[0]
    # pixel_metrics counts whole units: count square centimetres, then areas come back in m²
    counts = np.round(confusion * 1e4).astype(np.int64)
    metrics = m.pixel_metrics(counts, labels, pixel_area_m2=1e-4, background=0)
    metrics["confusion_m2"] = np.round(confusion, 4).tolist()
    del metrics["confusion"]
    metrics["units"] = ("exact geometry, areas in m² (confusion_m2); background = the AOI, or the bounding box "
                        "of all features")
    return metrics


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _plot_confusion(areas: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(areas["confusion_normalized"], dtype=float)
    labels = list(areas["per_class"])
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                    color="white" if matrix[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of the true area")
    ax.set_title("confusion (area, row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_pr(ap: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, curve in ap.get("pr_curve", {}).items():
        ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP50 {ap['per_class'][name]['ap50']:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.set_title("precision-recall at IoU 0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_errors(path: Path, pred: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, matching: Matching,
                  crs: pyproj.CRS) -> None:
    truth_iou = np.zeros(len(truth))
    if len(matching.pairs):
        truth_iou[matching.pairs[:, 1]] = matching.ious
    for name, frame, status, iou in (("predictions", pred, matching.pred_status, matching.pred_iou),
                                     ("truth", truth, matching.truth_status, truth_iou)):
        keep = [c for c in frame.columns if c != frame.geometry.name]
        layer = gpd.GeoDataFrame(frame[keep].copy(), geometry=np.asarray(frame.geometry.values, dtype=object), crs=crs)
        layer.insert(0, "status", np.asarray(status, dtype=object))
        layer.insert(1, "iou", np.asarray(iou, dtype=np.float64))
        pyogrio.write_dataframe(layer, path, layer=name, driver="GPKG", promote_to_multi=True)
