"""Merge per-tile object detections into one box per object, tile by tile.

A detector runs on every tile of a :class:`~geovision.tiling.grid.TileGrid`.
Each tile reports boxes (moved to whole-raster pixel coordinates,
``bbox_xyxy = (col0, row0, col1, row1)``), scores and integer class labels. An
object cut by a tile edge is seen whole by one tile and as a truncated fragment
by its neighbour; an object larger than the overlap may be seen only as
fragments by every tile. :func:`merge_detections` returns every object once,
whole:

1. **Clip** each box to its tile's window; drop boxes narrower or lower than
   ``min_size`` pixels.
2. **Cut sides.** A box side is *cut* when it lies within ``edge_tol`` pixels of
   its tile window's side and that side is not on the raster's edge: the object
   may continue beyond it.
3. **Link.** Boxes ``A`` (tile ``a``) and ``B`` (tile ``b != a``) of the same
   class are views of one object when, ``O`` being the overlap of the two
   windows, ``A ∩ O`` and ``B ∩ O`` are non-empty and their IoU is at least
   ``match_iou`` (a perfect detector reports ``object ∩ window`` in every tile,
   whose parts in ``O`` are identical). Linked boxes form groups (connected
   components).
4. **Fuse** each group into one box: per side, the coordinate of the best-scored
   member whose side is not cut (``fusion="best"``) or the score-weighted mean
   of the uncut members' coordinates (``"wbf"``); the extreme coordinate when
   every member is cut there. Score: the members' maximum.
5. **Suppress duplicates**: greedy non-maximum suppression per class, ranking
   boxes with no cut side before cut ones, then by score: a box is dropped when
   its IoU with a higher-ranked kept box is above ``nms_iou``.
6. **Suppress fragments**: a box with a cut side is dropped when a higher-ranked
   kept box of its class covers at least ``contain`` of the smaller box's area.

Steps 5 and 6 compare two fused boxes only when some tile box fused into one
overlaps some tile box fused into the other: boxes whose detections never
overlap are different objects, even where fusing inconsistent fragments made
their outlines meet. This keeps every decision local: it depends only on a
cluster of boxes whose detections overlap, which is what lets the streaming
merger decide exactly what the one-shot merge decides.

:class:`DetectionMerger` does the same while the tiles arrive in grid order,
holding only the boxes near the tiles in flight (those on the seams of about
one row of tiles). A tile box is *ready* once the last tile whose window meets
it has arrived (grid math, no search): no later box can overlap it. A group of
linked boxes is *complete* once all its members are ready, and it is released
once every group its boxes overlap (and every group those overlap, and so on,
through pairs that could suppress one another) is complete too. Its output,
over all :meth:`~DetectionMerger.add`, :meth:`~DetectionMerger.skip` and
:meth:`~DetectionMerger.finish` calls, is the same set of boxes, bit for bit,
as :func:`merge_detections` over all tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely
from numpy.typing import ArrayLike
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geovision.errors import ConfigError, warn
from geovision.tiling.grid import TileGrid
from geovision.types import Tile, Window

__all__ = ["Detections", "DetectionMerger", "Fusion", "merge_detections"]

Fusion = Literal["best", "wbf"]
"""How a group of linked boxes becomes one box: ``"best"`` takes each side from the
best-scored member not cut there, ``"wbf"`` averages the uncut members' sides
weighted by score."""

FUSIONS: tuple[str, ...] = ("best", "wbf")


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Detections:
    """Object boxes in whole-raster pixel coordinates.

    Attributes:
        boxes: ``(N, 4)`` float64 ``bbox_xyxy = (col0, row0, col1, row1)`` (pixels).
        scores: ``(N,)`` float64 detection scores.
        labels: ``(N,)`` int64 class ids.
        sources: ``(N,)`` int64 how many tile boxes were fused into each box
            (1 for a box seen by one tile only).

    Raises:
        ValueError: the arrays do not have matching shapes.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    sources: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"Detections.boxes has shape {boxes.shape}, expected (N, 4) bbox_xyxy.")
        n = len(boxes)
        columns = {"scores": (self.scores, np.float64), "labels": (self.labels, np.int64),
                   "sources": (self.sources, np.int64)}
        for name, (values, dtype) in columns.items():
            array = np.asarray(values, dtype=dtype)
            if array.shape != (n,):
                raise ValueError(f"Detections.{name} has shape {array.shape}, expected ({n},): one per box.")
            object.__setattr__(self, name, array)
        object.__setattr__(self, "boxes", boxes)

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        return f"Detections({len(self)} boxes)"

    @classmethod
    def empty(cls) -> Detections:
        """No boxes (with the right shapes and dtypes)."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """All boxes of ``parts``, in order."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.sources for p in parts]),
        )


