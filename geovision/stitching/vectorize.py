"""Class raster blocks to polygons, merged across block seams as the blocks arrive.

The engine writes the class raster block by block; each finished block goes to
a :class:`PolygonCollector`, which turns it into polygons at once, so memory
does not grow with the raster's area:

1. 4-connected components of every class at once (one compiled pass), traced to
   polygons **in pixel coordinates of the whole raster** by
   :func:`geovision.stitching.trace.outline_rings` (compiled; the polygons
   GDAL's polygonize gives, as flat arrays). Pixel corners are integers there, so pieces of one object
   cut by a seam share exactly the same edge coordinates.
2. A component touching a block side that is not the raster's edge may continue
   in a neighbouring block: it is kept as a *pending* piece. Every other
   component is final and returned by :meth:`PolygonCollector.add_block`.
3. Each inner side of an arrived block is kept as a *seam side*: the pending
   piece (if any) of every pixel along it. When the block on the other side of
   the seam arrives, the two pixel lines are compared: pieces of the same class
   on facing pixels share an edge of positive length and join one group
   (union-find). Pieces meeting at a single corner are never on facing pixels,
   so they stay apart, as 4-connectivity wants.
4. A group counts its *open* (piece, side) pairs: sides its pieces touch whose
   facing pixels have not all arrived yet. A side closes when they have; when a
   group has no open pair left it cannot grow any more: its pieces are joined
   (:func:`geovision.stitching.trace.merge_rings`: the seam steps two pieces
   share cancel), its probability sums and pixel counts added, and it is
   returned by that same :meth:`~PolygonCollector.add_block` call and forgotten.

Final features are then moved to map coordinates and measured on the ground
(:func:`geovision.io.geo.measure_rings`), still as flat arrays, and come out as a
GeoDataFrame (:meth:`~PolygonCollector.add_block`) or as WKB in an Arrow
:class:`~geovision.io.vector.FeatureBatch` (:meth:`~PolygonCollector.add_block_batch`,
no GEOS geometry built). With ``simplify_m`` they go through GEOS: simplified in pixel
space, repaired if invalid, measured by :func:`geovision.io.geo.measure`.

Blocks may come in any order and need not form a regular grid (any tiling of
the raster works: a side may face several smaller blocks). Memory: only the
pieces of objects still open and the open seam sides (one int64 per pixel) are
kept; fed in row-major order that is about one row of blocks, whatever the
raster's height (see :attr:`PolygonCollector.pending_pieces`).
:meth:`~PolygonCollector.finish` returns what is left, which is nothing when
every block arrived.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import geopandas as gpd
import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from affine import Affine

from geovision.errors import ConfigError, warn
from geovision.io.geo import as_pyproj_crs, ground_pixel_size_m, measure, measure_rings
from geovision.io.vector import FeatureBatch
from geovision.stitching.flat import FlatPolygons, apply_affine
from geovision.stitching.trace import merge_rings, outline_rings
from geovision.types import Window

__all__ = ["COLUMNS", "PolygonCollector"]

COLUMNS: tuple[str, ...] = (
    "class_id",
    "class_name",
    "area_m2",
    "perimeter_m",
    "mean_probability",
    "source",
    "geometry",
)
"""Columns of every GeoDataFrame a :class:`PolygonCollector` returns, in order."""

_SideKey = tuple[int, int, bool]
"""``(axis, line, before)`` of a seam side: ``axis`` 0 for a horizontal seam (between rows
``line - 1`` and ``line``), 1 for a vertical one (between columns ``line - 1`` and ``line``);
``before`` is true for the side of a block lying before the line (its bottom or right side)."""


@dataclass(slots=True, eq=False)
class _Side:
    """An inner side of an arrived block whose facing pixels have not all arrived yet."""

    start: int
    """First pixel of the side along its line (a column for a horizontal side, a row for a vertical one)."""
    pieces: np.ndarray
    """``(length,)`` int64 pending piece id of each pixel along the side, -1 outside pending pieces."""
    classes: np.ndarray
    """``(length,)`` class id of each pixel's piece (meaningless where ``pieces`` is -1)."""
    uncovered: int
    """How many pixels along the side still face a pixel of a block not yet arrived."""

    @property
    def end(self) -> int:
        return self.start + len(self.pieces)


