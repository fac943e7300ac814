"""Training labels: the user's polygons (drawn in QGIS), checked, and burned window by window.

:func:`read_labels` reads a vector file of label polygons with a class field (any
format GDAL reads, any CRS), checks it with messages that name the file, the
value and the fix, repairs invalid polygons, moves everything to the rasters'
CRS and numbers the classes (``0`` is always ``"background"``). An optional area
of interest (AOI) says where the labelling is complete.

Then, for any window of a training raster:

* :func:`rasterize_window` gives the ``(rows, cols)`` uint8 class mask
  (segmentation): the class id where a label covers the pixel centre,
  ``0`` elsewhere, and :data:`IGNORE` outside the AOI when there is one.
* :func:`boxes_in_window` gives the labels' boxes in window pixels (detection).

Labels are looked up through an STRtree built once per :class:`LabelSet`, so a
window costs only the labels it touches.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import rasterio.features
import shapely
from affine import Affine

from geovision.errors import ConfigError, VectorContentError, VectorReadError, warn
from geovision.io.geo import as_pyproj_crs, measure
from geovision.training.split import as_extents
from geovision.types import Window

__all__ = ["IGNORE", "LabelSet", "Task", "boxes_in_window", "rasterize_window", "read_labels"]

#: mask value meaning "not labelled, not scored" (outside the AOI, nodata)
IGNORE = 255

#: the largest class count a uint8 mask can hold next to IGNORE (ids 0..254)
MAX_CLASSES = IGNORE

Task = Literal["segmentation", "detection"]

_POLYGONAL = ("Polygon", "MultiPolygon")
_POLYGON_TYPE_IDS = (3, 6)  # shapely.get_type_id of Polygon, MultiPolygon
_COLLECTION_TYPE_ID = 7  # GeometryCollection

_SINGULAR = {"labels": "label", "area of interest": "area of interest"}

_HINTS: dict[str, str] = {
    "segmentation": "segmentation labels must be polygons covering each object or area (points and lines "
    "have no area to burn into a mask)",
    "detection": "detection labels must be boxes or polygons drawn around each object (QGIS: Add Rectangle); "
    "points and lines have no extent to make a box from",
    "aoi": "the area of interest must be polygons outlining where the labelling is complete",
}


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Label polygons in the rasters' CRS, with their class ids and the optional AOI.

    Build it with :func:`read_labels`. Equality is identity (the frame is a DataFrame).

    Attributes:
        path: the label file.
        class_names: class names by id; ``class_names[0] == "background"``.
        frame: ``class_id`` (int64, ``1 <= id < num_classes``) and ``geometry`` (valid
            Polygon/MultiPolygon) in the target CRS, one row per label.
        aoi: the union of the AOI polygons in the target CRS, or ``None`` (then the
            rasters count as completely labelled).
        task: what the labels are for: ``"segmentation"`` or ``"detection"``.
    """

    path: str
    class_names: tuple[str, ...]
    frame: gpd.GeoDataFrame
    aoi: shapely.Geometry | None
    task: Task = "segmentation"

    def __post_init__(self) -> None:
        if not self.class_names or self.class_names[0] != "background":
            raise ValueError(f"LabelSet.class_names must start with 'background', got {self.class_names!r}")
        if len(self.class_names) > MAX_CLASSES:
            raise ValueError(f"LabelSet holds {len(self.class_names)} classes; at most {MAX_CLASSES} fit a uint8 mask")
        if "class_id" not in self.frame or self.frame.crs is None:
            raise ValueError("LabelSet.frame needs a 'class_id' column and a CRS")
        ids = self.frame["class_id"].to_numpy()
        if len(ids) and (ids.min() < 1 or ids.max() >= len(self.class_names)):
            raise ValueError(
                f"LabelSet class ids must lie in [1, {len(self.class_names) - 1}], got {ids.min()}..{ids.max()}"
            )
        if self.aoi is not None:
            shapely.prepare(self.aoi)

    # ---- convenience -------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def crs(self) -> pyproj.CRS:
        """The CRS of the labels (the target CRS given to :func:`read_labels`)."""
        return self.frame.crs

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of all labels in :attr:`crs`."""
        minx, miny, maxx, maxy = self.frame.total_bounds
        return float(minx), float(miny), float(maxx), float(maxy)

    @property
    def counts(self) -> dict[str, int]:
        """Number of labels per object class (background excluded), in class id order."""
        n = np.bincount(self._class_ids, minlength=self.num_classes)
        return {name: int(n[i]) for i, name in enumerate(self.class_names) if i > 0}

    def area_m2(self) -> dict[str, float]:
        """Summed ground area (m²) of the labels per object class (overlaps count twice)."""
        area, _ = measure(self._geoms, self.crs)
        total = np.bincount(self._class_ids, weights=area, minlength=self.num_classes)
        return {name: float(total[i]) for i, name in enumerate(self.class_names) if i > 0}

    def query(self, footprint: shapely.Geometry) -> np.ndarray:
        """Row positions of the labels intersecting ``footprint`` (CRS coordinates), sorted ``(n,)`` int64."""
        return np.sort(self._tree.query(footprint, predicate="intersects")).astype(np.int64)

    # ---- cached lookup structures (built on first use, dropped when pickled) -----

    @cached_property
    def _geoms(self) -> np.ndarray:
        return np.asarray(self.frame.geometry.values, dtype=object)

    @cached_property
    def _class_ids(self) -> np.ndarray:
        return self.frame["class_id"].to_numpy(dtype=np.int64)

    @cached_property
    def _areas(self) -> np.ndarray:
        return shapely.area(self._geoms)

    @cached_property
    def _tree(self) -> shapely.STRtree:
        return shapely.STRtree(self._geoms)

    def __getstate__(self) -> dict[str, Any]:
        return {name: self.__dict__[name] for name in ("path", "class_names", "frame", "aoi", "task")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        if self.aoi is not None:
            shapely.prepare(self.aoi)


# ---- reading --------------------------------------------------------------------


def read_labels(
    path: str | os.PathLike[str],
    *,
    class_field: str | None,
    crs: Any,
    task: Task = "segmentation",
    classes: Sequence[str] | None = None,
    aoi: str | os.PathLike[str] | None = None,
    extents: Sequence[tuple[float, float, float, float]] = (),
) -> LabelSet:
    """Read, check, repair and reproject training labels.

    Args:
        path: a vector file (GeoPackage, GeoJSON, Shapefile, ...); its first layer is used.
        class_field: the attribute holding each label's class (text or numbers), or
            ``None`` when every label is of one class: then ``classes`` names it (one
            name), or it is called ``"object"``.
        crs: the training rasters' CRS; labels (and the AOI) are moved to it.
        task: ``"segmentation"`` (polygons) or ``"detection"`` (boxes or polygons, whose
            bounds become the boxes).
        classes: the class names in id order (ids from 1); default: the sorted distinct
            values of ``class_field`` (numerically when they are all integers).
        aoi: an optional vector file of polygons outlining where the labelling is
            complete: inside it unlabelled pixels are background, outside they are
            ignored. Without it the whole of every raster counts as labelled.
        extents: the training rasters' ``(minx, miny, maxx, maxy)`` in ``crs``; labels
            sharing no area with any are dropped with a warning.

    Returns:
        The :class:`LabelSet`. Class values are compared as trimmed text (``1.0`` reads as
        ``"1"``); empty or null values are dropped with a warning.

    Raises:
        VectorReadError: a file cannot be read.
        VectorContentError: no features, no polygons, no CRS, a label of class
            "background", or no label (or no AOI) overlapping the rasters.
        ConfigError: ``class_field`` is not a field, a value is not in ``classes``, or an
            option is invalid.
    """
    path = str(path)
    if task not in ("segmentation", "detection"):
        raise ConfigError(f"Unknown task {task!r}; expected 'segmentation' or 'detection'.")
    pcrs = as_pyproj_crs(crs)
    boxes = _extent_boxes(extents)
    frame = _read_layer(path, "labels")
    if class_field is None:
        if classes is not None and len(classes) != 1:
            raise ConfigError(
                f"{path}: without a class field every label is of one class, but {len(classes)} classes were "
                f"given ({list(classes)}); give one name (e.g. --classes building) or the --class-field."
            )
        class_field = "__geovision_class__"
        frame = frame.copy()
        frame[class_field] = classes[0] if classes else "object"
    if class_field not in frame.columns or class_field == frame.geometry.name:
        fields = [c for c in frame.columns if c != frame.geometry.name]
        raise ConfigError(
            f"{path}: has no field {class_field!r}; its fields are: {', '.join(map(repr, fields)) or '(none)'}. "
            "Give the field that holds each label's class (--class-field)."
        )
    frame = _check_geometry(frame, path, "labels", _HINTS[task], pcrs)
    names = frame[class_field].map(_as_name)
    null = names.isna().to_numpy()
    if null.all():
        raise VectorContentError(
            f"{path}: every label has an empty {class_field!r}; fill in the class of each label in that field."
        )
    if null.any():
        warn(f"{path}: {int(null.sum())} label(s) have no value in {class_field!r} and were ignored; "
             "fill in their class to use them.")
        frame, names = frame[~null], names[~null]
    background = (names.str.lower() == "background").to_numpy()
    if background.any():
        raise VectorContentError(
            f"{path}: {int(background.sum())} label(s) have the class 'background' in {class_field!r}. Background "
            "is implied (class 0: every unlabelled pixel); delete those features, or give them as the area of "
            "interest (--aoi) to say where unlabelled means background."
        )
    class_names = _class_names(names, classes, path, class_field)
    ids = names.map({name: i for i, name in enumerate(class_names)}).to_numpy(dtype=np.int64)
    frame = gpd.GeoDataFrame({"class_id": ids}, geometry=np.asarray(frame.geometry.values, dtype=object), crs=pcrs)
    frame = _repair(frame, path, "label")
    if boxes is not None:
        frame = _keep_overlapping(frame, path, boxes, extents)
    aoi_geom = None
    if aoi is not None:
        aoi_geom = _read_aoi(str(aoi), pcrs, boxes, extents)
    return LabelSet(path, tuple(class_names), frame.reset_index(drop=True), aoi_geom, task)


def _read_layer(path: str, what: str) -> gpd.GeoDataFrame:
    """The first layer of ``path`` as a GeoDataFrame with at least one geometry."""
    try:
        layers = pyogrio.list_layers(path)
        frame = pyogrio.read_dataframe(path, layer=0)
    except Exception as exc:  # pyogrio's DataSourceError, OSError, ...
        raise VectorReadError(
            f"{path}: cannot read the {what} ({exc}). Give a vector file GDAL can read "
            "(GeoPackage, GeoJSON, Shapefile, FlatGeobuf)."
        ) from None
    if len(layers) > 1:
        warn(f"{path}: holds {len(layers)} layers; the {what} are read from the first, {layers[0][0]!r}. "
             "Save them alone in a file to silence this.")
    if not isinstance(frame, gpd.GeoDataFrame) or len(frame) == 0 or frame.geometry.isna().all():
        raise VectorContentError(
            f"{path}: holds no features with geometry (layer {layers[0][0]!r}); draw the {what} as polygons "
            "and save them."
        )
    return frame


def _check_geometry(frame: gpd.GeoDataFrame, path: str, what: str, hint: str, crs: pyproj.CRS) -> gpd.GeoDataFrame:
    """Require a CRS, drop empty and non-polygon features (with warnings), reproject to ``crs``."""
    if frame.crs is None:
        example = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else "EPSG:4326"
        raise VectorContentError(
            f"{path}: no CRS is set, so the {what} cannot be placed on the rasters. Set the CRS they were "
            f"drawn in, e.g. `ogr2ogr -a_srs {example} fixed.gpkg {os.path.basename(path)}`."
        )
    geoms = frame.geometry
    missing = (geoms.isna() | geoms.is_empty).to_numpy()
    if missing.all():
        raise VectorContentError(f"{path}: every {_SINGULAR[what]} feature has an empty geometry; {hint}.")
    if missing.any():
        warn(f"{path}: {int(missing.sum())} {_SINGULAR[what]} feature(s) have no geometry and were ignored.")
        frame = frame[~missing]
    types = frame.geom_type
    polygonal = types.isin(_POLYGONAL).to_numpy()
    if not polygonal.any():
        raise VectorContentError(f"{path}: has no polygons (found {_type_counts(types)}); {hint}.")
    if not polygonal.all():
        warn(f"{path}: {int((~polygonal).sum())} {_SINGULAR[what]} feature(s) are not polygons "
             f"({_type_counts(types[~polygonal])}) and were ignored; {hint}.")
        frame = frame[polygonal]
    if not frame.crs.equals(crs):
        frame = frame.to_crs(crs)
        finite = np.isfinite(frame.geometry.bounds.to_numpy()).all(axis=1)
        if not finite.any():
            raise VectorContentError(
                f"{path}: the {what} cannot be moved to the rasters' CRS ({crs.name}); check the CRS of the file."
            )
        if not finite.all():
            warn(f"{path}: {int((~finite).sum())} {_SINGULAR[what]} feature(s) cannot be moved to the rasters' CRS "
                 f"({crs.name}) and were ignored; check the CRS of the file.")
            frame = frame[finite]
    return frame


def _type_counts(types: pd.Series) -> str:
    return ", ".join(f"{n} {t}" for t, n in types.value_counts().items())


def _polygonal_part(geoms: np.ndarray) -> np.ndarray:
    """The polygonal part of each geometry (an empty Polygon when there is none)."""
    out = np.empty(len(geoms), dtype=object)
    type_ids = shapely.get_type_id(geoms)
    for i, (geom, type_id) in enumerate(zip(geoms, type_ids)):
        if type_id in _POLYGON_TYPE_IDS:
            out[i] = geom
        elif type_id == _COLLECTION_TYPE_ID:
            parts = shapely.get_parts(geom)
            parts = parts[np.isin(shapely.get_type_id(parts), _POLYGON_TYPE_IDS)]
            out[i] = shapely.union_all(parts) if len(parts) else shapely.Polygon()
        else:
            out[i] = shapely.Polygon()
    return out


def _repair(frame: gpd.GeoDataFrame, path: str, what: str) -> gpd.GeoDataFrame:
    """Repair invalid polygons (keeping their polygonal parts); drop those that vanish."""
    geoms = np.asarray(frame.geometry.values, dtype=object)
    invalid = ~shapely.is_valid(geoms)
    if not invalid.any():
        return frame
    geoms = geoms.copy()
    geoms[invalid] = _polygonal_part(shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False))
    empty = shapely.is_empty(geoms)
    dropped = f"; {int(empty.sum())} collapsed to nothing and were dropped" if empty.any() else ""
    warn(f"{path}: {int(invalid.sum())} invalid {what} polygon(s) were repaired (shapely.make_valid){dropped}. "
         "To control the result, fix them in QGIS (Vector > Geometry Tools > Fix Geometries).")
    if empty.all():
        raise VectorContentError(f"{path}: no valid {what} polygon is left after repair; redraw them.")
    frame = frame.copy()
    frame[frame.geometry.name] = gpd.GeoSeries(geoms, index=frame.index, crs=frame.crs)
    return frame[~empty]


def _as_name(value: Any) -> str | None:
    """A class value as trimmed text; ``None`` for null, NaN or empty. Integral floats lose their ``.0``."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # array-like values
        pass
    text = str(value).strip()
    return text or None