# --- options ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    match_iou: float
    nms_iou: float
    contain: float
    edge_tol: float
    fusion: Fusion
    min_size: float

    def __post_init__(self) -> None:
        if not 0 < self.match_iou <= 1:
            raise ConfigError(f"match_iou must be in (0, 1] (e.g. 0.5), got {self.match_iou!r}.")
        if not 0 <= self.nms_iou <= 1:
            raise ConfigError(f"nms_iou must be in [0, 1] (e.g. 0.5), got {self.nms_iou!r}.")
        if not 0 < self.contain <= 1:
            raise ConfigError(f"contain must be in (0, 1] (e.g. 0.8), got {self.contain!r}.")
        if not self.edge_tol >= 0:
            raise ConfigError(f"edge_tol must be >= 0 pixels (e.g. 1.0), got {self.edge_tol!r}.")
        if not self.min_size > 0:
            raise ConfigError(f"min_size must be > 0 pixels (e.g. 1.0), got {self.min_size!r}.")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"Unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}.")


# --- tile boxes ---------------------------------------------------------------------


@dataclass(slots=True)
class _Raw:
    """Clipped tile boxes with what the merge needs to know about each.

    Attributes:
        boxes: ``(n, 4)`` float64 ``bbox_xyxy``, clipped to the tile's window.
        scores: ``(n,)`` float64.
        labels: ``(n,)`` int64.
        cut: ``(n, 4)`` bool, per side (col0, row0, col1, row1): the side may be a tile edge.
        window: ``(n, 4)`` float64 the tile window as ``bbox_xyxy``.
        tile: ``(n,)`` int64 tile number (which tile each box came from).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    cut: np.ndarray
    window: np.ndarray
    tile: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> _Raw:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), np.zeros((0, 4), bool),
                   np.zeros((0, 4)), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: Sequence[_Raw]) -> _Raw:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__))

    def take(self, index: np.ndarray) -> _Raw:
        return _Raw(*(getattr(self, f)[index] for f in self.__slots__))


def _window_xyxy(window: Window) -> np.ndarray:
    """``(4,)`` float64 ``bbox_xyxy`` of a window."""
    return np.array([window.col_off, window.row_off, window.col_end, window.row_end], dtype=np.float64)


def _prepare(
    tile: Tile,
    number: int,
    boxes: ArrayLike,
    scores: ArrayLike,
    labels: ArrayLike,
    raster_shape: tuple[int, int],
    opts: _Options,
) -> _Raw:
    """Validate one tile's detections, clip them to its window and flag their cut sides.

    Args:
        tile: the tile the boxes come from.
        number: the tile's number (any id unique per tile).
        boxes: ``(n, 4)`` ``bbox_xyxy`` in whole-raster pixels.
        scores: ``(n,)`` scores.
        labels: ``(n,)`` integer class ids.
        raster_shape: ``(height, width)`` of the raster (pixels).
        opts: the merge options.

    Raises:
        ValueError: shapes do not match, values are not finite, labels are not
            integers or a box has ``col1 < col0`` or ``row1 < row0``.
    """
    where = f"tile {tile.index} ({tile.window})"
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"boxes of {where} have shape {boxes.shape}; expected (n, 4) bbox_xyxy (col0, row0, col1, row1)."
        )
    n = len(boxes)
    scores_in = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels_in = np.asarray(labels).reshape(-1)
    if scores_in.shape != (n,) or labels_in.shape != (n,):
        raise ValueError(
            f"{where}: {n} boxes but {scores_in.size} scores and {labels_in.size} labels; "
            "give one score and label per box."
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores_in).all()):
        raise ValueError(f"{where}: boxes and scores must be finite (found NaN or inf); drop those boxes first.")
    if labels_in.dtype.kind not in "iu":
        if labels_in.dtype.kind != "f" or not np.array_equal(labels_in, np.round(labels_in)):
            raise ValueError(f"{where}: labels must be integer class ids, got dtype {labels_in.dtype}.")
    labels_in = labels_in.astype(np.int64)
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(
            f"{where}: a box has col1 < col0 or row1 < row0; boxes must be bbox_xyxy (col0, row0, col1, row1) "
            "in pixels, not xywh or (row, col) order."
        )

    win = _window_xyxy(tile.window)
    clipped = np.clip(boxes, win[[0, 1, 0, 1]], win[[2, 3, 2, 3]])
    size = clipped[:, 2:] - clipped[:, :2]
    keep = (size >= opts.min_size).all(axis=1)
    clipped, scores_in, labels_in = clipped[keep], scores_in[keep], labels_in[keep]

    height, width = raster_shape
    tol = opts.edge_tol
    inner = np.array([win[0] > 0, win[1] > 0, win[2] < width, win[3] < height])  # sides not on the raster edge
    near = np.column_stack([
        clipped[:, 0] <= win[0] + tol,
        clipped[:, 1] <= win[1] + tol,
        clipped[:, 2] >= win[2] - tol,
        clipped[:, 3] >= win[3] - tol,
    ])
    m = len(clipped)
    return _Raw(
        clipped, scores_in, labels_in, near & inner, np.broadcast_to(win, (m, 4)).copy(), np.full(m, number, np.int64)
    )


# --- geometry helpers ----------------------------------------------------------------


def _overlapping_pairs(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of boxes that share a positive area (an STRtree query, not an N x N matrix).

    Args:
        a: ``(n, 4)`` ``bbox_xyxy``.
        b: ``(m, 4)`` ``bbox_xyxy``, or ``None`` for pairs within ``a``.

    Returns:
        ``(i, j)``: int64 arrays, ``a[i]`` overlaps ``b[j]`` (or ``a[j]`` with ``i < j``
        when ``b`` is ``None``).
    """
    other = a if b is None else b
    if len(a) == 0 or len(other) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tree = shapely.STRtree(shapely.box(other[:, 0], other[:, 1], other[:, 2], other[:, 3]))
    # boxes are their own envelopes, so the envelope query alone finds every candidate
    i, j = tree.query(shapely.box(a[:, 0], a[:, 1], a[:, 2], a[:, 3]))
    i, j = i.astype(np.int64), j.astype(np.int64)
    if b is None:
        upper = i < j
        i, j = i[upper], j[upper]
    bi, bj = a[i], other[j]
    positive = (np.minimum(bi[:, 2], bj[:, 2]) > np.maximum(bi[:, 0], bj[:, 0])) & (
        np.minimum(bi[:, 3], bj[:, 3]) > np.maximum(bi[:, 1], bj[:, 1])
    )
    return i[positive], j[positive]


