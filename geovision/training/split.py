"""A spatially separated train/val(/test) split: square blocks with a buffer between them.

Neighbouring pixels look alike, so chips drawn at random from the same raster
leak between training and validation and make the validation score lie. Here the
rasters are cut into square blocks of ``block_m`` ground metres on a grid aligned
to the union of their extents; a seeded random draw makes some of the blocks that
hold labels val (and test) blocks and the rest train. A chip belongs to a split
only when it lies inside one block's *interior*: the block shrunk by half the
buffer on every side it shares with the grid (sides on the grid's outer edge
face no other block and are not shrunk, so chips flush with a raster's edge are
kept). Chips of different blocks are therefore always at least ``buffer_m``
apart; chips crossing a block border or lying in a buffer strip are not used.

This module is pure planning math: numpy, shapely and pyproj, no raster I/O.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import shapely

from geovision.errors import ConfigError
from geovision.io.geo import area_method, as_pyproj_crs, distances_m, linear_unit_m

__all__ = ["SPLITS", "PolygonSplit", "SpatialSplit", "as_extents", "spatial_split", "split_from_layer",
           "units_per_metre"]

SPLITS = ("train", "val", "test")

#: refuse grids with more blocks than this (a block size far too small for the rasters)
MAX_BLOCKS = 2_000_000


def as_extents(extents: Sequence[tuple[float, float, float, float]]) -> np.ndarray:
    """Check extents given as ``(minx, miny, maxx, maxy)`` tuples; returns ``(n, 4)`` float64.

    Raises:
        ConfigError: none given, not 4 numbers each, not finite, or empty (``min >= max``).
    """
    try:
        arr = np.asarray(extents, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"Extents must be (minx, miny, maxx, maxy) tuples of numbers, got {extents!r}.") from None
    if arr.ndim == 1 and arr.shape == (4,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0:
        raise ConfigError(f"Extents must be one or more (minx, miny, maxx, maxy) tuples, got {extents!r}.")
    bad = ~np.isfinite(arr).all(axis=1) | (arr[:, 0] >= arr[:, 2]) | (arr[:, 1] >= arr[:, 3])
    if bad.any():
        raise ConfigError(
            f"Extent(s) {arr[bad].tolist()} are not (minx, miny, maxx, maxy) with minx < maxx and miny < maxy."
        )
    return arr


def units_per_metre(crs: Any, centre: tuple[float, float]) -> tuple[float, float]:
    """CRS units per ground metre along x and y near ``centre`` (CRS coordinates).

    Projected CRSs with nearly true distances (UTM, national grids; see
    :func:`~geovision.io.geo.area_method`): one over the linear unit, the same on both
    axes (the projection's scale error, below 0.1 % in UTM, is ignored). Geographic
    CRSs (degrees) and Mercator-family projections (Web Mercator's pseudo-metres grow
    as 1/cos(latitude)): measured on the WGS84 ellipsoid at ``centre``, so exact
    there and approximate away from it (the scale changes with latitude).
    """
    pcrs = as_pyproj_crs(crs)
    if area_method(pcrs) == "planar":
        unit = 1.0 / linear_unit_m(pcrs)
        return unit, unit
    cx, cy = centre
    step = 1e-4 if pcrs.is_geographic else 10.0  # about 10 m either way
    start = np.array([[cx - step / 2, cy], [cx, cy - step / 2]])
    end = np.array([[cx + step / 2, cy], [cx, cy + step / 2]])
    dist = distances_m(start, end, pcrs)
    if not np.all(np.isfinite(dist) & (dist > 0)):
        raise ConfigError(f"Cannot measure ground distances in {pcrs.name} at {centre}; check the rasters' CRS.")
    return float(step / dist[0]), float(step / dist[1])


@dataclass(frozen=True, eq=False)
class SpatialSplit:
    """Square blocks, each in one split, with a buffer between their interiors.

    Build it with :func:`spatial_split`. Equality is identity.

    Attributes:
        blocks: one row per block: ``block_id`` (int64), ``row``, ``col`` (the block's
            place in the grid, row 0 at the top), ``split`` (``"train"``, ``"val"`` or
            ``"test"``), ``n_labels`` (labels overlapping it; only when labels were
            given) and ``geometry`` (the block square), in the rasters' CRS.
        buffer: buffer width in CRS units along x.
        buffer_y: buffer width in CRS units along y; the same as ``buffer`` except in
            geographic CRSs, where a degree of longitude is shorter than one of latitude.
        block_m: the block size asked for, in ground metres (``None`` when unknown).
        buffer_m: the buffer asked for, in ground metres (``None`` when unknown).
    """

    blocks: gpd.GeoDataFrame
    buffer: float
    buffer_y: float | None = None
    block_m: float | None = None
    buffer_m: float | None = None

    def __post_init__(self) -> None:
        if self.buffer_y is None:
            object.__setattr__(self, "buffer_y", self.buffer)
        missing = {"block_id", "split", "geometry"} - set(self.blocks.columns)
        if missing:
            raise ValueError(f"SpatialSplit.blocks lacks the column(s) {sorted(missing)}")
        unknown = set(self.blocks["split"]) - set(SPLITS)
        if unknown:
            raise ValueError(f"SpatialSplit.blocks has unknown split(s) {sorted(unknown)}; expected {SPLITS}")

    @property
    def crs(self) -> pyproj.CRS | None:
        return self.blocks.crs

    @property
    def counts(self) -> dict[str, int]:
        """Number of blocks per split."""
        found = self.blocks["split"].value_counts()
        return {s: int(found.get(s, 0)) for s in SPLITS}

    @cached_property
    def _interiors(self) -> np.ndarray:
        """``(n, 4)`` interior bounds; sides on the grid's outer edge are open (±inf)."""
        b = shapely.bounds(np.asarray(self.blocks.geometry.values, dtype=object))
        outer = np.asarray(self.blocks.total_bounds, dtype=np.float64)
        assert self.buffer_y is not None  # set in __post_init__
        hx, hy = self.buffer / 2, self.buffer_y / 2
        return np.column_stack([
            np.where(b[:, 0] <= outer[0], -np.inf, b[:, 0] + hx),
            np.where(b[:, 1] <= outer[1], -np.inf, b[:, 1] + hy),
            np.where(b[:, 2] >= outer[2], np.inf, b[:, 2] - hx),
            np.where(b[:, 3] >= outer[3], np.inf, b[:, 3] - hy),
        ])

    @cached_property
    def _splits(self) -> np.ndarray:
        return self.blocks["split"].to_numpy(dtype=object)

    def split_of(self, bounds: tuple[float, float, float, float]) -> str | None:
        """The split of the block whose interior holds the box ``bounds`` entirely.

        Args:
            bounds: ``(minx, miny, maxx, maxy)`` of a chip in the blocks' CRS.

        Returns:
            ``"train"``, ``"val"`` or ``"test"``; ``None`` when the box crosses a block
            border or lies (partly) in a buffer strip. Interiors are open towards the
            outside of the grid (no block lies there), so a box sticking out of the
            grid's outer edge belongs to the block it sticks out of.
        """
        minx, miny, maxx, maxy = bounds
        i = self._interiors
        hit = np.flatnonzero((i[:, 0] <= minx) & (i[:, 1] <= miny) & (i[:, 2] >= maxx) & (i[:, 3] >= maxy))
        return str(self._splits[hit[0]]) if hit.size else None

    def layer(self) -> gpd.GeoDataFrame:
        """The split as a map layer, to look at in QGIS.

        Returns:
            One row per block interior (its ``block_id``, ``split`` and, when known,
            ``n_labels``) plus one row per block's buffer strip (the block minus its
            interior) with ``split == "buffer"``, in the blocks' CRS. Geometries are
            all MultiPolygons.
        """
        blocks = np.asarray(self.blocks.geometry.values, dtype=object)
        b = shapely.bounds(blocks)
        i = self._interiors
        interiors = shapely.box(np.maximum(i[:, 0], b[:, 0]), np.maximum(i[:, 1], b[:, 1]),
                                np.minimum(i[:, 2], b[:, 2]), np.minimum(i[:, 3], b[:, 3]))
        strips = shapely.difference(blocks, interiors)
        has_strip = ~shapely.is_empty(strips)
        keep = [c for c in ("block_id", "n_labels") if c in self.blocks.columns]
        inner = pd.DataFrame({c: self.blocks[c].to_numpy() for c in keep})
        inner["split"] = self._splits
        inner["geometry"] = interiors
        outer = inner[has_strip].copy()
        outer["split"] = "buffer"
        outer["geometry"] = strips[has_strip]
        frame = pd.concat([inner, outer], ignore_index=True).sort_values("block_id", kind="stable")
        # one geometry type for the whole layer (strips of blocks shrunk on two opposite sides are multi-part)
        frame["geometry"] = [g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g])
                             for g in frame["geometry"]]
        return gpd.GeoDataFrame(frame.reset_index(drop=True), geometry="geometry", crs=self.blocks.crs)