def _natural_sorted(names: Iterable[str]) -> list[str]:
    names = set(names)
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _class_names(names: pd.Series, classes: Sequence[str] | None, path: str, class_field: str) -> list[str]:
    """``["background", *object classes]`` from ``classes`` or from the values found."""
    found = names.value_counts()
    if classes is None:
        return ["background", *_natural_sorted(found.index)]
    as_names = [_as_name(c) for c in classes]
    if not as_names or any(c is None for c in as_names):
        raise ConfigError(f"--classes must be a list of non-empty class names, got {list(classes)!r}.")
    given = [c for c in as_names if c is not None]
    if len(set(given)) != len(given):
        repeated = sorted({c for c in given if given.count(c) > 1})
        raise ConfigError(f"--classes names {', '.join(map(repr, repeated))} more than once; give each class once.")
    if any(c.lower() == "background" for c in given):
        raise ConfigError("--classes must not name 'background': it is implied as class 0. Remove it from the list.")
    if len(given) + 1 > MAX_CLASSES:
        raise ConfigError(f"--classes names {len(given)} classes; at most {MAX_CLASSES - 1} are supported.")
    unexpected = [(name, int(n)) for name, n in found.items() if name not in set(given)]
    if unexpected:
        listed = ", ".join(f"{name!r} ({n} label{'s' if n > 1 else ''})" for name, n in sorted(unexpected))
        raise ConfigError(
            f"{path}: field {class_field!r} has value(s) not in --classes {given}: {listed}. "
            "Add them to --classes, or correct those labels."
        )
    unused = [c for c in given if c not in found.index]
    if unused:
        warn(f"{path}: class(es) {', '.join(map(repr, unused))} from --classes have no labels in {class_field!r}; "
             "the model will learn nothing about them.")
    return ["background", *given]