def _area(boxes: np.ndarray) -> np.ndarray:
    area: np.ndarray = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return area


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the smaller area of paired boxes.

    Args:
        a: ``(m, 4)`` ``bbox_xyxy``.
        b: ``(m, 4)`` ``bbox_xyxy``, paired row by row with ``a``.

    Returns:
        ``(iou, ios)``: ``(m,)`` float64 each, 0 where a box has no area.
    """
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a, area_b = _area(a), _area(b)
    union = area_a + area_b - inter
    smaller = np.minimum(area_a, area_b)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    ios = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    return iou, ios


def _links(raw: _Raw, i: np.ndarray, j: np.ndarray, match_iou: float) -> np.ndarray:
    """Which candidate pairs ``(i, j)`` of tile boxes are views of one object.

    Both boxes are cut down to the overlap of their two tile windows; they are
    linked when they come from different tiles, share a class and the two cut
    boxes are non-empty with an IoU of at least ``match_iou``.

    Returns:
        ``(m,)`` bool.
    """
    ok = (raw.tile[i] != raw.tile[j]) & (raw.labels[i] == raw.labels[j])
    wi, wj = raw.window[i], raw.window[j]
    lo, hi = np.maximum(wi[:, :2], wj[:, :2]), np.minimum(wi[:, 2:], wj[:, 2:])  # the overlap O
    a = np.concatenate([np.maximum(raw.boxes[i, :2], lo), np.minimum(raw.boxes[i, 2:], hi)], axis=1)
    b = np.concatenate([np.maximum(raw.boxes[j, :2], lo), np.minimum(raw.boxes[j, 2:], hi)], axis=1)
    nonempty = ((a[:, 2:] > a[:, :2]) & (b[:, 2:] > b[:, :2])).all(axis=1)
    iou, _ = _overlap(a, b)
    linked: np.ndarray = ok & nonempty & (iou >= match_iou)
    return linked


def _components(n: int, i: np.ndarray, j: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of ``n`` nodes joined by edges ``(i, j)``: ``(count, (n,) component id)``."""
    if n == 0:
        return 0, np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    count, ids = connected_components(graph, directed=False)
    return int(count), ids.astype(np.int64)