class PolygonCollector:
    """Vectorises a class raster block by block, merging objects cut by block seams.

    Feed every block of the raster once, in any order, to :meth:`add_block`
    (which returns the polygons that became complete with that block, merged
    across seams), then call :meth:`finish` (which returns what is left: nothing
    when every block arrived, the objects cut by missing blocks otherwise).
    Every returned GeoDataFrame has the columns :data:`COLUMNS`: ``class_id``
    (int), ``class_name`` (str), ``area_m2`` (m², see
    :func:`geovision.io.geo.measure`), ``perimeter_m`` (m), ``mean_probability``
    (mean over the object's pixels of its class's probability), ``source`` (str)
    and ``geometry`` (Polygons in ``crs``).

    Args:
        class_names: name of each class id; ``class_names[i]`` names class ``i``.
        skip_classes: class ids never vectorised (for example background).
        raster_height: rows of the whole raster (pixels).
        raster_width: columns of the whole raster (pixels).
        transform: the raster's affine transform (pixel ``(col, row)`` to CRS ``(x, y)``).
        crs: the raster's CRS (rasterio ``CRS``, pyproj ``CRS`` or a string such as ``"EPSG:32631"``).
        nodata: class value meaning "no class"; never vectorised.
        simplify_m: if given, simplification tolerance in metres on the ground,
            converted to pixels with the pixel size at the raster's centre and
            applied in pixel space (``preserve_topology=True``). Each polygon is
            simplified on its own, so neighbouring polygons may no longer share
            their borders exactly.
        min_area_m2: if given, polygons with a smaller ground area (m²) are dropped.
        source: written to the ``source`` column (for example the input file name).

    Raises:
        ConfigError: an option is out of range.
    """

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        skip_classes: Collection[int],
        raster_height: int,
        raster_width: int,
        transform: Affine,
        crs: Any,
        nodata: int = 255,
        simplify_m: float | None = None,
        min_area_m2: float | None = None,
        source: str = "",
    ) -> None:
        if len(class_names) == 0:
            raise ConfigError("class_names is empty; give one name per class id, e.g. ['background', 'building'].")
        if raster_height <= 0 or raster_width <= 0:
            raise ConfigError(f"Raster size must be positive, got height={raster_height}, width={raster_width}.")
        if simplify_m is not None and simplify_m < 0:
            raise ConfigError(f"simplify_m must be >= 0 metres (or None for no simplification), got {simplify_m}.")
        if min_area_m2 is not None and min_area_m2 < 0:
            raise ConfigError(f"min_area_m2 must be >= 0 m² (or None to keep every polygon), got {min_area_m2}.")

        self.class_names: tuple[str, ...] = tuple(class_names)
        self.skip_classes: frozenset[int] = frozenset(int(c) for c in skip_classes)
        self.raster_height = raster_height
        self.raster_width = raster_width
        self.transform = transform
        self.crs = as_pyproj_crs(crs)
        self.nodata = nodata
        self.min_area_m2 = min_area_m2
        self.source = source

        self._simplify_px = 0.0
        if simplify_m:
            x_m, y_m = ground_pixel_size_m(transform, self.crs, raster_height, raster_width)
            self._simplify_px = simplify_m / float(np.sqrt(x_m * y_m))

        # Pending pieces by id (ids count up in arrival order): (class id, pixel-space polygon,
        # summed own-class probability, pixel count).
        self._pieces: dict[int, tuple[int, FlatPolygons, float, int]] = {}
        self._next_id = 0
        # Union-find over pending pieces; a group is known by its root piece.
        self._parent: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}  # root -> piece ids of the group
        self._open: dict[int, int] = {}  # root -> (piece, side) pairs still facing missing pixels
        # Seam sides still facing missing pixels, by line.
        self._sides: dict[_SideKey, list[_Side]] = {}
        # rows and columns where blocks have met: merge_rings cuts pieces' edges there into pixel steps
        self._seam_rows: set[int] = set()
        self._seam_cols: set[int] = set()
        self._pixels_seen = 0

    # --- public API ---------------------------------------------------------------

    @property
    def pending_pieces(self) -> int:
        """How many pending pieces (parts of objects that may still grow) are held right now."""
        return len(self._pieces)

    def add_block(self, window: Window, classes: np.ndarray, probabilities: np.ndarray) -> gpd.GeoDataFrame:
        """Vectorise one finished block; return every object that is complete once it has arrived.

        Args:
            window: where the block lies in the raster (pixels).
            classes: ``(h, w)`` integer (normally uint8) class ids; ``nodata`` means no class.
            probabilities: ``(C, h, w)`` float class probabilities, ``C = len(class_names)``.

        Returns:
            The block's components that touch no inner seam, then the objects
            across seams whose last block this was, merged (columns
            :data:`COLUMNS`), possibly empty.

        Raises:
            ValueError: the window leaves the raster, the arrays do not match it,
                or a class id has no name.
        """
        return self._add(window, classes, probabilities).frame(self)

    def add_block_batch(self, window: Window, classes: np.ndarray, probabilities: np.ndarray) -> FeatureBatch:
        """:meth:`add_block`, returning the features as a :class:`~geovision.io.vector.FeatureBatch`.

        The same rows and columns, with WKB geometries encoded straight from the traced
        vertices: no GEOS geometry or pandas frame is built (what ``predict`` streams
        to its vector writer).
        """
        return self._add(window, classes, probabilities).batch(self)

    def _add(self, window: Window, classes: np.ndarray, probabilities: np.ndarray) -> _Features:
        self._check_block(window, classes, probabilities)
        self._pixels_seen += window.height * window.width

        labels, label_class, counts, prob_sums = self._label(classes, probabilities)
        n_labels = len(label_class)
        sides = self._inner_sides(window, labels)
        # Pending piece id of each label (index 0 = outside any component): -1 for final components.
        piece_of_label = np.full(n_labels + 1, -1, dtype=np.int64)
        class_of_label = np.concatenate([[-1], label_class])
        final = np.zeros(n_labels, dtype=bool)
        polygons = FlatPolygons.empty(np.int64)
        if n_labels > 0:
            # every label has pixels: polygon i is label i + 1
            polygons, _ = outline_rings(labels, n_labels, row_off=window.row_off, col_off=window.col_off)

            # Inner sides each component touches; those touching any are pending.
            sides_touched = np.zeros(n_labels + 1, dtype=np.int64)
            for _, _, line in sides:
                sides_touched[np.unique(line)] += 1
            sides_touched = sides_touched[1:]
            final = sides_touched == 0
            pending = np.flatnonzero(~final).tolist()
            ring_offsets, polygon_offsets = polygons.ring_offsets, polygons.polygon_offsets.tolist()
            for label in pending:
                piece = self._next_id
                self._next_id += 1
                piece_of_label[label + 1] = piece
                rings = ring_offsets[polygon_offsets[label]:polygon_offsets[label + 1] + 1]
                first, last = int(rings[0]), int(rings[-1])
                outline = FlatPolygons(polygons.coords[first:last], rings - first,
                                       np.array([0, len(rings) - 1], dtype=np.int64))
                self._pieces[piece] = (int(label_class[label]), outline, float(prob_sums[label]), int(counts[label]))
                self._parent[piece] = piece
                self._members[piece] = [piece]
                self._open[piece] = int(sides_touched[label])

        maybe_complete: list[int] = []
        for key, start, line in sides:
            (self._seam_rows if key[0] == 0 else self._seam_cols).add(key[1])
            side = _Side(start, piece_of_label[line], class_of_label[line], len(line))
            maybe_complete += self._join(key, side)
        done = self._complete_groups(maybe_complete)
        return self._finalize(
            np.concatenate([label_class[final], done[0]]),
            FlatPolygons.concat([polygons.take(final) if not final.all() else polygons, done[1]]),
            np.concatenate([prob_sums[final], done[2]]),
            np.concatenate([counts[final], done[3]]),
        )

    def finish(self) -> gpd.GeoDataFrame:
        """Return the objects still open, as merged so far.

        When every block arrived there are none: each object was returned by
        :meth:`add_block` as soon as its last block arrived. Otherwise the objects
        cut by missing blocks come back in pieces (with a warning). The collector
        is empty afterwards.

        Returns:
            The remaining polygons (columns :data:`COLUMNS`), possibly empty.
        """
        return self._finish().frame(self)

    def finish_batch(self) -> FeatureBatch:
        """:meth:`finish`, returning a :class:`~geovision.io.vector.FeatureBatch` (see :meth:`add_block_batch`)."""
        return self._finish().batch(self)

    def _finish(self) -> _Features:
        expected = self.raster_height * self.raster_width
        if self._pixels_seen != expected:
            warn(
                f"PolygonCollector received {self._pixels_seen} pixels but the raster has {expected} "
                f"({self.raster_height} x {self.raster_width}); objects crossing missing or repeated blocks "
                "may come back in pieces or twice. Feed every block exactly once."
            )
        self._sides.clear()
        return self._finalize(*self._complete_groups(list(self._members), force=True))

    def empty(self) -> gpd.GeoDataFrame:
        """An empty result: the columns :data:`COLUMNS` with their dtypes, and the CRS."""
        return _Features.none().frame(self)

    # --- block steps --------------------------------------------------------------

    def _check_block(self, window: Window, classes: np.ndarray, probabilities: np.ndarray) -> None:
        if window.row_end > self.raster_height or window.col_end > self.raster_width:
            raise ValueError(
                f"Block {window} leaves the {self.raster_height} x {self.raster_width} raster; "
                "clip block windows to the raster."
            )
        if classes.shape != (window.height, window.width):
            raise ValueError(
                f"classes has shape {classes.shape}, expected (h, w) = ({window.height}, {window.width}) "
                f"for {window}."
            )
        if not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"classes must hold integer class ids (uint8), got dtype {classes.dtype}.")
        expected = (len(self.class_names), window.height, window.width)
        if probabilities.shape != expected:
            raise ValueError(
                f"probabilities has shape {probabilities.shape}, expected (C, h, w) = {expected} "
                f"(one band per class name) for {window}."
            )

    def _label(self, classes: np.ndarray,
               probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """4-connected components of every vectorised class, numbered across classes, with their sums.

        One compiled pass labels every class at once (:func:`_components`), where
        ``scipy.ndimage.label`` took one pass per class, plus the passes finding the
        classes present and gathering each component's pixel count and probability.

        Returns:
            ``labels``: ``(h, w)`` int32, 0 outside components, ``1..N`` inside (in
            raster order of each component's first pixel); ``label_class``: ``(N,)``
            class id of component ``i + 1``; ``counts``: ``(N,)`` its pixels;
            ``prob_sums``: ``(N,)`` the sum of its own class's probability over them.

        Raises:
            ValueError: a class id other than nodata has no name.
        """
        if classes.dtype != np.uint8:  # any other integer type: the class ids to vectorise, as uint8
            values = np.unique(classes)
            self._check_names(values[(values < 0) | (values >= len(self.class_names))])
            codes = np.full(classes.shape, 255, np.uint8)
            inside = (classes >= 0) & (classes < len(self.class_names)) & (classes != self.nodata)
            codes[inside] = classes[inside]
            classes = codes
        wanted = np.zeros(256, dtype=bool)
        wanted[: len(self.class_names)] = True
        wanted[[c for c in self.skip_classes if 0 <= c < 256]] = False
        if 0 <= self.nodata < 256:
            wanted[self.nodata] = False
        labels, label_class, counts, prob_sums, present = _components(
            np.ascontiguousarray(classes), wanted, np.asarray(probabilities, dtype=np.float32)
        )
        self._check_names(np.flatnonzero(present[len(self.class_names):]) + len(self.class_names))
        return labels, label_class, counts, prob_sums

    def _check_names(self, values: np.ndarray) -> None:
        """Raise for class ids without a name among ``values`` (nodata and skipped classes need none)."""
        for value in values.tolist():
            if value == self.nodata or value in self.skip_classes:
                continue
            raise ValueError(
                f"Class id {value} has no name: class_names has {len(self.class_names)} entries "
                f"(0..{len(self.class_names) - 1}) and nodata is {self.nodata}."
            )

    def _inner_sides(self, window: Window, labels: np.ndarray) -> list[tuple[_SideKey, int, np.ndarray]]:
        """The block's sides that are not on the raster's edge: ``(key, start, labels along the side)``."""
        sides = []
        if window.row_off > 0:  # top
            sides.append(((0, window.row_off, False), window.col_off, labels[0, :]))
        if window.row_end < self.raster_height:  # bottom
            sides.append(((0, window.row_end, True), window.col_off, labels[-1, :]))
        if window.col_off > 0:  # left
            sides.append(((1, window.col_off, False), window.row_off, labels[:, 0]))
        if window.col_end < self.raster_width:  # right
            sides.append(((1, window.col_end, True), window.row_off, labels[:, -1]))
        return sides

    # --- seam merging -------------------------------------------------------------

    def _join(self, key: _SideKey, side: _Side) -> list[int]:
        """Match a new block's side against the arrived sides facing it across the seam.

        Pieces of the same class on facing pixels are united; sides whose facing
        pixels have all arrived are closed. Returns the roots of groups that lost
        their last open (piece, side) pair.
        """
        axis, line, before = key
        facing = self._sides.get((axis, line, not before), [])
        maybe_complete: list[int] = []
        for other in list(facing):
            lo, hi = max(side.start, other.start), min(side.end, other.end)
            if hi <= lo:
                continue
            mine = slice(lo - side.start, hi - side.start)
            theirs = slice(lo - other.start, hi - other.start)
            a, b = side.pieces[mine], other.pieces[theirs]
            joined = (a >= 0) & (b >= 0) & (side.classes[mine] == other.classes[theirs])
            if joined.any():
                pairs = np.unique(np.stack([a[joined], b[joined]], axis=1), axis=0)
                for x, y in pairs.tolist():
                    self._union(x, y)
            side.uncovered -= hi - lo
            other.uncovered -= hi - lo
            if other.uncovered <= 0:
                facing.remove(other)
                maybe_complete += self._close(other)
        if not facing:
            self._sides.pop((axis, line, not before), None)
        if side.uncovered <= 0:
            maybe_complete += self._close(side)
        else:
            self._sides.setdefault(key, []).append(side)
        return maybe_complete

    def _close(self, side: _Side) -> list[int]:
        """Take one open pair off the group of each piece on a side that faces no missing pixel any more."""
        roots = []
        for piece in np.unique(side.pieces[side.pieces >= 0]).tolist():
            root = self._find(piece)
            self._open[root] -= 1
            if self._open[root] == 0:
                roots.append(root)
        return roots

    def _find(self, piece: int) -> int:
        parent = self._parent
        while parent[piece] != piece:
            parent[piece] = parent[parent[piece]]  # path halving
            piece = parent[piece]
        return piece

    def _union(self, a: int, b: int) -> None:
        a, b = self._find(a), self._find(b)
        if a == b:
            return
        if len(self._members[a]) < len(self._members[b]):
            a, b = b, a
        self._parent[b] = a
        self._members[a] += self._members.pop(b)
        self._open[a] += self._open.pop(b)

    def _complete_groups(
        self, roots: list[int], force: bool = False
    ) -> tuple[np.ndarray, FlatPolygons, np.ndarray, np.ndarray]:
        """Union and forget the groups among ``roots`` with no open pair left (every group with ``force``).

        Returns:
            ``(class_ids, polygons_px, prob_sums, counts)`` of the groups, ready for :meth:`_finalize`.
        """
        done = []
        for root in roots:
            if root in self._members and (force or self._open[root] == 0):
                members = sorted(self._members.pop(root))  # arrival order, as a one-shot merge would
                del self._open[root]
                for member in members:
                    del self._parent[member]
                done.append([self._pieces.pop(piece) for piece in members])
        n = len(done)
        class_ids = np.empty(n, dtype=np.int64)
        prob_sums = np.empty(n, dtype=np.float64)
        counts = np.empty(n, dtype=np.int64)
        single: list[int] = []  # group numbers
        multi: list[int] = []
        parts: list[FlatPolygons] = []
        part_group: list[int] = []
        for g, pieces in enumerate(done):
            class_ids[g] = pieces[0][0]
            total = 0.0
            for piece in pieces:
                total += piece[2]
            prob_sums[g] = total
            counts[g] = sum(piece[3] for piece in pieces)
            (single if len(pieces) == 1 else multi).append(g)
        for g in single:
            parts.append(done[g][0][1])
        for k, g in enumerate(multi):
            parts += [piece[1] for piece in done[g]]
            part_group += [k] * len(done[g])
        alone = FlatPolygons.concat(parts[:len(single)])
        if multi:
            # the pieces of a group meet only along seams: their outlines are joined there
            # (3x faster than GEOS's overlay union, and exact)
            joined = merge_rings(FlatPolygons.concat(parts[len(single):]), np.array(part_group, dtype=np.int64),
                                 len(multi), self._seam_rows, self._seam_cols)
            polygons = FlatPolygons.concat([alone, joined]).take(np.argsort(single + multi, kind="stable"))
        else:
            polygons = alone
        return class_ids, polygons, prob_sums, counts

    # --- final features -----------------------------------------------------------

    def _finalize(
        self, class_ids: np.ndarray, polygons_px: FlatPolygons, prob_sums: np.ndarray, counts: np.ndarray
    ) -> _Features:
        """Turn complete objects in pixel space into the output rows.

        Args:
            class_ids: ``(N,)`` class id per object.
            polygons_px: ``N`` polygons in whole-raster pixel coordinates.
            prob_sums: ``(N,)`` summed own-class probability over each object's pixels.
            counts: ``(N,)`` pixel count per object.
        """
        if len(polygons_px) == 0:
            return _Features.none()
        if self._simplify_px > 0:
            # GDAL's polygons and their coverage unions are valid; only simplification can
            # break validity, so only then is it checked (the check costs as much as tracing)
            geoms = shapely.simplify(polygons_px.to_shapely(), self._simplify_px, preserve_topology=True)
            invalid = ~shapely.is_valid(geoms)
            if invalid.any():
                geoms[invalid] = shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False)
            geoms = shapely.transform(geoms, partial(apply_affine, self.transform))
            area, perimeter = measure(geoms, self.crs)
            keep = ~shapely.is_empty(geoms)
            polygons = None
        else:
            polygons = polygons_px.transform(self.transform)
            area, perimeter = measure_rings(polygons.coords, polygons.ring_offsets, polygons.polygon_offsets,
                                            self.crs)
            keep = np.ones(len(area), dtype=bool)
            geoms = None
        if self.min_area_m2 is not None:
            keep &= area >= self.min_area_m2
        mean_prob = prob_sums / counts
        if not keep.all():
            class_ids, area, perimeter, mean_prob = class_ids[keep], area[keep], perimeter[keep], mean_prob[keep]
            polygons = polygons.take(keep) if polygons is not None else None
            geoms = geoms[keep] if geoms is not None else None
        return _Features(class_ids, area, perimeter, mean_prob, polygons, geoms)