def spatial_split(
    extents: Sequence[tuple[float, float, float, float]],
    crs: Any,
    *,
    block_m: float,
    buffer_m: float,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    labels: gpd.GeoDataFrame | None = None,
) -> SpatialSplit:
    """Cut the rasters' extents into square blocks and assign each block a split.

    Blocks are ``block_m`` ground metres square on a grid whose top-left corner is the
    top-left corner of the union of ``extents``; only blocks overlapping an extent are
    kept. Metres become CRS units through :func:`units_per_metre`: exactly in projected
    CRSs, and from the scale at the extents' centre latitude in geographic CRSs and Web
    Mercator (approximate: over a large north-south span blocks far from the centre are
    not quite ``block_m`` square on the ground).

    About ``val_fraction`` (``test_fraction``) of the blocks holding labels (of all blocks
    when ``labels`` is ``None``) become val (test) blocks, drawn at random with ``seed``;
    at least one each when the fraction is above 0, and at least one labelled block is
    left for training. Blocks without labels are train (they provide background).

    Args:
        extents: the training rasters' ``(minx, miny, maxx, maxy)`` in ``crs``.
        crs: the rasters' CRS.
        block_m: block edge in ground metres.
        buffer_m: least ground distance between chips of different blocks, in metres.
        val_fraction: share of the labelled blocks for validation, in ``[0, 1)``.
        test_fraction: share of the labelled blocks for testing, in ``[0, 1)``.
        seed: seed of the draw; the same inputs and seed give the same split.
        labels: the label polygons (``LabelSet.frame``) in ``crs``, or ``None``.

    Raises:
        ConfigError: invalid sizes or fractions, fewer than 2 blocks, too few blocks
            holding labels for the splits asked for, or labels in another CRS.
    """
    for name, value in (("block_m", block_m), ("buffer_m", buffer_m), ("val_fraction", val_fraction),
                        ("test_fraction", test_fraction)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    if block_m <= 0:
        raise ConfigError(f"The validation block size must be > 0 m, got --val-block {block_m:g}.")
    if buffer_m < 0:
        raise ConfigError(f"The buffer between blocks must be >= 0 m, got --val-buffer {buffer_m:g}.")
    if buffer_m >= block_m:
        raise ConfigError(
            f"The buffer ({buffer_m:g} m) must be smaller than the block ({block_m:g} m), or no chip fits in a "
            "block; lower --val-buffer or raise --val-block."
        )
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must lie in [0, 1), got {value:g}.")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 to leave blocks for training, got "
            f"{val_fraction:g} + {test_fraction:g}."
        )
    ext = as_extents(extents)
    pcrs = as_pyproj_crs(crs)
    minx, miny = float(ext[:, 0].min()), float(ext[:, 1].min())
    maxx, maxy = float(ext[:, 2].max()), float(ext[:, 3].max())
    ux, uy = units_per_metre(pcrs, ((minx + maxx) / 2, (miny + maxy) / 2))
    bx, by = block_m * ux, block_m * uy
    width_m, height_m = (maxx - minx) / ux, (maxy - miny) / uy
    ncols = max(1, math.ceil((maxx - minx) / bx - 1e-9))
    nrows = max(1, math.ceil((maxy - miny) / by - 1e-9))
    if nrows * ncols > MAX_BLOCKS:
        raise ConfigError(
            f"--val-block {block_m:g} m cuts the rasters ({width_m:.0f} m x {height_m:.0f} m) into "
            f"{nrows * ncols} blocks; raise --val-block (blocks should hold several chips)."
        )
    row, col = np.divmod(np.arange(nrows * ncols, dtype=np.int64), ncols)
    x0, x1 = minx + col * bx, minx + (col + 1) * bx
    y1, y0 = maxy - row * by, maxy - (row + 1) * by
    keep = np.zeros(len(row), dtype=bool)
    for ex0, ey0, ex1, ey1 in ext:  # blocks sharing area (not just an edge) with an extent
        keep |= (x0 < ex1) & (x1 > ex0) & (y0 < ey1) & (y1 > ey0)
    row, col, x0, y0, x1, y1 = (a[keep] for a in (row, col, x0, y0, x1, y1))
    n = len(row)
    suggest = _suggest_block(width_m, height_m)
    if n < 2:
        raise ConfigError(
            f"The rasters ({width_m:.0f} m x {height_m:.0f} m) hold only {n} block of {block_m:g} m, but a spatial "
            f"split needs at least 2 (training and validation apart). Lower --val-block (e.g. --val-block {suggest})"
            " and keep --val-buffer below it."
        )
    squares = shapely.box(x0, y0, x1, y1)
    columns: dict[str, Any] = {"block_id": np.arange(n, dtype=np.int64), "row": row, "col": col}
    if labels is not None:
        n_labels = _labels_per_block(squares, labels, pcrs)
        columns["n_labels"] = n_labels
        candidates = np.flatnonzero(n_labels > 0)
    else:
        candidates = np.arange(n)
    n_val, n_test = _split_sizes(len(candidates), val_fraction, test_fraction, n, block_m, suggest,
                                 labelled=labels is not None)
    rng = np.random.default_rng(seed)
    order = rng.permutation(candidates)
    split = np.full(n, "train", dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val:n_val + n_test]] = "test"
    columns["split"] = split
    blocks = gpd.GeoDataFrame(columns, geometry=squares, crs=pcrs)
    return SpatialSplit(blocks, buffer_m * ux, buffer_m * uy, float(block_m), float(buffer_m))