# ---- rasters' extents and the AOI ------------------------------------------------


def _extent_boxes(extents: Sequence[tuple[float, float, float, float]]) -> np.ndarray | None:
    if len(extents) == 0:
        return None
    ext = as_extents(extents)
    return shapely.box(ext[:, 0], ext[:, 1], ext[:, 2], ext[:, 3])


def _describe_extents(extents: Sequence[tuple[float, float, float, float]]) -> str:
    shown = ["(" + ", ".join(f"{v:.10g}" for v in e) + ")" for e in list(extents)[:3]]
    more = f" and {len(extents) - 3} more" if len(extents) > 3 else ""
    return ", ".join(shown) + more


def _keep_overlapping(frame: gpd.GeoDataFrame, path: str, boxes: np.ndarray,
                      extents: Sequence[tuple[float, float, float, float]]) -> gpd.GeoDataFrame:
    """Drop (with a warning) labels sharing no area with any raster; raise when none does."""
    geoms = np.asarray(frame.geometry.values, dtype=object)
    hit_label, hit_box = shapely.STRtree(boxes).query(geoms, predicate="intersects")
    inside = ~shapely.touches(geoms[hit_label], boxes[hit_box])  # sharing just an edge gives no pixel
    hit = np.zeros(len(geoms), dtype=bool)
    hit[hit_label[inside]] = True
    if not hit.any():
        bounds = ", ".join(f"{v:.10g}" for v in frame.total_bounds)
        raise VectorContentError(
            f"no overlap between labels and rasters: the labels of {path} (bounds {bounds}) touch none of the "
            f"rasters' extents {_describe_extents(extents)} in {frame.crs.name}. Check the labels' CRS (a wrong or "
            "missing CRS puts them elsewhere) and that they were drawn on these rasters."
        )
    if not hit.all():
        warn(f"{path}: {int((~hit).sum())} of {len(hit)} label(s) lie outside every raster and were ignored. "
             "Check the labels' CRS, or add the rasters they were drawn on.")
        frame = frame[hit]
    return frame