# --- fusing and suppressing ----------------------------------------------------------


@dataclass(slots=True)
class _Fused:
    """One box per group of linked tile boxes (arrays as in :class:`Detections`, plus ``cut``)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    cut: np.ndarray

    def take(self, index: np.ndarray) -> _Fused:
        return _Fused(*(getattr(self, f)[index] for f in self.__slots__))

    def detections(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.sources[keep])


def _fuse(raw: _Raw, group: np.ndarray, fusion: Fusion, min_size: float) -> tuple[np.ndarray, _Fused]:
    """Fuse each group of linked tile boxes into one box.

    Each side is taken from the uncut members: the best-scored one's
    (``"best"``; ties go to the most extreme coordinate) or their score-weighted
    mean (``"wbf"``). A side every member has cut gets the members' extreme
    coordinate (the smallest ``col0``/``row0``, the largest ``col1``/``row1``), and
    is cut in the fused box too. Should disagreeing members give an axis shorter
    than ``min_size``, that axis takes the members' extremes. Members are summed
    in an order set by their own values, so a group fuses to the same bits
    whatever order its boxes arrived in.

    Args:
        raw: the member boxes.
        group: ``(n,)`` int64 group id of each member.
        fusion: ``"best"`` or ``"wbf"``.
        min_size: smallest fused side (pixels).

    Returns:
        ``(ids, fused)``: the sorted distinct group ids and one fused box per id.
    """
    n = len(raw)
    if n == 0:
        return np.zeros(0, np.int64), _Fused(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64),
                                             np.zeros(0, np.int64), np.zeros((0, 4), bool))
    b, s, w = raw.boxes, raw.scores, raw.window
    order = np.lexsort((s, b[:, 3], b[:, 2], b[:, 1], b[:, 0], w[:, 0], w[:, 1], group))
    g, b, s, cut = group[order], b[order], s[order], raw.cut[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, n])
    last = starts + counts - 1

    lows = np.minimum.reduceat(b[:, :2], starts, axis=0)
    highs = np.maximum.reduceat(b[:, 2:], starts, axis=0)
    extreme = np.concatenate([lows, highs], axis=1)
    fused = np.empty_like(extreme)
    for side in range(4):
        coord, uncut = b[:, side], ~cut[:, side]
        match fusion:
            case "best":
                outward = coord if side >= 2 else -coord
                best = np.lexsort((outward, s, uncut, g))[last]  # last of each group: uncut, best score, outermost
                fused[:, side] = np.where(uncut[best], coord[best], extreme[:, side])
            case "wbf":
                weight = np.where(uncut, np.maximum(s, 0.0), 0.0)
                num = np.add.reduceat(weight * coord, starts)
                den = np.add.reduceat(weight, starts)
                n_uncut = np.add.reduceat(uncut.astype(np.int64), starts)
                mean_uncut = np.add.reduceat(np.where(uncut, coord, 0.0), starts) / np.maximum(n_uncut, 1)
                weighted = np.divide(num, den, out=mean_uncut.copy(), where=den > 0)
                fused[:, side] = np.where(n_uncut > 0, weighted, extreme[:, side])
    for axis in (0, 1):
        short = fused[:, axis + 2] - fused[:, axis] < min_size
        fused[short, axis], fused[short, axis + 2] = extreme[short, axis], extreme[short, axis + 2]

    labels = raw.labels[order][starts]
    result = _Fused(
        fused,
        np.maximum.reduceat(s, starts),
        labels,
        counts.astype(np.int64),
        np.logical_and.reduceat(cut, starts, axis=0),
    )
    return g[starts], result


def _rank(fused: _Fused) -> np.ndarray:
    """``(n,)`` int64 rank of each box, 0 for the first: boxes with no cut side first, then
    by score, then (ties) by sources, class and coordinates, so the order never depends on
    the order of the input."""
    b = fused.boxes
    order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], fused.labels, -fused.sources, -fused.scores,
                        fused.cut.any(axis=1)))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _group_pairs(group: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(g, h)`` of different groups whose members ``i`` and ``j`` overlap (repeats left in:
    removing them costs more than they do)."""
    gi, gj = group[i], group[j]
    differ = gi != gj
    return gi[differ], gj[differ]