def _suggest_block(width_m: float, height_m: float) -> str:
    """A block size giving a few blocks along the longer side, rounded to 2 significant figures."""
    value = max(width_m, height_m) / 4
    if value <= 0 or not math.isfinite(value):
        return "?"
    digits = 1 - math.floor(math.log10(value))
    rounded = round(value, digits)
    return f"{rounded:g}" if rounded < 1e6 else f"{rounded:.0f}"


def _labels_per_block(squares: np.ndarray, labels: gpd.GeoDataFrame, crs: pyproj.CRS) -> np.ndarray:
    """``(n,)`` number of labels sharing area (or, for points and lines, more than an edge) with each block."""
    if labels.crs is not None and not as_pyproj_crs(labels.crs).equals(crs):
        raise ConfigError(
            f"The labels are in {labels.crs.name} but the rasters in {crs.name}; move the labels to the rasters' "
            "CRS first (read_labels does)."
        )
    geoms = np.asarray(labels.geometry.values, dtype=object)
    block_i, label_i = shapely.STRtree(geoms).query(squares, predicate="intersects")
    real = ~shapely.touches(squares[block_i], geoms[label_i])
    return np.bincount(block_i[real], minlength=len(squares)).astype(np.int64)


def _split_sizes(n_candidates: int, val_fraction: float, test_fraction: float, n_blocks: int, block_m: float,
                 suggest: str, *, labelled: bool) -> tuple[int, int]:
    """How many val and test blocks to draw from ``n_candidates`` (labelled) blocks."""
    want_val, want_test = val_fraction > 0, test_fraction > 0
    need = 1 + want_val + want_test
    if (want_val or want_test) and n_candidates < need:
        what = "the labels overlap" if labelled else "the rasters hold"
        asked = " and ".join(s for s, w in (("validation", want_val), ("test", want_test)) if w)
        verb = "need" if want_val and want_test else "needs"
        more = " or label more places across the rasters" if labelled else ""
        raise ConfigError(
            f"{what.capitalize()} only {n_candidates} of the {n_blocks} blocks of {block_m:g} m, but {asked} "
            f"{verb} blocks of their own besides the training ones ({need} in all). Lower --val-block "
            f"(e.g. --val-block {suggest}){more}."
        )
    n_val = math.floor(val_fraction * n_candidates + 0.5)
    n_test = math.floor(test_fraction * n_candidates + 0.5)
    n_val, n_test = max(n_val, int(want_val)), max(n_test, int(want_test))
    while n_val + n_test > max(0, n_candidates - 1):  # leave at least one labelled block for training
        if n_test >= n_val and n_test > int(want_test):
            n_test -= 1
        elif n_val > int(want_val):
            n_val -= 1
        else:  # unreachable: the check above leaves room for the minimum counts
            break
    return n_val, n_test