@dataclass(slots=True, eq=False)
class _Features:
    """Complete objects, measured, in map coordinates: rendered as a GeoDataFrame or a FeatureBatch."""

    class_ids: np.ndarray
    area: np.ndarray
    perimeter: np.ndarray
    mean_prob: np.ndarray
    polygons: FlatPolygons | None
    """Map-coordinate polygons as flat arrays; ``None`` when ``geoms`` holds them."""
    geoms: np.ndarray | None
    """``(N,)`` shapely geometries (after simplification, which may give MultiPolygons)."""

    @classmethod
    def none(cls) -> _Features:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0), FlatPolygons.empty(), None)

    def frame(self, collector: PolygonCollector) -> gpd.GeoDataFrame:
        if self.geoms is not None:
            geoms = self.geoms
        else:
            assert self.polygons is not None  # one of the two holds the polygons
            geoms = self.polygons.to_shapely()
        data = {
            "class_id": self.class_ids.astype(np.int64),
            "class_name": pd.Series(np.array(collector.class_names, dtype=object)[self.class_ids], dtype=object),
            "area_m2": self.area.astype(np.float64),
            "perimeter_m": self.perimeter.astype(np.float64),
            "mean_probability": self.mean_prob.astype(np.float64),
            "source": pd.Series([collector.source] * len(geoms), dtype=object),
        }
        return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=collector.crs))

    def batch(self, collector: PolygonCollector) -> FeatureBatch:
        n = len(self.class_ids)
        if self.geoms is None:
            assert self.polygons is not None  # one of the two holds the polygons
            wkb = self.polygons.to_wkb()
        else:
            wkb = pa.array(shapely.to_wkb(self.geoms), type=pa.binary())
        columns = {
            "class_id": pa.array(self.class_ids.astype(np.int64)),
            "class_name": pa.DictionaryArray.from_arrays(pa.array(self.class_ids.astype(np.int32)),
                                                         pa.array(collector.class_names, pa.string())
                                                         ).dictionary_decode(),
            "area_m2": pa.array(self.area.astype(np.float64)),
            "perimeter_m": pa.array(self.perimeter.astype(np.float64)),
            "mean_probability": pa.array(self.mean_prob.astype(np.float64)),
            "source": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                                     pa.array([collector.source], pa.string())).dictionary_decode(),
        }
        return FeatureBatch.from_arrays(columns, wkb, collector.crs)