def _read_aoi(path: str, crs: pyproj.CRS, boxes: np.ndarray | None,
              extents: Sequence[tuple[float, float, float, float]]) -> shapely.Geometry:
    """The union of the AOI polygons in ``crs``."""
    frame = _read_layer(path, "area of interest")
    frame = _check_geometry(frame, path, "area of interest", _HINTS["aoi"], crs)
    frame = gpd.GeoDataFrame(geometry=np.asarray(frame.geometry.values, dtype=object), crs=crs)
    frame = _repair(frame, path, "area of interest")
    aoi = shapely.union_all(np.asarray(frame.geometry.values, dtype=object))
    if boxes is not None and not shapely.intersects(aoi, boxes).any():
        bounds = ", ".join(f"{v:.10g}" for v in aoi.bounds)
        raise VectorContentError(
            f"{path}: the area of interest (bounds {bounds}) overlaps none of the rasters' extents "
            f"{_describe_extents(extents)} in {crs.name}. Check its CRS and that it was drawn over these rasters."
        )
    return aoi


# ---- windows ----------------------------------------------------------------------


def _window_frame(transform: Affine, window: Window) -> tuple[Affine, shapely.Polygon]:
    """The window's own transform and its footprint polygon in CRS coordinates."""
    t = transform  # rasterio.windows.transform, written out (rasterio's uses a deprecated affine operator)
    win_transform = Affine(t.a, t.b, t.a * window.col_off + t.b * window.row_off + t.c,
                           t.d, t.e, t.d * window.col_off + t.e * window.row_off + t.f)
    h, w = window.height, window.width
    t = win_transform
    corners = [(t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f) for c, r in ((0, 0), (w, 0), (w, h), (0, h))]
    return win_transform, shapely.Polygon(corners)