_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test"}


@dataclass(frozen=True, eq=False)
class PolygonSplit:
    """A split drawn by the user: polygons whose field says ``train``, ``validation`` or ``test``.

    Same interface as :class:`SpatialSplit` (``blocks``, ``counts``, ``split_of``,
    ``layer``). A chip belongs to a polygon's split when it lies wholly inside that
    polygon; chips across polygon edges or outside every polygon are not used, so
    keep the polygons of different splits apart by the distance you want between
    training and validation pixels.

    Attributes:
        blocks: ``block_id``, ``split`` and ``geometry`` (the user's polygons) in the rasters' CRS.
    """

    blocks: gpd.GeoDataFrame

    @property
    def counts(self) -> dict[str, int]:
        found = self.blocks["split"].value_counts()
        return {s: int(found.get(s, 0)) for s in SPLITS}

    @cached_property
    def _tree(self) -> shapely.STRtree:
        return shapely.STRtree(np.asarray(self.blocks.geometry.values, dtype=object))

    def split_of(self, bounds: tuple[float, float, float, float]) -> str | None:
        """The split of the polygon that holds the box ``bounds`` entirely, or ``None``."""
        hits = self._tree.query(shapely.box(*bounds), predicate="within")
        splits = {str(self.blocks["split"].iloc[int(h)]) for h in hits}
        return splits.pop() if len(splits) == 1 else None

    def layer(self) -> gpd.GeoDataFrame:
        """The polygons with their split, as MultiPolygons."""
        frame = self.blocks[["block_id", "split", "geometry"]].copy()
        frame["geometry"] = [g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g])
                             for g in frame.geometry.values]
        return gpd.GeoDataFrame(frame, geometry="geometry", crs=self.blocks.crs)