@numba.njit(cache=True, nogil=True)
def _components(classes: np.ndarray, wanted: np.ndarray,  # pragma: no cover - compiled
                probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4-connected components of the pixels whose class is ``wanted``, all classes in one pass.

    Two passes with union-find (path halving): provisional labels from the pixel
    above and the one to the left of the same class, then final labels ``1..N`` in
    raster order of each component's first pixel, with per-component class, pixel
    count and summed own-class probability.

    Args:
        classes: ``(h, w)`` uint8 class ids.
        wanted: ``(256,)`` bool, the classes to label.
        probabilities: ``(C, h, w)`` float32; read at each labelled pixel's own class.

    Returns:
        ``(labels (h, w) int32, label_class (N,) int64, counts (N,) int64,
        prob_sums (N,) float64, present (256,) bool)``.
    """
    h, w = classes.shape
    labels = np.zeros((h, w), np.int32)
    parent = np.empty(h * w // 2 + 2, np.int32)  # a 4-connected labelling needs at most ceil(h*w/2)
    present = np.zeros(256, np.bool_)
    n = 0
    for i in range(h):
        for j in range(w):
            c = classes[i, j]
            present[c] = True
            if not wanted[c]:
                continue
            up = labels[i - 1, j] if i > 0 and classes[i - 1, j] == c else 0
            left = labels[i, j - 1] if j > 0 and classes[i, j - 1] == c else 0
            if up == 0 and left == 0:
                n += 1
                parent[n] = n
                labels[i, j] = n
            elif up == 0 or left == 0 or up == left:
                labels[i, j] = up if up != 0 else left
            else:  # two provisional labels meet: union under the smaller root
                a, b = up, left
                while parent[a] != a:
                    parent[a] = parent[parent[a]]
                    a = parent[a]
                while parent[b] != b:
                    parent[b] = parent[parent[b]]
                    b = parent[b]
                if a < b:
                    parent[b] = a
                else:
                    parent[a] = b
                labels[i, j] = min(a, b)
    # final numbers by first pixel: a root is numbered when its first pixel is met
    final = np.zeros(n + 1, np.int32)
    label_class = np.empty(n, np.int64)
    counts = np.zeros(n, np.int64)
    prob_sums = np.zeros(n, np.float64)
    m = 0
    for i in range(h):
        for j in range(w):
            p = labels[i, j]
            if p == 0:
                continue
            root = p
            while parent[root] != root:
                root = parent[root]
            parent[p] = root
            if final[root] == 0:
                m += 1
                final[root] = m
                label_class[m - 1] = classes[i, j]
            f = final[root]
            labels[i, j] = f
            counts[f - 1] += 1
            prob_sums[f - 1] += probabilities[classes[i, j], i, j]
    return labels, label_class[:m], counts[:m], prob_sums[:m], present