def _interacting(fused: _Fused, i: np.ndarray, j: np.ndarray, opts: _Options) -> np.ndarray:
    """Which pairs ``(i, j)`` of fused boxes of one class may suppress one another (step 5 or 6)."""
    iou, ios = _overlap(fused.boxes[i], fused.boxes[j])
    either_cut = fused.cut[i].any(axis=1) | fused.cut[j].any(axis=1)
    interacting: np.ndarray = (iou > opts.nms_iou) | (either_cut & (ios >= opts.contain))
    return interacting


def _greedy(n: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Greedy suppression in rank order: box ``lower[p]`` goes when box ``upper[p]`` (ranked
    higher) stays. Returns ``(n,)`` bool kept.

    Decided in rounds rather than box by box: a box is decided once every box that could
    suppress it is, so there are as many rounds as the longest chain of suppressions.
    """
    keep = np.ones(n, dtype=bool)
    undecided = np.zeros(n, dtype=bool)
    undecided[lower] = True
    while len(lower):
        waiting = np.zeros(n, dtype=bool)
        waiting[lower[undecided[upper]]] = True
        now = undecided & ~waiting
        hit = now[lower] & keep[upper]
        keep[lower[hit]] = False
        undecided &= ~now
        later = undecided[lower]
        lower, upper = lower[later], upper[later]
    return keep


def _suppress(fused: _Fused, i: np.ndarray, j: np.ndarray, opts: _Options) -> np.ndarray:
    """Steps 5 and 6: drop duplicates and fragments among fused boxes.

    Args:
        fused: the fused boxes.
        i, j: the pairs of boxes that may be compared: same class, with overlapping
            tile boxes (any order, repeats allowed).
        opts: the merge options.

    Returns:
        ``(n,)`` bool, the boxes kept.
    """
    n = len(fused.scores)
    if len(i) == 0:
        return np.ones(n, dtype=bool)
    rank = _rank(fused)
    iou, ios = _overlap(fused.boxes[i], fused.boxes[j])
    lower, upper = np.where(rank[i] > rank[j], i, j), np.where(rank[i] > rank[j], j, i)
    duplicate = iou > opts.nms_iou
    keep = _greedy(n, lower[duplicate], upper[duplicate])
    fragment = keep[lower] & keep[upper] & fused.cut[lower].any(axis=1) & (ios >= opts.contain)
    kept: np.ndarray = keep & _greedy(n, lower[fragment], upper[fragment])
    return kept


# --- one-shot merge ------------------------------------------------------------------


def merge_detections(
    tiles: Sequence[tuple[Tile, np.ndarray, np.ndarray, np.ndarray]],
    *,
    match_iou: float = 0.5,
    nms_iou: float = 0.5,
    contain: float = 0.8,
    edge_tol: float = 1.0,
    fusion: Fusion = "best",
    min_size: float = 1.0,
    raster_shape: tuple[int, int] | None = None,
) -> Detections:
    """Merge the detections of overlapping tiles into one box per object.

    Args:
        tiles: ``(tile, boxes, scores, labels)`` per tile, each tile once: ``boxes``
            ``(n, 4)`` ``bbox_xyxy = (col0, row0, col1, row1)`` in whole-raster
            pixels, ``scores`` ``(n,)``, ``labels`` ``(n,)`` integer class ids.
        match_iou: smallest IoU, inside the overlap of two tiles, of two boxes
            that are views of one object.
        nms_iou: boxes of one class overlapping a higher-ranked one by more than
            this IoU are dropped.
        contain: a box with a cut side is dropped when this share of the smaller
            box's area lies inside a higher-ranked box of its class.
        edge_tol: a box side within this many pixels of an inner tile edge is cut.
        fusion: ``"best"`` or ``"wbf"`` (see :data:`Fusion`).
        min_size: boxes narrower or lower than this after clipping are dropped (pixels).
        raster_shape: ``(height, width)`` of the raster; tile sides on its edges
            never cut a box. Defaults to the extent of the tiles' windows.

    Returns:
        One box per object, in no particular order.

    Raises:
        ConfigError: an option is out of range.
        ValueError: a tile's arrays are malformed (see the message).
    """
    opts = _Options(match_iou, nms_iou, contain, edge_tol, fusion, min_size)
    if not tiles:
        return Detections.empty()
    if raster_shape is None:
        raster_shape = (max(t.window.row_end for t, *_ in tiles), max(t.window.col_end for t, *_ in tiles))
    raw = _Raw.concat([
        _prepare(tile, number, boxes, scores, labels, raster_shape, opts)
        for number, (tile, boxes, scores, labels) in enumerate(tiles)
    ])
    i, j = _overlapping_pairs(raw.boxes)
    same = raw.labels[i] == raw.labels[j]
    i, j = i[same], j[same]
    linked = _links(raw, i, j, opts.match_iou)
    _, group = _components(len(raw), i[linked], j[linked])
    _, fused = _fuse(raw, group, opts.fusion, opts.min_size)
    gi, gj = _group_pairs(group, i[~linked], j[~linked])
    return fused.detections(_suppress(fused, gi, gj, opts))


# --- streaming merge -----------------------------------------------------------------


class DetectionMerger:
    """Merges tile detections while the tiles arrive, holding only the boxes near the tiles in flight.

    Feed every tile of ``grid`` once, in grid order (``grid.tiles``, row-major),
    to :meth:`add` (or :meth:`skip` for a tile with no data), then call
    :meth:`finish`. Each call returns the boxes that became final with it; all
    returned boxes together are the same set as :func:`merge_detections` over
    all tiles.

    A tile box is *ready* once the last tile (in grid order) whose window meets
    it has arrived; a box meeting only its own tile's window is ready at once. A
    group of linked boxes is complete when all its members are ready. A fused box
    is released when its group is complete and so is every group in its cluster
    (groups of its class whose tile boxes overlap and whose fused boxes could
    suppress one another, step 5 or 6). Fed in grid order, the boxes held
    (:attr:`pending`) are those on the lower seam of the current row of tiles
    and the right seam of the current tile, whatever the raster's size.

    Args:
        grid: the tile grid the detections come from.
        match_iou, nms_iou, contain, edge_tol, fusion, min_size: as for
            :func:`merge_detections`.

    Raises:
        ConfigError: an option is out of range.
    """

    def __init__(
        self,
        grid: TileGrid,
        *,
        match_iou: float = 0.5,
        nms_iou: float = 0.5,
        contain: float = 0.8,
        edge_tol: float = 1.0,
        fusion: Fusion = "best",
        min_size: float = 1.0,
    ) -> None:
        self.grid = grid
        self._opts = _Options(match_iou, nms_iou, contain, edge_tol, fusion, min_size)
        self._row_starts = np.asarray(grid.row_starts, dtype=np.float64)
        self._col_starts = np.asarray(grid.col_starts, dtype=np.float64)
        self._ncols = len(self._col_starts)
        self._ntiles = len(self._row_starts) * self._ncols
        self._tile_h, self._tile_w = min(grid.tile_size, grid.height), min(grid.tile_size, grid.width)
        self._raw = _Raw.empty()
        self._ready = np.zeros(0, np.int64)  # last tile meeting each held box
        self._pairs = np.zeros((2, 0), np.int64)  # overlapping pairs of held boxes of one class
        self._linked = np.zeros(0, bool)  # whether each pair is linked (two views of one object)
        self._next = 0  # number of the next tile expected
        self._finished = False

    @property
    def pending(self) -> int:
        """How many tile boxes are held right now."""
        return len(self._raw)

    def add(self, tile: Tile, boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike) -> Detections:
        """Add one tile's detections; return the boxes that became final.

        Args:
            tile: the next tile of the grid, in grid order.
            boxes: ``(n, 4)`` ``bbox_xyxy`` in whole-raster pixels.
            scores: ``(n,)`` scores.
            labels: ``(n,)`` integer class ids.

        Returns:
            The objects that no later tile can change, fused and deduplicated.

        Raises:
            ValueError: the tile is not the next one of the grid, or its arrays
                are malformed.
            RuntimeError: :meth:`finish` was called already.
        """
        number = self._arrive(tile)
        new = _prepare(tile, number, boxes, scores, labels, (self.grid.height, self.grid.width), self._opts)
        self._next += 1  # only now: a tile whose arrays were refused may be added again
        held = self._raw
        both = _Raw.concat([held, new])
        # new pairs: within the tile, and with the held boxes in its window (no other box can overlap it)
        win = _window_xyxy(tile.window)
        near = np.flatnonzero(
            (held.boxes[:, 0] < win[2]) & (held.boxes[:, 2] > win[0])
            & (held.boxes[:, 1] < win[3]) & (held.boxes[:, 3] > win[1])
        )
        i_near, j_new = _overlapping_pairs(held.boxes[near], new.boxes)
        i_in, j_in = _overlapping_pairs(new.boxes)
        i = np.concatenate([near[i_near], i_in + len(held)])
        j = np.concatenate([j_new, j_in]) + len(held)
        same = both.labels[i] == both.labels[j]
        i, j = i[same], j[same]
        self._pairs = np.concatenate([self._pairs, np.stack([i, j])], axis=1)
        self._linked = np.concatenate([self._linked, _links(both, i, j, self._opts.match_iou)])
        self._raw = both
        self._ready = np.concatenate([self._ready, self._last_tile(new.boxes)])
        return self._release(number, force=False)

    def skip(self, tile: Tile) -> Detections:
        """Record that ``tile`` had no data (for example all nodata).

        Returns:
            The objects that became final now that this tile is known to add nothing.

        Raises:
            ValueError: the tile is not the next one of the grid.
            RuntimeError: :meth:`finish` was called already.
        """
        return self.add(tile, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))

    def finish(self) -> Detections:
        """Return every box still held, fused and deduplicated; the merger is done afterwards.

        Returns:
            Nothing when every tile arrived (each object was returned as soon as
            it was final). Otherwise, with a :class:`~geovision.errors.GeovisionWarning`,
            the objects near the missing tiles, merged as :func:`merge_detections`
            would merge the tiles that arrived.
        """
        if self._next < self._ntiles and not self._finished:
            warn(
                f"DetectionMerger received {self._next} of the grid's {self._ntiles} tiles; objects in or "
                "next to the missing tiles may be truncated or duplicated. Add or skip every tile of the grid."
            )
        self._finished = True
        return self._release(self._ntiles, force=True)

    # --- internals -----------------------------------------------------------------

    def _arrive(self, tile: Tile) -> int:
        """Check that ``tile`` is the next tile of the grid; return its number (not yet counted as arrived)."""
        if self._finished:
            raise RuntimeError("This DetectionMerger has finished; make a new one for another raster.")
        rows, cols = len(self._row_starts), self._ncols
        i, j = tile.index
        if not (0 <= i < rows and 0 <= j < cols):
            raise ValueError(f"Tile index {tile.index} is outside the {rows} x {cols} tile grid.")
        number = i * cols + j
        if self._next == self._ntiles:
            raise ValueError(f"Tile {tile.index} arrived after all {self._ntiles} tiles; add each tile once.")
        if number != self._next:
            expected = (self._next // cols, self._next % cols)
            raise ValueError(
                f"Tile {tile.index} arrived, but the next tile in grid order is {expected}; add or skip the "
                "tiles in grid.tiles order (row-major), each exactly once."
            )
        window = Window(int(self._row_starts[i]), int(self._col_starts[j]), self._tile_h, self._tile_w)
        if tile.window != window:
            raise ValueError(
                f"Tile {tile.index} has window {tile.window}, but the grid's tile {tile.index} is {window}; "
                "feed the tiles of the grid this merger was made for."
            )
        return number

    def _last_tile(self, boxes: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 number of the last tile, in grid order, whose window meets each box (positive area)."""
        row = np.searchsorted(self._row_starts, boxes[:, 3], side="left") - 1
        col = np.searchsorted(self._col_starts, boxes[:, 2], side="left") - 1
        return (row * self._ncols + col).astype(np.int64)

    def _release(self, arrived: int, *, force: bool) -> Detections:
        """Fuse, deduplicate and forget the groups nothing can change any more.

        Args:
            arrived: number of the last tile arrived.
            force: release everything (at :meth:`finish`).
        """
        raw = self._raw
        n = len(raw)
        if n == 0:
            return Detections.empty()
        (i, j), linked = self._pairs, self._linked
        n_groups, group = _components(n, i[linked], j[linked])
        group_ready = np.zeros(n_groups, np.int64)
        np.maximum.at(group_ready, group, self._ready)
        complete = np.ones(n_groups, bool) if force else group_ready <= arrived

        members = np.flatnonzero(complete[group])
        ids, fused = _fuse(raw.take(members), group[members], self._opts.fusion, self._opts.min_size)
        slot = np.full(n_groups, -1, np.int64)  # row of each complete group in ``fused``
        slot[ids] = np.arange(len(ids))
        gi, gj = _group_pairs(group, i[~linked], j[~linked])

        if force:
            free = np.ones(n_groups, bool)
        else:
            # A complete group is final, but its fate under steps 5 and 6 may hang on groups
            # still open: release only clusters of complete groups.
            both = complete[gi] & complete[gj]
            edge = np.ones(len(gi), bool)  # an open group may end up interacting with anything it overlaps
            edge[both] = _interacting(fused, slot[gi[both]], slot[gj[both]], self._opts)
            n_clusters, cluster = _components(n_groups, gi[edge], gj[edge])
            blocked = np.zeros(n_clusters, bool)
            blocked[cluster[~complete]] = True
            free = complete & ~blocked[cluster]

        out = free[gi] & free[gj]
        released = fused.take(slot[free])
        row = np.cumsum(free) - 1  # row of each free group in ``released``
        result = released.detections(_suppress(released, row[gi[out]], row[gj[out]], self._opts))

        stay = ~free[group]
        kept = stay[i] & stay[j]  # a pair of a released and a held group: both complete, never interacting
        self._pairs = (np.cumsum(stay) - 1)[self._pairs[:, kept]]
        self._linked = linked[kept]
        self._raw = raw.take(np.flatnonzero(stay))
        self._ready = self._ready[stay]
        return result