def split_from_layer(path: str | os.PathLike[str], field: str, crs: Any) -> PolygonSplit:
    """Read a user-drawn split: polygons with a field valued train / validation (val) / test.

    Raises:
        VectorReadError: the file cannot be read.
        VectorContentError: no polygons, or no CRS.
        ConfigError: ``field`` is missing, a value names no split, or no polygon is ``train``.
    """
    from geovision.errors import VectorContentError, VectorReadError

    path = str(path)
    try:
        frame = pyogrio.read_dataframe(path)
    except Exception as exc:  # pyogrio's DataSourceError, OSError, ...
        raise VectorReadError(f"{path}: cannot read the split layer ({exc}); give a vector file of polygons.") from None
    if field not in frame.columns:
        fields = [c for c in frame.columns if c != "geometry"]
        raise ConfigError(f"{path}: has no field {field!r}; its fields are {fields}. Give the field naming each "
                          "polygon's split (--split-field).")
    frame = frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise VectorContentError(f"{path}: holds no polygons; the split layer must outline the train/validation areas.")
    if frame.crs is None:
        raise VectorContentError(f"{path}: has no CRS; set one (ogr2ogr -a_srs EPSG:...).")
    values = frame[field].astype(str).str.strip().str.lower()
    unknown = sorted(set(values) - set(_SPLIT_NAMES))
    if unknown:
        raise ConfigError(f"{path}: {field!r} holds {unknown}, which name no split; use train, validation or test.")
    splits = values.map(_SPLIT_NAMES).to_numpy(dtype=object)
    if "train" not in set(splits):
        raise ConfigError(f"{path}: no polygon is marked train in {field!r}.")
    blocks = gpd.GeoDataFrame({"block_id": np.arange(len(frame), dtype=np.int64), "split": splits},
                              geometry=np.asarray(frame.to_crs(as_pyproj_crs(crs)).geometry.values, dtype=object),
                              crs=as_pyproj_crs(crs))
    return PolygonSplit(blocks)