def rasterize_window(labels: LabelSet, transform: Affine, window: Window) -> np.ndarray:
    """The class mask of one window of a raster.

    A pixel takes the class of the label covering its centre; where labels overlap the
    smallest one wins (labels are burned largest first). Unlabelled pixels are background
    (0), except outside the AOI (when ``labels`` has one), where they are :data:`IGNORE`.
    Labels are burned wherever they are, inside the AOI or not.

    Args:
        labels: the labels, in the raster's CRS.
        transform: the raster's affine transform.
        window: the pixels to label, in the raster's pixel frame.

    Returns:
        ``(window.height, window.width)`` uint8 class ids, :data:`IGNORE` where not scored.
    """
    win_transform, footprint = _window_frame(transform, window)
    shape = (window.height, window.width)
    if labels.aoi is None or shapely.contains(labels.aoi, footprint):
        mask = np.zeros(shape, dtype=np.uint8)
    else:
        mask = np.full(shape, IGNORE, dtype=np.uint8)
        inside = shapely.intersection(labels.aoi, footprint)
        if not inside.is_empty:
            rasterio.features.rasterize([(inside, 0)], out=mask, transform=win_transform)
    idx = labels.query(footprint)
    if idx.size:
        idx = idx[np.argsort(-labels._areas[idx], kind="stable")]
        shapes = [(geom, int(c)) for geom, c in zip(labels._geoms[idx], labels._class_ids[idx])]
        rasterio.features.rasterize(shapes, out=mask, transform=win_transform)
    return mask


def boxes_in_window(labels: LabelSet, transform: Affine, window: Window, *, min_visible: float = 0.4,
                    min_size_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The labels' boxes in one window, in window pixels.

    Each label's box is the pixel-space bounds of its polygon (so rotated or skewed
    transforms give the box of the transformed polygon), clipped to the window. A box
    is kept when at least ``min_visible`` of its area lies in the window and both
    sides of the clipped box are at least ``min_size_px``.

    Args:
        labels: the labels, in the raster's CRS.
        transform: the raster's affine transform.
        window: the pixels, in the raster's pixel frame.
        min_visible: smallest visible fraction of a box's area, in ``[0, 1]``.
        min_size_px: smallest width and height of a kept (clipped) box, in pixels.

    Returns:
        ``(bbox_xyxy, class_ids)``: ``(n, 4)`` float32 ``(col0, row0, col1, row1)`` in
        window pixels and ``(n,)`` int64 class ids, in label order.
    """
    if not 0.0 <= min_visible <= 1.0:
        raise ConfigError(f"min_visible must lie in [0, 1], got {min_visible}.")
    if min_size_px < 0:
        raise ConfigError(f"min_size_px must be >= 0, got {min_size_px}.")
    empty = np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
    win_transform, footprint = _window_frame(transform, window)
    idx = labels.query(footprint)
    if idx.size == 0:
        return empty
    inv = ~win_transform

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f])

    full = shapely.bounds(shapely.transform(labels._geoms[idx], to_pixels))  # (n, 4) col0, row0, col1, row1
    clipped = np.column_stack([
        np.clip(full[:, 0], 0, window.width), np.clip(full[:, 1], 0, window.height),
        np.clip(full[:, 2], 0, window.width), np.clip(full[:, 3], 0, window.height),
    ])
    full_area = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
    width, height = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        visible = np.where(full_area > 0, width * height / full_area, 0.0)
    keep = (visible >= min_visible) & (width >= min_size_px) & (height >= min_size_px) & (width > 0) & (height > 0)
    if not keep.any():
        return empty
    return clipped[keep].astype(np.float32), labels._class_ids[idx[keep]].copy()
